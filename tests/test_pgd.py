"""PGD engine: closed forms on linear models, feasibility, projections, restarts, early exit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import INITS, pgd, project_l0, project_l1, worst_case
from robustlab.attacks.base import evaluate_logits
from robustlab.attacks.pgd import PGD, direction, init_delta, lp_norm
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


def test_best_iterate_never_worse_than_start() -> None:
    model = small_cnn()
    x, y = batch()
    start = F.cross_entropy(model(x), y, reduction="none")
    for momentum in (0.0, 0.9):
        res = pgd(model, x, y, norm="linf", eps=0.1, steps=8, step_size=0.3, init="zero",
                  momentum=momentum)  # a too large step: iterates get worse, the best does not
        assert (F.cross_entropy(res.logits, y, reduction="none") >= start - 1e-6).all()


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
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(train.x), train.y).backward()
        opt.step()
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
