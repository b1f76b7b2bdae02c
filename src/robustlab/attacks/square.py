"""Square attack (Andriushchenko et al., ECCV 2020): score-based random search, L∞ and L2 (spec §3a).

Gradient-free: it only queries the model's logits, so it is the check against gradient masking.
Per example it keeps a current perturbation and proposes a change confined to a random square
window; the proposal is accepted when it lowers the margin loss z_y − max_{k≠y} z_k.

- The side of the square is s = round(√(p·H·W)) (at least 1, 3 for L2, at most min(H, W) − 1); the
  fraction p starts at `p_init` (0.8) and is halved at the paper's iterations 10, 50, 200, 500,
  1000, 2000, 4000, 6000 and 8000 of 10 000, rescaled to the number of queries (`p_schedule`).
- L∞: the start is vertical stripes x + ε·ρ (ρ = ±1 per column and channel); a proposal sets
  the window to ±ε (one random sign per channel).
- L2: the pattern is the paper's: two pyramids of opposite sign side by side in an s×s window
  (a pyramid has Σ_{j=d+1}^{n+1} 1/j² on its max-norm ring d), randomly transposed, s ≥ 3; the
  start is a grid of such patterns with random signs, scaled to ‖δ‖₂ = ε; a proposal takes two
  random windows W1, W2 and, per channel, sets W1 to the direction ρ·bump + δ_W1/‖δ_W1‖
  (ρ = ±1) scaled to all the mass of W1 ∪ W2 plus an equal share of the unused budget
  ε² − ‖δ‖², and zeroes W2 (the paper's Algorithm 3), so ‖δ‖₂ = ε again.
- Every proposal is clipped to the box `bounds`, which only shrinks |δ|, so it stays in the ball.

The per-norm parts (start, random numbers, proposal) are methods of the norm classes
(`square_start`, `square_draws`, `square_propose` in `norms.py`): a norm that implements them is
one Square supports.

One query is the start, each further query one proposal. Random numbers are drawn for every
example at every iteration (then indexed), and the model sees blocks of a fixed number of rows,
so per-example results do not depend on which examples still run. The best iterate per example
is kept by the worst-case key (spec §2), like every attack of the engine.

Early exit: with `early_stop=c` an example stops once misclassified with wrong-class confidence
≥ c; its verdict at every τ ≤ c is the one a run without early exit gives (which keeps searching
and can only rank higher). With `early_stop=None` every example uses all queries.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from robustlab.attacks.base import (
    AttackResult,
    BallOptions,
    Model,
    bview,
    check_attack_args,
    eval_mode,
    merge_into,
)
from robustlab.attacks.norms import NORMS, get_norm
from robustlab.attacks.pgd import (
    Bounds,
    EngineCfg,
    Labels,
    iterate_key,
    labelled_inputs,
    pending,
    stop_test,
)
from robustlab.attacks.threat import default_eps
from robustlab.errors import UserError

SQUARE_NORMS = tuple(k for k, v in NORMS.items() if v.square)  # ("linf", "l2")
_HALVE_AT = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of 10 000 iterations


def p_schedule(iteration: int, queries: int, p_init: float = 0.8) -> float:
    """The fraction p at `iteration` (0-based) of a run with `queries` queries.

    The paper halves p at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a
    10 000-query run; other budgets rescale the iteration to that run (i·10 000/queries).
    """
    i = int(iteration * 10000 / max(queries, 1))
    return p_init / 2 ** sum(i > b for b in _HALVE_AT)


def square_side(p: float, h: int, w: int, smallest: int = 1, odd: bool = False) -> int:
    """round(√(p·H·W)), at least `smallest` (3 for L2, whose pattern needs room), at most
    min(H, W) − 1; with `odd` (L2) an even side becomes the next odd one (the previous one where
    that does not fit), so that both pyramids of the pattern have a centre line."""
    top = max(min(h, w) - 1, 1)
    s = int(min(max(round(math.sqrt(p * h * w)), smallest), top))
    if odd and s % 2 == 0:
        s = s + 1 if s + 1 <= top else max(s - 1, 1)
    return s


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{k≠y} z_k − z_y: the negative margin, maximized (> 0 means misclassified)."""
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    return logits.scatter(1, y.view(-1, 1), float("-inf")).amax(1) - z_y


def square(model: Model, x: torch.Tensor, y: torch.Tensor, *, norm: str = "linf",
           eps: float | None = None, queries: int = 5000, p_init: float = 0.8, restarts: int = 1,
           generator: torch.Generator | None = None, early_stop: float | None = None,
           bounds: Bounds = (0.0, 1.0)) -> AttackResult:
    """Square attack on `model` at `x` (labels `y`) in the `norm` ball of `eps` (L∞ or L2).

    `queries` model evaluations per example and restart (the start counts as one); random numbers
    from `generator` (default seeded 0). Returns the per-example worst case (spec §2 key) with
    float32 logits at `x_adv`; `info["queries"]` is the number of queries each example used in its
    last run, `info["restart"]` which restart produced its result. An `nn.Module` runs in eval mode.

    Example:
        >>> res = square(model, x, y, norm="linf", eps=0.1, queries=1000)  # doctest: +SKIP
    """
    get_norm(norm, SQUARE_NORMS, "Square")
    if x.ndim != 4:
        raise UserError(f"Square needs images N×C×H×W; got inputs of shape {tuple(x.shape)}")
    if eps is None:
        eps = default_eps(norm, tuple(x.shape[1:]))
    check_attack_args(eps=eps, restarts=restarts, early_stop=early_stop)
    if queries < 1:
        raise UserError(f"queries {queries} is invalid; it must be an integer ≥ 1")
    if not 0 < p_init <= 1:
        raise UserError(f"p_init {p_init} is invalid; it must be in (0, 1]")
    x, y_int, bounds, generator, rows = labelled_inputs("Square", x, y, bounds, generator)
    n = x.shape[0]
    cfg = EngineCfg(norm, float(eps), int(queries), _margin, early_stop, False, False, bounds)
    labels = Labels(y_int, y_int)
    result: AttackResult | None = None
    with eval_mode(model), torch.no_grad():  # forward-only: no autograd graph
        for r in range(restarts):
            idx = pending(result, labels, early_stop, n, x.device)
            if idx.numel() == 0 and result is not None:
                break
            best, logits, used = _run(model, x, labels, cfg, idx, rows, float(p_init), generator)
            part = AttackResult(best, logits, y_int[idx],
                                {"queries": used, "restart": torch.full_like(used, r)})
            result = part if result is None else merge_into(result, idx, part)
    assert result is not None
    result.y = y_int
    result.info["eps"] = float(eps)
    return result


def _run(model: Model, x: torch.Tensor, labels: Labels, cfg: EngineCfg, idx: torch.Tensor,
         rows: int, p_init: float, generator: torch.Generator
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Square run on the examples `idx` (random numbers drawn for all n rows, then indexed).

    The state of the running examples is kept packed (in index order) and re-packed only when
    an example is decided; a decided example's state is written back then. A candidate's
    logits do not depend on which rows share its model block, so evaluating the next
    candidate of an example ahead of time (in otherwise padded rows) changes no number.
    """
    lp = cfg.lp
    n = x.shape[0]
    h, w = x.shape[-2:]
    lo, hi = cfg.bounds
    xs = x[idx]
    ls = labels.index(idx)
    m = xs.shape[0]
    cur = (xs + lp.square_start(x, cfg.eps, generator)[idx]).clamp(lo, hi)
    logits = _logits(model, cur, rows)
    obj = _margin(logits, ls.obj)
    used = torch.ones(m, dtype=torch.long, device=x.device)
    # the result per example (m rows) and the packed state of the running examples
    out = {"best": cur.clone(), "best_logits": logits.clone(), "used": used.clone()}
    st: dict[str, torch.Tensor] = {"cur": cur, "obj": obj, "best": cur.clone(),
                                   "best_logits": logits, "best_obj": obj,
                                   "best_key": iterate_key(logits, ls), "used": used}
    stopping = cfg.early_stop is not None
    pos = torch.arange(m, device=x.device)  # positions (in 0..m-1) of the running examples
    if stopping:
        pos, st = _repack(out, st, pos, stop_test(logits, ls, cfg.early_stop))
        ls = ls.index(pos)
    xr, sub = xs[pos], idx[pos]  # the running examples and their rows of the n-row draws
    st["ahead"] = torch.zeros(pos.numel(), dtype=torch.bool, device=x.device)
    st["ahead_x"] = torch.empty_like(st["cur"])
    st["ahead_logits"] = torch.empty_like(st["best_logits"])

    def side(it: int) -> int:
        return square_side(p_schedule(it, cfg.steps, p_init), h, w, lp.square_smallest,
                           odd=lp.square_odd)

    def propose(rr: torch.Tensor | int, it: int, draws: dict[str, torch.Tensor]
                ) -> torch.Tensor:
        """Iteration it's candidates of the running rows `rr` (an int: the first rr rows) from
        their current points."""
        if isinstance(rr, int):
            xq, cq, sq = xr[:rr], st["cur"][:rr], sub[:rr]
        else:
            xq, cq, sq = xr.index_select(0, rr), st["cur"].index_select(0, rr), sub[rr]
        if sq.numel() < n:
            draws = {k: v[sq] for k, v in draws.items()}
        return (xq + lp.square_propose(xq, cq - xq, cfg.eps, side(it), draws)).clamp_(lo, hi)

    draws_next = None
    for it in range(cfg.steps - 1):
        draws = draws_next if draws_next is not None else lp.square_draws(x, side(it), generator)
        if pos.numel() == 0:
            break
        r = pos.numel()
        # rows whose candidate of this iteration was already evaluated (look-ahead, below)
        ahead = st["ahead"]
        need = (~ahead).nonzero().squeeze(1) if bool(ahead.any()) else None
        cand = propose(r if need is None else need, it, draws) if need is None or need.numel() \
            else xr[:0]
        # Look-ahead: the free rows of the last model block take the next iteration's candidates
        # of the first running examples (valid for those whose point does not move now), when
        # that can spare the next iteration a model block.
        k = cand.shape[0]
        spec = min(-k % rows, r)
        draws_next = lp.square_draws(x, side(it + 1), generator) if it < cfg.steps - 2 else None
        if draws_next is not None and spec and -(-(r - spec) // rows) < -(-r // rows):
            cand = torch.cat([cand, propose(spec, it + 1, draws_next)])
        else:
            spec = 0
        logits_all = _logits(model, cand, rows) if k + spec else st["ahead_logits"][:0]
        if need is None:
            cand_r, logits_c = cand[:k], logits_all[:k]
        else:  # this iteration's candidates: the look-ahead buffers, completed
            cand_r = st["ahead_x"].index_copy_(0, need, cand[:k])
            logits_c = st["ahead_logits"].index_copy_(0, need, logits_all[:k])
        obj_c = _margin(logits_c, ls.obj)
        accept = _step(st, cand_r, obj_c, logits_c, ls)
        done = stop_test(logits_c, ls, cfg.early_stop) if stopping else None
        st["ahead"] = torch.zeros_like(ahead)
        if spec:
            st["ahead"][:spec] = ~accept[:spec]
            st["ahead_x"][:spec] = cand[k:]
            st["ahead_logits"][:spec] = logits_all[k:k + spec]
        if done is not None and bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            pos, st = _repack(out, st, pos, done)
            ls = ls.index(keep)
            xr, sub = xr[keep], sub[keep]
    _repack(out, st, pos, None)
    return out["best"], out["best_logits"], out["used"]


def _logits(model: Model, xa: torch.Tensor, rows: int) -> torch.Tensor:
    """float32 logits at `xa` from model calls of exactly `rows` rows, the last one padded with
    its last row (the engine's `eval_rows` blocks, without the per-block copies: a full block is
    passed as a view where it starts on a 64-byte boundary, as a fresh tensor would)."""
    r = xa.shape[0]
    parts = []
    with torch.autocast(xa.device.type, enabled=False):
        if r == 0:
            return model(xa).float()
        for i in range(0, r, rows):
            blk = xa[i:i + rows]
            k = blk.shape[0]
            if k < rows:
                blk = torch.cat([blk, blk[-1:].expand(rows - k, *blk.shape[1:])])
            elif i and (xa.device.type != "cpu" or blk.data_ptr() % 64):
                blk = blk.clone()
            parts.append(model(blk).float()[:k])
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _step(st: dict[str, torch.Tensor], cand: torch.Tensor, obj: torch.Tensor,
          logits: torch.Tensor, labels: Labels) -> torch.Tensor:
    """After a query: the best iterate by the worst-case key, then the loss (`keep_best`'s rule);
    the current point moves to `cand` where the objective rose (returned: where it moved).
    Only changed rows are copied."""
    key = iterate_key(logits, labels)
    better = (key > st["best_key"]) | ((key == st["best_key"]) & (obj > st["best_obj"]))
    st["best"] = _take_rows(st["best"], better, cand)
    st["best_key"] = torch.where(better, key, st["best_key"])
    st["best_logits"] = torch.where(better[:, None], logits, st["best_logits"])
    st["best_obj"] = torch.where(better, obj, st["best_obj"])
    accept = obj > st["obj"]
    st["cur"] = _take_rows(st["cur"], accept, cand)
    st["obj"] = torch.where(accept, obj, st["obj"])
    st["used"] = st["used"] + 1
    return accept


def _take_rows(dst: torch.Tensor, mask: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """`dst` with the rows where `mask` replaced by those of `src` (in place on the CPU, where
    copying the few changed rows is much cheaper than a full select)."""
    if dst.device.type != "cpu":
        return torch.where(bview(mask, src), src, dst)
    rows = mask.nonzero().squeeze(1)
    if rows.numel():
        dst.index_copy_(0, rows, src.index_select(0, rows))
    return dst


def _repack(out: dict[str, torch.Tensor], st: dict[str, torch.Tensor], pos: torch.Tensor,
            done: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Write the result of the running examples that are `done` (None: all) into `out` at
    their positions `pos`; return the positions and packed state of those still running."""
    fin = slice(None) if done is None else done
    for k in out:
        out[k][pos[fin]] = st[k][fin]
    if done is None:
        return pos[:0], st
    keep = ~done
    return pos[keep], {k: v[keep] for k, v in st.items()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Square(BallOptions):
    """`square` as a stateless callable: `Square(norm="l2", eps=1.5)(model, x, y, generator=g)`."""

    queries: int = 5000
    p_init: float = 0.8

    attack = staticmethod(square)
