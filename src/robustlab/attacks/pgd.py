"""Projected gradient descent for L∞, L2, L1 and L0 balls intersected with a box (spec §3, §3a).

PGD maximizes a per-example loss L(δ) (= −e(δ) in the spec's notation) over x + δ with ‖δ‖ ≤ ε and
x + δ ∈ [lo, hi] (`bounds`, default [0, 1]):

- objectives `ce` (cross-entropy), `conf` (max_{k≠y} softmax_k, against CCAT), `distal`
  (max_k log softmax_k, no labels), `dlr` (difference of logits ratio), or any callable
  `(logits, target) -> per-example loss` (the target is indexed along with x);
- step directions: L∞ sign(g); L2 g/‖g‖₂; L1 the top-q fraction of |g| (by magnitude), signed and
  L1-normalized; L0 g/‖g‖₁. For the sparse norms (and L2) gradient entries that push a pixel
  already at the box boundary further out are zeroed first, so the step is not wasted on the box;
- projections: L∞ clamp, L2 rescale, L1 exact (sort-based, batched) projection, L0 keep the ⌈ε⌉
  largest |δ| entries (or pixels), then the box;
- initializations `zero`, `cube` (uniform in the L∞ cube of half-width min(ε, hi − lo), projected),
  `norm` (a random direction of the norm times ε·U(0, 1)), `sphere` (the same direction times ε:
  APGD's L2/L1 start, as in the APGD papers), `tiny` (0.001·N(0, 1), TRADES),
  `box` (x + δ uniform in the box, projected; for frames), or a comma-separated list for a
  per-example random choice ("zero,norm");
- momentum (β: exponential average of L1-normalized gradients) and backtracking (a step that
  does not increase the loss is rejected for that example, whose step size is divided by 1.5);
- the best iterate per example (initialization included), ranked by the worst-case key of
  spec §2 (`robustlab.attacks.base.worst_case_key`: misclassified first, then the highest
  wrong-class confidence; the loss breaks ties), never by the loss alone; restarts keep the
  per-example worst case. Without integer labels (distal inputs, soft labels) the loss ranks;
- optional early exit (evaluation): an example misclassified with wrong-class confidence
  ≥ `early_stop` stops iterating and skips later restarts.

The engine (`run_engine`) is shared with APGD (`robustlab.attacks.apgd`): a *step rule* proposes
the next iterate and updates its own per-example state; the engine evaluates, keeps the best
iterate and runs the early exit. Exactness of the early exit: every key, stop test and returned
verdict uses float32 logits (with `bf16` the gradient comes from a bfloat16 autocast pass and a
float32 forward gives the logits), and the model always sees batches of one fixed number of
rows (`block_rows`; the still-running examples are packed and padded), so an example's
trajectory does not depend on which other examples are still running: early exit gives exactly
the verdicts of a run without it.

All state is batched; no Python loop runs per example.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from robustlab.attacks.base import (
    AttackResult,
    Model,
    StepOptions,
    bview,
    check_attack_args,
    check_bounds,
    eval_mode,
    merge_into,
    take_rows,
    target_key,
    worst_case_key,
    wrong_confidence,
)
from robustlab.attacks.norms import Bounds, Norm, draw, get_norm, inward
from robustlab.attacks.threat import default_eps
from robustlab.errors import UserError

OBJECTIVES = ("ce", "conf", "distal", "dlr")
INITS = ("zero", "cube", "norm", "sphere", "tiny", "box")
TARGETS = ("random", "least-likely")
Objective = Callable[[torch.Tensor, Any], torch.Tensor]


# ---------------------------------------------------------------- objectives (to maximize)

def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example."""
    return F.cross_entropy(logits, y, reduction="none")


def conf_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{k≠y} softmax_k (against CCAT)."""
    return wrong_confidence(logits, y)


def distal_loss(logits: torch.Tensor, y: Any) -> torch.Tensor:
    """max_k log softmax_k (no labels)."""
    return F.log_softmax(logits, dim=1).amax(1)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(max_{k≠y} z_k − z_y)/(z_π1 − z_π3): −DLR, maximized by the attack (needs K ≥ 3)."""
    z_sorted = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    z_other = logits.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
    third = z_sorted[:, 2] if logits.shape[1] > 2 else z_sorted[:, -1]
    return (z_other - z_y) / (z_sorted[:, 0] - third + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
    """(z_t − z_y)/(z_π1 − (z_π3 + z_π4)/2) for `yt` = N×2 (true class y, target t); K ≥ 4."""
    y, t = yt[:, 0], yt[:, 1]
    z_sorted = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    z_t = logits.gather(1, t.view(-1, 1)).squeeze(1)
    k = logits.shape[1]
    third, fourth = z_sorted[:, min(2, k - 1)], z_sorted[:, min(3, k - 1)]
    return (z_t - z_y) / (z_sorted[:, 0] - 0.5 * (third + fourth) + 1e-12)


def ce_to_target_loss(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """−CE to the target class t."""
    return -F.cross_entropy(logits, t, reduction="none")


def conf_of_target_loss(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """softmax_t."""
    return F.softmax(logits, 1).gather(1, t.view(-1, 1)).squeeze(1)


OBJECTIVE_FNS: dict[str, Objective] = {"ce": ce_loss, "conf": conf_loss, "distal": distal_loss,
                                       "dlr": dlr_loss}
# Targeted attacks (`target=`): the objective receives the target class t (`dlr`: the pair (y, t)).
TARGETED: dict[str, Objective] = {"ce": ce_to_target_loss, "conf": conf_of_target_loss,
                                   "dlr": dlr_targeted_loss}


def objective_fn(objective: str | Objective) -> Objective:
    """The per-example loss to maximize for an objective name (or a callable, returned as is)."""
    if callable(objective):
        return objective
    if objective not in OBJECTIVE_FNS:
        raise UserError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVE_FNS[objective]


# ---------------------------------------------------------------- norms (robustlab.attacks.norms)

def lp_norm(delta: torch.Tensor, norm: str, *, pixels: bool = False) -> torch.Tensor:
    """Per-example norm of δ (L0: number of nonzero entries, or pixels with `pixels`)."""
    return get_norm(norm).norm(delta, pixels=pixels)


def project(delta: torch.Tensor, x: torch.Tensor, norm: str, eps: float, *,
            mask: torch.Tensor | None = None, pixels: bool = False,
            bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """Onto {δ : ‖δ‖ ≤ ε, x + δ ∈ [lo, hi], δ = 0 outside `mask`}: norm projection, then the box."""
    return get_norm(norm).project(delta, x, eps, mask=mask, pixels=pixels, bounds=bounds)


def direction(g: torch.Tensor, norm: str, *, l1_fraction: float = 0.025) -> torch.Tensor:
    """The normalized ascent step of `norm` from the gradient g (per example)."""
    return get_norm(norm).direction(g, l1_fraction=l1_fraction)


# ---------------------------------------------------------------- initialization

def init_one(kind: str, x: torch.Tensor, norm: str, eps: float, generator: torch.Generator,
             pixels: bool = False, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """A starting δ of one init kind (see the module docstring; before projection)."""
    lo, hi = bounds
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "tiny":
        return 0.001 * draw(x.shape, generator, x, "normal")
    if kind == "box":
        return lo + (hi - lo) * draw(x.shape, generator, x, "uniform") - x
    if kind == "cube":
        half = min(eps, hi - lo)
        return (2 * draw(x.shape, generator, x, "uniform") - 1) * half
    full = {"full": True} if kind == "sphere" else {}  # a norm of one's own may lack `full`
    return get_norm(norm).random_start(x, eps, generator, pixels=pixels, **full)  # norm, sphere


def parse_init(init: str) -> list[str]:
    kinds = [k.strip() for k in init.split(",") if k.strip()]
    bad = [k for k in kinds if k not in INITS]
    if not kinds or bad:
        raise UserError(f"unknown init {init!r}; choose one of {', '.join(INITS)} "
                        "or a comma-separated list of them")
    return kinds


def init_delta(x: torch.Tensor, norm: str, eps: float, init: str, generator: torch.Generator, *,
               pixels: bool = False, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """A starting δ (before projection); a list of kinds picks one per example at random."""
    kinds = parse_init(init)
    if len(kinds) == 1:
        return init_one(kinds[0], x, norm, eps, generator, pixels, bounds)
    choice = torch.randint(len(kinds), (x.shape[0],), generator=generator,
                           device=generator.device).to(x.device)
    cands = torch.stack([init_one(k, x, norm, eps, generator, pixels, bounds) for k in kinds])
    return cands.gather(0, choice.view(1, -1, *([1] * (x.ndim - 1))).expand(1, *x.shape)).squeeze(0)


# ---------------------------------------------------------------- the engine

BLOCK_ROWS = {"cpu": 64}
DEFAULT_BLOCK_ROWS = 1024


def block_rows(n: int, device: torch.device | str) -> int:
    """Rows per model call for a batch of n: n up to the device's block, else n in equal blocks.

    It depends only on n and the device, never on which examples still run: the running examples
    are packed and the last block is padded to this size, so float results per example (and with
    them sign steps and trajectories) are the same with and without early exit.
    """
    b = BLOCK_ROWS.get(torch.device(device).type, DEFAULT_BLOCK_ROWS)
    if n <= b:
        return max(n, 1)
    return math.ceil(n / math.ceil(n / b))


def resolve_channels_last(channels_last: bool | None, x: torch.Tensor) -> bool:
    """`None` means on for 4-D inputs on the CPU (where it is faster), off otherwise."""
    if channels_last is None:
        return x.ndim == 4 and x.device.type == "cpu"
    return bool(channels_last)


@dataclasses.dataclass(frozen=True)
class EngineCfg:
    """What the engine needs besides the step rule."""

    norm: str
    eps: float
    steps: int
    objective: Objective
    early_stop: float | None = None
    bf16: bool = False
    channels_last: bool = False
    bounds: Bounds = (0.0, 1.0)
    pixels: bool = False
    l1_box: bool = False  # exact projection onto the ball ∩ box (L1-APGD), not ball then box

    @property
    def lp(self) -> Norm:
        """The norm object of `norm`."""
        return get_norm(self.norm)


@dataclasses.dataclass
class Labels:
    """Per-example labels: what the objective receives, and what ranks and stops iterates.

    `key`: integer true labels (untargeted worst-case key and stop test), `target`: the classes a
    targeted attack must reach (key and stop test by the target). Neither: the loss ranks.
    """

    obj: Any
    key: torch.Tensor | None = None
    target: torch.Tensor | None = None

    def index(self, idx: torch.Tensor) -> Labels:
        return Labels(_take(self.obj, idx), _take(self.key, idx), _take(self.target, idx))


def _take(y: Any, idx: torch.Tensor | slice) -> Any:
    return y[idx] if isinstance(y, torch.Tensor) else y


def iterate_key(logits: torch.Tensor, labels: Labels) -> torch.Tensor | None:
    """Worst-case key of iterates (float32 logits); None when only the loss can rank."""
    if labels.target is not None:
        return target_key(logits, labels.target)
    if labels.key is not None:
        return worst_case_key(logits, labels.key)
    return None


def stop_test(logits: torch.Tensor, labels: Labels, threshold: float) -> torch.Tensor:
    """Decided examples: misclassified (targeted: classified as the target; no labels: any class)
    with that class's confidence ≥ threshold."""
    p = F.softmax(logits.float(), 1)
    if labels.target is not None:
        t = labels.target.view(-1, 1)
        return (logits.argmax(1) == labels.target) & (p.gather(1, t).squeeze(1) >= threshold)
    if labels.key is not None:
        y = labels.key
        return (logits.argmax(1) != y) & (p.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
                                          >= threshold)
    return p.amax(1) >= threshold


def stopped(logits: torch.Tensor, y: Any, threshold: float) -> torch.Tensor:
    """Stop test with plain labels (None or soft labels: confidence in any class)."""
    lab = y if isinstance(y, torch.Tensor) and not y.dtype.is_floating_point else None
    return stop_test(logits, Labels(y, lab), threshold)


def _grad_of(loss: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss.sum(), xa, allow_unused=True)
    return torch.zeros_like(xa) if g is None else g


def _layout(xa: torch.Tensor, cfg: EngineCfg) -> torch.Tensor:
    if cfg.channels_last and xa.ndim == 4:
        return xa.contiguous(memory_format=torch.channels_last)
    return xa


def _forward_grad(model: Model, xa: torch.Tensor, yo: Any, cfg: EngineCfg
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, gradient w.r.t. the input, float32 logits) at the points `xa`."""
    xa = xa.detach().requires_grad_(True)
    dev = xa.device.type
    inp = _layout(xa, cfg)
    if cfg.bf16:
        with torch.enable_grad():
            with torch.autocast(dev, dtype=torch.bfloat16):
                low = model(inp)
            g = _grad_of(cfg.objective(low.float(), yo), xa)
        with torch.no_grad(), torch.autocast(dev, enabled=False):
            logits = model(_layout(xa.detach(), cfg)).float()
            loss = cfg.objective(logits, yo)
    else:
        with torch.enable_grad(), torch.autocast(dev, enabled=False):
            logits = model(inp).float()
            loss = cfg.objective(logits, yo)
            g = _grad_of(loss, xa)
    return loss.detach(), g.detach(), logits.detach()


@torch.no_grad()
def _forward_plain(model: Model, xa: torch.Tensor, yo: Any, cfg: EngineCfg
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.autocast(xa.device.type, enabled=False):
        logits = model(_layout(xa, cfg)).float()
        return cfg.objective(logits, yo), logits


def eval_rows(model: Model, xa: torch.Tensor, yo: Any, cfg: EngineCfg, rows: int, *,
              grad: bool = True) -> tuple[torch.Tensor, ...]:
    """Evaluate `xa` in model calls of exactly `rows` rows (the last one padded with its last row).

    Full blocks are views of `xa` (no copy); only a short last block is gathered and padded.
    Returns (loss, gradient, logits) with `grad`, else (loss, logits).
    """
    fn = _forward_grad if grad else _forward_plain
    r = xa.shape[0]
    if r == rows or r == 0:
        return fn(model, xa, yo, cfg)
    parts = []
    for s in range(0, r, rows):
        k = min(rows, r - s)
        if k == rows:
            out = fn(model, xa[s:s + rows], _take(yo, slice(s, s + rows)), cfg)
        else:
            sel = torch.arange(s, s + rows, device=xa.device).clamp(max=r - 1)
            out = fn(model, xa[sel], _take(yo, sel), cfg)
        parts.append([t[:k] for t in out])
    return tuple(torch.cat(ts) for ts in zip(*parts))


def clean_logits(model: Model, x: torch.Tensor, cfg: EngineCfg, rows: int) -> torch.Tensor:
    """float32 logits at `x` in the engine's fixed blocks of `rows` rows (no gradient)."""
    return eval_rows(model, x, None, dataclasses.replace(cfg, objective=_zero_loss), rows,
                     grad=False)[1]


def project_point(xa: torch.Tensor, x: torch.Tensor, cfg: EngineCfg,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """The feasible point nearest to `xa`: x + δ with δ projected onto the ball (∩ box), in the box."""
    delta = cfg.lp.project(xa - x, x, cfg.eps, mask=mask, pixels=cfg.pixels, bounds=cfg.bounds,
                           exact=cfg.l1_box)
    return (x + delta).clamp_(*cfg.bounds)


def keep_best(st: dict[str, torch.Tensor], cand: torch.Tensor, loss: torch.Tensor,
              logits: torch.Tensor, labels: Labels) -> None:
    """Replace each example's best iterate where `cand` ranks higher (key, then loss)."""
    key = iterate_key(logits, labels)
    if key is None:
        better = loss > st["best_obj"]
    else:
        better = (key > st["best_key"]) | ((key == st["best_key"]) & (loss > st["best_obj"]))
        st["best_key"] = torch.where(better, key, st["best_key"])
    st["best"] = take_rows(st["best"], better, cand)
    st["best_logits"] = take_rows(st["best_logits"], better, logits)
    st["best_obj"] = torch.where(better, loss, st["best_obj"])


class StepRule(Protocol):
    """How the engine moves: per-example state lives in the engine's dict `st` (n rows each)."""

    def init(self, st: dict[str, torch.Tensor], x: torch.Tensor, cfg: EngineCfg) -> None: ...

    def propose(self, st: dict[str, torch.Tensor], x: torch.Tensor, mask: torch.Tensor | None,
                step: int, cfg: EngineCfg) -> torch.Tensor: ...

    def update(self, st: dict[str, torch.Tensor], cand: torch.Tensor, loss: torch.Tensor,
               grad: torch.Tensor, step: int, cfg: EngineCfg) -> None: ...


def run_engine(model: Model, x: torch.Tensor, labels: Labels, cfg: EngineCfg, x0: torch.Tensor,
               rule: StepRule, *, mask: torch.Tensor | None = None, rows: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Iterate `rule` from the start `x0` (projected); returns (best x_adv, its float32 logits, state).

    The start counts as an iterate. An example is decided (early exit) once `stop_test` holds at
    an iterate; that iterate has been offered to `keep_best` first, so it (or a higher-ranked
    one) is the result. The last candidate is evaluated without a gradient (the rule's last
    `update` receives the previous one; no step uses it).
    """
    n = x.shape[0]
    rows = rows or block_rows(n, x.device)
    xa = project_point(x0, x, cfg, mask)
    loss, grad, logits = eval_rows(model, xa, labels.obj, cfg, rows)
    st: dict[str, torch.Tensor] = {"xa": xa, "loss": loss, "grad": grad, "best": xa.clone(),
                                   "best_logits": logits, "best_obj": loss.clone()}
    key = iterate_key(logits, labels)
    if key is not None:
        st["best_key"] = key
    rule.init(st, x, cfg)
    stopping = cfg.early_stop is not None
    if stopping:
        st["done"] = stop_test(logits, labels, cfg.early_stop)
    # `sv` holds the state of the running examples, rows `idx` of `st` (None: all, sv is st); it
    # is re-packed only when some example has just been decided, not at every step, and only
    # the rows of the examples just decided are written back (the others at the end).
    idx: torch.Tensor | None = None
    sv, xs, ls, ms = st, x, labels, mask
    for step in range(cfg.steps):
        if stopping:
            run = ~sv["done"]
            if not bool(run.all()):  # one sync per iteration, not per example
                if idx is not None:
                    gone = (~run).nonzero().squeeze(1)
                    dst = idx[gone]
                    for k, v in sv.items():
                        st[k][dst] = v[gone]
                keep = run.nonzero().squeeze(1)
                if keep.numel() == 0:
                    idx, sv = None, st
                    break
                idx = keep if idx is None else idx[keep]
                sv = {k: v[keep] for k, v in sv.items()}
                xs, ls = xs[keep], ls.index(keep)
                ms = ms if ms is None or ms.shape[0] == 1 else ms[keep]
        cand = rule.propose(sv, xs, ms, step, cfg)
        if step + 1 < cfg.steps:
            loss_c, grad_c, logits_c = eval_rows(model, cand, ls.obj, cfg, rows)
        else:  # no step follows the last one: its gradient would go unused
            loss_c, logits_c = eval_rows(model, cand, ls.obj, cfg, rows, grad=False)
            grad_c = sv["grad"]
        keep_best(sv, cand, loss_c, logits_c, ls)
        if stopping:
            sv["done"] = sv["done"] | stop_test(logits_c, ls, cfg.early_stop)
        rule.update(sv, cand, loss_c, grad_c, step + 1, cfg)
    if idx is not None:
        for k, v in sv.items():
            st[k][idx] = v
    return st["best"], st["best_logits"], st


def pending(result: AttackResult | None, labels: Labels, early_stop: float | None, n: int,
            device: torch.device) -> torch.Tensor:
    """Indices of the examples a further run must attack (all, or those not yet decided)."""
    if result is None or early_stop is None:
        return torch.arange(n, device=device)
    return (~stop_test(result.logits, labels, early_stop)).nonzero().squeeze(1)


def run_part(model: Model, x: torch.Tensor, labels: Labels, cfg: EngineCfg, x0: torch.Tensor,
             rule: StepRule, idx: torch.Tensor, rows: int, result: AttackResult | None,
             mask: torch.Tensor | None = None, info: dict[str, Any] | None = None,
             state_info: tuple[str, ...] = ()) -> AttackResult:
    """One engine run on the examples `idx`, merged into `result` (per-example worst case).

    `info` tensors (n rows) and the final engine state entries named in `state_info` are
    attached per example.
    """
    xs = x[idx]
    ls = labels.index(idx)
    ms = mask if mask is None or mask.shape[0] == 1 else mask[idx]
    best, logits, st = run_engine(model, xs, ls, cfg, x0[idx], rule, mask=ms, rows=rows)
    part_info = {k: (v[idx] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == x.shape[0]
                     else v) for k, v in (info or {}).items()}
    part_info.update({k: st[k] for k in state_info})
    part = AttackResult(best, logits, ls.key, part_info, ls.target)
    return part if result is None else merge_into(result, idx, part)


@dataclasses.dataclass
class PGDRule:
    """PGD's step: x ← P(x + lr·s(g)), with optional momentum and backtracking."""

    step_size: float
    momentum: float = 0.0
    backtrack: bool = False
    l1_fraction: float = 0.025

    def init(self, st: dict[str, torch.Tensor], x: torch.Tensor, cfg: EngineCfg) -> None:
        st["lr"] = torch.full((x.shape[0],), self.step_size, device=x.device, dtype=x.dtype)
        if self.momentum > 0:
            st["m"] = torch.zeros_like(x)

    def propose(self, st: dict[str, torch.Tensor], x: torch.Tensor, mask: torch.Tensor | None,
                step: int, cfg: EngineCfg) -> torch.Tensor:
        g = st["grad"]
        if mask is not None:
            g = g * mask
        lp = cfg.lp
        if lp.inward_steps:
            g = inward(g, st["xa"], cfg.bounds)
        if self.momentum > 0:
            gn = g / bview(g.flatten(1).abs().sum(1).clamp(min=1e-12), g)
            st["m"] = self.momentum * st["m"] + (1 - self.momentum) * gn
            g = st["m"]
        d = lp.direction(g, l1_fraction=self.l1_fraction)
        return project_point(st["xa"] + bview(st["lr"], d) * d, x, cfg, mask)

    def update(self, st: dict[str, torch.Tensor], cand: torch.Tensor, loss: torch.Tensor,
               grad: torch.Tensor, step: int, cfg: EngineCfg) -> None:
        if self.backtrack:
            accept = loss > st["loss"]
            st["lr"] = torch.where(accept, st["lr"], st["lr"] / 1.5)
            st["xa"] = torch.where(bview(accept, cand), cand, st["xa"])
            st["grad"] = torch.where(bview(accept, cand), grad, st["grad"])
            st["loss"] = torch.where(accept, loss, st["loss"])
        else:
            st["xa"], st["grad"], st["loss"] = cand, grad, loss


# ---------------------------------------------------------------- targets, checks, entry points

def resolve_target(target: Any, x: torch.Tensor, y: torch.Tensor | None, clean_logits: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """Per-example target classes from an int, a tensor, "random" (a class ≠ y drawn from
    `generator`) or "least-likely" (the class of the lowest clean logit)."""
    n, k = clean_logits.shape
    dev = x.device
    if isinstance(target, str):
        if target == "least-likely":
            return clean_logits.argmin(1)
        if target == "random":
            if y is None:
                return torch.randint(k, (n,), generator=generator, device=generator.device).to(dev)
            shift = torch.randint(1, k, (n,), generator=generator, device=generator.device).to(dev)
            return (y + shift) % k
        raise UserError(f"unknown target {target!r}; give a class, a tensor of classes, "
                        f"or one of {', '.join(TARGETS)}")
    t = torch.as_tensor(target, device=dev)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise UserError(f"target {target!r} is invalid; classes are integers in [0, {k - 1}]")
    t = t.long().expand(n) if t.ndim == 0 else t.long()
    if t.shape != (n,):
        raise UserError(f"target has shape {tuple(t.shape)}; give one class per input ({n})")
    if bool(((t < 0) | (t >= k)).any()):
        raise UserError(f"target classes must lie in [0, {k - 1}] (the model has {k} classes)")
    return t.clone()


def _check(norm: str, eps: float, steps: int, restarts: int, step_size: float | None,
           momentum: float, l1_fraction: float, early_stop: float | None) -> None:
    get_norm(norm)
    check_attack_args(eps=eps, steps=steps, restarts=restarts, early_stop=early_stop)
    if step_size is not None and not step_size > 0:
        raise UserError(f"step size {step_size} is invalid; it must be > 0")
    if not 0 <= momentum < 1:
        raise UserError(f"momentum {momentum} is invalid; it must be in [0, 1)")
    if not 0 < l1_fraction <= 1:
        raise UserError(f"l1 fraction {l1_fraction} is invalid; it must be in (0, 1]")


def default_step_size(eps: float, steps: int, norm: str = "linf") -> float:
    """The norm's default PGD step: 2.5·ε/steps (enough to cross the ball in 40 % of the
    iterations); for L0 5·ε (see `robustlab.attacks.norms.L0.default_step_size`)."""
    return get_norm(norm).default_step_size(eps, steps)


def int_labels(y: Any) -> torch.Tensor | None:
    return y if isinstance(y, torch.Tensor) and not y.dtype.is_floating_point else None


def labelled_inputs(name: str, x: torch.Tensor, y: Any, bounds: Bounds,
                    generator: torch.Generator | None
                    ) -> tuple[torch.Tensor, torch.Tensor, Bounds, torch.Generator, int]:
    """The checks and defaults every attack on labelled inputs starts with: x inside `bounds`,
    integer labels, a generator (default: seeded 0), and the fixed block size of the engine.
    Returns (x detached, labels, bounds, generator, rows per block)."""
    bounds = check_bounds(x, bounds)
    labels = int_labels(y)
    if labels is None:
        raise UserError(f"{name} needs integer class labels y")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return x.detach(), labels, bounds, generator, block_rows(x.shape[0], x.device)


def pgd(model: Model, x: torch.Tensor, y: Any = None, *, norm: str = "linf",
        eps: float | None = None, steps: int = 40, step_size: float | None = None,
        objective: str | Objective = "ce", init: str = "norm", restarts: int = 1,
        momentum: float = 0.0, backtrack: bool = False, l1_fraction: float = 0.025,
        l0_pixels: bool = False, mask: torch.Tensor | None = None,
        early_stop: float | None = None, generator: torch.Generator | None = None,
        bf16: bool = False, channels_last: bool | None = None,
        bounds: Bounds = (0.0, 1.0), target: Any = None) -> AttackResult:
    """PGD on `model` at inputs `x` (labels `y`; None for `distal`) within the `norm` ball of `eps`.

    `eps=None` takes the spec default for the image size; `step_size=None` is
    `default_step_size` (2.5·ε/steps, L0: 5·ε). `mask` (broadcastable to x, 0/1) restricts δ to
    its support (adversarial frames). Random starts draw from `generator` (default: a generator
    seeded 0). `bounds` is the box of valid inputs (x outside it is a `UserError`). With `bf16`
    gradients come from bfloat16 autocast; every key, stop test and the returned logits are
    float32. `channels_last=None`: on for 4-D inputs on the CPU. An `nn.Module` runs in eval mode
    (its modes are restored afterwards).

    `target` makes the attack targeted: a class, a tensor of classes, "random" or "least-likely";
    success then means "classified as the target" (`result.target`), the objective pulls towards
    it (`ce`: −CE to the target, `conf`: its softmax, `dlr`: targeted DLR) and the best iterate
    ranks by the target's confidence.

    Example:
        >>> res = pgd(model, x, y, norm="l2", eps=1.5, steps=40)  # doctest: +SKIP
        >>> res.success.float().mean()                            # doctest: +SKIP
    """
    if eps is None:
        eps = default_eps(norm, tuple(x.shape[1:]))
    _check(norm, eps, steps, restarts, step_size, momentum, l1_fraction, early_stop)
    parse_init(init)
    bounds = check_bounds(x, bounds)
    labels_int = int_labels(y)
    if target is not None:
        if callable(objective):
            obj = objective
        elif objective in TARGETED:
            obj = TARGETED[objective]
        else:
            raise UserError(f"objective {objective!r} cannot be targeted; choose one of "
                            f"{', '.join(TARGETED)}")
    else:
        obj = objective_fn(objective)
        if y is None and not callable(objective) and objective != "distal":
            raise UserError(f"objective {objective!r} needs labels; only 'distal' works without")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    x = x.detach()
    n = x.shape[0]
    cfg = EngineCfg(norm, float(eps), int(steps), obj, early_stop, bool(bf16),
                    resolve_channels_last(channels_last, x), bounds, bool(l0_pixels))
    rule = PGDRule(float(step_size) if step_size is not None else default_step_size(eps, steps, norm),
                   float(momentum), bool(backtrack), float(l1_fraction))
    with eval_mode(model):
        labels = Labels(y, labels_int)
        if target is not None:
            clean = clean_logits(model, x, cfg, block_rows(n, x.device))
            t = resolve_target(target, x, labels_int, clean, generator)
            yo = torch.stack([labels_int, t], 1) if obj is dlr_targeted_loss and labels_int is not None \
                else t
            if obj is dlr_targeted_loss and labels_int is None:
                raise UserError("a targeted dlr attack needs the true labels y")
            labels = Labels(yo, labels_int, t)
        rows = block_rows(n, x.device)
        result: AttackResult | None = None
        for r in range(restarts):
            idx = pending(result, labels, early_stop, n, x.device)
            if idx.numel() == 0 and result is not None:
                break
            # Draw the start for every example, so that the random numbers do not depend on
            # which examples an early exit has already removed.
            x0 = x + init_delta(x, norm, float(eps), init, generator, pixels=l0_pixels, bounds=bounds)
            info = {"restart": torch.full((n,), r, dtype=torch.long, device=x.device)}
            result = run_part(model, x, labels, cfg, x0, rule, idx, rows, result, mask, info)
    assert result is not None
    result.y = labels_int
    result.info["eps"] = float(eps)
    return result


def _zero_loss(logits: torch.Tensor, y: Any) -> torch.Tensor:
    return logits.new_zeros(logits.shape[0])


@dataclasses.dataclass(frozen=True)
class PGD(StepOptions):
    """PGD as a stateless callable: `PGD(norm="l2", eps=1.5)(model, x, y, generator=g)`; the
    iteration and run options are `StepOptions`'."""

    norm: str = "linf"
    eps: float | None = None
    objective: str = "ce"
    init: str = "norm"
    l1_fraction: float = 0.025
    l0_pixels: bool = False
    target: Any = None

    attack = staticmethod(pgd)
