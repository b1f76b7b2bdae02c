"""Projected gradient descent for L∞, L2, L1 and L0 balls intersected with the box [0, 1] (spec §3).

PGD maximizes a per-example loss L(δ) (= −e(δ) in the spec's notation) over x + δ with ‖δ‖ ≤ ε and
x + δ ∈ [0, 1]:

- objectives `ce` (cross-entropy), `conf` (max_{k≠y} softmax_k, against CCAT), `distal`
  (max_k log softmax_k, no labels), `dlr` (difference of logits ratio), or any callable
  `(logits, target) -> per-example loss` (the target is indexed along with x);
- step directions: L∞ sign(g); L2 g/‖g‖₂; L1 the top-q fraction of |g| (by magnitude), signed and
  L1-normalized; L0 g/‖g‖₁. For the sparse norms (and L2) gradient entries that push a pixel
  already at 0 or 1 further out are zeroed first, so the step is not wasted on the box;
- projections: L∞ clamp, L2 rescale, L1 exact (sort-based, batched) projection, L0 keep the ⌈ε⌉
  largest |δ| entries (or pixels), then the box;
- initializations `zero`, `cube` (uniform in the L∞ cube of half-width min(ε, 1), projected),
  `norm` (a random direction of the norm times ε·U(0, 1)), `tiny` (0.001·N(0, 1), TRADES),
  `box` (x + δ uniform in [0, 1], projected; for frames), or a comma-separated list for a
  per-example random choice ("zero,norm");
- momentum (β: exponential average of L1-normalized gradients) and backtracking (a step that
  does not increase the loss is rejected for that example, whose step size is divided by 1.5);
- the best iterate per example (initialization included); restarts keep the per-example worst
  case (`robustlab.attacks.base.worst_case_key`);
- optional early exit (evaluation): an example misclassified with wrong-class confidence
  ≥ `early_stop` stops iterating and skips later restarts.

All state is batched; no Python loop runs per example.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from robustlab.attacks.base import AttackResult, Model, evaluate_logits, merge_into, wrong_confidence
from robustlab.attacks.threat import NORMS, check_norm, default_eps
from robustlab.errors import UserError

OBJECTIVES = ("ce", "conf", "distal", "dlr")
INITS = ("zero", "cube", "norm", "tiny", "box")
Objective = Callable[[torch.Tensor, Any], torch.Tensor]


# ---------------------------------------------------------------- objectives (to maximize)

def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _conf(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return wrong_confidence(logits, y)


def _distal(logits: torch.Tensor, y: Any) -> torch.Tensor:
    return F.log_softmax(logits, dim=1).amax(1)


def _dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z_sorted = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    z_other = logits.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
    third = z_sorted[:, 2] if logits.shape[1] > 2 else z_sorted[:, -1]
    return (z_other - z_y) / (z_sorted[:, 0] - third + 1e-12)


_OBJECTIVES: dict[str, Objective] = {"ce": _ce, "conf": _conf, "distal": _distal, "dlr": _dlr}


def objective_fn(objective: str | Objective) -> Objective:
    """The per-example loss to maximize for an objective name (or a callable, returned as is)."""
    if callable(objective):
        return objective
    if objective not in _OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    return _OBJECTIVES[objective]


# ---------------------------------------------------------------- norms and projections

def _bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def lp_norm(delta: torch.Tensor, norm: str, *, pixels: bool = False) -> torch.Tensor:
    """Per-example norm of δ (L0: number of nonzero entries, or pixels with `pixels`)."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(dim=1)
    if norm == "l1":
        return flat.abs().sum(1)
    if norm == "l0":
        if pixels and delta.ndim == 4:
            return (delta != 0).any(1).flatten(1).sum(1).to(delta.dtype)
        return (flat != 0).sum(1).to(delta.dtype)
    raise UserError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def project_l1(delta: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Exact Euclidean projection of every δ_n onto the L1 ball of radius ε (sort-based, batched).

    Soft-thresholding |δ| at θ_n, where θ_n follows from the sorted magnitudes (Duchi et al. 2008):
    ρ = max{j : u_j > (Σ_{i≤j} u_i − ε)/j}, θ = (Σ_{i≤ρ} u_i − ε)/ρ.
    """
    v = delta.flatten(1)
    a = v.abs()
    n, d = a.shape
    eps_t = torch.as_tensor(eps, dtype=a.dtype, device=a.device).expand(n)
    u = a.sort(dim=1, descending=True).values
    css = u.cumsum(1) - eps_t[:, None]
    j = torch.arange(1, d + 1, device=a.device, dtype=a.dtype)
    rho = ((u * j > css) * j).amax(1).clamp(min=1)
    theta = css.gather(1, (rho.long() - 1)[:, None]).squeeze(1) / rho
    shrunk = v.sign() * (a - theta[:, None]).clamp(min=0)
    inside = a.sum(1) <= eps_t
    return torch.where(inside[:, None], v, shrunk).view_as(delta)


def project_l0(delta: torch.Tensor, k: int, *, pixels: bool = False) -> torch.Tensor:
    """Keep the k entries (or pixels, across channels) of largest |δ| per example; zero the rest."""
    if pixels and delta.ndim == 4:
        mag = delta.abs().sum(1).flatten(1)
        if k >= mag.shape[1]:
            return delta
        keep = torch.zeros_like(mag).scatter_(1, mag.topk(k, dim=1).indices, 1.0)
        return delta * keep.view(delta.shape[0], 1, *delta.shape[2:])
    flat = delta.flatten(1)
    if k >= flat.shape[1]:
        return delta
    keep = torch.zeros_like(flat).scatter_(1, flat.abs().topk(k, dim=1).indices, 1.0)
    return (flat * keep).view_as(delta)


def project(delta: torch.Tensor, x: torch.Tensor, norm: str, eps: float, *,
            mask: torch.Tensor | None = None, pixels: bool = False) -> torch.Tensor:
    """Onto {δ : ‖δ‖ ≤ ε, x + δ ∈ [0, 1], δ = 0 outside `mask`}: norm projection, then the box.

    The box clamp only shrinks |δ| entry-wise, so the result stays inside the ball.
    """
    if mask is not None:
        delta = delta * mask
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    elif norm == "l2":
        nrm = delta.flatten(1).norm(dim=1)
        delta = delta * _bview((eps / nrm.clamp(min=1e-12)).clamp(max=1.0), delta)
    elif norm == "l1":
        delta = project_l1(delta, eps)
    elif norm == "l0":
        delta = project_l0(delta, l0_budget(eps), pixels=pixels)
    return (x + delta).clamp(0, 1) - x


def l0_budget(eps: float) -> int:
    return int(math.ceil(eps - 1e-9))


def direction(g: torch.Tensor, norm: str, *, l1_fraction: float = 0.025) -> torch.Tensor:
    """The normalized ascent step of `norm` from the gradient g (per example)."""
    flat = g.flatten(1)
    if norm == "linf":
        return g.sign()
    if norm == "l2":
        return g / _bview(flat.norm(dim=1).clamp(min=1e-12), g)
    if norm == "l1":
        k = max(1, int(math.ceil(l1_fraction * flat.shape[1])))
        idx = flat.abs().topk(k, dim=1).indices
        step = torch.zeros_like(flat).scatter_(1, idx, flat.gather(1, idx).sign())
        return (step / step.abs().sum(1, keepdim=True).clamp(min=1.0)).view_as(g)
    return g / _bview(flat.abs().sum(1).clamp(min=1e-12), g)  # l0


def _inward(g: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Zero gradient entries that push a pixel at the box boundary further out."""
    out = ((x_adv <= 0) & (g < 0)) | ((x_adv >= 1) & (g > 0))
    return g.masked_fill(out, 0.0)


# ---------------------------------------------------------------- initialization

def _rand(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor, kind: str
          ) -> torch.Tensor:
    gdev = generator.device
    if kind == "uniform":
        t = torch.rand(shape, generator=generator, device=gdev)
    else:
        t = torch.randn(shape, generator=generator, device=gdev)
    return t.to(device=like.device, dtype=like.dtype)


def _init_one(kind: str, x: torch.Tensor, norm: str, eps: float, generator: torch.Generator,
              pixels: bool) -> torch.Tensor:
    n = x.shape[0]
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "tiny":
        return 0.001 * _rand(x.shape, generator, x, "normal")
    if kind == "box":
        return _rand(x.shape, generator, x, "uniform") - x
    if kind == "cube":
        half = min(eps, 1.0)
        return (2 * _rand(x.shape, generator, x, "uniform") - 1) * half
    # "norm": a random direction of the norm times ε·U(0, 1)
    radius = _rand((n,), generator, x, "uniform") * eps
    if norm == "linf":
        u = 2 * _rand(x.shape, generator, x, "uniform") - 1
        dirn = u / _bview(u.flatten(1).abs().amax(1).clamp(min=1e-12), u)
    elif norm == "l2":
        u = _rand(x.shape, generator, x, "normal")
        dirn = u / _bview(u.flatten(1).norm(dim=1).clamp(min=1e-12), u)
    elif norm == "l1":
        u = _rand(x.shape, generator, x, "uniform").clamp(min=1e-12)
        s = _rand(x.shape, generator, x, "normal").sign()
        lap = -u.log() * s  # Laplace: uniform direction on the L1 sphere after normalizing
        dirn = lap / _bview(lap.flatten(1).abs().sum(1).clamp(min=1e-12), lap)
    else:  # l0: ⌈ε⌉ random entries with values U(−1, 1), magnitude scaled by U(0, 1)
        scores = _rand(x.shape, generator, x, "uniform")
        vals = 2 * _rand(x.shape, generator, x, "uniform") - 1
        dirn = project_l0(scores, l0_budget(eps), pixels=pixels).ne(0).to(x.dtype) * vals
        return dirn * _bview(radius / max(eps, 1e-12), dirn)
    return dirn * _bview(radius, dirn)


def parse_init(init: str) -> list[str]:
    kinds = [k.strip() for k in init.split(",") if k.strip()]
    bad = [k for k in kinds if k not in INITS]
    if not kinds or bad:
        raise UserError(f"unknown init {init!r}; choose one of {', '.join(INITS)} "
                        "or a comma-separated list of them")
    return kinds


def init_delta(x: torch.Tensor, norm: str, eps: float, init: str, generator: torch.Generator, *,
               pixels: bool = False) -> torch.Tensor:
    """A starting δ (before projection); a list of kinds picks one per example at random."""
    kinds = parse_init(init)
    if len(kinds) == 1:
        return _init_one(kinds[0], x, norm, eps, generator, pixels)
    choice = torch.randint(len(kinds), (x.shape[0],), generator=generator,
                           device=generator.device).to(x.device)
    cands = torch.stack([_init_one(k, x, norm, eps, generator, pixels) for k in kinds])
    return cands.gather(0, choice.view(1, -1, *([1] * (x.ndim - 1))).expand(1, *x.shape)).squeeze(0)


# ---------------------------------------------------------------- the engine

@dataclasses.dataclass(frozen=True)
class _Cfg:
    norm: str
    eps: float
    steps: int
    step_size: float
    objective: Objective
    init: str
    momentum: float
    backtrack: bool
    l1_fraction: float
    pixels: bool
    early_stop: float | None
    bf16: bool
    channels_last: bool


def _loss_grad(model: Model, x: torch.Tensor, delta: torch.Tensor, y: Any, cfg: _Cfg
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    delta = delta.detach().requires_grad_(True)
    inp = x + delta
    if cfg.channels_last and inp.ndim == 4:
        inp = inp.contiguous(memory_format=torch.channels_last)
    ctx = (torch.autocast(x.device.type, dtype=torch.bfloat16) if cfg.bf16
           else contextlib.nullcontext())
    with torch.enable_grad(), ctx:
        logits = model(inp)
    logits = logits.float()
    with torch.enable_grad():
        loss = cfg.objective(logits, y)
        (g,) = torch.autograd.grad(loss.sum(), delta)
    return loss.detach(), g.detach(), logits.detach()


def _stopped(logits: torch.Tensor, y: Any, threshold: float) -> torch.Tensor:
    if y is None or not isinstance(y, torch.Tensor) or y.dtype.is_floating_point:
        return F.softmax(logits, 1).amax(1) >= threshold
    return (logits.argmax(1) != y) & (wrong_confidence(logits, y) >= threshold)


def _index(y: Any, idx: torch.Tensor | None) -> Any:
    if idx is None or y is None:
        return y
    return y[idx]


def _attack_once(model: Model, x: torch.Tensor, y: Any, cfg: _Cfg, delta0: torch.Tensor,
                 mask: torch.Tensor | None) -> torch.Tensor:
    """One PGD run from the starting point δ₀; returns the best δ per example."""
    n = x.shape[0]
    delta = project(delta0, x, cfg.norm, cfg.eps, mask=mask, pixels=cfg.pixels)
    loss, grad, logits = _loss_grad(model, x, delta, y, cfg)
    s: dict[str, torch.Tensor] = {
        "delta": delta, "loss": loss, "grad": grad, "best": delta.clone(), "best_loss": loss.clone(),
        "lr": torch.full((n,), cfg.step_size, device=x.device, dtype=x.dtype)}
    if cfg.momentum > 0:
        s["m"] = torch.zeros_like(x)
    stopping = cfg.early_stop is not None
    if stopping:
        s["done"] = _stopped(logits, y, cfg.early_stop)
    x_full, y_full, mask_full = x, y, mask
    for _ in range(cfg.steps):
        idx = None
        st = s
        if stopping:
            idx = (~s["done"]).nonzero().squeeze(1)  # one sync per iteration, not per example
            if idx.numel() == 0:
                break
            if idx.numel() < n:
                st = {k: v[idx] for k, v in s.items()}
            else:
                idx = None
        xs, ys = _index(x_full, idx), _index(y_full, idx)
        ms = mask_full if mask_full is None or mask_full.shape[0] == 1 else _index(mask_full, idx)
        g = st["grad"]
        if mask is not None:
            g = g * ms
        if cfg.norm != "linf":
            g = _inward(g, xs + st["delta"])
        if cfg.momentum > 0:
            gn = g / _bview(g.flatten(1).abs().sum(1).clamp(min=1e-12), g)
            st["m"] = cfg.momentum * st["m"] + (1 - cfg.momentum) * gn
            g = st["m"]
        step = direction(g, cfg.norm, l1_fraction=cfg.l1_fraction)
        cand = project(st["delta"] + _bview(st["lr"], step) * step, xs, cfg.norm, cfg.eps,
                       mask=ms, pixels=cfg.pixels)
        loss_c, grad_c, logits_c = _loss_grad(model, xs, cand, ys, cfg)
        if cfg.backtrack:
            accept = loss_c > st["loss"]
            st["lr"] = torch.where(accept, st["lr"], st["lr"] / 1.5)
            st["delta"] = torch.where(_bview(accept, cand), cand, st["delta"])
            st["grad"] = torch.where(_bview(accept, cand), grad_c, st["grad"])
            st["loss"] = torch.where(accept, loss_c, st["loss"])
        else:
            st["delta"], st["grad"], st["loss"] = cand, grad_c, loss_c
        better = loss_c > st["best_loss"]
        if stopping:
            done_c = _stopped(logits_c, ys, cfg.early_stop)
            better = better | done_c
            st["done"] = st["done"] | done_c
        st["best"] = torch.where(_bview(better, cand), cand, st["best"])
        st["best_loss"] = torch.where(better, loss_c, st["best_loss"])
        if idx is not None:
            for k, v in st.items():
                s[k][idx] = v
    return s["best"]


def _check(norm: str, eps: float, steps: int, restarts: int, step_size: float | None,
           momentum: float, l1_fraction: float, early_stop: float | None) -> None:
    check_norm(norm)
    if not eps >= 0 or math.isinf(eps):
        raise UserError(f"eps {eps} is invalid; it must be a finite number ≥ 0")
    if steps < 0:
        raise UserError(f"steps {steps} is invalid; it must be an integer ≥ 0")
    if restarts < 1:
        raise UserError(f"restarts {restarts} is invalid; it must be an integer ≥ 1")
    if step_size is not None and not step_size > 0:
        raise UserError(f"step size {step_size} is invalid; it must be > 0")
    if not 0 <= momentum < 1:
        raise UserError(f"momentum {momentum} is invalid; it must be in [0, 1)")
    if not 0 < l1_fraction <= 1:
        raise UserError(f"l1 fraction {l1_fraction} is invalid; it must be in (0, 1]")
    if early_stop is not None and not 0 <= early_stop <= 1:
        raise UserError(f"early-stop confidence {early_stop} is invalid; it must be in [0, 1]")


def default_step_size(eps: float, steps: int, norm: str = "linf") -> float:
    """2.5·ε/steps (enough to cross the ball in 40% of the iterations); for L0 5·ε.

    The L0 step g/‖g‖₁ spreads unit mass over all entries, so a step must be large for single
    entries to reach the box (on Fashion-MNIST, ε₀ = 15: RErr of a normal model 33% with
    2.5·ε/steps, 78% with 5·ε, both 20 iterations).
    """
    if norm == "l0":
        return 5.0 * eps
    return 2.5 * eps / max(steps, 1)


def pgd(model: Model, x: torch.Tensor, y: Any = None, *, norm: str = "linf",
        eps: float | None = None, steps: int = 40, step_size: float | None = None,
        objective: str | Objective = "ce", init: str = "norm", restarts: int = 1,
        momentum: float = 0.0, backtrack: bool = False, l1_fraction: float = 0.025,
        l0_pixels: bool = False, mask: torch.Tensor | None = None,
        early_stop: float | None = None, generator: torch.Generator | None = None,
        bf16: bool = False, channels_last: bool = False) -> AttackResult:
    """PGD on `model` at inputs `x` (labels `y`; None for `distal`) within the `norm` ball of `eps`.

    `eps=None` takes the spec default for the image size; `step_size=None` is
    `default_step_size` (2.5·ε/steps, L0: 5·ε). `mask` (broadcastable to x, 0/1)
    restricts δ to its support (adversarial frames). Random starts draw from `generator`
    (default: a generator seeded 0). With `bf16` the iterations run under bfloat16 autocast; the
    returned logits are always recomputed in float32 at the final x_adv.
    """
    if eps is None:
        eps = default_eps(norm, tuple(x.shape[1:]))
    _check(norm, eps, steps, restarts, step_size, momentum, l1_fraction, early_stop)
    parse_init(init)
    obj = objective_fn(objective)
    if y is None and not callable(objective) and objective != "distal":
        raise UserError(f"objective {objective!r} needs labels; only 'distal' works without")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    x = x.detach()
    cfg = _Cfg(norm, float(eps), int(steps),
               float(step_size) if step_size is not None else default_step_size(eps, steps, norm),
               obj, init, float(momentum), bool(backtrack), float(l1_fraction), bool(l0_pixels),
               early_stop, bool(bf16), bool(channels_last))
    labels = y if isinstance(y, torch.Tensor) and not y.dtype.is_floating_point else None
    result: AttackResult | None = None
    n = x.shape[0]
    for _ in range(restarts):
        if result is None:
            idx = torch.arange(n, device=x.device)
        else:
            if early_stop is not None:
                idx = (~_stopped(result.logits, labels, early_stop)).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
            else:
                idx = torch.arange(n, device=x.device)
        # Draw the start for every example, so that the random numbers do not depend on
        # which examples an early exit has already removed.
        delta0 = init_delta(x, norm, float(eps), init, generator, pixels=l0_pixels)[idx]
        xs = x[idx]
        m = mask if mask is None or mask.shape[0] == 1 else mask[idx]
        delta = _attack_once(model, xs, _index(y, idx), cfg, delta0, m)
        x_adv = (xs + delta).clamp(0, 1)
        part = AttackResult(x_adv, evaluate_logits(model, x_adv), _index(labels, idx))
        result = part if result is None else merge_into(result, idx, part)
    assert result is not None
    result.y = labels
    result.info["eps"] = float(eps)
    return result


@dataclasses.dataclass(frozen=True)
class PGD:
    """PGD as a stateless callable: `PGD(norm="l2", eps=1.5)(model, x, y, generator=g)`."""

    norm: str = "linf"
    eps: float | None = None
    steps: int = 40
    step_size: float | None = None
    objective: str = "ce"
    init: str = "norm"
    restarts: int = 1
    momentum: float = 0.0
    backtrack: bool = False
    l1_fraction: float = 0.025
    l0_pixels: bool = False
    early_stop: float | None = None
    bf16: bool = False
    channels_last: bool = False

    def __call__(self, model: Model, x: torch.Tensor, y: Any = None, *,
                 generator: torch.Generator | None = None,
                 mask: torch.Tensor | None = None) -> AttackResult:
        return pgd(model, x, y, mask=mask, generator=generator, **dataclasses.asdict(self))
