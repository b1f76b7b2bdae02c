"""Lp norms as objects (spec §3): one class per norm, registered by name in `NORMS`.

A norm knows everything the attacks need about its ball: the per-example norm of a batch
(`norm`), a random start inside the ball (`random_start`), the steepest-ascent step direction
from a gradient (`direction`), the projection onto the ball (`project_ball`) and onto the ball ∩
box (`project`), its default radii (`radii`, scaled to other image sizes by `scale_radius`) and
its default PGD step size, and, where the Square attack supports the norm, Square's start and
proposal (`square_start`, `square_draws`, `square_propose`). `pgd`, `apgd`, `square` and the
attack engine look norms up here; adding a norm is one subclass of `Norm` added to `NORMS`.

    from robustlab.attacks.norms import NORMS, get_norm
    l2 = get_norm("l2")
    delta = l2.project(delta, x, 1.5)      # onto {‖δ‖₂ ≤ 1.5} ∩ {0 ≤ x + δ ≤ 1}
    l2.norm(delta)                         # per-example ‖δ‖₂

All methods are batched (dim 0 = examples) and draw random numbers only from the generator given.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import torch

from robustlab.attacks.base import bview
from robustlab.errors import UserError

Bounds = tuple[float, float]


# ---------------------------------------------------------------- helpers shared by the norms

def draw(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor, kind: str
         ) -> torch.Tensor:
    """Uniform [0, 1) (`kind="uniform"`) or standard normal numbers from `generator` (on its
    device), moved to `like`'s device and dtype."""
    gdev = generator.device
    if kind == "uniform":
        t = torch.rand(shape, generator=generator, device=gdev)
    else:
        t = torch.randn(shape, generator=generator, device=gdev)
    return t.to(device=like.device, dtype=like.dtype)


def inward(g: torch.Tensor, x_adv: torch.Tensor, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """Zero gradient entries that push a pixel at the box boundary further out."""
    lo, hi = bounds
    out = ((x_adv <= lo) & (g < 0)) | ((x_adv >= hi) & (g > 0))
    return g.masked_fill(out, 0.0)


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


def project_l1_box(delta: torch.Tensor, x: torch.Tensor, eps: float,
                   bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """Exact Euclidean projection of δ onto {‖δ‖₁ ≤ ε} ∩ {lo ≤ x + δ ≤ hi} (batched).

    The solution is δ_i(λ) = sign(v_i)·clip(|v_i| − λ, 0, c_i), c_i the room in v_i's direction
    (hi − x_i or x_i − lo), with the smallest λ ≥ 0 giving ‖δ(λ)‖₁ ≤ ε. S(λ) = ‖δ(λ)‖₁ is
    piecewise linear with breakpoints |v_i| − c_i (slope −1 starts) and |v_i| (it ends): sort them,
    accumulate S at every breakpoint and interpolate on the segment that crosses ε (L1-APGD's
    projection, Croce & Hein 2021). Computed in float64.
    """
    lo, hi = bounds
    shape, dtype = delta.shape, delta.dtype
    v = delta.flatten(1).double()
    xf = x.flatten(1).double().expand_as(v)
    cap = torch.where(v >= 0, hi - xf, xf - lo).clamp(min=0)
    m = v.abs()
    s0 = torch.minimum(m, cap).sum(1)
    n, d = v.shape
    bp = torch.cat([(m - cap).clamp(min=0), m], 1)
    w = torch.cat([-torch.ones_like(m), torch.ones_like(m)], 1)
    bs, order = bp.sort(1)
    slope = w.gather(1, order).cumsum(1)  # slope of S on [bs_j, bs_{j+1}]
    gain = slope[:, :-1] * bs.diff(dim=1)
    s_at = s0[:, None] + torch.cat([torch.zeros_like(s0[:, None]), gain.cumsum(1)], 1)
    j = (s_at > eps).sum(1).clamp(1, 2 * d - 1)  # first breakpoint with S ≤ ε
    b0 = bs.gather(1, (j - 1)[:, None]).squeeze(1)
    s_b0 = s_at.gather(1, (j - 1)[:, None]).squeeze(1)
    sl = slope.gather(1, (j - 1)[:, None]).squeeze(1)
    lam = b0 + (s_b0 - eps) / (-sl).clamp(min=1.0)
    lam = torch.where(s0 <= eps, torch.zeros_like(lam), lam)
    out = v.sign() * torch.minimum((m - lam[:, None]).clamp(min=0), cap)
    return out.to(dtype).view(shape)


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


def l0_budget(eps: float) -> int:
    """The number of entries (or pixels) an L0 radius ε allows: ⌈ε⌉."""
    return int(math.ceil(eps - 1e-9))


def sparse_direction(g: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """g on the k_n entries of largest |g| (k per example, nonzero entries only), L1-normalized.

    L1-APGD's sparse step. The entries keep their gradient magnitudes (the paper takes their
    signs): repeated steps then concentrate the mass on the most useful entries, which the
    exact L1 ∩ box projection keeps sparse. On a linear model this reaches the closed-form
    L1 radius with APGD-T, which the signed step does not (see tests/test_apgd.py).
    """
    flat = g.flatten(1)
    mag = flat.abs()
    srt = mag.sort(dim=1, descending=True).values
    kth = srt.gather(1, (k.long().clamp(1, flat.shape[1]) - 1)[:, None])
    keep = (mag >= kth) & (mag > 0)
    step = flat * keep
    return (step / step.abs().sum(1, keepdim=True).clamp(min=1e-30)).view_as(g)


def _unit(v: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    return v / bview(size.clamp(min=1e-12), v)


# ---------------------------------------------------------------- Square attack's pieces

def random_signs(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor
                 ) -> torch.Tensor:
    """±1 with equal probability (from `generator`), in `like`'s device and dtype."""
    r = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return (2 * r - 1).to(device=like.device, dtype=like.dtype)


def window_corners(n: int, h: int, w: int, s: int, generator: torch.Generator,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform top-left corners (rows, columns) of n s×s windows inside an H×W image."""
    r = torch.randint(h - s + 1, (n,), generator=generator, device=generator.device).to(device)
    c = torch.randint(w - s + 1, (n,), generator=generator, device=generator.device).to(device)
    return r, c


def window_index(r: torch.Tensor, c: torch.Tensor, s: int, shape: tuple[int, ...]
                 ) -> torch.Tensor:
    """Linear indices (into a contiguous N×C×H×W tensor, for `take`/`put_`) of the s×s windows
    with top-left corners (r, c) in every channel: N×C×s×s."""
    n, ch, h, w = shape
    ar = torch.arange(s, device=r.device)
    corner = torch.arange(n * ch, device=r.device).view(n, ch) * (h * w) + (r * w + c)[:, None]
    return corner[:, :, None, None] + (ar[:, None] * w + ar[None, :])


def pyramid(h1: int, h2: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """h1×h2 pyramid: at max-norm ring d from the centre, Σ_{j=d+1}^{n+1} 1/j² (n = ⌊h1/2⌋)."""
    n = h1 // 2
    r = torch.arange(h1, device=device, dtype=dtype)[:, None] - h1 // 2
    c = torch.arange(h2, device=device, dtype=dtype)[None, :] - h2 // 2
    d = torch.maximum(r.abs(), c.abs())
    inv = 1.0 / torch.arange(1, n + 2, device=device, dtype=dtype) ** 2  # 1/j², j = 1..n+1
    tail = inv.flip(0).cumsum(0).flip(0)  # tail[d] = Σ_{j=d+1}^{n+1} 1/j²
    return torch.where(d <= n, tail[d.clamp(max=n).long()], torch.zeros_like(d))


@functools.lru_cache(maxsize=64)
def square_pattern(s: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The s×s L2 update pattern of the Square paper: two pyramids of opposite sign side by side
    (s×⌊s/2⌋ and s×(s − ⌊s/2⌋)), unit L2 norm; a single pyramid when s = 1. Cached: read only."""
    k = s // 2
    if k == 0:
        eta = pyramid(s, s, device, dtype)
    else:
        eta = torch.cat([pyramid(s, k, device, dtype), -pyramid(s, s - k, device, dtype)], 1)
    return eta / eta.norm().clamp(min=1e-12)


def oriented_pattern(s: int, signs: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """`square_pattern(s)` per example and channel (N×C×s×s): transposed where `flip` (N, bool),
    times the per-channel `signs` (N×C)."""
    pat = square_pattern(s, signs.device, signs.dtype)
    pat = torch.where(flip[:, None, None], pat.t()[None], pat[None])
    return pat[:, None] * signs[:, :, None, None]


# ---------------------------------------------------------------- the norms

class Norm:
    """One Lp norm: subclasses set `name` and `radii` and implement the four operations.

    `radii` holds (seen, larger "unseen") default radii per image family: `gray28` (28×28
    grayscale, Fashion-MNIST), optionally `mnist` (defaults to `gray28`), and `color32` (32×32
    color). `inward_steps`: zero the gradient entries that push a pixel at the box boundary
    further out before taking a step (pointless for L∞'s sign step, which the box clamp absorbs).
    `apgd_start`: APGD's random start (an `init` kind of `pgd`; L2 and L1 start on the sphere);
    `apgd = False` for norms APGD does not support; `apgd_sparse`: APGD takes
    `sparse_direction` steps on an adaptive number of entries (L1-APGD) with the exact
    ball ∩ box projection. A norm that implements
    `square_start`, `square_draws` and `square_propose` supports the Square attack (`square`),
    with windows of side at least `square_smallest`, odd where `square_odd`.
    """

    name: ClassVar[str]
    radii: ClassVar[dict[str, tuple[float, float]]]
    inward_steps: ClassVar[bool] = True
    apgd: ClassVar[bool] = True
    apgd_start: ClassVar[str] = "norm"
    apgd_sparse: ClassVar[bool] = False
    square_smallest: ClassVar[int] = 1
    square_odd: ClassVar[bool] = False

    def norm(self, delta: torch.Tensor, *, pixels: bool = False) -> torch.Tensor:
        """Per-example norm of δ."""
        raise NotImplementedError

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator, *,
                     pixels: bool = False, full: bool = False) -> torch.Tensor:
        """A random δ: a random direction of the norm times ε·U(0, 1), or times ε with `full`
        (on the sphere; the same draws) (before the box). `full` is passed only for the `sphere`
        start: a norm whose `apgd_start` is "sphere" must accept it."""
        raise NotImplementedError

    def direction(self, g: torch.Tensor, *, l1_fraction: float = 0.025) -> torch.Tensor:
        """The normalized steepest-ascent step from the gradient g (per example)."""
        raise NotImplementedError

    def project_ball(self, delta: torch.Tensor, eps: float, *, pixels: bool = False
                     ) -> torch.Tensor:
        """δ projected onto the ball of radius ε (no box)."""
        raise NotImplementedError

    def project(self, delta: torch.Tensor, x: torch.Tensor, eps: float, *,
                mask: torch.Tensor | None = None, pixels: bool = False,
                bounds: Bounds = (0.0, 1.0), exact: bool = False) -> torch.Tensor:
        """Onto {δ : ‖δ‖ ≤ ε, x + δ ∈ [lo, hi], δ = 0 outside `mask`}: the ball, then the box.

        The box clamp only shrinks |δ| entry-wise, so the result stays inside the ball. `exact`
        asks for the exact Euclidean projection onto ball ∩ box where the norm has one that
        differs from ball-then-box (L1); other norms ignore it.
        """
        if mask is not None:
            delta = delta * mask
        delta = self.project_ball(delta, eps, pixels=pixels)
        return (x + delta).clamp(*bounds) - x

    def scale_radius(self, eps: float, ratio: float) -> float:
        """The default radius for images with `ratio` times the reference number of entries."""
        return eps

    def default_step_size(self, eps: float, steps: int) -> float:
        """PGD's default step: 2.5·ε/steps (enough to cross the ball in 40 % of the iterations)."""
        return 2.5 * eps / max(steps, 1)

    @property
    def square(self) -> bool:
        """Whether the Square attack supports the norm (the class implements its proposal)."""
        return type(self).square_propose is not Norm.square_propose

    def square_start(self, x: torch.Tensor, eps: float, generator: torch.Generator
                     ) -> torch.Tensor:
        """Square's start δ for every image of x (N×C×H×W), before the box."""
        raise NotImplementedError

    def square_draws(self, x: torch.Tensor, s: int, generator: torch.Generator
                     ) -> dict[str, torch.Tensor]:
        """The random numbers of one Square iteration with windows of side s, for every image
        of x (each entry has one row per image, so a subset of images is a row index)."""
        raise NotImplementedError

    def square_propose(self, x: torch.Tensor, delta: torch.Tensor, eps: float, s: int,
                       draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """Square's proposal δ' for every row of x at the current δ, from that row's `draws`
        (before the box clip, which only shrinks |δ'|)."""
        raise NotImplementedError

    @staticmethod
    def _radius(x: torch.Tensor, eps: float, generator: torch.Generator, full: bool = False
                ) -> torch.Tensor:
        r = draw((x.shape[0],), generator, x, "uniform") * eps  # drawn either way: same stream
        return torch.full_like(r, eps) if full else r


class Linf(Norm):
    """L∞: max |δ_i|; sign steps; clamp projection; starts uniform on the sphere's directions."""

    name = "linf"
    radii = {"gray28": (0.1, 0.2), "mnist": (0.3, 0.4), "color32": (8 / 255, 16 / 255)}
    inward_steps = False
    apgd_start = "cube"

    def norm(self, delta: torch.Tensor, *, pixels: bool = False) -> torch.Tensor:
        return delta.flatten(1).abs().amax(1)

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator, *,
                     pixels: bool = False, full: bool = False) -> torch.Tensor:
        radius = self._radius(x, eps, generator, full)
        u = 2 * draw(x.shape, generator, x, "uniform") - 1
        return _unit(u, u.flatten(1).abs().amax(1)) * bview(radius, u)

    def direction(self, g: torch.Tensor, *, l1_fraction: float = 0.025) -> torch.Tensor:
        return g.sign()

    def project_ball(self, delta: torch.Tensor, eps: float, *, pixels: bool = False
                     ) -> torch.Tensor:
        return delta.clamp(-eps, eps)

    def square_start(self, x: torch.Tensor, eps: float, generator: torch.Generator
                     ) -> torch.Tensor:
        """Vertical stripes: ε·ρ with ρ = ±1 per column and channel."""
        n, ch, h, w = x.shape
        return eps * random_signs((n, ch, 1, w), generator, x).expand(n, ch, h, w)

    def square_draws(self, x: torch.Tensor, s: int, generator: torch.Generator
                     ) -> dict[str, torch.Tensor]:
        n, ch, h, w = x.shape
        r1, c1 = window_corners(n, h, w, s, generator, x.device)
        return {"r1": r1, "c1": c1, "signs": random_signs((n, ch), generator, x)}

    def square_propose(self, x: torch.Tensor, delta: torch.Tensor, eps: float, s: int,
                       draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """The window set to ±ε (one sign per channel), the rest unchanged (written into δ)."""
        vals = (eps * draws["signs"])[:, :, None, None]
        lin = window_index(draws["r1"], draws["c1"], s, tuple(delta.shape))
        return delta.put_(lin, vals.expand(lin.shape))


class L2(Norm):
    """L2: Euclidean norm; normalized-gradient steps; rescaling projection; Gaussian directions."""

    name = "l2"
    radii = {"gray28": (1.5, 3.0), "color32": (0.5, 1.0)}
    apgd_start = "sphere"
    square_smallest = 3
    square_odd = True

    def norm(self, delta: torch.Tensor, *, pixels: bool = False) -> torch.Tensor:
        return delta.flatten(1).norm(dim=1)

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator, *,
                     pixels: bool = False, full: bool = False) -> torch.Tensor:
        radius = self._radius(x, eps, generator, full)
        u = draw(x.shape, generator, x, "normal")
        return _unit(u, u.flatten(1).norm(dim=1)) * bview(radius, u)

    def direction(self, g: torch.Tensor, *, l1_fraction: float = 0.025) -> torch.Tensor:
        return _unit(g, g.flatten(1).norm(dim=1))

    def project_ball(self, delta: torch.Tensor, eps: float, *, pixels: bool = False
                     ) -> torch.Tensor:
        nrm = delta.flatten(1).norm(dim=1)
        return delta * bview((eps / nrm.clamp(min=1e-12)).clamp(max=1.0), delta)

    def scale_radius(self, eps: float, ratio: float) -> float:
        return eps * math.sqrt(ratio)

    def square_start(self, x: torch.Tensor, eps: float, generator: torch.Generator
                     ) -> torch.Tensor:
        """A centred grid of s0×s0 tiles (s0 = ⌊min(H, W)/5⌋: 5×5 tiles on a square image), each
        the update pattern, randomly transposed, with a random sign per example and channel;
        scaled to ‖δ‖₂ = ε."""
        n, ch, h, w = x.shape
        s0 = max(min(h, w) // 5, 1)
        nh, nw = h // s0, w // s0
        top, left = (h - nh * s0) // 2, (w - nw * s0) // 2
        pat = square_pattern(s0, x.device, x.dtype)
        delta = torch.zeros_like(x)
        for i in range(nh):
            for j in range(nw):
                sg = random_signs((n, ch), generator, x)
                flip = random_signs((n,), generator, x) > 0
                tile = torch.where(flip[:, None, None], pat.t()[None], pat[None])  # N×s0×s0
                r, c = top + i * s0, left + j * s0
                delta[:, :, r:r + s0, c:c + s0] = tile[:, None] * sg[:, :, None, None]
        return delta * bview(eps / delta.flatten(1).norm(dim=1).clamp(min=1e-12), delta)

    def square_draws(self, x: torch.Tensor, s: int, generator: torch.Generator
                     ) -> dict[str, torch.Tensor]:
        n, ch, h, w = x.shape
        r1, c1 = window_corners(n, h, w, s, generator, x.device)
        r2, c2 = window_corners(n, h, w, s, generator, x.device)
        signs = random_signs((n, ch), generator, x)
        flip = random_signs((n,), generator, x) > 0
        return {"r1": r1, "c1": c1, "r2": r2, "c2": c2, "signs": signs, "flip": flip}

    def square_propose(self, x: torch.Tensor, delta: torch.Tensor, eps: float, s: int,
                       draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """The paper's Algorithm 3, per channel: the new content of window W1 points along
        ρ·pattern + the old W1 content (both of unit norm) and takes all the mass of W1 ∪ W2 in
        that channel plus an equal share of the unused budget ε² − ‖δ‖²; W2 is zeroed; so
        ‖δ'‖₂ = ε."""
        shape = tuple(delta.shape)
        ch = shape[1]
        lin1 = window_index(draws["r1"], draws["c1"], s, shape)
        lin2 = window_index(draws["r2"], draws["c2"], s, shape)
        zero = torch.zeros_like(delta)
        w1, w2 = delta.take(lin1), delta.take(lin2)  # the windows' contents, N×C×s×s
        d1 = zero.clone().put_(lin1, w1)  # δ on W1, 0 elsewhere
        in_union = d1.clone().put_(lin2, w2)
        outside = delta.clone().put_(lin1, zero.new_zeros(()).expand(lin1.shape))
        outside.put_(lin2, zero.new_zeros(()).expand(lin2.shape))
        unused = (eps ** 2 - delta.flatten(1).pow(2).sum(1)).clamp(min=0)  # N
        n1 = d1.flatten(2).norm(dim=2)  # N×C
        pat = oriented_pattern(s, draws["signs"], draws["flip"])  # unit norm per channel
        temp = zero.put_(lin1, pat + w1 / n1.clamp(min=1e-12)[:, :, None, None])  # 0 off W1
        mass = (in_union.flatten(2).pow(2).sum(2) + unused[:, None] / ch).sqrt()  # N×C
        scale = mass / temp.flatten(2).norm(dim=2).clamp(min=1e-12)
        return outside + temp * scale[:, :, None, None]


class L1(Norm):
    """L1: sum |δ_i|; steps on the top `l1_fraction` of |g| (signed, L1-normalized); exact
    sort-based projection (with `exact`: onto the L1 ball ∩ box); Laplace directions."""

    name = "l1"
    radii = {"gray28": (10.0, 18.0), "color32": (7.85, 12.0)}
    apgd_sparse = True
    apgd_start = "sphere"

    def norm(self, delta: torch.Tensor, *, pixels: bool = False) -> torch.Tensor:
        return delta.flatten(1).abs().sum(1)

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator, *,
                     pixels: bool = False, full: bool = False) -> torch.Tensor:
        radius = self._radius(x, eps, generator, full)
        u = draw(x.shape, generator, x, "uniform").clamp(min=1e-12)
        s = draw(x.shape, generator, x, "normal").sign()
        lap = -u.log() * s  # Laplace: uniform direction on the L1 sphere after normalizing
        return _unit(lap, lap.flatten(1).abs().sum(1)) * bview(radius, lap)

    def direction(self, g: torch.Tensor, *, l1_fraction: float = 0.025) -> torch.Tensor:
        flat = g.flatten(1)
        k = max(1, int(math.ceil(l1_fraction * flat.shape[1])))
        idx = flat.abs().topk(k, dim=1).indices
        step = torch.zeros_like(flat).scatter_(1, idx, flat.gather(1, idx).sign())
        return (step / step.abs().sum(1, keepdim=True).clamp(min=1.0)).view_as(g)

    def project_ball(self, delta: torch.Tensor, eps: float, *, pixels: bool = False
                     ) -> torch.Tensor:
        return project_l1(delta, eps)

    def project(self, delta: torch.Tensor, x: torch.Tensor, eps: float, *,
                mask: torch.Tensor | None = None, pixels: bool = False,
                bounds: Bounds = (0.0, 1.0), exact: bool = False) -> torch.Tensor:
        if not exact:
            return super().project(delta, x, eps, mask=mask, pixels=pixels, bounds=bounds)
        if mask is not None:
            delta = delta * mask
        return project_l1_box(delta, x, eps, bounds)

    def scale_radius(self, eps: float, ratio: float) -> float:
        return eps * ratio


class L0(Norm):
    """L0: the number of nonzero entries (or pixels across channels, `pixels`); steps g/‖g‖₁;
    keep the ⌈ε⌉ largest |δ|; starts on ⌈ε⌉ random entries. PGD's default step is 5·ε."""

    name = "l0"
    radii = {"gray28": (15.0, 25.0), "color32": (10.0, 16.0)}
    apgd = False

    def norm(self, delta: torch.Tensor, *, pixels: bool = False) -> torch.Tensor:
        if pixels and delta.ndim == 4:
            return (delta != 0).any(1).flatten(1).sum(1).to(delta.dtype)
        return (delta.flatten(1) != 0).sum(1).to(delta.dtype)

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator, *,
                     pixels: bool = False, full: bool = False) -> torch.Tensor:
        # ⌈ε⌉ random entries with values U(−1, 1), magnitude scaled by U(0, 1)
        radius = self._radius(x, eps, generator, full)
        scores = draw(x.shape, generator, x, "uniform")
        vals = 2 * draw(x.shape, generator, x, "uniform") - 1
        dirn = project_l0(scores, l0_budget(eps), pixels=pixels).ne(0).to(x.dtype) * vals
        return dirn * bview(radius / max(eps, 1e-12), dirn)

    def direction(self, g: torch.Tensor, *, l1_fraction: float = 0.025) -> torch.Tensor:
        return _unit(g, g.flatten(1).abs().sum(1))

    def project_ball(self, delta: torch.Tensor, eps: float, *, pixels: bool = False
                     ) -> torch.Tensor:
        return project_l0(delta, l0_budget(eps), pixels=pixels)

    def scale_radius(self, eps: float, ratio: float) -> float:
        return float(max(1, math.ceil(eps * ratio)))

    def default_step_size(self, eps: float, steps: int) -> float:
        """5·ε: the L0 step g/‖g‖₁ spreads unit mass over all entries, so a step must be large
        for single entries to reach the box (Fashion-MNIST, ε₀ = 15: RErr of a normal model 33 %
        with 2.5·ε/steps, 78 % with 5·ε, both 20 iterations)."""
        return 5.0 * eps


NORMS: dict[str, Norm] = {n.name: n for n in (Linf(), L2(), L1(), L0())}


def get_norm(norm: str | Norm, allowed: tuple[str, ...] | None = None, what: str = "") -> Norm:
    """The registered norm called `norm` (a `Norm` is returned as is); a `UserError` names the
    choices otherwise. `allowed` restricts the choices (e.g. the norms of one attack, `what`)."""
    if isinstance(norm, Norm):
        return norm
    choices = tuple(NORMS) if allowed is None else allowed
    if norm not in choices:
        if allowed is None:
            raise UserError(f"unknown norm {norm!r}; choose one of {', '.join(choices)}")
        raise UserError(f"{what} norm {norm!r} is not supported; choose one of {', '.join(choices)}")
    return NORMS[norm]
