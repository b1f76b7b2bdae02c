"""PGD backtracking (spec §3): a step that does not improve e is rejected for that example and its
step size is divided by 1.5. A 1-D bowl with its top at a = 0.37 makes every decision checkable."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlab.attacks.pgd import pgd

A = 0.37


class Bowl(nn.Module):
    """logits [0, −4(x − a)²] for a 1×1×1 image: with label 0 every ranking (loss, wrong-class
    confidence) grows towards x = a."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = -4.0 * (x.flatten(1)[:, 0] - A) ** 2
        return torch.stack([torch.zeros_like(s), s], 1)


def reference(steps: int, lr: float, factor: float = 1.5) -> float:
    """Replay: from 0, try x ± lr towards a; keep it if closer to a, else lr /= factor."""
    x = 0.0
    for _ in range(steps):
        c = min(1.0, max(0.0, x + (lr if A > x else -lr)))
        if abs(c - A) < abs(x - A):
            x = c
        else:
            lr /= factor
    return x


@pytest.mark.parametrize("steps", [3, 6, 10])
def test_backtracking_rejects_worse_steps_and_divides_by_1_5(steps: int) -> None:
    x = torch.zeros(1, 1, 1, 1)
    y = torch.zeros(1, dtype=torch.long)
    res = pgd(Bowl(), x, y, norm="l2", eps=1.0, steps=steps, step_size=0.25, init="zero",
              backtrack=True)
    assert float(res.x_adv) == pytest.approx(reference(steps, 0.25), abs=1e-6)
    # the factor matters: halving would end elsewhere
    assert abs(reference(steps, 0.25) - reference(steps, 0.25, 2.0)) > 1e-3


class Bowl2(nn.Module):
    """logits [0, s], s = −4((x₁ − 0.8)² + 3(x₂ − 0.3)²) for a 1×1×1×2 image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1)
        s = -4.0 * ((f[:, 0] - 0.8) ** 2 + 3.0 * (f[:, 1] - 0.3) ** 2)
        return torch.stack([torch.zeros_like(s), s], 1)


def momentum_reference(steps: int, lr: float, beta: float, normalize: bool = True) -> list[float]:
    """Replay: m ← β·m + (1−β)·g/‖g‖₁ (g the cross-entropy gradient), x ← x + lr·m/‖m‖₂, best x."""
    x, m = [0.5, 0.5], [0.0, 0.0]

    def s(v: list[float]) -> float:
        return -4.0 * ((v[0] - 0.8) ** 2 + 3.0 * (v[1] - 0.3) ** 2)

    best = (s(x), list(x))
    for _ in range(steps):
        sig = 1 / (1 + math.exp(-s(x)))  # d CE / d s for label 0 and logits [0, s]
        g = [sig * -8 * (x[0] - 0.8), sig * -24 * (x[1] - 0.3)]
        n1 = abs(g[0]) + abs(g[1]) if normalize else 1.0
        m = [beta * mi + (1 - beta) * gi / n1 for mi, gi in zip(m, g)]
        n2 = math.hypot(*m)
        x = [min(1.0, max(0.0, xi + lr * mi / n2)) for xi, mi in zip(x, m)]
        if s(x) > best[0]:
            best = (s(x), list(x))
    return best[1]


@pytest.mark.parametrize("steps", [4, 8, 12])
def test_momentum_averages_l1_normalized_gradients(steps: int) -> None:
    x = torch.full((1, 1, 1, 2), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    res = pgd(Bowl2(), x, y, norm="l2", eps=1.0, steps=steps, step_size=0.1, init="zero",
              momentum=0.9)
    ref = momentum_reference(steps, 0.1, 0.9)
    assert res.x_adv.flatten().tolist() == pytest.approx(ref, abs=1e-5)
