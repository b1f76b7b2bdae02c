"""PGD engine: closed forms on linear models, feasibility, projections, restarts, early exit."""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from attackchecks import assert_early_exit_invariant, assert_worst_of_visited
from fitting import fit_full_batch
from torch import nn

from robustlab.attacks import INITS, pgd, project_l0, project_l1, worst_case
from robustlab.attacks.base import evaluate_logits, worst_case_key
from robustlab.attacks.pgd import PGD, block_rows, direction, init_delta, lp_norm, resolve_channels_last
from robustlab.errors import UserError

torch.set_num_threads(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Logistic(nn.Module):
    """Binary logistic model as 2 logits [0, wᵀx + b]: CE = log(1 + exp(−y±(wᵀx + b)))."""

    def __init__(self, d: int, seed: int = 1):
        super().__init__()
        g = gen(seed)
        self.w = torch.randn(d, generator=g)
        self.b = 0.1 * torch.randn((), generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], 1)


def linear_problem(eps: float, n: int = 64, seed: int = 2):
    g = gen(seed)
    model = Logistic(20)
    x = eps + (1 - 2 * eps) * torch.rand(n, 1, 4, 5, generator=g)  # the ball stays inside the box
    y = torch.randint(0, 2, (n,), generator=g)
    ypm = 2 * y.float() - 1
    s = x.flatten(1) @ model.w + model.b
    return model, x, y, ypm, s


@pytest.mark.parametrize("init", ["zero", "norm", "cube"])
@pytest.mark.parametrize("eps", [0.02, 0.1])
def test_linf_robust_loss_matches_closed_form_on_logistic_model(init: str, eps: float) -> None:
    model, x, y, ypm, s = linear_problem(eps)
    res = pgd(model, x, y, norm="linf", eps=eps, steps=20, step_size=eps / 4, init=init,
              generator=gen())
    got = F.cross_entropy(res.logits, y, reduction="none").double()
    closed = torch.log1p(torch.exp(-ypm.double() * s.double() + eps * model.w.abs().sum().double()))
    assert torch.allclose(got, closed, atol=1e-5, rtol=1e-5)


def test_l2_and_l1_robust_loss_match_closed_forms_on_logistic_model() -> None:
    eps = 0.3
    model, x, y, ypm, s = linear_problem(eps)
    # L2: the worst δ is −y·ε·w/‖w‖₂, giving a margin shift of ε‖w‖₂.
    res = pgd(model, x, y, norm="l2", eps=eps, steps=30, init="zero", generator=gen())
    got = F.cross_entropy(res.logits, y, reduction="none").double()
    closed = torch.log1p(torch.exp(-ypm.double() * s + eps * model.w.norm().double()))
    assert torch.allclose(got, closed, atol=1e-5, rtol=1e-5)
    # L1 with 20 entries and q = 2.5%: the step moves the single largest-|w| entry, the optimum
    # of the L1 ball (margin shift ε‖w‖∞).
    res = pgd(model, x, y, norm="l1", eps=eps, steps=30, init="zero", generator=gen())
    got = F.cross_entropy(res.logits, y, reduction="none").double()
    closed = torch.log1p(torch.exp(-ypm.double() * s + eps * model.w.abs().max().double()))
    assert torch.allclose(got, closed, atol=1e-5, rtol=1e-5)


def small_cnn(channels: int = 1, classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, classes)).eval()


def batch(n: int = 16, channels: int = 1, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    x = torch.rand(n, channels, 8, 8, generator=g)
    x[:, :, :2] = 0.0  # pixels at the box boundary
    x[:, :, -2:] = 1.0
    return x, torch.randint(0, 5, (n,), generator=g)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.7), ("l1", 3.0), ("l0", 5.0)])
@pytest.mark.parametrize("init", list(INITS) + ["zero,norm"])
def test_every_perturbation_satisfies_norm_bound_and_box(norm: str, eps: float, init: str) -> None:
    model = small_cnn()
    x, y = batch()
    for objective in ("ce", "conf", "dlr"):
        res = pgd(model, x, y, norm=norm, eps=eps, steps=6, objective=objective, init=init,
                  momentum=0.9, backtrack=True, restarts=2, generator=gen())
        delta = res.x_adv - x
        assert (lp_norm(delta, norm) <= eps * (1 + 1e-5) + 1e-6).all()
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        assert torch.equal(res.logits, evaluate_logits(model, res.x_adv))


def test_l0_pixels_flag_bounds_the_number_of_changed_pixels() -> None:
    model = small_cnn(channels=3)
    x, y = batch(channels=3)
    res = pgd(model, x, y, norm="l0", eps=4, steps=5, l0_pixels=True, generator=gen())
    changed = (res.x_adv != x).any(1).flatten(1).sum(1)
    assert changed.max() <= 4 and changed.max() >= 1
    assert lp_norm(res.x_adv - x, "l0", pixels=True).max() <= 4


def l1_reference(v: np.ndarray, eps: float) -> np.ndarray:
    """Plain per-vector sort-based projection onto the L1 ball (Duchi et al. 2008)."""
    if np.abs(v).sum() <= eps:
        return v.copy()
    if eps == 0:
        return np.zeros_like(v)
    u = np.sort(np.abs(v))[::-1]
    css = np.cumsum(u)
    rho = max(j for j in range(1, len(u) + 1) if u[j - 1] - (css[j - 1] - eps) / j > 0)
    theta = (css[rho - 1] - eps) / rho
    return np.sign(v) * np.maximum(np.abs(v) - theta, 0)


def test_l1_projection_equals_sort_based_reference() -> None:
    g = gen(5)
    delta = torch.randn(40, 3, 5, 5, generator=g, dtype=torch.float64)
    delta[0] = 0.01 * delta[0]  # inside the ball: unchanged
    delta[1, 0, 0, 0] = 100.0   # one dominant entry
    delta[2] = 1.0              # all ties
    for eps in (0.0, 0.5, 3.0):
        got = project_l1(delta, eps).numpy().reshape(40, -1)
        for i, row in enumerate(delta.numpy().reshape(40, -1)):
            np.testing.assert_allclose(got[i], l1_reference(row, eps), atol=1e-12)
    # per-example radii, and the projection lands on the sphere when it must
    radii = torch.linspace(0.1, 4.0, 40, dtype=torch.float64)
    out = project_l1(delta, radii)
    norms = out.flatten(1).abs().sum(1)
    outside = delta.flatten(1).abs().sum(1) > radii
    assert torch.allclose(norms[outside], radii[outside])
    assert torch.equal(out[~outside], delta[~outside])


def test_l0_projection_keeps_largest_magnitudes_not_signed_values() -> None:
    d = torch.tensor([[0.1, -0.9, 0.5, -0.2, 0.3]])
    assert torch.equal(project_l0(d, 2), torch.tensor([[0.0, -0.9, 0.5, 0.0, 0.0]]))


def test_l1_direction_selects_by_magnitude_and_is_l1_normalized() -> None:
    g = torch.tensor([[0.1, -5.0, 0.2, 3.0] + [0.0] * 76])  # 80 entries, q = 2.5% → 2 entries
    d = direction(g, "l1", l1_fraction=0.025)
    expected = torch.zeros_like(g)
    expected[0, 1], expected[0, 3] = -0.5, 0.5
    assert torch.equal(d, expected)


def test_backtracking_converges_where_fixed_steps_oscillate() -> None:
    # Maximize −‖x + δ − c‖² with L2 steps of fixed length 1: without backtracking the iterate
    # jumps back and forth over c; with it, rejected steps shrink the step size.
    c = torch.full((1, 1, 2, 2), 0.5)
    x = torch.full((1, 1, 2, 2), 0.35)
    ident = nn.Flatten()

    def objective(logits: torch.Tensor, y: object) -> torch.Tensor:
        return -((logits - c.flatten(1)) ** 2).sum(1)

    fixed = pgd(ident, x, None, norm="l2", eps=5.0, steps=60, step_size=1.0, init="zero",
                objective=objective)
    back = pgd(ident, x, None, norm="l2", eps=5.0, steps=60, step_size=1.0, init="zero",
               objective=objective, backtrack=True)
    assert (back.x_adv - c).norm() < 1e-3
    assert (fixed.x_adv - c).norm() > 0.2


class Recorder(nn.Module):
    """Wraps a model and records the float32 logits of every call (one row per example)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.calls: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if out.dtype == torch.float32:
            self.calls.append(out.detach().clone())
        return out


@functools.lru_cache(maxsize=1)
def trained_digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained on scikit-learn's 8×8 digits, and 300 test images (shared by tests)."""
    from robustlab import data

    train, test = data.digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 16, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    fit_full_batch(model, train.x, train.y, opt, 150)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), test.x[:300].clone(), test.y[:300].clone()


@pytest.mark.parametrize("kw", [dict(momentum=0.0), dict(momentum=0.9), dict(bf16=True),
                                dict(objective="conf", backtrack=True)])
def test_best_iterate_is_the_worst_case_of_the_visited_iterates(kw: dict) -> None:
    # Spec §3: the best iterate is ranked by the worst-case key (misclassified first, then the
    # highest wrong-class confidence), never by the loss: a visited misclassified iterate is never
    # replaced by a correct one. Large steps make iterates jump between correct and wrong.
    base, x, y = trained_digits()
    x, y = x[:64], y[:64]  # one block: one recorded call per iterate
    model = Recorder(base)
    res = pgd(model, x, y, norm="linf", eps=0.15, steps=10, step_size=0.15, init="zero",
              generator=gen(), **kw)
    visited = torch.stack(model.calls)  # the start and 10 iterates: T×N×K
    assert visited.shape[0] == 11
    # the logits returned are float32 logits of the returned input
    keys = assert_worst_of_visited(res, visited, y, base)
    if kw.get("objective", "ce") == "ce" and not kw.get("bf16"):
        # not trivial: ranking by the loss would return a less damaging iterate for some examples
        losses = torch.stack([F.cross_entropy(v, y, reduction="none") for v in visited])
        by_loss = keys.gather(0, losses.argmax(0)[None])[0]
        assert (by_loss < res.key()).sum() >= 5


def test_best_iterate_never_worse_than_start() -> None:
    # Ranked by the worst-case key (spec §3), the result is never less damaging than the start,
    # even with a step so large that the iterates get worse.
    model = small_cnn()
    x, y = batch()
    start = worst_case_key(model(x), y)
    for momentum in (0.0, 0.9):
        res = pgd(model, x, y, norm="linf", eps=0.1, steps=8, step_size=0.3, init="zero",
                  momentum=momentum)
        assert (res.key() >= start).all()


class Path(nn.Module):
    """3 logits along a path of the first pixel t: at t = 0.5 correct (CE 0.22), at 0.6
    misclassified (softmax .45/.46/.09, CE 0.80), at 0.7 correct again with a higher CE (1.08);
    piecewise linear in between, so PGD from 0.5 with steps of 0.1 visits exactly these three."""

    def __init__(self, knots: list[list[float]] | None = None):
        super().__init__()
        knots = knots or [[0.8, 0.1, 0.1], [0.45, 0.46, 0.09], [0.34, 0.33, 0.33]]
        self.knots = torch.tensor(knots).log()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(1)[:, :1]
        a, b, c = self.knots
        first = a + (t - 0.5) / 0.1 * (b - a)
        second = b + (t - 0.6) / 0.1 * (c - b)
        return torch.where(t <= 0.6, first, second)


def test_a_visited_misclassified_iterate_is_never_replaced_by_a_correct_one() -> None:
    x = torch.full((1, 1, 1, 2), 0.5)
    y = torch.tensor([0])
    model = Recorder(Path())
    res = pgd(model, x, y, norm="linf", eps=0.2, steps=2, step_size=0.1, init="zero")
    visited = torch.stack(model.calls)[:, 0]
    assert visited.argmax(1).tolist() == [0, 1, 0]  # correct, misclassified, correct
    ce = F.cross_entropy(visited, y.expand(3), reduction="none")
    assert ce[2] > ce[1] > ce[0]  # the loss alone would pick the last, correct iterate
    assert res.success.item() and res.x_adv[0, 0, 0, 0].item() == pytest.approx(0.6)
    assert torch.equal(res.logits, visited[1:2])


def test_targeted_best_iterate_ranks_reaching_the_target_first() -> None:
    # target 2: the middle iterate is classified as 2 (softmax .35/.25/.40), the last one has a
    # higher target confidence (.45) but is classified as 0: the middle one must be returned
    model = Recorder(Path([[0.8, 0.1, 0.1], [0.35, 0.25, 0.40], [0.50, 0.05, 0.45]]))
    x = torch.full((1, 1, 1, 2), 0.5)
    res = pgd(model, x, torch.tensor([0]), norm="linf", eps=0.2, steps=2, step_size=0.1,
              init="zero", target=2)
    visited = torch.stack(model.calls)[1:, 0]  # after the clean evaluation that resolves targets
    assert visited.argmax(1).tolist() == [0, 2, 0]
    assert res.success.item() and res.pred.item() == 2
    assert torch.equal(res.logits, visited[1:2])


def test_restarts_keep_per_example_worst_case() -> None:
    model = small_cnn()
    x, y = batch(32)
    kw = dict(norm="linf", eps=0.1, steps=3, init="norm", objective="ce")
    three = pgd(model, x, y, restarts=3, generator=gen(7), **kw)
    g = gen(7)
    singles = [pgd(model, x, y, restarts=1, generator=g, **kw) for _ in range(3)]
    merged = worst_case(singles)
    assert torch.equal(three.x_adv, merged.x_adv)
    keys = torch.stack([r.key() for r in singles])
    assert torch.equal(three.key(), keys.max(0).values)


def test_worst_case_prefers_highest_wrong_confidence_and_misclassified() -> None:
    from robustlab.attacks.base import AttackResult

    y = torch.tensor([0, 0, 0])
    # example 0: A misclassified (wrong conf .5) vs B misclassified (.7) → B
    # example 1: A correct (wrong conf .45) vs B misclassified with wrong conf .3 → B
    # example 2: A correct (.2) vs B correct (.1) → A
    pa = torch.tensor([[0.2, 0.5, 0.3], [0.55, 0.45, 0.0], [0.8, 0.2, 0.0]])
    pb = torch.tensor([[0.1, 0.7, 0.2], [0.28, 0.3, 0.42], [0.9, 0.1, 0.0]])
    xa, xb = torch.zeros(3, 1, 1, 1), torch.ones(3, 1, 1, 1)
    a = AttackResult(xa, pa.clamp(min=1e-9).log(), y)
    b = AttackResult(xb, pb.clamp(min=1e-9).log(), y)
    w = worst_case([a, b])
    assert w.x_adv.flatten().tolist() == [1.0, 1.0, 0.0]


def trained_linear(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from robustlab import data

    train, _ = data.synthetic(400, 10, shape=(1, 8, 8), num_classes=4, seed=seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    fit_full_batch(model, train.x, train.y, opt, 60)
    return model.eval(), train.x[:200], train.y[:200]


def test_early_exit_gives_the_same_rerr() -> None:
    model, x, y = trained_linear()
    for norm, eps in (("linf", 0.2), ("l2", 1.4)):
        kw = dict(norm=norm, eps=eps, steps=30, init="norm", restarts=2, momentum=0.9,
                  backtrack=True)
        full = pgd(model, x, y, generator=gen(1), **kw)
        fast = pgd(model, x, y, generator=gen(1), early_stop=0.3, **kw)
        assert 0 < full.success.float().mean() < 1
        assert torch.equal(full.success, fast.success)
        assert not torch.equal(full.x_adv, fast.x_adv)  # the exit did stop some examples early
        # stopped examples are adversarial with confidence ≥ the threshold
        assert (fast.wrong_conf[fast.success] >= 0.3).all()


def test_bf16_verdict_is_recomputed_in_fp32_and_channels_last_matches() -> None:
    model = small_cnn(channels=3)
    x, y = batch(channels=3)
    res = pgd(model, x, y, norm="linf", eps=0.05, steps=4, bf16=True, generator=gen())
    assert res.logits.dtype == torch.float32
    assert torch.equal(res.logits, model(res.x_adv))
    a = pgd(model, x, y, norm="l2", eps=0.5, steps=4, generator=gen())
    b = pgd(model, x, y, norm="l2", eps=0.5, steps=4, channels_last=True, generator=gen())
    assert torch.allclose(a.x_adv, b.x_adv, atol=1e-5)


def test_mixed_init_chooses_per_example() -> None:
    x = torch.full((200, 1, 4, 4), 0.5)
    d = init_delta(x, "linf", 0.1, "zero,cube", gen())
    zero = (d.flatten(1) == 0).all(1)
    assert 60 < int(zero.sum()) < 140


def test_distal_objective_needs_no_labels_and_callable_class_matches_function() -> None:
    model = small_cnn()
    x, y = batch()
    res = pgd(model, x, None, objective="distal", eps=0.2, steps=5, generator=gen())
    assert res.success is None
    assert (res.conf >= F.softmax(model(x), 1).amax(1) - 1e-6).all()
    a = PGD(norm="l1", eps=2.0, steps=3)(model, x, y, generator=gen(4))
    b = pgd(model, x, y, norm="l1", eps=2.0, steps=3, generator=gen(4))
    assert torch.equal(a.x_adv, b.x_adv)


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(eps=-0.1), "eps -0.1"), (dict(norm="l3"), "unknown norm 'l3'"),
    (dict(objective="foo"), "unknown objective 'foo'"), (dict(restarts=0), "restarts 0"),
    (dict(init="gauss"), "unknown init 'gauss'"), (dict(eps=math.inf), "eps inf"),
])
def test_bad_input_is_a_one_line_user_error(kwargs: dict, fragment: str) -> None:
    model = small_cnn()
    x, y = batch(2)
    with pytest.raises(UserError) as e:
        pgd(model, x, y, **{"eps": 0.1, **kwargs})
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kw", [
    dict(norm="linf", eps=0.12, momentum=0.9, backtrack=True),
    dict(norm="l2", eps=0.5),
    dict(norm="l1", eps=1.5, objective="conf"),
    dict(norm="linf", eps=0.12, bf16=True),
])
def test_early_exit_on_and_off_give_identical_verdicts_on_a_trained_model(kw: dict) -> None:
    # Spec §3: an example may stop once misclassified with wrong-class confidence ≥ c; the
    # verdicts (misclassified; misclassified with confidence ≥ τ for every τ ≤ c) must be those of
    # a run without early exit. 300 examples: the model sees blocks of 100 rows, and the running
    # examples are packed into them, so the examples left running share blocks with new partners.
    model, x, y = trained_digits()
    c = 0.6
    args = dict(steps=15, restarts=2, init="norm", **kw)
    off = pgd(model, x, y, generator=gen(3), **args)
    on = pgd(model, x, y, generator=gen(3), early_stop=c, **args)
    # examples never decided ran exactly the same trajectories
    decided = assert_early_exit_invariant(on, off, c, max_decided=280)
    assert torch.equal(on.logits[~decided], off.logits[~decided])
    assert not torch.equal(on.x_adv[decided], off.x_adv[decided])  # the others did stop early


def test_channels_last_changes_no_verdict_on_a_trained_model() -> None:
    model, x, y = trained_digits()
    kw = dict(norm="linf", eps=0.1, steps=10, momentum=0.9)
    a = pgd(model, x, y, channels_last=False, generator=gen(), **kw)
    b = pgd(model, x, y, channels_last=True, generator=gen(), **kw)
    c = pgd(model, x, y, generator=gen(), **kw)  # default: on for 4-D inputs on the CPU
    assert 0.2 < a.success.float().mean() < 0.8
    assert torch.equal(a.success, b.success) and torch.equal(b.success, c.success)
    assert torch.equal(b.x_adv, c.x_adv)
    assert resolve_channels_last(None, x) and not resolve_channels_last(None, x.flatten(1))


def test_inputs_outside_the_bounds_are_a_one_line_error_and_bounds_set_the_box() -> None:
    from robustlab.attacks import apgd, frames, patch_attack, square

    model = small_cnn()
    x, y = batch()
    xn = (x - 0.3) / 0.4  # standardized inputs in [−0.75, 1.75]
    for attack in (lambda v, **k: pgd(model, v, y, eps=0.1, steps=1, **k),
                   lambda v, **k: apgd(model, v, y, eps=0.1, steps=1, **k),
                   lambda v, **k: square(model, v, y, eps=0.1, queries=2, **k),
                   lambda v, **k: frames(model, v, y, steps=1, **k),
                   lambda v, **k: patch_attack(model, v, y, size=2, steps=1, **k)):
        with pytest.raises(UserError) as e:
            attack(xn)
        msg = str(e.value)
        assert "inputs lie in [-0.75, 1.75], outside the bounds [0, 1]" in msg and "\n" not in msg
        assert "Normalized" in msg and "bounds=" in msg
        res = attack(xn, bounds=(-0.75, 1.75))
        assert res.x_adv.min() >= -0.75 and res.x_adv.max() <= 1.75
    res = pgd(model, xn, y, eps=0.2, steps=5, bounds=(-1.0, 2.0), generator=gen())
    assert res.x_adv.min() >= -1.0 and res.x_adv.max() <= 2.0
    assert res.x_adv.min() < -0.75 or res.x_adv.max() > 1.75  # the box is not [−0.75, 1.75]
    assert (lp_norm(res.x_adv - xn, "linf") <= 0.2 + 1e-6).all()
    with pytest.raises(UserError, match="bounds"):
        pgd(model, x, y, eps=0.1, bounds=(1.0, 0.0))


def test_attacks_run_in_eval_mode_and_leave_modes_and_buffers_alone() -> None:
    from robustlab.attacks import apgd, distal, frames, patch_attack, square

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 8 * 8, 5))
    model.train()
    model(torch.rand(32, 1, 8, 8))  # running statistics away from their initial values
    model[4].eval()  # a submodule in its own mode keeps it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes: list[bool] = []
    model[1].register_forward_hook(lambda m, i, o: modes.append(m.training))
    x, y = batch()
    for run in (lambda: pgd(model, x, y, eps=0.1, steps=2),
                lambda: apgd(model, x, y, eps=0.1, steps=2, loss="dlr-t", targets=2),
                lambda: square(model, x, y, eps=0.1, queries=3),
                lambda: frames(model, x, y, steps=2),
                lambda: patch_attack(model, x, y, size=2, steps=2),
                lambda: distal(model, 4, (1, 8, 8), steps=2)):
        modes.clear()
        run()
        assert modes and not any(modes)  # BatchNorm ran in eval mode during the attack
        assert model.training and model[1].training and not model[4].training
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)


class Blocks(nn.Module):
    """K-class linear model on 1×K×D inputs whose class k reads only row k: z_k = w_k·x_k + b_k.

    The rows are disjoint, so under L∞ radius ε every z_k moves independently by at most ε‖w_k‖₁:
    the input can be classified as t iff z_t + ε‖w_t‖₁ > max_{j≠t} (z_j − ε‖w_j‖₁).
    """

    def __init__(self, k: int = 4, d: int = 6, seed: int = 0):
        super().__init__()
        g = gen(seed)
        self.w = torch.randn(k, d, generator=g)
        self.b = -0.5 * self.w.sum(1)  # centred on the middle of the box: balanced classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(2)[:, 0].view(x.shape[0], *self.w.shape) * self.w).sum(2) + self.b


def blocks_problem(n: int = 200, seed: int = 1) -> tuple[Blocks, torch.Tensor, torch.Tensor]:
    model = Blocks()
    g = gen(seed)
    x = 0.3 + 0.4 * torch.rand(n, 1, 4, 6, generator=g)  # ε ≤ 0.3 keeps the box from binding
    return model, x, model(x).argmax(1)


def reachable(model: Blocks, x: torch.Tensor, t: torch.Tensor, eps: float) -> torch.Tensor:
    """Closed form: margin of the best reachable t-vs-rest gap (> 0: t can win)."""
    z = model(x)
    a = model.w.abs().sum(1)
    up = z + eps * a
    down = (z - eps * a).scatter(1, t.view(-1, 1), float("-inf"))
    return up.gather(1, t.view(-1, 1)).squeeze(1) - down.amax(1)


@pytest.mark.parametrize("target,eps", [("random", 0.03), ("least-likely", 0.05), (2, 0.03)])
def test_targeted_pgd_hits_its_targets_where_the_closed_form_says_it_can(target: object,
                                                                         eps: float) -> None:
    model, x, y = blocks_problem()
    res = pgd(model, x, y, norm="linf", eps=eps, steps=40, step_size=eps / 8, target=target,
              generator=gen(5))
    t = res.target
    assert t is not None and t.shape == y.shape
    if target == "least-likely":
        assert torch.equal(t, model(x).argmin(1))
    elif target == "random":
        assert (t != y).all() and len(t.unique()) == 4
    else:
        assert (t == 2).all()
    m = reachable(model, x, t, eps)
    clear = m.abs() > 0.02
    assert 5 < int((m > 0.02).sum()) and 5 < int((m < -0.02).sum())
    assert torch.equal(res.success[clear], (m > 0)[clear])
    assert torch.equal(res.success, res.pred == t)
    assert (lp_norm(res.x_adv - x, "linf") <= eps + 1e-6).all()


def test_bad_target_is_a_user_error() -> None:
    model, x, y = blocks_problem(8)
    for target, fragment in ((7, "[0, 3]"), ("furthest", "unknown target"),
                             (torch.tensor([1, 2]), "one class per input"), (0.5, "integers")):
        with pytest.raises(UserError, match=re.escape(fragment)):
            pgd(model, x, y, eps=0.1, steps=1, target=target)


def test_the_model_sees_blocks_of_one_fixed_size_with_and_without_early_exit() -> None:
    # Float results of a GEMM/convolution can depend on the batch size, which would make an
    # example's trajectory depend on how many others still run; the engine packs the running
    # examples into blocks of a size fixed by n (and pads the last one).
    base, x, y = trained_digits()
    counts = []
    for early_stop in (None, 0.6):
        model = Recorder(base)
        pgd(model, x, y, eps=0.12, steps=10, restarts=2, early_stop=early_stop, generator=gen())
        assert {c.shape[0] for c in model.calls} == {block_rows(300, "cpu")} == {60}  # 5 blocks of 60
        counts.append(len(model.calls))
    assert counts[1] < counts[0]  # early exit saves model calls
    assert block_rows(1000, "cpu") == 63 and block_rows(64, "cpu") == 64 and block_rows(65, "cpu") == 33


def test_an_empty_batch_gives_an_empty_result() -> None:
    from robustlab.attacks import apgd, square

    model = small_cnn()
    x, y = batch()
    for res in (pgd(model, x[:0], y[:0], eps=0.1, steps=2, restarts=2, early_stop=0.5),
                apgd(model, x[:0], y[:0], eps=0.1, steps=2, loss="ce"),
                square(model, x[:0], y[:0], eps=0.1, queries=3)):
        assert res.x_adv.shape == (0, 1, 8, 8) and res.logits.shape == (0, 5)


def test_targeted_early_exit_stops_at_the_target_and_keeps_the_verdicts() -> None:
    model, x, y = trained_digits()
    c = 0.5
    kw = dict(norm="linf", eps=0.2, steps=15, target="random", momentum=0.9)
    off = pgd(model, x, y, generator=gen(6), **kw)
    on = pgd(model, x, y, generator=gen(6), early_stop=c, **kw)
    assert torch.equal(on.target, off.target)
    assert 0.1 < off.success.float().mean() < 0.9
    assert torch.equal(on.success, off.success)  # success = classified as the target
    p_t = F.softmax(on.logits, 1).gather(1, on.target[:, None]).squeeze(1)
    decided = on.success & (p_t >= c)
    assert 10 < int(decided.sum())
    assert torch.equal(on.x_adv[~decided], off.x_adv[~decided])


def test_take_rows_copies_exactly_the_selected_rows_in_place() -> None:
    from robustlab.attacks.base import take_rows

    g = gen(4)
    dst = torch.randn(6, 2, 3, generator=g)
    src = torch.randn(6, 2, 3, generator=g)
    src[1, 0, 0], src[3, 1, 2] = float("nan"), -0.0  # bits, not just values, are copied
    for mask in (torch.tensor([0, 1, 0, 1, 1, 0], dtype=torch.bool), torch.zeros(6, dtype=torch.bool),
                 torch.ones(6, dtype=torch.bool)):
        d = dst.clone()
        want = torch.where(mask.view(-1, 1, 1), src, d)
        out = take_rows(d, mask, src)
        assert out is d
        assert torch.equal(out.view(torch.int32), want.view(torch.int32))


class BlockRecorder(nn.Module):
    """Records the input and the grad mode of every call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []
        self.grad: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        self.grad.append(torch.is_grad_enabled())
        return self.model(x)


def test_eval_rows_blocks_are_the_rows_in_order_and_the_last_is_padded_with_its_last_row() -> None:
    from robustlab.attacks.pgd import EngineCfg, ce_loss, eval_rows

    model = BlockRecorder(small_cnn())
    x, y = batch(10)
    loss, grad, logits = eval_rows(model, x, y, EngineCfg("linf", 0.1, 1, ce_loss), 4)
    assert [tuple(t.shape) for t in model.inputs] == [(4, 1, 8, 8)] * 3
    assert torch.equal(torch.cat(model.inputs), torch.cat([x, x[-1:], x[-1:]]))
    assert loss.shape == (10,) and grad.shape == x.shape and logits.shape == (10, 5)
    assert torch.allclose(logits, model.model(x), atol=1e-6)
    assert torch.allclose(loss, F.cross_entropy(logits, y, reduction="none"))


def test_the_last_step_is_evaluated_without_a_gradient() -> None:
    # its gradient would go unused; the start and every other step need one
    model = BlockRecorder(small_cnn())
    x, y = batch(16)
    steps = 3
    res = pgd(model, x, y, eps=0.1, steps=steps, generator=gen())
    assert model.grad == [True] * steps + [False]  # start, steps 1..N−1, step N
    assert torch.equal(res.logits, evaluate_logits(model.model, res.x_adv))
