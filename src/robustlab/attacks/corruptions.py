"""A small MNIST-C-like set of image corruptions with severities 1..5 (spec §3).

Every corruption is a batched function `(x, severity, generator) -> x′` in [0, 1]; the random
parts (noise, directions, line positions) are drawn from the generator, so a seed fixes the
corrupted set. Geometric corruptions fill uncovered pixels with 0 (the black background of
MNIST-like data).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from robustlab.errors import UserError

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
SEVERITIES = (1, 2, 3, 4, 5)


def _u(shape: tuple[int, ...], g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=g.device).to(like)


def _sign(n: int, g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return (torch.randint(2, (n,), generator=g, device=g.device) * 2 - 1).to(like)


def gaussian_noise(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[s - 1]
    return (x + sigma * torch.randn(x.shape, generator=g, device=g.device).to(x)).clamp(0, 1)


def impulse_noise(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[s - 1]
    u, salt = _u(x.shape, g, x), _u(x.shape, g, x)
    return torch.where(u < amount, (salt < 0.5).to(x), x)


def blur(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """Gaussian blur (separable, reflect padding)."""
    sigma = (0.5, 0.75, 1.0, 1.5, 2.0)[s - 1]
    r = max(1, math.ceil(2 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    pad = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if pad < r:
        y = F.pad(y, (r - pad,) * 4, mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return y.clamp(0, 1)


def brightness(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    return (x + (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1]).clamp(0, 1)


def contrast(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    f = (0.6, 0.45, 0.3, 0.2, 0.1)[s - 1]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * f + mean).clamp(0, 1)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).clamp(0, 1)


def _eye(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, 3, dtype=like.dtype, device=like.device).repeat(n, 1, 1)


def rotate(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    deg = (10.0, 20.0, 30.0, 40.0, 50.0)[s - 1]
    a = _sign(x.shape[0], g, x) * math.radians(deg)
    theta = _eye(x.shape[0], x)
    theta[:, 0, 0], theta[:, 0, 1] = a.cos(), -a.sin()
    theta[:, 1, 0], theta[:, 1, 1] = a.sin(), a.cos()
    return _affine(x, theta)


def translate(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """Shift by s/28 of the image side (1..5 px on 28×28) in a random axis-aligned direction."""
    n = x.shape[0]
    shift = 2 * s / 28  # normalized coordinates span 2
    d = torch.randint(4, (n,), generator=g, device=g.device).to(x.device)
    theta = _eye(n, x)
    theta[:, 0, 2] = torch.where(d == 0, shift, torch.where(d == 1, -shift, 0.0))
    theta[:, 1, 2] = torch.where(d == 2, shift, torch.where(d == 3, -shift, 0.0))
    return _affine(x, theta)


def scale(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """Shrink (or, at random, enlarge) about the center."""
    f = (0.9, 0.8, 0.7, 0.6, 0.5)[s - 1]
    grow = _sign(x.shape[0], g, x) > 0
    factor = torch.where(grow, torch.full_like(grow, 1 / (0.5 + f / 2), dtype=x.dtype),
                         torch.full_like(grow, f, dtype=x.dtype))
    theta = _eye(x.shape[0], x)
    theta[:, 0, 0] = 1 / factor
    theta[:, 1, 1] = 1 / factor
    return _affine(x, theta)


def shear(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    k = (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1]
    theta = _eye(x.shape[0], x)
    theta[:, 0, 1] = _sign(x.shape[0], g, x) * k
    return _affine(x, theta)


def _draw(x: torch.Tensor, ink: torch.Tensor) -> torch.Tensor:
    return torch.maximum(x, ink.unsqueeze(1).to(x))


def stripe(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """s bright straight lines (horizontal or vertical, 1 px) at random positions."""
    n, _, H, W = x.shape
    vertical = _sign(n, g, x)[:, None] > 0  # N×1
    pos_v = (_u((n, s), g, x) * W).long()
    pos_h = (_u((n, s), g, x) * H).long()
    cols = torch.arange(W, device=x.device)
    rows = torch.arange(H, device=x.device)
    on_c = (cols[None, None, :] == pos_v[:, :, None]).any(1)  # N×W
    on_r = (rows[None, None, :] == pos_h[:, :, None]).any(1)  # N×H
    ink = torch.where(vertical[:, :, None], on_c[:, None, :].expand(n, H, W),
                      on_r[:, :, None].expand(n, H, W))
    return _draw(x, ink.float())


def zigzag(x: torch.Tensor, s: int, g: torch.Generator) -> torch.Tensor:
    """A bright zigzag polyline across the image; severity adds segments and thickness."""
    n, _, H, W = x.shape
    segs = 2 + s
    ys = _u((n, segs + 1), g, x) * (H - 1)
    xs = torch.linspace(0, W - 1, segs + 1, device=x.device, dtype=x.dtype).expand(n, -1)
    p0 = torch.stack([xs[:, :-1], ys[:, :-1]], -1)  # N×S×2
    p1 = torch.stack([xs[:, 1:], ys[:, 1:]], -1)
    gy, gx = torch.meshgrid(torch.arange(H, device=x.device, dtype=x.dtype),
                            torch.arange(W, device=x.device, dtype=x.dtype), indexing="ij")
    pts = torch.stack([gx, gy], -1).view(1, 1, H * W, 2)
    d = (p1 - p0)[:, :, None]
    t = (((pts - p0[:, :, None]) * d).sum(-1) / (d * d).sum(-1).clamp(min=1e-6)).clamp(0, 1)
    dist = (pts - (p0[:, :, None] + t[..., None] * d)).norm(dim=-1).amin(1)  # N×HW
    width = 0.5 + 0.15 * (s - 1) * (H / 28)
    return _draw(x, (dist <= width).view(n, H, W).float())


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise, "impulse_noise": impulse_noise, "blur": blur,
    "brightness": brightness, "contrast": contrast, "rotate": rotate, "translate": translate,
    "scale": scale, "shear": shear, "stripe": stripe, "zigzag": zigzag,
}


def names() -> list[str]:
    return list(CORRUPTIONS)


def corrupt(x: torch.Tensor, name: str, severity: int = 3, *,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Corrupted copy of the batch `x` (N×C×H×W in [0, 1])."""
    if name not in CORRUPTIONS:
        raise UserError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise UserError(f"corruption severity {severity} is invalid; it must be one of 1..5")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    return CORRUPTIONS[name](x, int(severity), g)
