"""Location-optimized adversarial patches (spec §3).

One h×w patch per image **replaces** pixels: x′ = (1−M)·x + M·P with P ∈ [0, 1]. The content is
optimized with signed-gradient steps from a uniform random start (best iterate kept); the
location is

- `fixed`: the same corner for every image (`position`, default the first allowed corner);
- `random`: uniform over the allowed corners, drawn once per restart;
- `optimized-full` / `optimized-random`: a random start, then after every content step try moving
  the patch by `stride` pixels in each of the 4 directions (`full`) or in one random direction
  (`random`), and take the placement of highest loss among the candidates and the current one,
  all evaluated with the same, just updated content. The content moves with the patch.

Allowed corners keep the patch inside the image and, with `exclude`, off a central box (so the
patch does not simply cover the object).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from robustlab.attacks.base import (
    AttackResult,
    Model,
    RunOptions,
    bview,
    check_bounds,
    eval_mode,
    evaluate_logits,
    merge_into,
)
from robustlab.attacks.pgd import objective_fn, resolve_channels_last, stopped
from robustlab.attacks.threat import patch_size
from robustlab.errors import UserError

LOCATIONS = ("fixed", "random", "optimized-full", "optimized-random")
_ALIASES = {"optimized": "optimized-full", "full": "optimized-full", "opt": "optimized-full"}
_MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right (in units of `stride`)


def parse_location(location: str) -> str:
    loc = _ALIASES.get(location, location)
    if loc not in LOCATIONS:
        raise UserError(f"unknown patch location mode {location!r}; choose one of "
                        f"{', '.join(LOCATIONS)}")
    return loc


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def check_size(image_hw: tuple[int, int], size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = _pair(size)
    H, W = image_hw
    if h < 1 or w < 1 or h > H or w > W:
        raise UserError(f"patch size {h}×{w} is invalid for {H}×{W} images; "
                        f"it must be between 1×1 and {H}×{W}")
    return h, w


def allowed_corners(image_hw: tuple[int, int], size: int | tuple[int, int],
                    exclude: int | tuple[int, int] = 0) -> torch.Tensor:
    """Bool (H−h+1)×(W−w+1): top-left corners where the patch fits and misses the central box."""
    H, W = image_hw
    h, w = check_size(image_hw, size)
    eh, ew = _pair(exclude)
    ok = torch.ones(H - h + 1, W - w + 1, dtype=torch.bool)
    if eh > 0 and ew > 0:
        r0, c0 = (H - eh) // 2, (W - ew) // 2
        r = torch.arange(H - h + 1)[:, None]
        c = torch.arange(W - w + 1)[None, :]
        hits = (r < r0 + eh) & (r + h > r0) & (c < c0 + ew) & (c + w > c0)
        ok &= ~hits
    if not ok.any():
        raise UserError(f"no place for a {h}×{w} patch on {H}×{W} images outside the central "
                        f"{eh}×{ew} box; use a smaller patch or exclusion box")
    return ok


def place(x: torch.Tensor, content: torch.Tensor, pos: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x′, M): the N×C×h×w `content` pasted at top-left corners `pos` (N×2 long: row, col)."""
    n, c, H, W = x.shape
    h, w = content.shape[-2:]
    ri = torch.arange(H, device=x.device)[None, :] - pos[:, :1]  # N×H
    ci = torch.arange(W, device=x.device)[None, :] - pos[:, 1:]  # N×W
    inside = (((ri >= 0) & (ri < h))[:, :, None] & ((ci >= 0) & (ci < w))[:, None, :])[:, None]
    rows = ri.clamp(0, h - 1)[:, None, :, None].expand(n, c, H, w)
    cols = ci.clamp(0, w - 1)[:, None, None, :].expand(n, c, H, W)
    full = content.gather(2, rows).gather(3, cols)
    return torch.where(inside, full, x), inside


def _sample_corners(allowed: torch.Tensor, n: int, generator: torch.Generator,
                    device: torch.device) -> torch.Tensor:
    flat = allowed.flatten().nonzero().squeeze(1)
    pick = flat[torch.randint(len(flat), (n,), generator=generator, device=generator.device).cpu()]
    width = allowed.shape[1]
    return torch.stack([pick // width, pick % width], 1).to(device)


@dataclasses.dataclass(frozen=True)
class _PatchCfg:
    size: tuple[int, int]
    steps: int
    step_size: float
    location: str
    stride: int
    objective: Any
    early_stop: float | None
    bf16: bool
    channels_last: bool
    bounds: tuple[float, float] = (0.0, 1.0)


def _forward(model: Model, x: torch.Tensor, cfg: _PatchCfg) -> torch.Tensor:
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if cfg.bf16:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return model(x).float()
    return model(x).float()


def _loss_grad(model: Model, x: torch.Tensor, content: torch.Tensor, pos: torch.Tensor, y: Any,
               cfg: _PatchCfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    content = content.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = _forward(model, place(x, content, pos)[0], cfg)
        loss = cfg.objective(logits, y)
        (g,) = torch.autograd.grad(loss.sum(), content)
    return loss.detach(), g, logits.detach()


@torch.no_grad()
def _move(model: Model, x: torch.Tensor, content: torch.Tensor, pos: torch.Tensor, y: Any,
          allowed: torch.Tensor, cfg: _PatchCfg, pick: torch.Tensor | None) -> torch.Tensor:
    """The best of the current placement and the candidate moves, all with the current content.

    `pick` (N, for `optimized-random`) is the one direction to try per example.
    """
    n = x.shape[0]
    moves = torch.tensor(_MOVES, device=x.device) * cfg.stride  # 4×2
    if pick is None:
        cand = pos[None] + moves[:, None]  # 4×N×2
    else:
        cand = (pos + moves[pick])[None]  # 1×N×2
    cand = torch.cat([pos[None], cand])  # (1+M)×N×2; index 0 is the current placement
    m = cand.shape[0]
    hmax, wmax = allowed.shape
    inb = ((cand[..., 0] >= 0) & (cand[..., 0] < hmax) & (cand[..., 1] >= 0)
           & (cand[..., 1] < wmax))
    safe = torch.stack([cand[..., 0].clamp(0, hmax - 1), cand[..., 1].clamp(0, wmax - 1)], -1)
    valid = inb & allowed.to(x.device)[safe[..., 0], safe[..., 1]]
    flat = safe.reshape(m * n, 2)
    xs = x.repeat(m, 1, 1, 1)
    ys = y.repeat(m, *([1] * (y.ndim - 1))) if isinstance(y, torch.Tensor) else y
    losses = cfg.objective(_forward(model, place(xs, content.repeat(m, 1, 1, 1), flat)[0], cfg),
                           ys).view(m, n)
    losses = losses.masked_fill(~valid, float("-inf"))
    choice = losses.argmax(0)  # ties keep the current placement (first maximum)
    return safe[choice, torch.arange(n, device=x.device)]


def _patch_once(model: Model, x: torch.Tensor, y: Any, cfg: _PatchCfg, allowed: torch.Tensor,
                pos: torch.Tensor, content: torch.Tensor, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    loss, grad, logits = _loss_grad(model, x, content, pos, y, cfg)
    s: dict[str, torch.Tensor] = {"content": content, "pos": pos, "grad": grad,
                                  "best": content.clone(), "best_pos": pos.clone(),
                                  "best_loss": loss}
    stopping = cfg.early_stop is not None
    if stopping:
        s["done"] = stopped(logits, y, cfg.early_stop)
    for _ in range(cfg.steps):
        idx, st = None, s
        if stopping:
            idx = (~s["done"]).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            if idx.numel() < n:
                st = {k: v[idx] for k, v in s.items()}
            else:
                idx = None
        xs = x if idx is None else x[idx]
        ys = y if idx is None or y is None else y[idx]
        st["content"] = (st["content"] + cfg.step_size * st["grad"].sign()).clamp(*cfg.bounds)
        if cfg.location.startswith("optimized"):
            pick = None
            if cfg.location == "optimized-random":  # drawn for all, then indexed: see pgd
                pick = torch.randint(4, (n,), generator=generator, device=generator.device)
                pick = pick.to(x.device) if idx is None else pick.to(x.device)[idx]
            st["pos"] = _move(model, xs, st["content"], st["pos"], ys, allowed, cfg, pick)
        loss, st["grad"], logits = _loss_grad(model, xs, st["content"], st["pos"], ys, cfg)
        better = loss > st["best_loss"]
        if stopping:
            done = stopped(logits, ys, cfg.early_stop)
            better = better | done
            st["done"] = st["done"] | done
        st["best"] = torch.where(bview(better, st["content"]), st["content"], st["best"])
        st["best_pos"] = torch.where(better[:, None], st["pos"], st["best_pos"])
        st["best_loss"] = torch.where(better, loss, st["best_loss"])
        if idx is not None:
            for k, v in st.items():
                s[k][idx] = v
    return s["best"], s["best_pos"]


def patch_attack(model: Model, x: torch.Tensor, y: Any, *, size: int | tuple[int, int] | None = None,
                 steps: int = 100, step_size: float = 0.05, location: str = "optimized-full",
                 stride: int = 2, exclude: int | tuple[int, int] = 0,
                 position: tuple[int, int] | None = None, restarts: int = 1,
                 objective: str = "ce", early_stop: float | None = None,
                 generator: torch.Generator | None = None, bf16: bool = False,
                 channels_last: bool | None = None,
                 bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """A patch per image; `info` holds the final `position` (N×2) and `content` (N×C×h×w).

    Defaults follow the spec's evaluation setting (100 steps of 0.05, optimized locations, a
    7×7 patch on 28×28 and 8×8 on 32×32 images). Restarts keep the per-example worst case.
    The patch content lies in the box `bounds` (default [0, 1]); an `nn.Module` runs in eval mode.
    """
    bounds = check_bounds(x, bounds)
    with eval_mode(model):
        return _patch_attack(model, x, y, size, steps, step_size, location, stride, exclude,
                             position, restarts, objective, early_stop, generator, bf16,
                             resolve_channels_last(channels_last, x), bounds)


def _patch_attack(model: Model, x: torch.Tensor, y: Any, size: int | tuple[int, int] | None,
                  steps: int, step_size: float, location: str, stride: int,
                  exclude: int | tuple[int, int], position: tuple[int, int] | None, restarts: int,
                  objective: str, early_stop: float | None, generator: torch.Generator | None,
                  bf16: bool, channels_last: bool, bounds: tuple[float, float]) -> AttackResult:
    H, W = int(x.shape[-2]), int(x.shape[-1])
    hw = check_size((H, W), size if size is not None else patch_size(tuple(x.shape[1:])))
    loc = parse_location(location)
    if steps < 0:
        raise UserError(f"patch steps {steps} is invalid; it must be an integer ≥ 0")
    if not step_size >= 0:
        raise UserError(f"patch step size {step_size} is invalid; it must be ≥ 0")
    if stride < 1:
        raise UserError(f"patch stride {stride} is invalid; it must be an integer ≥ 1")
    if restarts < 1:
        raise UserError(f"restarts {restarts} is invalid; it must be an integer ≥ 1")
    allowed = allowed_corners((H, W), hw, exclude)
    start = None
    if loc == "fixed":
        if position is None:
            first = allowed.flatten().nonzero()[0, 0]
            position = (int(first) // allowed.shape[1], int(first) % allowed.shape[1])
        r, c = position
        if not (0 <= r < allowed.shape[0] and 0 <= c < allowed.shape[1]) or not allowed[r, c]:
            raise UserError(f"patch position {tuple(position)} is not allowed for a {hw[0]}×{hw[1]} "
                            f"patch on {H}×{W} images")
        start = torch.tensor([[r, c]], device=x.device)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    cfg = _PatchCfg(hw, int(steps), float(step_size), loc, int(stride), objective_fn(objective),
                    early_stop, bool(bf16), bool(channels_last), bounds)
    x = x.detach()
    labels = y if isinstance(y, torch.Tensor) and not y.dtype.is_floating_point else None
    result: AttackResult | None = None
    n = x.shape[0]
    for _ in range(restarts):
        idx = torch.arange(n, device=x.device)
        if result is not None and early_stop is not None:
            idx = (~stopped(result.logits, labels, early_stop)).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
        # Starts are drawn for every example and then indexed (early exit does not shift them).
        c = x.shape[1]
        pos0 = (start.expand(n, 2).clone() if start is not None
                else _sample_corners(allowed, n, generator, x.device))[idx]
        content0 = torch.rand((n, c, *hw), generator=generator, device=generator.device).to(x)[idx]
        content0 = bounds[0] + (bounds[1] - bounds[0]) * content0
        xs = x[idx]
        ys = None if y is None else y[idx]
        content, pos = _patch_once(model, xs, ys, cfg, allowed, pos0, content0, generator)
        x_adv = place(xs, content, pos)[0]
        part = AttackResult(x_adv, evaluate_logits(model, x_adv), None if labels is None else ys,
                            {"position": pos, "content": content})
        result = part if result is None else merge_into(result, idx, part)
    assert result is not None
    result.y = labels
    result.info.update(size=hw, location=loc)
    return result


@dataclasses.dataclass(frozen=True)
class Patch(RunOptions):
    """`patch_attack` as a stateless callable."""

    size: int | tuple[int, int] | None = None
    steps: int = 100
    step_size: float = 0.05
    location: str = "optimized-full"
    stride: int = 2
    exclude: int | tuple[int, int] = 0
    position: tuple[int, int] | None = None
    restarts: int = 1
    objective: str = "ce"

    attack = staticmethod(patch_attack)
