"""AT, CCAT, TRADES and patch AT as trainer plug-ins."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab import data
from robustlab.attacks import pgd
from robustlab.errors import UserError
from robustlab.train import fit
from robustlab.train import methods as registry
from robustlab.train.adversarial_methods import AT, CCAT, TRADES, PatchAT, soft_target
from robustlab.train.methods import soft_cross_entropy
from robustlab.train.trainer import TrainConfig, TrainContext

torch.set_num_threads(1)


def mlp(seed: int = 0, d: int = 64, k: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, k))


def context(model: nn.Module, **cfg) -> TrainContext:
    model.train()
    return TrainContext(model, TrainConfig(**cfg), torch.device("cpu"), 4)


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_ccat_soft_target_closed_form() -> None:
    y = torch.tensor([2, 0])
    delta = torch.zeros(2, 1, 2, 2)
    delta[0, 0, 0, 0] = 0.05   # ‖δ‖∞ = ε/2 → λ = (1/2)^ρ
    delta[1, 0, 1, 1] = -0.3   # beyond ε → λ = 0: uniform target
    t = soft_target(delta, y, 4, eps=0.1, rho=2.0)
    lam = 0.25
    assert torch.allclose(t[0], torch.tensor([0.75 / 4, 0.75 / 4, lam + 0.75 / 4, 0.75 / 4]))
    assert torch.allclose(t[1], torch.full((4,), 0.25))
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert torch.equal(soft_target(torch.zeros(1, 1, 2, 2), y[:1], 4, 0.1, 10.0),
                       F.one_hot(y[:1], 4).float())


def test_at_loss_weights_clean_and_adversarial_parts_as_specified() -> None:
    # With ε = 0 the "adversarial" quarter equals its clean inputs, so the loss must be
    # 0.75·CE(first 6) + 0.25·CE(last 2) (the original code swapped the weights).
    x, y = batch()
    model = mlp()
    ctx = context(model, label_smoothing=0.1)
    loss, logits = AT(fraction=0.25, eps=0.0).loss(ctx, x, y)
    ref = model(x)
    ls = dict(label_smoothing=0.1)
    expected = 0.75 * F.cross_entropy(ref[:6], y[:6], **ls) + 0.25 * F.cross_entropy(ref[6:], y[6:], **ls)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(logits, ref, atol=1e-6)
    assert model.training  # eval mode only while attacking


def test_at_adversarial_part_is_adversarial_and_madry_uses_only_it() -> None:
    x, y = batch(16)
    model = mlp()
    ctx = context(model)
    clean, _ = AT(fraction=1.0, eps=0.0).loss(ctx, x, y)
    adv, _ = AT(fraction=1.0, eps=0.3, attack_steps=5).loss(ctx, x, y)
    assert adv > clean + 1e-3


class FixedCCAT(CCAT):
    """CCAT whose attack adds a known perturbation (to check the loss formula exactly)."""

    def attack(self, ctx, x, y):
        delta = torch.zeros_like(x)
        delta[:, 0, 0, 0] = torch.linspace(0.0, 0.15, x.shape[0])
        return (x + delta).clamp(0, 1)


def test_ccat_loss_is_clean_ce_plus_soft_target_ce() -> None:
    x, y = batch()
    x[:, :, 0, 0] = 0.5
    model = mlp()
    ctx = context(model)
    m = FixedCCAT(fraction=0.5, eps=0.1, rho=10.0)
    loss, _ = m.loss(ctx, x, y)
    x_adv = m.attack(ctx, x[4:], y[4:])
    ref = model(torch.cat([x[:4], x_adv]))
    target = soft_target(x_adv - x[4:], y[4:], 4, 0.1, 10.0)
    expected = 0.5 * F.cross_entropy(ref[:4], y[:4]) + 0.5 * soft_cross_entropy(ref[4:], target)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert target[-1].max() == pytest.approx(0.25)  # ‖δ‖∞ = 0.15 > ε: uniform


def test_ccat_attack_maximizes_wrong_class_confidence() -> None:
    x, y = batch(32)
    model = mlp().eval()
    ctx = context(model)
    m = CCAT(eps=0.2, attack_steps=10)
    assert m.objective == "conf" and m.attack_momentum == 0.9 and m.attack_backtrack
    assert m.attack_init == "norm"
    x_adv = m.attack(ctx, x, y)
    assert (x_adv - x).abs().max() <= 0.2 + 1e-6
    model.eval()
    with torch.no_grad():
        before = F.softmax(model(x), 1).scatter(1, y[:, None], 0).amax(1)
        after = F.softmax(model(x_adv), 1).scatter(1, y[:, None], 0).amax(1)
    assert (after >= before - 1e-6).all() and after.mean() > before.mean()


def test_trades_loss() -> None:
    x, y = batch()
    model = mlp()
    ctx = context(model)
    loss0, logits = TRADES(beta=6.0, eps=0.0).loss(ctx, x, y)
    ref = model(torch.cat([x, x]))[:8]  # clean half of the joint forward pass
    assert torch.allclose(loss0, F.cross_entropy(ref, y), atol=1e-6)  # KL term vanishes at ε = 0
    assert torch.allclose(logits, ref, atol=1e-6)
    loss, _ = TRADES(beta=6.0, eps=0.3).loss(ctx, x, y)
    assert loss > loss0


def test_trades_attack_objective_is_kl_to_clean_prediction() -> None:
    from robustlab.train.adversarial_methods import kl_objective

    model = mlp().eval()
    x, y = batch(16)
    with torch.no_grad():
        p = F.softmax(model(x), 1)
    assert torch.allclose(kl_objective(model(x), p), torch.zeros(16), atol=1e-6)
    res = pgd(model, x, p, eps=0.2, steps=5, objective=kl_objective, init="tiny")
    assert (kl_objective(res.logits, p) > 1e-4).all()


def robust_err(model: nn.Module, test: data.Dataset, eps: float) -> float:
    model.eval()
    res = pgd(model, test.x, test.y, eps=eps, steps=10, init="zero")
    return float(res.success.float().mean())


def test_every_method_trains_and_at_is_more_robust_than_normal() -> None:
    train, test = data.synthetic(512, 200, shape=(1, 8, 8), num_classes=4, seed=2)
    kw = dict(epochs=4, lr=0.05, batch_size=64, progress=False)
    errs = {}
    for name, method in [("normal", registry.Method()), ("at", AT(eps=0.2, attack_steps=5)),
                         ("ccat", CCAT(eps=0.2, attack_steps=5)),
                         ("trades", TRADES(eps=0.2, attack_steps=5)),
                         ("patch-at", PatchAT(patch_size=3, attack_steps=3))]:
        model = mlp()
        hist = fit(model, train, method=method, **kw)
        assert hist[-1]["train_loss"] < hist[0]["train_loss"], name
        errs[name] = robust_err(model, test, 0.2)
    assert errs["at"] < errs["normal"]
    assert errs["trades"] < errs["normal"]


def test_training_is_deterministic() -> None:
    train, _ = data.synthetic(128, 10, shape=(1, 8, 8), num_classes=4, seed=3)
    weights = []
    for _ in range(2):
        model = mlp()
        fit(model, train, method=CCAT(eps=0.1, attack_steps=3, attack_init="zero,cube"), epochs=1,
            batch_size=32, progress=False)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_methods_are_registered_with_cli_options(capsys) -> None:
    from robustlab.cli import main

    methods = registry.discover()
    assert {"at", "ccat", "trades", "patch-at"} <= set(methods)
    m = registry.create("ccat", rho=5.0, fraction=1.0, eps=0.05)
    assert isinstance(m, CCAT) and m.rho == 5.0 and m.config()["name"] == "ccat"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--fraction", "--rho", "--beta", "--location", "--attack-steps", "--patch-size"):
        assert flag in out


@pytest.mark.parametrize("make,fragment", [
    (lambda: AT(fraction=1.5), "fraction 1.5"), (lambda: AT(eps=-0.1), "eps -0.1"),
    (lambda: AT(attack_norm="l3"), "unknown norm 'l3'"), (lambda: CCAT(rho=-1.0), "rho -1.0"),
    (lambda: TRADES(beta=-2.0), "beta -2.0"), (lambda: PatchAT(location="corner"), "'corner'"),
    (lambda: AT(attack_init="gauss"), "unknown init 'gauss'"),
    (lambda: AT(attack_steps=0), "attack-steps 0"),
])
def test_bad_method_options(make, fragment: str) -> None:
    with pytest.raises(UserError) as e:
        make()
    assert fragment in str(e.value)


def test_patch_at_patch_larger_than_image_is_a_user_error() -> None:
    x, y = batch()
    with pytest.raises(UserError, match="patch size 9×9"):
        PatchAT(patch_size=9).loss(context(mlp()), x, y)


def test_step_cost_of_each_method() -> None:
    # rough cost of one step relative to plain training: 1 + f·(attack passes), TRADES attacks
    # the whole batch, bit error training and AWP add one pass
    from robustlab.train.biterror_methods import AdvBET, RandBET
    from robustlab.train.methods import Method
    from robustlab.train.weight_methods import AWP

    assert Method().step_cost() == 1.0
    assert AT(fraction=0.5, attack_steps=10).step_cost() == 6.0
    assert CCAT(fraction=1.0, attack_steps=3).step_cost() == 4.0
    assert TRADES(attack_steps=4).step_cost() == 5.0
    assert PatchAT(fraction=0.5, attack_steps=4, location="random").step_cost() == 3.0
    assert PatchAT(fraction=0.5, attack_steps=4).step_cost() == 5.0  # optimized: moves count
    assert RandBET().step_cost() == AdvBET().step_cost() == 2.0
    assert AWP(attack_steps=10).step_cost() == 7.0
    assert AWP(base=TRADES(attack_steps=4)).step_cost() == 6.0
