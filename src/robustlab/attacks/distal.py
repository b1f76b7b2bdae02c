"""Distal inputs: noise images pushed towards high confidence in any class (spec §3).

Start from uniform noise x₀ and maximize max_k log softmax_k within the L∞ ball of radius ε
around x₀ (default 0.3). A model that rejects inputs below a confidence threshold τ should
reject these; their false positive rate FPR@τ is the fraction with confidence ≥ τ.
"""

from __future__ import annotations

import dataclasses

import torch

from robustlab.attacks.base import AttackResult, Model, StepOptions, check_bounds
from robustlab.attacks.pgd import pgd
from robustlab.attacks.threat import DISTAL_EPS
from robustlab.errors import UserError


def noise_images(n: int, shape: tuple[int, ...], generator: torch.Generator, *,
                 device: torch.device | str = "cpu",
                 bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """n uniform noise images of shape C×H×W in the box `bounds`, drawn from `generator`."""
    lo, hi = bounds
    u = torch.rand((n, *shape), generator=generator, device=generator.device).to(device)
    return u if (lo, hi) == (0.0, 1.0) else (lo + (hi - lo) * u).clamp(lo, hi)


def distal(model: Model, n: int, shape: tuple[int, ...], *, eps: float = DISTAL_EPS,
           steps: int = 40, step_size: float | None = None, init: str = "zero",
           restarts: int = 1, momentum: float = 0.0, backtrack: bool = False,
           early_stop: float | None = None, generator: torch.Generator | None = None,
           device: torch.device | str = "cpu", bf16: bool = False,
           channels_last: bool | None = None,
           bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """`n` distal inputs of image shape `shape`; `info["x0"]` holds the noise they started from.

    Noise and distal inputs lie in the box `bounds` (default [0, 1]).
    """
    if n < 1:
        raise UserError(f"number of distal inputs {n} is invalid; it must be ≥ 1")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    bounds = check_bounds(torch.zeros(0), bounds)
    x0 = noise_images(n, tuple(shape), generator, device=device, bounds=bounds)
    res = pgd(model, x0, None, norm="linf", eps=eps, steps=steps, step_size=step_size,
              objective="distal", init=init, restarts=restarts, momentum=momentum,
              backtrack=backtrack, early_stop=early_stop, generator=generator, bf16=bf16,
              channels_last=channels_last, bounds=bounds)
    res.info["x0"] = x0
    return res


@dataclasses.dataclass(frozen=True)
class Distal(StepOptions):
    """`distal` as a stateless callable: `Distal()(model, n, shape, generator=g)` (iteration and
    run options: `StepOptions`)."""

    eps: float = DISTAL_EPS
    init: str = "zero"

    def __call__(self, model: Model, n: int, shape: tuple[int, ...], *,
                 generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> AttackResult:
        return distal(model, n, shape, generator=generator, device=device,
                      **dataclasses.asdict(self))
