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
    BoxOptions,
    Model,
    bview,
    check_attack_args,
    eval_mode,
    merge_into,
)
from robustlab.attacks.pgd import (
    Bounds,
    EngineCfg,
    Labels,
    eval_rows,
    iterate_key,
    keep_best,
    labelled_inputs,
    pending,
    stop_test,
)
from robustlab.attacks.threat import default_eps
from robustlab.errors import UserError

SQUARE_NORMS = ("linf", "l2")
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


def _signs(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    r = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return (2 * r - 1).to(device=like.device, dtype=like.dtype)


def _corners(n: int, h: int, w: int, s: int, generator: torch.Generator, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.randint(h - s + 1, (n,), generator=generator, device=generator.device).to(device)
    c = torch.randint(w - s + 1, (n,), generator=generator, device=generator.device).to(device)
    return r, c


def _window(r: torch.Tensor, c: torch.Tensor, h: int, w: int, s: int) -> torch.Tensor:
    """N×1×H×W mask of the s×s windows with top-left corners (r, c)."""
    rows = torch.arange(h, device=r.device)[None, :]
    cols = torch.arange(w, device=r.device)[None, :]
    in_r = (rows >= r[:, None]) & (rows < r[:, None] + s)
    in_c = (cols >= c[:, None]) & (cols < c[:, None] + s)
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


def _draws(x: torch.Tensor, norm: str, s: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The random numbers of one iteration, for every example (indexed afterwards)."""
    n, ch, h, w = x.shape
    d = {}
    d["r1"], d["c1"] = _corners(n, h, w, s, generator, x.device)
    if norm == "l2":
        d["r2"], d["c2"] = _corners(n, h, w, s, generator, x.device)
    d["signs"] = _signs((n, ch), generator, x)
    if norm == "l2":
        d["flip"] = _signs((n,), generator, x) > 0
    return d


def _mountain(h1: int, h2: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """h1×h2 pyramid: at max-norm ring d from the centre, Σ_{j=d+1}^{n+1} 1/j² (n = ⌊h1/2⌋)."""
    n = h1 // 2
    r = torch.arange(h1, device=device, dtype=dtype)[:, None] - h1 // 2
    c = torch.arange(h2, device=device, dtype=dtype)[None, :] - h2 // 2
    d = torch.maximum(r.abs(), c.abs())
    inv = 1.0 / torch.arange(1, n + 2, device=device, dtype=dtype) ** 2  # 1/j², j = 1..n+1
    tail = inv.flip(0).cumsum(0).flip(0)  # tail[d] = Σ_{j=d+1}^{n+1} 1/j²
    return torch.where(d <= n, tail[d.clamp(max=n).long()], torch.zeros_like(d))


def _bump(s: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The s×s L2 update pattern of the paper: two pyramids of opposite sign side by side
    (s×⌊s/2⌋ and s×(s − ⌊s/2⌋)), unit L2 norm; a single pyramid when s = 1."""
    k = s // 2
    if k == 0:
        eta = _mountain(s, s, device, dtype)
    else:
        eta = torch.cat([_mountain(s, k, device, dtype), -_mountain(s, s - k, device, dtype)], 1)
    return eta / eta.norm().clamp(min=1e-12)


def _place_bump(r: torch.Tensor, c: torch.Tensor, s: int, signs: torch.Tensor,
                shape: tuple[int, ...], flip: torch.Tensor | None = None) -> torch.Tensor:
    """The bump of side s at corners (r, c), times per-channel `signs` (N×C), as N×C×H×W;
    transposed where `flip` (N, bool)."""
    n, ch, h, w = shape
    bump = _bump(s, signs.device, signs.dtype)
    if flip is not None:
        bump = torch.where(flip[:, None, None], bump.t()[None], bump[None])
    full = torch.zeros(n, h + s, w + s, device=signs.device, dtype=signs.dtype)
    rows = (r[:, None] + torch.arange(s, device=r.device)[None, :])  # N×s
    cols = (c[:, None] + torch.arange(s, device=c.device)[None, :])
    full[torch.arange(n, device=r.device)[:, None, None], rows[:, :, None], cols[:, None, :]] = bump
    return full[:, None, :h, :w] * signs[:, :, None, None]


def _init(x: torch.Tensor, norm: str, eps: float, generator: torch.Generator) -> torch.Tensor:
    n, ch, h, w = x.shape
    if norm == "linf":
        return eps * _signs((n, ch, 1, w), generator, x).expand(n, ch, h, w)
    # L2: a grid of s0×s0 tiles (s0 = ⌊min(H, W)/5⌋, 5×5 tiles on a square image), centred; each
    # tile holds the update pattern, randomly transposed, with a random sign per example and
    # channel; then scaled to ‖δ‖₂ = ε.
    s0 = max(min(h, w) // 5, 1)
    nh, nw = h // s0, w // s0
    top, left = (h - nh * s0) // 2, (w - nw * s0) // 2
    pat = _bump(s0, x.device, x.dtype)
    delta = torch.zeros_like(x)
    for i in range(nh):
        for j in range(nw):
            sg = _signs((n, ch), generator, x)
            flip = _signs((n,), generator, x) > 0
            tile = torch.where(flip[:, None, None], pat.t()[None], pat[None])  # N×s0×s0
            r, c = top + i * s0, left + j * s0
            delta[:, :, r:r + s0, c:c + s0] = tile[:, None] * sg[:, :, None, None]
    return delta * bview(eps / delta.flatten(1).norm(dim=1).clamp(min=1e-12), delta)


def _propose(x: torch.Tensor, delta: torch.Tensor, norm: str, eps: float, s: int,
             d: dict[str, torch.Tensor]) -> torch.Tensor:
    """A proposal δ' for every row (before the box clip), from the draws `d` of those rows."""
    h, w = x.shape[-2:]
    m1 = _window(d["r1"], d["c1"], h, w, s)
    if norm == "linf":
        vals = eps * d["signs"][:, :, None, None]
        return torch.where(m1, vals.expand_as(delta), delta)
    # Per channel (the paper's Algorithm 3): the new W1 content points along ρ·bump + the old W1
    # content (both of unit norm) and takes all the mass of W1 ∪ W2 in that channel plus an equal
    # share of the unused budget; W2 is zeroed.
    m2 = _window(d["r2"], d["c2"], h, w, s)
    ch = delta.shape[1]
    bump = _place_bump(d["r1"], d["c1"], s, d["signs"], tuple(x.shape), d["flip"])  # unit/channel
    union = (m1 | m2).expand_as(delta)
    outside = torch.where(union, torch.zeros_like(delta), delta)
    unused = (eps ** 2 - delta.flatten(1).pow(2).sum(1)).clamp(min=0)  # N
    d1 = torch.where(m1.expand_as(delta), delta, torch.zeros_like(delta))
    n1 = d1.flatten(2).norm(dim=2)  # N×C
    temp = bump + d1 / n1.clamp(min=1e-12)[:, :, None, None]
    mass = (torch.where(union, delta, torch.zeros_like(delta)).flatten(2).pow(2).sum(2)
            + unused[:, None] / ch).sqrt()  # N×C
    scale = mass / temp.flatten(2).norm(dim=2).clamp(min=1e-12)
    return outside + temp * scale[:, :, None, None]


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
    if norm not in SQUARE_NORMS:
        raise UserError(f"Square norm {norm!r} is not supported; choose one of "
                        f"{', '.join(SQUARE_NORMS)}")
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
    """One Square run on the examples `idx` (random numbers drawn for all n rows, then indexed)."""
    h, w = x.shape[-2:]
    lo, hi = cfg.bounds
    delta0 = _init(x, cfg.norm, cfg.eps, generator)[idx]
    xs = x[idx]
    ls = labels.index(idx)
    m = xs.shape[0]
    cur = (xs + delta0).clamp(lo, hi)
    obj, logits = eval_rows(model, cur, ls.obj, cfg, rows, grad=False)
    st: dict[str, torch.Tensor] = {"cur": cur, "obj": obj, "best": cur.clone(),
                                   "best_logits": logits, "best_obj": obj.clone(),
                                   "best_key": iterate_key(logits, ls),
                                   "used": torch.ones(m, dtype=torch.long, device=x.device)}
    stopping = cfg.early_stop is not None
    st["done"] = (stop_test(logits, ls, cfg.early_stop) if stopping
                  else torch.zeros(m, dtype=torch.bool, device=x.device))
    for it in range(cfg.steps - 1):
        l2 = cfg.norm == "l2"
        s = square_side(p_schedule(it, cfg.steps, p_init), h, w, 3 if l2 else 1, odd=l2)
        draws = _draws(x, cfg.norm, s, generator)  # for every example, then indexed
        run = (~st["done"]).nonzero().squeeze(1) if stopping else None
        if run is not None and run.numel() == 0:
            break
        sel = slice(None) if run is None or run.numel() == m else run
        rows_all = idx if isinstance(sel, slice) else idx[run]
        xr = xs[sel]
        prop = _propose(xr, st["cur"][sel] - xr, cfg.norm, cfg.eps, s,
                        {k: v[rows_all] for k, v in draws.items()})
        cand = (xr + prop).clamp(lo, hi)
        lr = ls if isinstance(sel, slice) else ls.index(run)
        obj_c, logits_c = eval_rows(model, cand, lr.obj, cfg, rows, grad=False)
        sv = {k: v[sel] for k, v in st.items()}
        keep_best(sv, cand, obj_c, logits_c, lr)
        accept = obj_c > sv["obj"]
        sv["cur"] = torch.where(bview(accept, cand), cand, sv["cur"])
        sv["obj"] = torch.where(accept, obj_c, sv["obj"])
        sv["used"] = sv["used"] + 1
        if stopping:
            sv["done"] = sv["done"] | stop_test(logits_c, lr, cfg.early_stop)
        for k, v in sv.items():
            st[k][sel] = v
    return st["best"], st["best_logits"], st["used"]


@dataclasses.dataclass(frozen=True)
class Square(BoxOptions):
    """`square` as a stateless callable: `Square(norm="l2", eps=1.5)(model, x, y, generator=g)`."""

    norm: str = "linf"
    eps: float | None = None
    queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1

    attack = staticmethod(square)
