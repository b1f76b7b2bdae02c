"""Adversarial bit error projection (spec §8): keep the ε weights whose codes moved most — by
magnitude, in either direction — and flip only the most significant differing bit of each."""

from __future__ import annotations

import torch

from robustlab import models
from robustlab.quant import RQUANT8
from robustlab.weights.bits import project_codes


def test_projection_ranks_moves_by_magnitude_in_both_directions() -> None:
    m = models.create("mlp", in_shape=(1, 2, 2), num_classes=2, hidden=(2,))
    q = RQUANT8.quantize({k: v.detach() for k, v in m.named_parameters()})
    c0 = torch.tensor([7, 8, 3, 0, 200])
    u = torch.tensor([8.2, 4.0, 3.1, 5.0, 199.4])
    allowed = torch.ones(5, dtype=torch.bool)
    # |u − c0| = 1.2, 4.0 (downwards), 0.1, 5.0, 0.6; targets 8, 4, 3, 5, 199
    # budget 2 keeps indices 3 and 1: 0 ^ msb(5) = 4, 8 ^ msb(8 ^ 4) = 0
    assert project_codes(q, u, c0, allowed, 2).tolist() == [7, 0, 3, 4, 200]
    # budget 4 adds index 0 (7 ^ msb(15) = 15) and index 4 (200 ^ msb(200 ^ 199) = 200 ^ 8)
    assert project_codes(q, u, c0, allowed, 4).tolist() == [15, 0, 3, 4, 192]
    # index 2 rounds back to its own code: nothing to flip, even with budget to spare
    assert project_codes(q, u, c0, allowed, 5).tolist() == [15, 0, 3, 4, 192]
