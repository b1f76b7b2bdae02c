"""Distal inputs (spec §3): start from uniform noise, maximize max_k log softmax_k in an L∞ ball."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import distal
from robustlab.attacks.distal import noise_images
from robustlab.attacks.pgd import objective_fn
from robustlab.attacks.threat import DISTAL_EPS

torch.set_num_threads(1)


def test_distal_objective_is_the_max_log_softmax() -> None:
    # not the largest logit: a shift of all logits changes the logit, not the confidence
    logits = torch.tensor([[2.0, 0.0, 0.0], [5.0, 5.0, 5.0], [-1.0, 3.0, 0.5]])
    got = objective_fn("distal")(logits, None)
    expected = torch.tensor([2 - math.log(math.exp(2) + 2), -math.log(3.0),
                             3 - math.log(math.exp(-1) + math.exp(3) + math.exp(0.5))])
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(objective_fn("distal")(logits + 7.0, None), expected, atol=1e-5)


def test_distal_starts_from_seeded_uniform_noise_and_stays_in_its_ball() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 5)).eval()
    n, shape = 64, (1, 6, 6)
    res = distal(model, n, shape, steps=5, generator=torch.Generator().manual_seed(3))
    x0 = res.info["x0"]
    # the noise is the generator's first uniform draw
    assert torch.equal(x0, torch.rand((n, *shape), generator=torch.Generator().manual_seed(3)))
    assert torch.equal(x0, noise_images(n, shape, torch.Generator().manual_seed(3)))
    # uniform on [0, 1]: mean ½, variance 1/12, and every image different
    assert abs(float(x0.mean()) - 0.5) < 0.03 and abs(float(x0.var()) - 1 / 12) < 0.01
    assert len({tuple(v.tolist()) for v in x0.flatten(1)}) == n
    d = res.x_adv - x0
    assert float(d.abs().max()) <= DISTAL_EPS + 1e-6 and DISTAL_EPS == 0.3
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    c0 = F.softmax(model(x0), 1).amax(1)
    assert (res.conf >= c0 - 1e-6).all() and res.conf.mean() > c0.mean() + 0.01
