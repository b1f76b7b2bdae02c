"""Relative weight ball engine: closed-form flatness on quadratics, ball constraints, selection."""

import math

import pytest
import torch
from torch import nn

from robustlab import models
from robustlab.errors import UserError
from robustlab.weights import (
    FunctionObjective,
    RelativeBall,
    average_case,
    filter_normalized,
    select,
    worst_case_ascent,
)

torch.set_num_threads(1)


def quadratic(d=20, seed=0):
    """L(w) = ½(w−c)ᵀH(w−c) with a known spectrum (top eigenvalue 10, the rest in [0.5, 5])."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.cat([torch.tensor([10.0], dtype=torch.float64),
                     torch.linspace(0.5, 5.0, d - 1, dtype=torch.float64)])
    h = (q * lam) @ q.T
    c = torch.randn(d, generator=g, dtype=torch.float64)

    def fn(p):
        v = p["w"] - c
        return 0.5 * v @ h @ v

    return FunctionObjective(fn), {"w": c.clone()}, h, c


def test_average_case_matches_trace_formula():
    obj, params, h, c = quadratic()
    xi, d, k = 0.1, c.numel(), 4000
    ball = RelativeBall(params, ["w"], xi)
    res = average_case(obj, ball, samples=k, generator=torch.Generator().manual_seed(1),
                       progress=False)
    r = xi * c.norm()
    expected = 0.5 * r**2 * torch.trace(h) / d
    se = res["std"] / math.sqrt(k)
    assert abs(res["flatness"] - float(expected)) < 4 * se
    assert se < 0.05 * float(expected)  # the check is informative


def test_worst_case_matches_top_eigenvalue():
    obj, params, h, c = quadratic()
    xi = 0.1
    ball = RelativeBall(params, ["w"], xi)
    res = worst_case_ascent(obj, ball, steps=100, restarts=2, step_size=xi / 2,
                            generator=torch.Generator().manual_seed(2), progress=False)
    r = xi * c.norm()
    expected = float(0.5 * r**2 * torch.linalg.eigvalsh(h).max())
    assert abs(res["flatness"] - expected) <= 0.01 * expected
    assert res["flatness"] <= expected * (1 + 1e-9)  # never beyond the ball's true maximum
    assert ball.contains(res["nu"])


def test_xi_zero_gives_exactly_zero():
    obj, params, _, _ = quadratic()
    ball = RelativeBall(params, ["w"], 0.0)
    avg = average_case(obj, ball, samples=5, generator=torch.Generator().manual_seed(0),
                       progress=False)
    worst = worst_case_ascent(obj, ball, steps=5, restarts=2,
                              generator=torch.Generator().manual_seed(0), progress=False)
    assert avg["flatness"] == 0.0 and worst["flatness"] == 0.0


def test_samples_and_ascent_stay_in_ball():
    g = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(7, 5, generator=g), "b": torch.randn(3, generator=g),
              "c": torch.zeros(4)}
    ball = RelativeBall(params, ["a", "b", "c"], 0.3)
    for kind in ("sphere", "ball"):
        for _ in range(20):
            nu = ball.sample(g, kind)
            for n in nu:
                assert nu[n].norm() <= 0.3 * params[n].norm() * (1 + 1e-5) + 1e-12
            if kind == "sphere":
                assert torch.allclose(nu["a"].norm(), 0.3 * params["a"].norm(), rtol=1e-5)
    nu = ball.sample(g, "ball")
    grads = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
    for _ in range(10):
        nu = ball.ascent(nu, grads, 0.5)
        assert ball.contains(nu)
    assert torch.allclose(nu["a"].norm(), 0.3 * params["a"].norm(), rtol=1e-5)
    assert torch.equal(nu["c"], torch.zeros(4))  # zero weights: zero radius


def test_ascent_step_is_normalized_per_tensor():
    params = {"a": torch.full((4,), 2.0), "b": torch.full((2,), 10.0)}
    ball = RelativeBall(params, ["a", "b"], 100.0)  # large ball: no projection
    grads = {"a": torch.tensor([3.0, 0, 0, 0]), "b": torch.tensor([0.0, -1e-3])}
    nu = ball.ascent(ball.zeros(), grads, 0.1)
    assert torch.allclose(nu["a"], torch.tensor([0.1 * 4.0, 0, 0, 0]))  # ‖a‖ = 4
    assert torch.allclose(nu["b"], torch.tensor([0.0, -0.1 * math.sqrt(200.0)]))


def test_filter_normalized_direction():
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(6, 3, 2, 2, generator=g), "b": torch.randn(6, generator=g)}
    d = filter_normalized(params, ["w", "b"], g)
    assert torch.allclose(d["w"].flatten(1).norm(dim=1), params["w"].flatten(1).norm(dim=1),
                          rtol=1e-5)
    assert torch.allclose(d["b"].norm(), params["b"].norm(), rtol=1e-5)


def test_selection():
    m = models.create("convnet", in_shape=(1, 8, 8), num_classes=3, width=4, hidden=8, norm="bn")
    names = select(m)
    assert names and all(n.endswith((".weight", ".bias")) for n in names)
    norm_params = {f"{mn}.{pn}" for mn, mod in m.named_modules()
                   if isinstance(mod, models.Norm2d) for pn, _ in mod.named_parameters()}
    assert not set(names) & norm_params
    weights = select(m, "weights")
    assert weights and all(dict(m.named_parameters())[n].ndim >= 2 for n in weights)
    assert select(m, names[0]) == [names[0]]
    with pytest.raises(UserError, match="unknown parameter selection"):
        select(m, "nonsense.weight")
    with pytest.raises(UserError, match="unknown parameter selection"):
        select(m, sorted(norm_params)[0])

    class NoWeights(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x.flatten(1) * self.scale

    with pytest.raises(UserError, match="no perturbable tensors"):
        select(NoWeights())


def test_negative_xi_is_user_error():
    with pytest.raises(UserError, match="xi"):
        RelativeBall({"w": torch.ones(2)}, ["w"], -0.1)
