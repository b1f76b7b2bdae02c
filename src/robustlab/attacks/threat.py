"""Threat models and their default radii (spec §3).

Defaults are given for 28×28 grayscale (Fashion-MNIST; MNIST has a larger L∞ radius) and for
32×32 color images. Other image sizes scale the L2 radius with √(D/D_ref) and the L1 and L0 radii
with D/D_ref (D = number of entries), so that tiny test images get proportionate balls.
"""

from __future__ import annotations

import enum
import math

from robustlab.errors import UserError


class Threat(str, enum.Enum):
    """The threat models an evaluation suite can contain."""

    LINF = "linf"
    L2 = "l2"
    L1 = "l1"
    L0 = "l0"
    FRAMES = "frames"
    PATCH = "patch"
    DISTAL = "distal"
    CORRUPT = "corrupt"


NORMS = ("linf", "l2", "l1", "l0")
THREATS = tuple(t.value for t in Threat)

# (seen radius, a larger "unseen" radius) per norm.
GRAY28 = {"linf": (0.1, 0.2), "l2": (1.5, 3.0), "l1": (10.0, 18.0), "l0": (15.0, 25.0)}
MNIST = {**GRAY28, "linf": (0.3, 0.4)}
COLOR32 = {"linf": (8 / 255, 16 / 255), "l2": (0.5, 1.0), "l1": (7.85, 12.0), "l0": (10.0, 16.0)}
DISTAL_EPS = 0.3  # L∞ radius around the noise image for distal inputs


def parse_threat(name: str) -> Threat:
    try:
        return Threat(name)
    except ValueError:
        raise UserError(f"unknown threat model {name!r}; choose one of {', '.join(THREATS)}") from None


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    return norm


def _table(shape: tuple[int, ...], dataset: str | None) -> tuple[dict[str, tuple[float, float]], int]:
    c = shape[0] if len(shape) == 3 else 1
    if c == 1:
        return (MNIST if dataset == "mnist" else GRAY28), 28 * 28
    return COLOR32, 3 * 32 * 32


def default_eps(norm: str, shape: tuple[int, ...], dataset: str | None = None, *,
                unseen: bool = False) -> float:
    """The spec's default radius of `norm` for images of `shape` (C×H×W)."""
    check_norm(norm)
    table, d_ref = _table(shape, dataset)
    eps = table[norm][1 if unseen else 0]
    d = math.prod(shape)
    if d != d_ref and norm != "linf":
        ratio = d / d_ref
        eps = eps * math.sqrt(ratio) if norm == "l2" else eps * ratio
        if norm == "l0":
            eps = float(max(1, math.ceil(eps)))
    return float(eps)


def frame_width(height: int) -> int:
    """Default frame width: 2 px on 28×28, 3 px on 32×32 (⌊0.1·H⌋, at least 1)."""
    return max(1, int(0.1 * height))


def patch_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """Default patch: 7×7 on 28×28, 8×8 on 32×32 (a quarter of each side, at least 1)."""
    h, w = shape[-2], shape[-1]
    return max(1, h // 4), max(1, w // 4)
