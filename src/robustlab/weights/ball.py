"""Relative weight balls: per-tensor sampling, normalized ascent and projection (spec §8).

A perturbation ν is a dict `{name: tensor}` over a chosen set of parameter tensors. The relative
ball B_ξ(w) holds every ν with ‖ν_l‖₂ ≤ ξ‖w_l‖₂ for each perturbed tensor l. Perturbed weights are
`apply(params, ν)` = `{name: w + ν}`, a partial parameter dict for `torch.func.functional_call`;
the model itself is never modified.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from robustlab.errors import UserError

Params = dict[str, torch.Tensor]

#: The one vocabulary for "which tensors to perturb" (relative balls and bit attacks alike).
SELECTIONS = ("all", "default", "weights")


def _norm_module_params(model: nn.Module) -> set[str]:
    """Names of parameters that belong to normalization layers (never perturbed)."""
    from robustlab.models import NORM_TYPES as norm_types  # one definition, by module type
    out = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, norm_types):
            for pname, _ in mod.named_parameters(recurse=False):
                out.add(f"{mname}.{pname}" if mname else pname)
    return out


def select(model: nn.Module, selection: str | Iterable[str] = "all", *,
           among: Sequence[str] | None = None) -> list[str]:
    """Names of the parameter tensors a weight perturbation acts on: one vocabulary for the
    relative ball (flatness, landscapes, AWP) and the bit attacks.

    - "all" (the default everywhere): every tensor the perturbation can act on, in `among`'s
      order: `among` when given (a bit attack passes its quantized tensors: every stored tensor,
      norm-layer parameters included, as random bit errors), else the relative ball's tensors:
      conv/linear weights and biases (`robustlab.models.perturbable_names`; norm-layer
      parameters and buffers are never in a ball, spec §8);
    - "default": conv/linear weights and biases (of `among`, when given);
    - "weights": conv/linear weights only (as in AWP);
    - explicit names (a list or a comma-separated string) of tensors of the "all" set.
    """
    from robustlab.models import perturbable_names

    norm = _norm_module_params(model)
    layers = [n for n in perturbable_names(model) if n not in norm]
    if among is not None:
        layers = [n for n in layers if n in set(among)]
    pool = layers if among is None else list(among)
    what = "conv/linear weights and biases" if among is None else "quantized tensors"
    if isinstance(selection, str) and selection in SELECTIONS:
        if selection == "all":
            names = pool
        elif selection == "weights":
            shapes = dict(model.named_parameters())
            names = [n for n in layers if n in shapes and shapes[n].ndim >= 2]
        else:
            names = layers
    else:
        wanted = [s.strip() for s in selection.split(",")] if isinstance(selection, str) \
            else list(selection)
        wanted = [w for w in wanted if w]
        known = set(pool)
        for w in wanted:
            if w not in known:
                raise UserError(
                    f"unknown parameter selection {w!r}; use all, default, weights or names of "
                    f"{what} such as {', '.join(pool[:4]) or '(none)'}")
        names = [n for n in pool if n in set(wanted)]
    if not names:
        raise UserError(f"model {type(model).__name__} has no perturbable tensors ({what}) for "
                        f"selection {selection!r}")
    return names


def check_xi(xi: float) -> float:
    """Validate a relative radius ξ ≥ 0 (user error otherwise)."""
    xi = float(xi)
    if not xi >= 0.0 or xi == float("inf"):
        raise UserError(f"relative radius xi={xi} must be a finite number >= 0")
    return xi


def norms(tensors: Params) -> Params:
    """Per-tensor L2 norms as 0-d tensors."""
    return {n: t.detach().norm() for n, t in tensors.items()}


class RelativeBall:
    """The per-tensor relative ball B_ξ(w) around the weights `params` (restricted to `names`)."""

    def __init__(self, params: Params, names: Iterable[str], xi: float) -> None:
        self.names = list(names)
        missing = [n for n in self.names if n not in params]
        if missing:
            raise UserError(f"unknown parameter selection {missing[0]!r}; not a model parameter")
        self.xi = check_xi(xi)
        self.weights = {n: params[n].detach() for n in self.names}
        self.weight_norms = norms(self.weights)
        self.radii = {n: self.xi * self.weight_norms[n] for n in self.names}

    # -- construction of perturbations ------------------------------------------------------
    def zeros(self) -> Params:
        return {n: torch.zeros_like(w) for n, w in self.weights.items()}

    def sample(self, generator: torch.Generator, kind: str = "sphere") -> Params:
        """A random ν: per tensor a Gaussian direction scaled to the sphere (`kind="sphere"`,
        ‖ν_l‖ = ξ‖w_l‖) or uniformly inside the ball (`kind="ball"`, radius ξ‖w_l‖·U^{1/d})."""
        if kind not in ("sphere", "ball"):
            raise UserError(f"unknown sampling kind {kind!r}; choose sphere or ball")
        nu = {}
        for n, w in self.weights.items():
            z = torch.randn(w.shape, generator=generator, dtype=torch.float32)
            scale = self.radii[n].cpu().float() / z.norm().clamp_min(1e-30)
            if kind == "ball":
                u = torch.rand((), generator=generator, dtype=torch.float32)
                scale = scale * u.pow(1.0 / max(w.numel(), 1))
            nu[n] = (z * scale).to(device=w.device, dtype=w.dtype)
        return nu

    def project(self, nu: Params) -> Params:
        """Scale each ν_l back into ‖ν_l‖ ≤ ξ‖w_l‖ (unchanged when inside)."""
        out = {}
        for n, v in nu.items():
            r = self.radii[n]
            vn = v.norm()
            factor = torch.where(vn > r, r / vn.clamp_min(1e-30), torch.ones_like(vn))
            out[n] = v * factor
        return out

    def ascent(self, nu: Params, grads: Params, step: float) -> Params:
        """One per-tensor normalized ascent step ν_l += η‖w_l‖·g_l/‖g_l‖, then projection."""
        out = {}
        for n, v in nu.items():
            g = grads[n]
            g = g / g.norm().clamp_min(1e-30)
            out[n] = v + step * self.weight_norms[n] * g
        return self.project(out)

    def apply(self, nu: Params) -> Params:
        """Perturbed weights {name: w + ν} (only the perturbed tensors)."""
        return {n: self.weights[n] + nu[n] for n in self.names}

    def contains(self, nu: Params, rtol: float = 1e-5) -> bool:
        """Whether every ‖ν_l‖ ≤ ξ‖w_l‖ (up to a relative tolerance)."""
        return all(bool(nu[n].norm() <= self.radii[n] * (1 + rtol) + 1e-12) for n in self.names)


def filter_normalized(params: Params, names: Iterable[str], generator: torch.Generator) -> Params:
    """A random direction with each output unit (filter / row) scaled to the norm of the same
    unit of the weights (Li et al.'s filter normalization); 1-D tensors are scaled per tensor."""
    d = {}
    for n in names:
        w = params[n].detach()
        z = torch.randn(w.shape, generator=generator, dtype=torch.float32).to(w.device, w.dtype)
        if w.ndim >= 2:
            dims = tuple(range(1, w.ndim))
            wn = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
            zn = torch.linalg.vector_norm(z, dim=dims, keepdim=True).clamp_min(1e-30)
        else:
            wn, zn = w.norm(), z.norm().clamp_min(1e-30)
        d[n] = z * (wn / zn)
    return d


def tensor_normalized(params: Params, names: Iterable[str], generator: torch.Generator) -> Params:
    """A random direction with ‖d_l‖ = ‖w_l‖ per tensor (the relative ball's unit sphere)."""
    return RelativeBall(params, names, 1.0).sample(generator, "sphere")
