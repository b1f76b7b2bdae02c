"""FAB-T: hyperplane ∩ box projections (closed forms, brute force), minimal distance of a linear
model, feasibility, seeding, early exit, argument checks."""

from __future__ import annotations

import pytest
import torch
from attackchecks import assert_early_exit_invariant
from test_pgd import batch, gen, small_cnn, trained_digits
from torch import nn

from robustlab.attacks import lp_norm
from robustlab.attacks.fab import FAB, fab, project_hyperplane_box
from robustlab.errors import UserError

torch.set_num_threads(1)


def _t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_l2_projection_closed_forms() -> None:
    # no bound active: d = c·w/‖w‖²
    w, c = _t([1.0, -2.0, 2.0]), torch.tensor([3.0], dtype=torch.float64)
    d = project_hyperplane_box(w, c, torch.full_like(w, -10), torch.full_like(w, 10), "l2")
    assert torch.allclose(d, c * w / 9.0, atol=1e-12)
    # one bound active: w = 1, c = 2, b_0 = 0.5 → d = (0.5, 0.75, 0.75)
    w, c = _t([1.0, 1.0, 1.0]), torch.tensor([2.0], dtype=torch.float64)
    d = project_hyperplane_box(w, c, torch.full_like(w, -1), _t([0.5, 1.0, 1.0]), "l2")
    assert torch.allclose(d, _t([0.5, 0.75, 0.75]), atol=1e-12)
    # negative c flips the direction; the same bound on the other side
    d = project_hyperplane_box(w, -c, _t([-0.5, -1.0, -1.0]), torch.full_like(w, 1), "l2")
    assert torch.allclose(d, _t([-0.5, -0.75, -0.75]), atol=1e-12)
    # out of reach: the box corner of most progress
    d = project_hyperplane_box(_t([1.0, -1.0]), torch.tensor([10.0], dtype=torch.float64),
                               _t([-1.0, -2.0]), _t([1.0, 2.0]), "l2")
    assert torch.equal(d, _t([1.0, -2.0]))


def test_linf_projection_closed_forms() -> None:
    # no bound active: d = c·sign(w)/‖w‖₁; w_i = 0 stays 0
    w, c = _t([1.0, -2.0, 0.5, 0.0]), torch.tensor([1.0], dtype=torch.float64)
    d = project_hyperplane_box(w, c, torch.full_like(w, -10), torch.full_like(w, 10), "linf")
    assert torch.allclose(d, w.sign() / 3.5, atol=1e-12)
    # coordinate 1 capped at 0.1: 0.1·2 + τ(1 + 0.5) = 1 → τ = 0.8/1.5
    d = project_hyperplane_box(w, c, _t([-10.0, -0.1, -10.0, -10.0]), torch.full_like(w, 10),
                               "linf")
    tau = 0.8 / 1.5
    assert torch.allclose(d, _t([tau, -0.1, tau, 0.0]), atol=1e-12)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_projection_is_feasible_and_minimal_by_brute_force(norm: str) -> None:
    g = gen(5)
    for _ in range(20):
        w = torch.randn(1, 2, generator=g, dtype=torch.float64)
        a = -torch.rand(1, 2, generator=g, dtype=torch.float64)
        b = torch.rand(1, 2, generator=g, dtype=torch.float64)
        # a reachable c: w·p for a random box point p
        p = a + (b - a) * torch.rand(1, 2, generator=g, dtype=torch.float64)
        c = (w * p).sum(1)
        d = project_hyperplane_box(w, c, a, b, norm)
        assert torch.allclose((w * d).sum(1), c, atol=1e-9)
        assert (d >= a - 1e-12).all() and (d <= b + 1e-12).all()
        # brute force: the feasible set is a segment of the line w·d = c inside the box
        s = torch.linspace(-3, 3, 600001, dtype=torch.float64)
        v = torch.stack([-w[0, 1], w[0, 0]]) / w.norm()
        base = c[0] * w[0] / (w * w).sum()
        pts = base + s[:, None] * v
        ok = ((pts >= a) & (pts <= b)).all(1)
        pts = pts[ok]
        nrm = pts.norm(dim=1) if norm == "l2" else pts.abs().amax(1)
        mine = d.norm() if norm == "l2" else d.abs().amax()
        assert mine <= nrm.min() + 1e-9
        assert mine >= nrm.min() - 1e-4


class Linear2(nn.Module):
    """Two logits [0, wᵀx + b]: the minimal Lp adversarial distance is |wᵀx + b|/‖w‖_q."""

    def __init__(self, d: int) -> None:
        super().__init__()
        g = gen(1)
        self.w = torch.randn(d, generator=g)
        self.b = 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


@pytest.mark.parametrize("norm,q", [("l2", 2.0), ("linf", 1.0)])
def test_linear_model_minimal_distance(norm: str, q: float) -> None:
    model = Linear2(12)
    x = torch.rand(32, 12, generator=gen(2))
    y = model(x).argmax(1)
    exact = model(x)[:, 1].abs() / model.w.norm(p=q)
    res = fab(model, x, y, norm=norm, eps=100.0, steps=100, bounds=(-50.0, 50.0))
    dist = res.info["distance"]
    assert torch.isfinite(dist).all()
    assert (dist >= exact * (1 - 1e-5) - 1e-6).all()  # never closer than the boundary
    assert (dist - exact).abs().max() <= 1e-3
    assert res.success.all()
    # ε just below the minimal distance: nothing can be found inside the ball
    res = fab(model, x, y, norm=norm, eps=float(exact.min()) * 0.99, bounds=(-50.0, 50.0))
    assert not res.success.any()


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-0.5, 1.5)])
def test_every_output_is_in_the_ball_and_the_box(norm: str, eps: float, bounds: tuple) -> None:
    model = small_cnn()
    x, y = batch()
    res = fab(model, x, y, norm=norm, eps=eps, steps=20, targets=3, restarts=2, generator=gen(),
              bounds=bounds)
    assert (lp_norm(res.x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    assert res.x_adv.min() >= bounds[0] and res.x_adv.max() <= bounds[1]
    assert torch.allclose(res.logits, model(res.x_adv), atol=1e-5)
    assert res.success.any()
    found = torch.isfinite(res.info["distance"])
    # within ε the closest adversarial point is misclassified
    assert (res.success[found & (res.info["distance"] <= eps)]).all()


def test_seeded_reproducibility_and_early_exit_verdicts() -> None:
    model = small_cnn()
    x, y = batch(n=70)  # two blocks on the CPU
    kw = dict(norm="l2", eps=0.25, steps=15, targets=3, restarts=2)
    a = fab(model, x, y, generator=gen(4), **kw)
    b = FAB(**kw)(model, x, y, generator=gen(4))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.logits, b.logits)
    assert torch.equal(a.info["distance"], b.info["distance"])
    c = fab(model, x, y, generator=gen(4), early_stop=0.5, **kw)
    assert torch.equal(a.success, c.success)
    assert torch.equal(a.success & (a.conf >= 0.5), c.success & (c.conf >= 0.5))
    assert a.success.any() and not a.success.all()
    # a different seed changes the restarts' starts
    d = fab(model, x, y, generator=gen(5), **kw)
    assert not torch.equal(a.info["distance"], d.info["distance"])


def test_model_mode_restored_and_argument_errors() -> None:
    model = small_cnn().train()
    x, y = batch(n=4)
    fab(model, x, y, norm="linf", eps=0.05, steps=2, targets=1)
    assert model.training
    with pytest.raises(UserError, match="norm 'l1'"):
        fab(model, x, y, norm="l1", eps=1.0)
    with pytest.raises(UserError, match="eps"):
        fab(model, x, y, norm="l2", eps=-1.0)
    with pytest.raises(UserError, match="targets"):
        fab(model, x, y, norm="l2", eps=1.0, targets=0)
    with pytest.raises(UserError, match="restarts"):
        fab(model, x, y, norm="l2", eps=1.0, restarts=0)
    with pytest.raises(UserError):
        fab(model, x + 2.0, y, norm="l2", eps=1.0)


def test_early_exit_on_and_off_give_identical_verdicts_on_a_trained_model() -> None:
    """On a trained model with hundreds of examples: early exit decides the same examples and
    leaves every undecided one exactly as without it."""
    model, x, y = trained_digits()
    kw = dict(norm="l2", eps=0.5, steps=20, targets=3, restarts=2)
    off = fab(model, x, y, generator=gen(2), **kw)
    on = fab(model, x, y, generator=gen(2), early_stop=0.45, **kw)  # FAB's points lie near the boundary
    assert_early_exit_invariant(on, off, 0.45)
