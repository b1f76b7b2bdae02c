"""Random and fixed-pattern bit error training: RandBET and PattBET (spec §7).

Per batch, RandBET computes the gradient at the clean quantized weights and the gradient at the
same weights with a fresh random bit error pattern at rate p (codes XOR mask, dequantized), clamps
the perturbed gradient element-wise to ±`grad_clamp`, and averages the two. Both passes use the
run's quantization scheme (`--quant`; the trainer makes it RQuant 8-bit when none is
given). Gradients reach the
float weights through the straight-through estimator.

Curriculum: bit errors switch on for good at the first batch whose clean loss is below
`loss_threshold` (default 1.75 on 10 classes, 1.75·ln K / ln 10 on K classes). The switch is a
device tensor, so there is no host synchronisation per step; until it flips, the perturbed pass
is computed but weighted zero. The reported training loss is the clean loss.

PattBET is the same with one fixed pattern (`pattern_seed`) for the whole run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from robustlab import biterrors as be
from robustlab.device import autocast
from robustlab.errors import UserError
from robustlab.models import forward_with
from robustlab.quant import RQUANT8, Quantized, Scheme
from robustlab.train.methods import Context, Method, register

THRESHOLD_10 = 1.75  # clean-loss threshold of the curriculum on 10-class problems


def curriculum_threshold(num_classes: int, loss_threshold: float = -1.0) -> float:
    """The clean-loss threshold: `loss_threshold`, or for -1 the default 1.75·ln K / ln 10."""
    if loss_threshold == -1.0:
        return THRESHOLD_10 * math.log(max(num_classes, 2)) / math.log(10)
    return loss_threshold


def _forward_at(ctx: Context, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits at exactly `params` (no further quantization), with the run's speed options."""
    cfg = getattr(ctx, "config", None)
    if getattr(cfg, "channels_last", False) and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(ctx.device, bool(getattr(cfg, "bf16", False))):
        return forward_with(ctx.model, params, x).float()


@register
@dataclass
class RandBET(Method):
    """Random bit error training: clean + clamped perturbed gradient, averaged."""

    name: ClassVar[str] = "randbet"
    needs_quant: ClassVar[bool] = True
    bit_error_rate: float = field(default=0.01, metadata={
        "help": "bit error rate p of the training patterns, in [0, 1]"})
    grad_clamp: float = field(default=0.05, metadata={
        "help": "element-wise clamp of the gradient at the perturbed weights"})
    loss_threshold: float = field(default=-1.0, metadata={
        "help": "bit errors start at the first batch with clean loss below this; "
                "-1: 1.75 on 10 classes (scaled by ln K/ln 10); inf: from the start"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.bit_error_rate <= 1.0:
            raise UserError(f"--bit-error-rate {self.bit_error_rate} must be in [0, 1]")
        if not self.grad_clamp > 0:
            raise UserError(f"--grad-clamp {self.grad_clamp} must be > 0")
        if not (self.loss_threshold == -1.0 or self.loss_threshold > 0):
            raise UserError(f"--loss-threshold {self.loss_threshold} must be > 0, or -1 for the "
                            "default")
        self._active: torch.Tensor | bool = False

    # -- the pattern -------------------------------------------------------------------
    def pattern_seed_for(self, ctx: Context) -> int:
        """A fresh pattern seed per batch, drawn from the run's generator."""
        return int(torch.randint(0, 2**62, (1,), generator=ctx.generator))

    def mask(self, ctx: Context, q: Quantized) -> torch.Tensor:
        """A random bit error pattern (XOR mask on `q.codes`) at rate p."""
        return be.mask(q, self.pattern_seed_for(ctx), self.bit_error_rate)

    def pattern(self, ctx: Context, q: Quantized, x: torch.Tensor, y: torch.Tensor
                ) -> torch.Tensor:
        """The bit error pattern trained against on the batch (x, y): the pattern source.
        Random and fixed patterns ignore the batch (`mask`); adversarial ones attack it."""
        return self.mask(ctx, q)

    # -- training ------------------------------------------------------------------------
    def scheme(self, ctx: Context) -> Scheme:
        return ctx.quant if ctx.quant is not None else RQUANT8

    def _gate(self, ctx: Context, clean_loss: torch.Tensor) -> torch.Tensor | None:
        """Weight of the perturbed gradient: 0.5 once bit errors are on, else 0 (a tensor)."""
        thr = curriculum_threshold(ctx.num_classes, self.loss_threshold)
        if self._active is True or math.isinf(thr):
            self._active = True
            return None
        was = self._active if isinstance(self._active, torch.Tensor) else torch.zeros(
            (), dtype=torch.bool, device=clean_loss.device)
        self._active = was | (clean_loss.detach() < thr)
        return self._active.to(clean_loss.dtype) * 0.5

    def backward(self, ctx: Context, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        params = ctx.params()
        names = [n for n, p in params.items() if p.requires_grad]
        scheme = self.scheme(ctx)
        logits = _forward_at(ctx, scheme.fake_quantize({n: params[n] for n in names}), x)
        loss = ctx.criterion(logits, y)
        gate = self._gate(ctx, loss)
        tensors = [params[n] for n in names]
        g_clean = torch.autograd.grad(loss, tensors, allow_unused=True)
        with torch.no_grad():
            q = scheme.quantize({n: params[n].detach() for n in names})
        flips = self.pattern(ctx, q, x, y)
        with torch.no_grad():
            pert = q.dequantize(torch.bitwise_xor(q.codes, flips))
        leaves = {n: pert[n].detach().requires_grad_(True) for n in names}
        loss_p = ctx.criterion(_forward_at(ctx, leaves, x), y)
        g_pert = torch.autograd.grad(loss_p, list(leaves.values()), allow_unused=True)
        with torch.no_grad():
            for p, gc, gp in zip(tensors, g_clean, g_pert):
                gc = torch.zeros_like(p) if gc is None else gc
                gp = torch.zeros_like(p) if gp is None else gp.clamp(-self.grad_clamp, self.grad_clamp)
                g = torch.lerp(gc, gp, 0.5) if gate is None else torch.lerp(gc, gp, gate)
                p.grad = g if p.grad is None else p.grad + g
        return loss.detach(), logits.detach()

    @property
    def active(self) -> bool:
        """Whether bit errors are switched on (synchronises with the device)."""
        return bool(self._active)

    def state_dict(self) -> dict[str, Any]:
        return {"active": self.active}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._active = bool(state.get("active", False))


@register
@dataclass
class PattBET(RandBET):
    """RandBET with one fixed bit error pattern for the whole run (it overfits to it)."""

    name: ClassVar[str] = "pattbet"
    pattern_seed: int = field(default=0, metadata={"help": "seed of the fixed training pattern"})

    def __post_init__(self) -> None:
        super().__post_init__()
        be.check_seed(self.pattern_seed)
        self._cache: dict[tuple[Any, ...], torch.Tensor] = {}

    def mask(self, ctx: Context, q: Quantized) -> torch.Tensor:
        key = (q.numel, q.scheme.bits, str(q.device))
        if key not in self._cache:
            self._cache = {key: be.mask(q, self.pattern_seed, self.bit_error_rate)}
        return self._cache[key]

