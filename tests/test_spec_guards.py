"""Guards found missing by a second mutation campaign (issue 15, fresh bugs).

Each test catches a realistic single-line bug that the rest of the suite let through; the
comment above it names the spec sentence it guards. Only public APIs are used.
"""

from __future__ import annotations

import pytest
import torch
from fitting import fit_full_batch

from robustlab import quant


# §5: dequantization clamps to the tensor's range — also in the fused quantize→dequantize path
# (QAT's fake quantization), not only in the lookup table.
def test_quantize_dequantize_clamps_to_the_range_like_the_table() -> None:
    s = quant.Scheme(8, per_tensor=False, mode="symmetric_signed", rounding="round", q_max=1.0)
    p = {"w": torch.tensor([-1.5, -1.0, 0.3, 1.2])}
    table = s.quantize(p).dequantize()["w"]
    fused = s.quantize_dequantize(p)["w"]
    fake = s.fake_quantize(p)["w"]
    assert float(table[0]) == -1.0  # code −128 would be −128/127 without the clamp
    assert torch.equal(fused, table) and torch.equal(fake, table)


# §5 scheme strings: boolean options accept 1/0 and yes/no as well as true/false
@pytest.mark.parametrize("text,want", [("per_tensor=1", True), ("per_tensor=yes", True),
                                       ("per_tensor=0", False), ("per_tensor=no", False)])
def test_scheme_boolean_spellings(text: str, want: bool) -> None:
    start = "normal" if want else "rquant"  # start from the opposite value
    assert quant.parse(f"{start},{text}").per_tensor is want


# §6: bit (i, j) flips iff u < p with u = H(seed, 8i + j)/2^32 — strictly less: at p = u exactly
# the bit stays, one step above it flips (random patterns and chip maps alike).
def test_bit_flips_iff_u_strictly_below_p() -> None:
    from robustlab import biterrors as be

    seed = 3
    h = be.hash_counters(seed, torch.arange(8, dtype=torch.int64)).tolist()  # weight 0, bits 0..7
    q = quant.Scheme(8).quantize({"w": torch.zeros(1)})
    for j, hj in enumerate(h):
        at, above = hj / 2**32, (hj + 1) / 2**32
        assert (int(be.random_masks(1, 8, seed, [at])[0, 0]) >> j) & 1 == 0
        assert (int(be.random_masks(1, 8, seed, [above])[0, 0]) >> j) & 1 == 1
        for p, want in ((at, 0), (above, 1)):
            chip = be.chip_map_from_dict({"flip_prob": [[p] * 8]})
            flipped = int(chip.apply(q, seed)[0]) ^ int(q.codes[0])
            assert (flipped >> j) & 1 == want


# §6: a pattern is defined by its whole seed: seeds that differ only above bit 32 are different
# patterns (seeds are allowed up to 2^63).
def test_seeds_differing_in_high_bits_give_different_patterns() -> None:
    from robustlab import biterrors as be

    base = be.random_masks(4096, 8, 5, [0.1])[0]
    for other in (5 + 2**32, 5 + 2**40, 5 + 2**62):
        diff = (base != be.random_masks(4096, 8, other, [0.1])[0]).float().mean()
        assert float(diff) > 0.5  # independent patterns at 10 % differ in ~1 − 0.9²·… of codes


def _small_model_and_noisy_labels():
    """A trained linear 3-class model on 4×4 images and test labels with 40 % made wrong, so that
    bit errors turn some clean errors right (Err < RErr per pattern)."""
    from torch import nn

    from robustlab import data

    train, test = data.synthetic(300, 100, shape=(1, 4, 4), num_classes=3, seed=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    fit_full_batch(model, train.x, train.y, opt, 50)
    y = test.y.clone()
    y[:40] = (y[:40] + 1) % 3
    return model.eval(), (test.x, y)


# §6 chips: the flipped-bit fraction counts the m bits of an m-bit model; the overall RErr
# maximum is over RErr (wrong clean or perturbed), not over the perturbed Err.
def test_chip_summary_counts_m_bits_and_rerr_max() -> None:
    from robustlab import biterrors as be
    from robustlab.evaluate import chip_errors

    model, test = _small_model_and_noisy_labels()
    always = be.chip_map_from_dict({"rows": 4, "cols": 8, "flip_prob": 1.0})
    r = chip_errors(model, test, always, quant=quant.Scheme(4), patterns=2, progress=False)
    assert r["bit_error_rate"]["mean"] == [1.0]  # every one of the 4 bits of every code
    chip = be.chip_map_from_dict({"rows": 4, "cols": 8, "flip_prob": 0.5})
    r = chip_errors(model, test, chip, quant=quant.Scheme(4), patterns=4, progress=False)
    rerr = [v[0] for v in r["rerr"]["values"]]
    err = [v[0] for v in r["err"]["values"]]
    assert max(err) < max(rerr)  # the data make the two differ
    assert r["overall"]["rerr_max"] == pytest.approx(max(rerr))
    assert r["overall"]["rerr_mean"] == pytest.approx(sum(rerr) / len(rerr))
    assert r["overall"]["err_mean"] == pytest.approx(sum(err) / len(err))


# Report intervals, by hand: Hanley–McNeil for the AUC, Student t with k − 1 degrees of freedom
# from a (mean, std, k) summary, and "separated" regardless of the order of the two intervals.
def test_report_intervals_by_hand() -> None:
    from robustlab.report.stats import auc_interval, mean_interval_from_std, separated

    # AUC 0.6, 10 positives, 5 negatives: Q1 = 0.6/1.4, Q2 = 2·0.36/1.6 = 0.45,
    # var = (0.24 + 9·(Q1 − 0.36) + 4·(0.45 − 0.36))/50, half-width 1.959964·√var
    var = (0.24 + 9 * (0.6 / 1.4 - 0.36) + 4 * (0.45 - 0.36)) / 50
    half = 1.959963984540054 * var ** 0.5
    assert auc_interval(0.6, 10, 5) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-12)
    assert half == pytest.approx(0.305797, abs=1e-6)
    # mean 2, sample std 1 over k = 4 values: t_{0.975, 3} = 3.182446
    assert mean_interval_from_std(2.0, 1.0, 4) == pytest.approx((2 - 1.591223, 2 + 1.591223),
                                                                abs=1e-6)
    assert separated((0.25, 0.3), (0.1, 0.2)) and separated((0.1, 0.2), (0.25, 0.3))
    assert not separated((0.25, 0.3), (0.1, 0.26))


# §2: the reported mean adversarial confidence is that of the adversarial inputs
def test_mean_adversarial_confidence_is_of_the_adversarial_inputs() -> None:
    from robustlab.evaluate import metrics as mt

    clean_wrong = torch.tensor([False, False, True, False])
    clean_conf = torch.tensor([0.9, 0.8, 0.7, 0.6])
    adv_wrong = torch.tensor([True, False, True, True])
    adv_conf = torch.tensor([0.5, 0.25, 1.0, 0.75])
    out = mt.adversarial_metrics(clean_wrong, clean_conf, adv_wrong, adv_conf, {"0.99": 0.7})
    assert out["mean_adv_conf"] == pytest.approx(0.625)
    assert out["err"] == 0.25 and out["rerr"] == 0.75 and out["n"] == 4
    # τ = 0.7: accepted pairs 0 (clean), 1 (clean), 2 (both), 3 (adv); errors 2 and 3
    assert out["at"]["0.99"]["rerr"] == pytest.approx(0.5)
    assert out["at"]["0.99"]["fpr"] == pytest.approx(0.25)  # example 3 only


# Learning-rate schedules at their boundaries: a step/multistep decay applies from the epoch it
# names on (t ≥ boundary), not rounded to the nearest boundary.
@pytest.mark.parametrize("schedule,t,expected", [
    ("step", 1.0, 0.1), ("step", 1.99, 0.1), ("step", 2.0, 0.01), ("step", 3.0, 0.01),
    ("multistep", 5.0, 0.01), ("multistep", 4.999, 0.1), ("multistep", 7.5, 0.001)])
def test_schedule_boundaries(schedule: str, t: float, expected: float) -> None:
    from robustlab.train import TrainConfig

    c = TrainConfig(epochs=10, lr=0.1, schedule=schedule, step_size=2, gamma=0.1)
    assert c.lr_at(t) == pytest.approx(expected, rel=1e-9)


def _tiny_linear(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))


# §5 clipping happens after EVERY optimizer step (also the first); the schedule is evaluated per
# step (the epoch's last step of a cosine schedule has lr_at(epoch + (s−1)/s)).
def test_clip_after_the_first_step_and_lr_per_step(tiny) -> None:
    from robustlab.train import TrainConfig, fit

    train, _ = tiny
    m = _tiny_linear()
    assert float(max(p.detach().abs().max() for p in m.parameters())) > 0.05
    fit(m, train, epochs=1, batch_size=len(train), lr=0.1, clip=0.02, progress=False)  # 1 step
    assert float(max(p.detach().abs().max() for p in m.parameters())) <= 0.02 + 1e-9
    h = fit(_tiny_linear(), train, epochs=2, batch_size=64, lr=0.1, schedule="cosine",
            progress=False)  # 4 steps per epoch
    c = TrainConfig(epochs=2, lr=0.1, schedule="cosine")
    assert [r["lr"] for r in h] == pytest.approx([c.lr_at(0.75), c.lr_at(1.75)], rel=1e-9)


class _RightPatch(torch.nn.Module):
    """Two classes; the loss for class 0 grows with bright pixels towards the right edge."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * torch.arange(x.shape[-1], dtype=x.dtype)).flatten(1).sum(1)
        return torch.stack([-s, torch.zeros_like(s)], 1)


# §3 patches: the location moves by exactly `stride` pixels; a move that would leave the image is
# not a candidate (it is not shortened to the edge). With stride 2 from random corners, a model
# that prefers the right edge ends at the last column of the start's parity.
def test_patch_moves_by_the_stride_and_never_past_the_edge() -> None:
    from robustlab.attacks.patches import patch_attack

    x, y = torch.zeros(40, 1, 8, 8), torch.zeros(40, dtype=torch.long)
    r = patch_attack(_RightPatch(), x, y, size=2, steps=10, step_size=0.5,
                     location="optimized-full", stride=2, generator=torch.Generator().manual_seed(0))
    cols = r.info["position"][:, 1].tolist()
    assert set(cols) == {5, 6}  # corners 0..6; odd starts stop at 5, even starts reach 6


# §1: splits are deterministic and keep the original order inside each part (the attacked
# "first n" test examples of a split-off test set are comparable across runs); the held-out
# size is round(n·fraction).
def test_split_sizes_round_and_parts_keep_the_original_order() -> None:
    from robustlab import data

    full = data.Dataset("ids", torch.arange(9.0).view(9, 1, 1, 1) / 8, torch.arange(9) % 3, 3)
    rest, part = data.split(full, 0.3, seed=1)  # 9 · 0.3 = 2.7 → 3 held out
    assert (len(rest), len(part)) == (6, 3)
    for d in (rest, part):
        ids = (d.x.flatten() * 8).round().long()
        assert torch.equal(ids, ids.sort().values)
    assert sorted((rest.x.flatten() * 8).round().long().tolist()
                  + (part.x.flatten() * 8).round().long().tolist()) == list(range(9))


# §1 digits: the 8×8 images have values 0..16, scaled to [0, 1] exactly (16 → 1.0)
def test_digits_scaled_by_16() -> None:
    from robustlab import data

    train, _ = data.load("digits")
    v = train.x * 16
    assert float(train.x.max()) == 1.0 and torch.equal(v, v.round())


# Files are written atomically: the temporary file's data is fsync'ed BEFORE it is renamed into
# place, and the folder after (a crash can then never leave a renamed but empty file).
def test_atomic_write_fsyncs_the_data_before_the_rename(tmp_path, monkeypatch) -> None:
    import os

    from robustlab.io import atomic_write

    events: list[tuple[str, str]] = []
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace
    names: dict[int, str] = {}

    def rec_open(path, flags, *a, **k):
        fd = real_open(path, flags, *a, **k)
        names[fd] = os.path.basename(str(path))
        return fd

    def rec_fsync(fd):
        events.append(("fsync", names.get(fd, "?")))
        return real_fsync(fd)

    def rec_replace(src, dst):
        events.append(("replace", os.path.basename(str(dst))))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "open", rec_open)
    monkeypatch.setattr(os, "fsync", rec_fsync)
    monkeypatch.setattr(os, "replace", rec_replace)
    target = tmp_path / "out.txt"
    atomic_write(target, lambda tmp: open(tmp, "w").write("data"))
    assert target.read_text() == "data"
    i = events.index(("replace", "out.txt"))
    before = [n for kind, n in events[:i] if kind == "fsync"]
    assert any(n.startswith(".out.txt.") and n.endswith(".tmp") for n in before), events
    assert ("fsync", tmp_path.name) in events[i + 1:], events  # the folder, after the rename


class _Constant(torch.nn.Module):
    """Logits (2, 0, 0) for every input: every example has the same confidence."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([2.0, 0.0, 0.0]) + self.w + 0 * x.flatten(1).sum(1, keepdim=True)


# §3a: an example is decided once misclassified with confidence ≥ the largest τ — equality
# included — and no attack runs on it. Distal inputs: exactly n of them, in batches.
def test_examples_at_exactly_tau_are_decided_and_distal_count() -> None:
    from robustlab import data
    from robustlab.evaluate.adversarial import adversarial

    ds = data.Dataset("c", torch.rand(20, 1, 4, 4), torch.tensor([1] * 10 + [0] * 10), 3)
    res = adversarial(_Constant(), ds, "linf:0.1,distal", n_test=10, holdout=0.5, steps=1, queries=2,
                      targets=1, batch_size=4, sanity=False, progress=False)
    t = res["threats"]["linf:0.1"]
    assert max(res["clean"]["tau"].values()) == pytest.approx(max(res["clean"]["conf"]))
    assert all(v["attacked"] == 0 for v in t["by_attack"].values())  # conf == τ: decided
    assert t["rerr"] == 1.0 and t["verdict_by"] == ["clean"] * 10
    d = res["threats"]["distal"]
    assert d["n"] == 10 and len(d["conf"]) == 10
    # correct examples are attacked by every attack; an attack whose input only ties the kept
    # one (a constant model) does not take the verdict: the clean input keeps it
    ds = data.Dataset("c", torch.rand(20, 1, 4, 4), torch.zeros(20, dtype=torch.long), 3)
    res = adversarial(_Constant(), ds, "linf:0.1", n_test=10, holdout=0.5, steps=1, queries=2,
                      targets=1, batch_size=4, sanity=False, progress=False)
    t = res["threats"]["linf:0.1"]
    assert all(v["attacked"] == 10 and v["kept"] == 0 for v in t["by_attack"].values())
    assert t["verdict_by"] == ["clean"] * 10 and t["rerr"] == 0.0


class _Brightness(torch.nn.Module):
    """Two classes by mean brightness m: logits ±8·(m − 0.5) (confident far from m = 0.5)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 8 * self.w * (x.flatten(1).mean(1) - 0.5)
        return torch.stack([-z, z], 1)


# §2 corruptions report Err@τ: errors among the corrupted inputs that are NOT rejected, averaged
# over corruptions (a deterministic corruption, recomputed here).
def test_corruption_err_at_tau_recomputed() -> None:
    from robustlab import data
    from robustlab.attacks.base import confidence
    from robustlab.attacks.corruptions import corrupt
    from robustlab.evaluate import metrics as mt
    from robustlab.evaluate.adversarial import adversarial

    g = torch.Generator().manual_seed(0)
    v_att = torch.rand(60, generator=g) * 0.7  # attacked: any brightness, random labels
    y_att = torch.randint(0, 2, (60,), generator=g)
    v_hold = torch.cat([torch.rand(20, generator=g) * 0.1, 0.9 + torch.rand(20, generator=g) * 0.1])
    y_hold = (v_hold > 0.5).long()  # held out: far from 0.5 and correct, so τ is high
    v, y = torch.cat([v_att, v_hold]), torch.cat([y_att, y_hold])
    ds = data.Dataset("b", v.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone(), y, 2)
    model = _Brightness()
    res = adversarial(model, ds, "corrupt", n_test=60, holdout=40 / 100, corruptions=["brightness"],
                      severities=(3,), batch_size=16, sanity=False, progress=False)
    got = res["threats"]["corrupt"]["corruptions"]["brightness/3"]
    with torch.no_grad():
        logits = model(corrupt(ds.x[:60], "brightness", 3))
    wrong, conf = logits.argmax(1) != y_att, confidence(logits)
    assert got["err"] == pytest.approx(mt.err(wrong))
    for key, tau in res["clean"]["tau"].items():
        want = mt.err_at(tau, wrong, conf)
        assert 0 < mt.tpr_at(conf, tau) < 1 and abs(want - mt.err(wrong)) > 0.05
        assert got["at"][key]["err"] == pytest.approx(want)
        assert got["at"][key]["tpr"] == pytest.approx(mt.tpr_at(conf, tau))
        assert res["threats"]["corrupt"]["at"][key]["err"] == pytest.approx(want)
    # a corruption that rejects every input has no Err@τ (NaN); the mean skips it
    x2 = torch.full((30, 1, 4, 4), 0.2)
    x2[20:] = 0.8
    y2 = torch.tensor([0, 1] * 10 + [1] * 10)  # attacked: half wrong; held out: all correct
    ds2 = data.Dataset("b2", x2, y2, 2)
    res = adversarial(model, ds2, "corrupt", n_test=20, holdout=1 / 3, corruptions=["brightness",
                      "contrast"], severities=(3,), batch_size=16, sanity=False, progress=False)
    r = res["threats"]["corrupt"]
    for key in res["clean"]["tau"]:
        assert r["corruptions"]["brightness/3"]["at"][key]["tpr"] == 0.0  # all at m = 0.5
        assert r["corruptions"]["contrast/3"]["at"][key]["err"] == pytest.approx(0.5)
        assert r["at"][key]["err"] == pytest.approx(0.5)


# §8 worst-case flatness: each restart contributes its BEST iterate (a step that overshoots the
# maximum must not be what is kept); the result is the max over restarts minus L(w).
def test_worst_case_keeps_each_restarts_best_iterate() -> None:
    from robustlab.weights import FunctionObjective, RelativeBall, worst_case_ascent

    w0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    peak = torch.tensor([1.3, 1.0], dtype=torch.float64)  # inside the ball: big steps overshoot
    obj = FunctionObjective(lambda p: -((p["w"] - peak) ** 2).sum())
    ball = RelativeBall({"w": w0.clone()}, ["w"], 0.5)
    res = worst_case_ascent(obj, ball, steps=4, restarts=3, step_size=0.5,
                            generator=torch.Generator().manual_seed(0), progress=False)
    best = [max(t) for t in res["traces"]]
    assert any(t[-1] < max(t) - 1e-3 for t in res["traces"])  # an overshooting restart
    assert res["perturbed_losses"] == pytest.approx(best)
    assert res["flatness"] == pytest.approx(max(best) - res["loss"])


# §8 sampling: "ball" draws uniformly in the ball (radius ∝ U^{1/d}: in 100 dimensions almost all
# mass lies near the sphere); "sphere" exactly on it.
def test_uniform_ball_samples_concentrate_near_the_sphere() -> None:
    from robustlab.weights import RelativeBall

    b = RelativeBall({"w": torch.randn(100, generator=torch.Generator().manual_seed(1))}, ["w"], 0.2)
    r = torch.tensor([float(b.sample(torch.Generator().manual_seed(s), "ball")["w"].norm()
                            / b.radii["w"]) for s in range(50)])
    assert float(r.max()) <= 1 + 1e-6 and float(r.min()) > 0.9  # P(U^{1/100} < 0.9) ≈ 3e-5
    s = b.sample(torch.Generator().manual_seed(0), "sphere")["w"].norm() / b.radii["w"]
    assert float(s) == pytest.approx(1.0, rel=1e-5)


# §8 landscape: filter normalization scales every output unit (row/filter) of a weight to that
# unit's norm; 1-D tensors per tensor.
def test_filter_normalized_matches_each_filter_norm() -> None:
    from robustlab.weights import filter_normalized

    w = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    b = torch.randn(4, generator=torch.Generator().manual_seed(3))
    d = filter_normalized({"c": w, "b": b}, ["c", "b"], torch.Generator().manual_seed(0))
    assert d["c"].flatten(1).norm(dim=1) == pytest.approx(w.flatten(1).norm(dim=1), rel=1e-5)
    assert float(d["b"].norm()) == pytest.approx(float(b.norm()), rel=1e-5)


class _Linear4(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, 4)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(4, 16, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


# §3 targeted attacks: a "random" target is a class other than the true one
def test_random_targets_are_never_the_true_class() -> None:
    from robustlab.attacks.pgd import pgd

    x = torch.rand(300, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.arange(300) % 4
    res = pgd(_Linear4(), x, y, eps=0.01, steps=0, target="random",
              generator=torch.Generator().manual_seed(2))
    assert not bool((res.target == y).any())
    assert set(res.target.tolist()) == {0, 1, 2, 3}


# §3 L0 over pixels keeps the pixels of largest |δ| (over channels), not of largest signed sum;
# the cube start is uniform in the L∞ cube of half-width min(ε, hi − lo).
def test_l0_pixels_by_magnitude_and_cube_start_half_width() -> None:
    from robustlab.attacks.pgd import init_delta, project

    x = torch.full((1, 2, 1, 3), 0.5)
    d = torch.tensor([[[[0.4, 0.3, 0.2]], [[-0.4, 0.3, 0.2]]]])  # pixel 0: opposite signs
    out = project(d, x, "l0", 2, pixels=True)
    kept = (out != 0).any(1).flatten().tolist()
    assert kept == [True, True, False]
    big = init_delta(torch.full((500, 1, 4, 4), 0.5), "linf", 2.0, "cube",
                     torch.Generator().manual_seed(0))
    assert float(big.abs().max()) <= 1.0 and float(big.abs().max()) > 0.99


# §3 L1 step: the top-q fraction of |g| entries — ⌈q·d⌉ of them — signed, L1-normalized
def test_l1_direction_keeps_ceil_q_d_entries() -> None:
    from robustlab.attacks.pgd import direction

    g = torch.tensor([[0.1, -5.0, 0.2, 4.0, -0.3] + [0.01] * 10])  # d = 15
    d = direction(g, "l1", l1_fraction=0.1)  # ⌈1.5⌉ = 2 entries
    assert d.flatten().tolist()[:5] == pytest.approx([0.0, -0.5, 0.0, 0.5, 0.0])
    assert float(d.abs().sum()) == pytest.approx(1.0) and int((d != 0).sum()) == 2


# §8 objective: mean over the evaluation set (whatever the batch size), clean error from the clean
# inputs, robust error = wrong clean OR attacked (spec §2); value_and_grad agrees with value.
def test_model_objective_errors_and_batch_independence() -> None:
    import torch.nn.functional as F

    from robustlab.weights import ModelObjective

    v = torch.tensor([0.1, 0.2, 0.8, 0.9, 0.3, 0.7, 0.05])
    x = v.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    y = torch.tensor([0, 0, 1, 1, 1, 0, 0])  # examples 4 and 5 wrong clean

    def invert(model, x, y, generator=None):  # an "attack" that flips every prediction
        return 1 - x

    model = _Brightness()
    params = {"w": model.w.detach()}
    with torch.no_grad():
        want_loss = float(F.cross_entropy(model(1 - x), y))
    for bs in (7, 3, 2):
        obj = ModelObjective(model, x, y, invert, batch_size=bs)
        ev = obj.evaluate(params, 0)
        assert float(ev["clean_err"]) == pytest.approx(2 / 7)
        assert float(ev["err"]) == pytest.approx(5 / 7)
        assert float(ev["robust_err"]) == pytest.approx(1.0)
        assert float(ev["loss"]) == pytest.approx(want_loss, rel=1e-5)
        val, grads = obj.value_and_grad(params, 0)
        assert float(val) == pytest.approx(want_loss, rel=1e-5) and set(grads) == {"w"}


# §7 curriculum: bit errors switch on once the clean loss is below the threshold — for good
# (a later batch with a higher loss does not switch them off again)
def test_randbet_curriculum_stays_on() -> None:
    from robustlab import models
    from robustlab.quant import RQUANT8
    from robustlab.train.biterror_methods import RandBET
    from robustlab.train.trainer import TrainConfig, TrainContext

    model = models.create("mlp", in_shape=(1, 4, 4), num_classes=3, hidden=(8,), seed=0)
    x = torch.rand(32, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    easy, hard = logits.argmax(1), logits.argmin(1)
    lo = float(torch.nn.functional.cross_entropy(logits, easy))
    hi = float(torch.nn.functional.cross_entropy(logits, hard))
    assert lo < hi
    ctx = TrainContext(model, TrainConfig(seed=0), torch.device("cpu"), 3, quant=RQUANT8)
    rb = RandBET(bit_error_rate=0.01, loss_threshold=(lo + hi) / 2)
    rb.backward(ctx, x, hard)
    assert not rb.active
    rb.backward(ctx, x, easy)
    assert rb.active
    model.zero_grad()
    rb.backward(ctx, x, hard)  # the loss is above the threshold again
    assert rb.active and rb.state_dict() == {"active": True}


# §3a records: "masked" counts examples a gradient-free attack broke AFTER every gradient attack
# left them correct — with Square alone nothing is masked; the quick PGD suite runs a zero start
# plus restarts − 1 random starts per objective.
def test_masked_needs_a_gradient_attack_first_and_pgd_restart_plan(trained) -> None:
    from robustlab.evaluate.adversarial import adversarial

    model, test = trained
    res = adversarial(model, test, "linf:0.4", n_test=40, attacks="square", queries=40,
                      batch_size=40, sanity=False, progress=False)
    t = res["threats"]["linf:0.4"]
    assert t["by_attack"]["square"]["added"] > 0 and t["masked"] == 0
    res = adversarial(model, test, "l2:0.5", n_test=8, attacks="pgd", objectives=("ce",), restarts=3,
                      steps=1, batch_size=8, sanity=False, progress=False)
    assert res["threats"]["l2:0.5"]["attacks"] == ["ce/zero×1", "ce/norm×2"]


# §3 patches: random uniform content init; random locations uniform over the allowed corners of
# a non-square image (rows and columns not swapped)
def test_patch_random_init_and_random_corners_on_a_non_square_image() -> None:
    from robustlab.attacks.patches import patch_attack

    x = torch.rand(200, 1, 8, 12, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(200, dtype=torch.long)
    r = patch_attack(_RightPatch(), x, y, size=3, steps=0, location="random",
                     generator=torch.Generator().manual_seed(1))
    pos, content = r.info["position"], r.info["content"]
    assert int(pos[:, 0].max()) <= 5 and int(pos[:, 1].max()) <= 9  # 6×10 corners
    assert int(pos[:, 1].max()) == 9 and int(pos[:, 0].max()) == 5 and int(pos.min()) == 0
    assert float(content.std()) == pytest.approx((1 / 12) ** 0.5, rel=0.1)
    assert float(content.min()) < 0.05 and float(content.max()) > 0.95


# Report: the Pareto front keeps points that no other point beats on both axes — equal points
# keep each other, a point equal on one axis and better on the other removes it.
def test_pareto_front_ties() -> None:
    from robustlab.report import headline

    assert headline.pareto([(0.1, 0.5), (0.1, 0.4), (0.1, 0.4)]) == [1, 2]
    assert headline.pareto([(0.2, 0.3), (0.1, 0.3), (0.3, 0.1)]) == [1, 2]
    assert headline.pareto([(0.1, 0.2)]) == [0]


# Clean evaluation: confusion rows are true classes, columns predictions; per-class error is
# over the examples of that true class.
def test_confusion_rows_are_true_classes() -> None:
    from robustlab.evaluate import clean

    v = torch.tensor([0.1, 0.2, 0.8, 0.9, 0.3, 0.35])
    x = v.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    y = torch.tensor([0, 0, 0, 1, 1, 1])  # predictions (m > 0.5): 0, 0, 1, 1, 0, 0
    r = clean(_Brightness(), (x, y))
    assert r["confusion"] == [[2, 1], [2, 1]]
    assert r["per_class_err"] == pytest.approx([1 / 3, 2 / 3])
    assert r["err"] == pytest.approx(0.5) and r["n"] == 6


# §2: τ is calibrated on the CORRECTLY classified held-out examples only
def test_tau_from_correct_held_out_examples_only() -> None:
    from robustlab import data
    from robustlab.attacks.base import confidence
    from robustlab.evaluate import metrics as mt
    from robustlab.evaluate.adversarial import adversarial

    v = torch.cat([torch.full((10,), 0.3), torch.tensor([0.05, 0.1, 0.9, 0.95, 0.45, 0.55])])
    y = torch.cat([torch.zeros(10, dtype=torch.long), torch.tensor([0, 0, 1, 1, 1, 0])])
    ds = data.Dataset("t", v.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone(), y, 2)
    model = _Brightness()
    res = adversarial(model, ds, "corrupt", n_test=10, holdout=6 / 16, tprs=(0.99, 0.5),
                      corruptions=["contrast"], batch_size=16, sanity=False, progress=False)
    with torch.no_grad():
        logits = model(ds.x[10:])
    ok = logits.argmax(1) == ds.y[10:]  # the last two (near 0.5) are wrong and unconfident
    assert int(ok.sum()) == 4
    conf = confidence(logits)
    for tpr in (0.99, 0.5):
        want = mt.threshold_at_tpr(conf[ok], tpr)
        assert res["clean"]["tau"][f"{tpr:g}"] == pytest.approx(want)
        assert want > float(conf[~ok].max())  # the wrong ones would lower τ


# §5 clipping: norm-layer scales (found by module type) go to [1 − w_max, 1 + w_max], never to
# [−w_max, w_max]; their shifts and every other parameter to [−w_max, w_max].
def test_clipping_never_caps_a_norm_scale_at_w_max() -> None:
    from torch import nn

    from robustlab import models

    net = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.BatchNorm1d(3), nn.GroupNorm(1, 3))
    with torch.no_grad():
        net[0].weight.fill_(0.5)
        for i in (1, 2, 3):
            net[i].weight.copy_(torch.tensor([1.5, 1.0, 0.5]))
            net[i].bias.copy_(torch.tensor([0.5, -0.05, -0.5]))
    models.clip_(net, 0.1)
    assert torch.equal(net[0].weight, torch.full((3, 3), 0.1))
    for i in (1, 2, 3):
        assert net[i].weight.tolist() == pytest.approx([1.1, 1.0, 0.9])
        assert net[i].bias.tolist() == pytest.approx([0.1, -0.05, -0.1])


# §3 corruptions: fixed severities — contrast scales deviations from each image's mean by
# 0.6, 0.45, 0.3, 0.2, 0.1 (severity 1 is the mildest); brightness adds 0.1·s, clipped to 1
def test_contrast_and_brightness_severities() -> None:
    from robustlab.attacks.corruptions import corrupt

    x = torch.tensor([0.2, 0.4, 0.6, 0.8]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    x[1] = x[1] * 0.5  # a second image with another mean
    for s, f in zip((1, 2, 3, 4, 5), (0.6, 0.45, 0.3, 0.2, 0.1)):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        assert torch.allclose(corrupt(x, "contrast", s), (x - mean) * f + mean, atol=1e-6)
        assert torch.allclose(corrupt(x, "brightness", s), (x + 0.1 * s).clamp(0, 1), atol=1e-6)


# §3 corruptions: blur is a normalized (sum 1) Gaussian: a constant image stays constant
def test_blur_keeps_a_constant_image() -> None:
    from robustlab.attacks.corruptions import corrupt

    x = torch.full((2, 1, 8, 8), 0.3)
    for s in (1, 3, 5):
        assert torch.allclose(corrupt(x, "blur", s), x, atol=1e-6)


# §4 AT split: the adversarial part of a batch of n is round(f·n) examples (the last ones)
def test_at_split_rounds_the_fraction() -> None:
    from robustlab.train import create
    from robustlab.train.trainer import TrainConfig, TrainContext

    model = _Linear4()
    ctx = TrainContext(model, TrainConfig(seed=0), torch.device("cpu"), 4)
    x = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(10) % 4
    for f, k in ((0.35, 4), (0.5, 5), (0.04, 1)):
        batch = create("at", fraction=f, eps=0.05, attack_steps=1).prepare(ctx, x, y)
        assert batch[1].shape[0] == k
