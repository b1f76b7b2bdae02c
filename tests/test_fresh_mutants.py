"""Checks found missing by a mutation campaign (issue 15): each catches a realistic single bug that
the rest of the suite let through. Grouped by spec section."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab import biterrors as be
from robustlab import models
from robustlab.attacks.corruptions import corrupt
from robustlab.attacks.pgd import init_delta
from robustlab.evaluate import metrics as mt
from robustlab.quant import Scheme
from robustlab.weights import FunctionObjective, RelativeBall, worst_case_ascent


# §2: every threshold comparison is c ≥ τ (ties at τ are accepted)
def test_confidence_exactly_at_tau_is_accepted_everywhere() -> None:
    tau = 0.75
    clean_wrong = torch.tensor([False, False, True, False])
    clean_conf = torch.tensor([0.75, 0.9, 0.75, 0.5])
    adv_wrong = torch.tensor([True, False, True, True])
    adv_conf = torch.tensor([0.75, 0.9, 0.6, 0.74])
    assert mt.fpr_at(tau, clean_wrong, adv_wrong, adv_conf) == 0.25  # only example 0
    assert mt.tpr_at(clean_conf, tau) == 0.75
    assert mt.distal_fpr(tau, adv_conf) == 0.5
    assert mt.err_at(tau, adv_wrong, adv_conf) == 0.5  # accepted: 0 (wrong), 1 (right)
    # RErr@τ: numerator examples 0, 2; denominator 0, 1, 2
    assert mt.rerr_at(tau, clean_wrong, clean_conf, adv_wrong, adv_conf) == pytest.approx(2 / 3)


# §3: the cube init is uniform in [−ε, ε] per entry (clipped to the box)
def test_cube_init_is_uniform_in_the_eps_cube() -> None:
    x = torch.full((2000, 1, 4, 4), 0.5)
    d = init_delta(x, "linf", 0.1, "cube", torch.Generator().manual_seed(0))
    assert float(d.abs().max()) <= 0.1 + 1e-7
    assert abs(float(d.mean())) < 0.002 and abs(float(d.var()) - 0.01 / 3) < 2e-4


# §3 corruptions: fixed severities; noise corruptions are what their names say
def test_gaussian_noise_severities_and_impulse_noise_values() -> None:
    x = torch.full((200, 1, 8, 8), 0.5)
    sig = [float((corrupt(x, "gaussian_noise", s) - x).std()) for s in (1, 2, 3)]
    assert sig == pytest.approx([0.08, 0.12, 0.18], rel=0.03)
    for s, amount in ((1, 0.03), (3, 0.09), (5, 0.27)):
        out = corrupt(x, "impulse_noise", s, generator=torch.Generator().manual_seed(s))
        changed = out != x
        assert set(out[changed].unique().tolist()) <= {0.0, 1.0}  # salt and pepper
        assert float(changed.float().mean()) == pytest.approx(amount, abs=0.01)
        assert torch.equal(out, corrupt(x, "impulse_noise", s, generator=torch.Generator().manual_seed(s)))


# §6 chips: stuck cells read their stuck value whatever the flip probability
def test_stuck_cells_never_flip() -> None:
    q = Scheme(8).quantize({"w": torch.linspace(-1, 1, 64)})
    stuck = [[-1, 0, 1, -1, -1, -1, -1, -1]]  # bit 1 stuck at 0, bit 2 stuck at 1
    chip = be.chip_map_from_dict({"flip_prob": 1.0, "stuck": stuck})
    got = chip.apply(q, 5).to(torch.int64)
    c = q.codes.to(torch.int64)
    assert torch.equal((got >> 1) & 1, torch.zeros_like(c))
    assert torch.equal((got >> 2) & 1, torch.ones_like(c))
    free = 0b11111001
    assert torch.equal(got & free, (c ^ 0xFF) & free)  # every other bit flipped (p = 1)


# §8 worst-case flatness: the maximum over restarts
def test_worst_case_flatness_is_the_max_over_restarts() -> None:
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    obj = FunctionObjective(lambda p: ((p["w"] - c) ** 2).sum() + p["w"].sum())
    ball = RelativeBall({"w": c.clone()}, ["w"], 0.3)
    res = worst_case_ascent(obj, ball, steps=2, restarts=4, step_size=0.01,
                            generator=torch.Generator().manual_seed(3), progress=False)
    losses = res["perturbed_losses"]
    assert len(losses) == 4 and max(losses) - min(losses) > 1e-6  # restarts differ
    assert res["flatness"] == pytest.approx(max(losses) - res["loss"])
    # the documented default step is ξ/4
    res = worst_case_ascent(obj, ball, steps=1, generator=torch.Generator().manual_seed(3),
                            progress=False)
    assert res["step_size"] == pytest.approx(0.3 / 4)


# §8 relative ball: conv/linear weights and biases; never norm-layer parameters
def test_perturbable_names_exclude_norm_layers() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3),
                        nn.LayerNorm(3), nn.BatchNorm1d(3))
    assert models.perturbable_names(net) == ["0.weight", "0.bias", "3.weight", "3.bias"]


# §8: the clean variant uses δ = 0, even when an attack is given
def test_clean_flatness_ignores_the_attack() -> None:
    import torch.nn.functional as F

    from robustlab.data import synthetic
    from robustlab.evaluate.flatness import flatness

    _, test = synthetic(8, 24, shape=(1, 4, 4), num_classes=3, seed=1)
    m = models.create("mlp", in_shape=(1, 4, 4), num_classes=3, hidden=(8,), seed=0)

    def shove(model_fn, x, y, *, generator):  # an "attack" that visibly changes the inputs
        return (1 - x).detach()

    r = flatness(m, test, kind="average", xi=0.1, clean=True, attack=shove, samples=1,
                 progress=False)
    with torch.no_grad():
        assert r["loss"] == pytest.approx(float(F.cross_entropy(m(test.x), test.y)), abs=1e-5)


# §4: with ε = 0 there is no perturbation and CCAT's target is the label itself
def test_ccat_target_at_eps_zero_is_one_hot() -> None:
    from robustlab.train.adversarial_methods import soft_target

    y = torch.tensor([2, 0, 1])
    t = soft_target(torch.zeros(3, 1, 2, 2), y, 4, eps=0.0, rho=10.0)
    assert torch.equal(t, torch.nn.functional.one_hot(y, 4).float())


# §7 with §4's label smoothing: RandBET's losses use the run's criterion
def test_randbet_uses_the_runs_label_smoothing() -> None:
    import torch.nn.functional as F

    from robustlab.train.biterror_methods import RandBET
    from robustlab.train.trainer import TrainConfig, TrainContext

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    ctx = TrainContext(model, TrainConfig(label_smoothing=0.2), torch.device("cpu"), 3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    loss, logits = RandBET(bit_error_rate=0.01).backward(ctx, x, y)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, y, label_smoothing=0.2)),
                                        abs=1e-6)
    assert abs(float(loss) - float(F.cross_entropy(logits, y))) > 1e-3


# §8 AWP: ‖ν_l‖ = γ‖w_l‖ for the γ given (not only the 0.01 of test_awp)
@pytest.mark.parametrize("gamma", [0.005, 0.02])
def test_awp_perturbation_norm_follows_gamma(gamma: float) -> None:
    from robustlab.train.trainer import TrainConfig, TrainContext
    from robustlab.train.weight_methods import AWP

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).train()
    ctx = TrainContext(model, TrainConfig(), torch.device("cpu"), 3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    awp = AWP(awp_gamma=gamma, attack_steps=1)
    loss, _ = awp.loss(ctx, x, y)
    nu = awp.perturbation(ctx, loss)
    params = dict(model.named_parameters())
    assert set(nu) == {"1.weight", "3.weight"}
    for n, v in nu.items():
        assert float(v.detach().norm()) == pytest.approx(gamma * float(params[n].detach().norm()), rel=1e-5)


# §2 ROC AUC: positives are the clean inputs (score c), negatives the successful adversarial ones
def test_detection_auc_orientation() -> None:
    clean_wrong = torch.tensor([False, False, False, True])
    clean_conf = torch.tensor([0.9, 0.95, 0.8, 0.99])
    adv_wrong = torch.tensor([True, True, False, True])
    adv_conf = torch.tensor([0.6, 0.85, 0.1, 0.99])
    # positives 0.9, 0.95, 0.8; negatives 0.6, 0.85 → pairs won: 3 + 2 + 1 = 5 of 6
    assert mt.detection_auc(clean_wrong, clean_conf, adv_wrong, adv_conf) == pytest.approx(5 / 6)


# §2: τ keeps at least the fraction TPR of the held-out confidences (⌈TPR·n⌉ of them)
def test_threshold_keeps_at_least_tpr_of_the_examples() -> None:
    conf = torch.tensor([0.91, 0.99, 0.5, 0.97, 0.8, 0.95, 0.6, 0.99, 0.7, 0.93])
    assert mt.threshold_at_tpr(conf, 0.95) == pytest.approx(0.5)  # ⌈9.5⌉ = 10: all of them
    assert mt.threshold_at_tpr(conf, 0.85) == pytest.approx(0.6)  # ⌈8.5⌉ = 9
    assert mt.threshold_at_tpr(conf, 0.8) == pytest.approx(0.7)  # exactly 8
    for tpr in (0.95, 0.85, 0.8, 0.33):
        assert mt.tpr_at(conf, mt.threshold_at_tpr(conf, tpr)) >= tpr


# §3 frames: a border of the given width on every side, also on non-square images
def test_frame_mask_on_a_non_square_image() -> None:
    from robustlab.attacks import frame_mask

    m = frame_mask((1, 10, 14), 2)
    assert int(m.sum()) == 10 * 14 - 6 * 10
    assert bool((m[..., 2:8, 2:12] == 0).all()) and bool((m[..., :, :2] == 1).all())
    assert bool((m[..., :, 12:] == 1).all()) and bool((m[..., 8:, :] == 1).all())


# §8 landscape: every point uses the same attack seed, so the centre is the robust loss at w
def test_landscape_points_share_the_attack_seed() -> None:
    import torch.nn.functional as F

    from robustlab.data import synthetic
    from robustlab.evaluate.flatness import flatness, landscape

    _, test = synthetic(8, 24, shape=(1, 4, 4), num_classes=3, seed=1)
    m = models.create("mlp", in_shape=(1, 4, 4), num_classes=3, hidden=(8,), seed=0)

    def noisy(model_fn, x, y, *, generator):  # a seeded random "attack"
        return (x + 0.3 * torch.rand(x.shape, generator=generator)).clamp(0, 1)

    lv = landscape(m, test, dims=1, points=3, xi=0.2, attack=noisy, seed=4, progress=False)
    ref = flatness(m, test, xi=0.0, attack=noisy, seed=4, samples=1, progress=False)
    assert lv["robust_loss"][1] == pytest.approx(ref["loss"], abs=1e-6)
    with torch.no_grad():
        assert lv["clean_loss"][1] == pytest.approx(float(F.cross_entropy(m(test.x), test.y)),
                                                    abs=1e-5)
