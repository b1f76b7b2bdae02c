"""Adversarial frames: a border of the image whose pixels are free in [0, 1] (spec §3).

A frame attack is PGD with L∞ radius hi − lo (so only the box `bounds` binds) restricted to the border by a
mask, with sign steps. The default width is ⌊0.1·H⌋: 2 px on 28×28, 3 px on 32×32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from robustlab.attacks.base import AttackResult, Model, StepOptions, check_bounds
from robustlab.attacks.pgd import pgd
from robustlab.attacks.threat import frame_width
from robustlab.errors import UserError


def frame_mask(shape: tuple[int, ...], width: int | None = None, *,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """1×1×H×W float mask, 1 on the border of `width` pixels (default `frame_width(H)`)."""
    h, w = int(shape[-2]), int(shape[-1])
    width = frame_width(h) if width is None else int(width)
    if width < 1 or 2 * width > min(h, w):
        raise UserError(f"frame width {width} is invalid for {h}×{w} images; it must be in "
                        f"[1, {min(h, w) // 2}]")
    m = torch.ones(1, 1, h, w, device=device)
    m[..., width:h - width, width:w - width] = 0
    return m


def frames(model: Model, x: torch.Tensor, y: Any, *, width: int | None = None, steps: int = 40,
           step_size: float | None = None, objective: str = "ce", init: str = "box",
           restarts: int = 1, momentum: float = 0.0, backtrack: bool = False,
           early_stop: float | None = None, generator: torch.Generator | None = None,
           bf16: bool = False, channels_last: bool | None = None,
           bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """Frame attack on `x`: returns an `AttackResult` whose x_adv differs from x only on the frame.

    The frame's pixels are free in the box `bounds` (default [0, 1]).
    """
    width = frame_width(int(x.shape[-2])) if width is None else int(width)
    mask = frame_mask(tuple(x.shape[1:]), width, device=x.device)
    lo, hi = check_bounds(x, bounds)
    res = pgd(model, x, y, norm="linf", eps=hi - lo, steps=steps, step_size=step_size,
              objective=objective, init=init, restarts=restarts, momentum=momentum,
              backtrack=backtrack, mask=mask, early_stop=early_stop, generator=generator,
              bf16=bf16, channels_last=channels_last, bounds=(lo, hi))
    res.info["width"] = width
    return res


@dataclasses.dataclass(frozen=True)
class Frames(StepOptions):
    """`frames` as a stateless callable (iteration and run options: `StepOptions`)."""

    width: int | None = None
    objective: str = "ce"
    init: str = "box"

    attack = staticmethod(frames)
