"""PGD backtracking (spec §3): a step that does not improve e is rejected for that example and its
step size is divided by 1.5. A 1-D bowl with its top at a = 0.37 makes every decision checkable."""

from __future__ import annotations

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
