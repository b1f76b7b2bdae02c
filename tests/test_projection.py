"""`project` (spec §3): the norm's projection first, then the box, worked out by hand."""

from __future__ import annotations

import pytest
import torch

from robustlab.attacks.pgd import project


def _x_delta() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([0.9, 0.5, 0.05, 0.3]).view(1, 1, 2, 2)
    d = torch.tensor([0.4, 0.3, -0.2, 0.0]).view(1, 1, 2, 2)
    return x, d


@pytest.mark.parametrize("norm,eps,expected", [
    # L∞ 0.25: clamp → [0.25, 0.25, −0.2, 0]; box: 0.9 + 0.25 → 1.0, 0.05 − 0.2 → 0
    ("linf", 0.25, [0.1, 0.25, -0.05, 0.0]),
    # L2 0.25: ‖δ‖ = √0.29, δ·0.25/√0.29; then the box cuts the first and third entries
    ("l2", 0.25, [0.1, 0.3 * 0.25 / 0.29 ** 0.5, -0.05, 0.0]),
    # L1 0.5: soft-threshold at θ with Σ(|δ|−θ)+ = 0.5 → 0.9 − 3θ = 0.5, θ = 2/15:
    # [0.4−θ, 0.3−θ, −(0.2−θ), 0]; then the box: 0.9 + 0.267 → 1.0, 0.05 − 0.067 → 0
    ("l1", 0.5, [0.1, 0.3 - 2 / 15, -0.05, 0.0]),
    # L0 2: keep the two largest |δ| (0.4, 0.3); the box cuts 0.4 to 0.1
    ("l0", 2.0, [0.1, 0.3, 0.0, 0.0]),
])
def test_ball_then_box(norm: str, eps: float, expected: list[float]) -> None:
    x, d = _x_delta()
    out = project(d, x, norm, eps)
    assert torch.allclose(out.flatten(), torch.tensor(expected), atol=1e-6), out.flatten()
    assert ((x + out) >= 0).all() and ((x + out) <= 1).all()


def test_box_first_would_differ() -> None:
    # box first, then the L2 rescale gives another point: the order is part of the definition
    x, d = _x_delta()
    boxed = (x + d).clamp(0, 1) - x
    other = boxed * 0.25 / boxed.norm()
    assert not torch.allclose(project(d, x, "l2", 0.25), other, atol=1e-3)


def test_projection_keeps_points_inside_unchanged() -> None:
    x, _ = _x_delta()
    d = torch.tensor([0.05, -0.1, 0.02, 0.1]).view(1, 1, 2, 2)
    for norm, eps in (("linf", 0.2), ("l2", 1.0), ("l1", 1.0), ("l0", 4.0)):
        assert torch.allclose(project(d, x, norm, eps), d, atol=1e-7), norm


@pytest.mark.parametrize("eps,kept", [(2.0, 2), (2.5, 3), (0.3, 1), (3.0000000001, 3)])
def test_l0_keeps_ceil_eps_entries_of_largest_magnitude(eps: float, kept: int) -> None:
    x = torch.full((1, 1, 2, 3), 0.5)
    d = torch.tensor([0.1, -0.4, 0.2, -0.05, 0.3, 0.15]).view(1, 1, 2, 3)
    out = project(d, x, "l0", eps).flatten()
    order = [1, 4, 2, 5, 0, 3]  # by |δ|, largest first
    expected = torch.zeros(6)
    expected[order[:kept]] = d.flatten()[order[:kept]]
    assert torch.equal(out != 0, expected != 0) and torch.allclose(out, expected, atol=1e-7)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5), ("l1", 10.0)])
def test_norm_init_is_a_random_direction_times_eps_uniform(norm: str, eps: float) -> None:
    # spec §3: "uniform in norm (random direction × ε·U(0,1))": ‖δ‖ is uniform on [0, ε], so its
    # mean is ε/2 and its spread covers the whole interval (not a point on the sphere)
    from robustlab.attacks.pgd import init_delta, lp_norm

    x = torch.full((4000, 1, 4, 4), 0.5)
    d = init_delta(x, norm, eps, "norm", torch.Generator().manual_seed(0))
    r = lp_norm(d, norm) / eps
    assert float(r.max()) <= 1 + 1e-5
    assert abs(float(r.mean()) - 0.5) < 0.02 and abs(float(r.var()) - 1 / 12) < 0.01
    assert float((r < 0.1).float().mean()) == pytest.approx(0.1, abs=0.02)
