"""Patch content and location together (spec §3, location-optimized patches), against a reference.

The toy model sees 1×W images with background 0.5 and a 1×1 patch, and scores a content value c at
column j by s(c, j) = a_j·(c − ½) − β·(c − ½)². Its logits are [0, s] with label 0, so the
cross-entropy, the wrong-class confidence and misclassification all grow with s: every ranking the
spec allows (loss or worst-case key) ranks iterates by s. Because the preferred column depends on
the content (bright content prefers large a_j, dark content small a_j), a pure-Python replay of the
spec's algorithm decides exactly which content and place the attack must return:

- after each signed content step, the candidates (current place, ±stride) are compared **with the
  updated content** (comparing with the content from before the step picks other places);
- the result is the best iterate: its content **at its own place** (not the last place).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlab.attacks.patches import _sample_corners, allowed_corners, patch_attack, place

torch.set_num_threads(1)

W = 9


class Columns(nn.Module):
    """logits [0, s], s = Σ_j a_j·(x_j − ½) − β·(x_j − ½)² over the pixels of a 1×1×1×W image."""

    def __init__(self, a: list[float], beta: float):
        super().__init__()
        self.a = torch.tensor(a)
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.flatten(1) - 0.5
        s = (self.a * d - self.beta * d * d).sum(1)
        return torch.stack([torch.zeros_like(s), s], 1)


def reference(a: list[float], beta: float, c0: float, j0: int, steps: int, eta: float,
              stride: int, *, stale: bool = False, last_place: bool = False
              ) -> tuple[float, int, float]:
    """(content, column, s) the spec's optimized-full patch attack returns for one example.

    `stale` compares places with the content from before the step; `last_place` returns the best
    content at the last place: the two bugs this file guards against.
    """
    def s(c: float, j: int) -> float:
        return a[j] * (c - 0.5) - beta * (c - 0.5) ** 2

    c, j = c0, j0
    best = (s(c, j), c, j)
    for _ in range(steps):
        g = a[j] - 2 * beta * (c - 0.5)
        old = c
        c = min(1.0, max(0.0, c + eta * math.copysign(1.0, g) if g != 0 else c))
        cands = [j] + [j + d for d in (-stride, stride) if 0 <= j + d < W]  # up/down leave the row
        j = max(cands, key=lambda k: s(old if stale else c, k))  # first maximum: stay on ties
        if s(c, j) > best[0]:
            best = (s(c, j), c, j)
    _, cb, jb = best
    if last_place:
        jb = j
    return cb, jb, s(cb, jb)


def run(a: list[float], beta: float, n: int, steps: int, eta: float, seed: int):
    """The attack on n background images, and the replayed random starts (content, column)."""
    model = Columns(a, beta)
    x = torch.full((n, 1, 1, W), 0.5)
    y = torch.zeros(n, dtype=torch.long)
    res = patch_attack(model, x, y, size=1, steps=steps, step_size=eta, stride=1,
                       location="optimized-full", generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)  # the attack draws the start corners, then the content
    start = _sample_corners(allowed_corners((1, W), 1), n, g, torch.device("cpu"))
    c0 = torch.rand((n, 1, 1, 1), generator=g)
    return model, x, res, c0.flatten().tolist(), start[:, 1].tolist()


def check_against_reference(model, x, res, a, beta, c0, j0, steps, eta) -> None:
    pos, content = res.info["position"], res.info["content"]
    assert (pos[:, 0] == 0).all()
    for i in range(len(c0)):
        c, j, s = reference(a, beta, c0[i], j0[i], steps, eta, 1)
        assert int(pos[i, 1]) == j, (i, c0[i], j0[i])
        assert abs(float(content[i].flatten()[0]) - c) < 1e-6, i
        assert abs(float(res.logits[i, 1]) - s) < 1e-5, i
    # what is returned belongs together: x_adv is the content pasted at the returned place, and the
    # logits are the model's at x_adv
    assert torch.equal(res.x_adv, place(x, content, pos)[0])
    assert torch.allclose(res.logits, model(res.x_adv), atol=1e-6)


def test_places_are_compared_with_the_updated_content() -> None:
    # Linear in c: a step moves c by ±0.25 towards the side a_j favours, and c crossing ½ flips
    # which neighbour is better. One step isolates the comparison.
    a = [0.2 * (j - 4) for j in range(W)]
    n, steps, eta = 64, 1, 0.25
    model, x, res, c0, j0 = run(a, 0.0, n, steps, eta, seed=11)
    check_against_reference(model, x, res, a, 0.0, c0, j0, steps, eta)
    # the test has power: comparing with the stale content would place many patches elsewhere
    stale = [reference(a, 0.0, c0[i], j0[i], steps, eta, 1, stale=True)[1] for i in range(n)]
    fresh = [reference(a, 0.0, c0[i], j0[i], steps, eta, 1)[1] for i in range(n)]
    assert sum(p != q for p, q in zip(stale, fresh)) >= 5


def test_best_content_is_returned_at_its_own_place() -> None:
    # Concave in c with inward gradients at 0 and 1: with step 1 the content jumps between 0 and 1
    # and the patch moves right (bright) and left (dark) in turn, so the best iterate is often in
    # the middle of the run and the last place is not its place.
    a = [0.1 * (j - 4.3) for j in range(W)]  # no two iterates tie
    n, steps, eta = 64, 6, 1.0
    model, x, res, c0, j0 = run(a, 1.0, n, steps, eta, seed=12)
    check_against_reference(model, x, res, a, 1.0, c0, j0, steps, eta)
    wrong = [reference(a, 1.0, c0[i], j0[i], steps, eta, 1, last_place=True) for i in range(n)]
    right = [reference(a, 1.0, c0[i], j0[i], steps, eta, 1) for i in range(n)]
    assert sum(p[1] != q[1] for p, q in zip(wrong, right)) >= 5  # the test has power
    # and returning the best content at the last place would be a weaker (never visited) input
    assert all(p[2] <= q[2] for p, q in zip(wrong, right))
