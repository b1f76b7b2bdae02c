"""Default radii and sizes of the threat models (spec §3).

The radii live with the norms (`robustlab.attacks.norms`, `Norm.radii`). Defaults are given
for 28×28 grayscale (Fashion-MNIST; MNIST has a larger L∞ radius) and for 32×32 color images.
Other image sizes scale the L2 radius with √(D/D_ref) and the L1 and L0 radii with D/D_ref
(D = number of entries), so that tiny test images get proportionate balls.
"""

from __future__ import annotations

import math

from robustlab.attacks.norms import NORMS as _REGISTRY
from robustlab.attacks.norms import get_norm

NORMS = tuple(_REGISTRY)  # the names of the registered norms (`robustlab.attacks.norms.NORMS`)
DISTAL_EPS = 0.3  # L∞ radius around the noise image for distal inputs


def check_norm(norm: str) -> str:
    """`norm` if it names a registered norm, else a `UserError` naming the choices."""
    get_norm(norm)
    return norm


def _family(shape: tuple[int, ...], dataset: str | None) -> tuple[str, int]:
    c = shape[0] if len(shape) == 3 else 1
    if c == 1:
        return ("mnist" if dataset == "mnist" else "gray28"), 28 * 28
    return "color32", 3 * 32 * 32


def default_eps(norm: str, shape: tuple[int, ...], dataset: str | None = None, *,
                unseen: bool = False) -> float:
    """The spec's default radius of `norm` for images of `shape` (C×H×W)."""
    lp = get_norm(norm)
    family, d_ref = _family(shape, dataset)
    radii = lp.radii.get(family, lp.radii["gray28"])
    eps = radii[1 if unseen else 0]
    d = math.prod(shape)
    if d != d_ref:
        eps = lp.scale_radius(eps, d / d_ref)
    return float(eps)


def frame_width(height: int) -> int:
    """Default frame width: 2 px on 28×28, 3 px on 32×32 (⌊0.1·H⌋, at least 1)."""
    return max(1, int(0.1 * height))


def patch_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """Default patch: 7×7 on 28×28, 8×8 on 32×32 (a quarter of each side, at least 1)."""
    h, w = shape[-2], shape[-1]
    return max(1, h // 4), max(1, w // 4)
