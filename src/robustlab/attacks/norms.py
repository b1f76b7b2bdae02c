"""Lp norms as objects (spec §3): one class per norm, registered by name in `NORMS`.

A norm knows everything the attacks need about its ball: the per-example norm of a batch
(`norm`), a random start inside the ball (`random_start`), the steepest-ascent step direction
from a gradient (`direction`), the projection onto the ball (`project_ball`) and onto the ball ∩
box (`project`), its default radii (`radii`, scaled to other image sizes by `scale_radius`) and
its default PGD step size. `pgd`, `apgd`, `square` and the attack engine look norms up here;
adding a norm is one subclass of `Norm` added to `NORMS`.

    from robustlab.attacks.norms import NORMS, get_norm
    l2 = get_norm("l2")
    delta = l2.project(delta, x, 1.5)      # onto {‖δ‖₂ ≤ 1.5} ∩ {0 ≤ x + δ ≤ 1}
    l2.norm(delta)                         # per-example ‖δ‖₂

All methods are batched (dim 0 = examples) and draw random numbers only from the generator given.
"""

from __future__ import annotations

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


# ---------------------------------------------------------------- the norms

class Norm:
    """One Lp norm: subclasses set `name` and `radii` and implement the four operations.

    `radii` holds (seen, larger "unseen") default radii per image family: `gray28` (28×28
    grayscale, Fashion-MNIST), optionally `mnist` (defaults to `gray28`), and `color32` (32×32
    color). `inward_steps`: zero the gradient entries that push a pixel at the box boundary
    further out before taking a step (pointless for L∞'s sign step, which the box clamp absorbs).
    `apgd_start`: APGD's random start (an `init` kind of `pgd`); `apgd = False` for norms APGD
    does not support; `apgd_sparse`: APGD takes `sparse_direction` steps on an adaptive number of
    entries (L1-APGD) with the exact ball ∩ box projection.
    """

    name: ClassVar[str]
    radii: ClassVar[dict[str, tuple[float, float]]]
    inward_steps: ClassVar[bool] = True
    apgd: ClassVar[bool] = True
    apgd_start: ClassVar[str] = "norm"
    apgd_sparse: ClassVar[bool] = False

    def norm(self, delta: torch.Tensor, *, pixels: bool = False) -> torch.Tensor:
        """Per-example norm of δ."""
        raise NotImplementedError

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator, *,
                     pixels: bool = False) -> torch.Tensor:
        """A random δ: a random direction of the norm times ε·U(0, 1) (before the box)."""
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

    @staticmethod
    def _radius(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        return draw((x.shape[0],), generator, x, "uniform") * eps


class Linf(Norm):
    """L∞: max |δ_i|; sign steps; clamp projection; starts uniform on the sphere's directions."""

    name = "linf"
    radii = {"gray28": (0.1, 0.2), "mnist": (0.3, 0.4), "color32": (8 / 255, 16 / 255)}
    inward_steps = False
    apgd_start = "cube"

    def norm(self, delta: torch.Tensor, *, pixels: bool = False) -> torch.Tensor:
        return delta.flatten(1).abs().amax(1)

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator, *,
                     pixels: bool = False) -> torch.Tensor:
        radius = self._radius(x, eps, generator)
        u = 2 * draw(x.shape, generator, x, "uniform") - 1
        return _unit(u, u.flatten(1).abs().amax(1)) * bview(radius, u)

    def direction(self, g: torch.Tensor, *, l1_fraction: float = 0.025) -> torch.Tensor:
        return g.sign()

    def project_ball(self, delta: torch.Tensor, eps: float, *, pixels: bool = False
                     ) -> torch.Tensor:
        return delta.clamp(-eps, eps)


class L2(Norm):
    """L2: Euclidean norm; normalized-gradient steps; rescaling projection; Gaussian directions."""

    name = "l2"
    radii = {"gray28": (1.5, 3.0), "color32": (0.5, 1.0)}

    def norm(self, delta: torch.Tensor, *, pixels: bool = False) -> torch.Tensor:
        return delta.flatten(1).norm(dim=1)

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator, *,
                     pixels: bool = False) -> torch.Tensor:
        radius = self._radius(x, eps, generator)
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


class L1(Norm):
    """L1: sum |δ_i|; steps on the top `l1_fraction` of |g| (signed, L1-normalized); exact
    sort-based projection (with `exact`: onto the L1 ball ∩ box); Laplace directions."""

    name = "l1"
    radii = {"gray28": (10.0, 18.0), "color32": (7.85, 12.0)}
    apgd_sparse = True

    def norm(self, delta: torch.Tensor, *, pixels: bool = False) -> torch.Tensor:
        return delta.flatten(1).abs().sum(1)

    def random_start(self, x: torch.Tensor, eps: float, generator: torch.Generator, *,
                     pixels: bool = False) -> torch.Tensor:
        radius = self._radius(x, eps, generator)
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
                     pixels: bool = False) -> torch.Tensor:
        # ⌈ε⌉ random entries with values U(−1, 1), magnitude scaled by U(0, 1)
        radius = self._radius(x, eps, generator)
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
