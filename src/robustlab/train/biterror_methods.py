"""Bit error training (spec §7): one method, `BitErrorTraining`, with a pluggable pattern source.

Per batch, bit error training computes the gradient at the clean quantized weights and the
gradient at the same weights with a bit error pattern (codes XOR mask, dequantized), clamps the
perturbed gradient element-wise to ±`grad_clamp`, and averages the two. Both passes use the run's
quantization scheme (`--quant`; the trainer makes it RQuant 8-bit when none is given). Gradients
reach the float weights through the straight-through estimator.

Curriculum: bit errors switch on for good at the first batch whose clean loss is below
`loss_threshold` (default 1.75 on 10 classes, 1.75·ln K / ln 10 on K classes). The switch is a
device tensor, so there is no host synchronisation per step; until it flips, the perturbed pass
is computed but weighted zero. The reported training loss is the clean loss.

The pattern comes from a *pattern source*, a mixin with `patterns(ctx, q, x, y) -> XOR mask`
whose dataclass fields are its options. The registered methods are bit error training with one
source each:

- `randbet` = `RandomPatterns`: a fresh random pattern at rate p per batch;
- `pattbet` = `FixedPattern`: one fixed pattern (`pattern_seed`) at rate p for the whole run;
- `advbet` = `AdversarialPatterns`: `bit_budget` adversarial bit flips (at most one per weight)
  found on the batch by the projected attack of `robustlab.weights.bits`.

A new source is one mixin plus `class MyBET(MySource, BitErrorTraining)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from robustlab import biterrors as be
from robustlab.errors import UserError
from robustlab.quant import RQUANT8, Quantized, Scheme
from robustlab.train.methods import Context, Method, register
from robustlab.weights.bits import attack_codes, check_budget

THRESHOLD_10 = 1.75  # clean-loss threshold of the curriculum on 10-class problems


def curriculum_threshold(num_classes: int, loss_threshold: float = -1.0) -> float:
    """The clean-loss threshold: `loss_threshold`, or for -1 the default 1.75·ln K / ln 10."""
    if loss_threshold == -1.0:
        return THRESHOLD_10 * math.log(max(num_classes, 2)) / math.log(10)
    return loss_threshold


@dataclass
class BitErrorTraining(Method):
    """Clean plus clamped bit-flipped gradient, averaged, with the loss-threshold curriculum; the
    bit error pattern comes from `patterns` (a pattern source mixed in by the subclass)."""

    name: ClassVar[str] = "bet"
    needs_quant: ClassVar[bool] = True

    grad_clamp: float = field(default=0.05, metadata={
        "help": "element-wise clamp of the gradient at the bit-flipped weights"})
    loss_threshold: float = field(default=-1.0, metadata={
        "help": "bit errors start at the first batch with clean loss below this; "
                "-1: 1.75 on 10 classes (scaled by ln K/ln 10); inf: from the start"})

    def __post_init__(self) -> None:
        if not self.grad_clamp > 0:
            raise UserError(f"--grad-clamp {self.grad_clamp} must be > 0")
        if not (self.loss_threshold == -1.0 or self.loss_threshold > 0):
            raise UserError(f"--loss-threshold {self.loss_threshold} must be > 0, or -1 for the "
                            "default")
        self._active: torch.Tensor | bool = False

    def patterns(self, ctx: Context, q: Quantized, x: torch.Tensor, y: torch.Tensor
                 ) -> torch.Tensor:
        """The XOR mask on `q.codes` trained against on the batch (x, y): the pattern source."""
        raise NotImplementedError(f"{type(self).__name__} has no pattern source")

    def step_cost(self) -> float:
        return 2.0  # the clean and the bit-flipped pass

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
        logits = ctx.forward(x, scheme.fake_quantize({n: params[n] for n in names}),
                             quantize=False)
        loss = ctx.criterion(logits, y)
        gate = self._gate(ctx, loss)
        tensors = [params[n] for n in names]
        g_clean = torch.autograd.grad(loss, tensors, allow_unused=True)
        with torch.no_grad():
            q = scheme.quantize({n: params[n].detach() for n in names})
        flips = self.patterns(ctx, q, x, y)
        with torch.no_grad():
            pert = q.dequantize(torch.bitwise_xor(q.codes, flips))
        leaves = {n: pert[n].detach().requires_grad_(True) for n in names}
        loss_p = ctx.criterion(ctx.forward(x, leaves, quantize=False), y)
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


# ---- pattern sources (mixins: their fields are the method's options) -------------------------

def _next_post_init(rest: Any) -> None:
    """Continue `__post_init__` along the MRO (a source mixed into `BitErrorTraining`)."""
    post = getattr(rest, "__post_init__", None)
    if post is not None:
        post()


@dataclass
class RandomPatterns:
    """A fresh random pattern at rate p per batch, its seed drawn from the run's generator."""

    bit_error_rate: float = field(default=0.01, metadata={
        "help": "bit error rate p of the training patterns, in [0, 1]"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.bit_error_rate <= 1.0:
            raise UserError(f"--bit-error-rate {self.bit_error_rate} must be in [0, 1]")
        _next_post_init(super())  # the method's validation, next in the MRO

    def patterns(self, ctx: Context, q: Quantized, x: torch.Tensor, y: torch.Tensor
                 ) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
        return be.mask(q, seed, self.bit_error_rate)


@dataclass
class FixedPattern(RandomPatterns):
    """One pattern at rate p, seed `pattern_seed`, for the whole run (draws no randomness)."""

    pattern_seed: int = field(default=0, metadata={"help": "seed of the fixed training pattern"})

    def __post_init__(self) -> None:
        super().__post_init__()
        be.check_seed(self.pattern_seed)
        self._cache: dict[tuple[Any, ...], torch.Tensor] = {}

    def patterns(self, ctx: Context, q: Quantized, x: torch.Tensor, y: torch.Tensor
                 ) -> torch.Tensor:
        key = (q.numel, q.scheme.bits, str(q.device))
        if key not in self._cache:
            self._cache = {key: be.mask(q, self.pattern_seed, self.bit_error_rate)}
        return self._cache[key]


@dataclass
class AdversarialPatterns:
    """`bit_budget` adversarial bit flips on the batch (the projected bit attack)."""

    bit_budget: int = field(default=160, metadata={
        "help": "flipped bits per batch of the training bit attack (at most one per weight)"})
    bit_attack_steps: int = field(default=5, metadata={
        "help": "iterations of the training bit attack"})
    bit_attack_step_size: float = field(default=0.25, metadata={
        "help": "step of the training bit attack (fraction of half the code range)"})
    bit_attack_params: str = field(default="all", metadata={
        "help": "tensors the training bit attack may flip: all, default, weights or names"})

    def __post_init__(self) -> None:
        check_budget(self.bit_budget)
        if self.bit_attack_steps < 0:
            raise UserError(f"bit-attack-steps {self.bit_attack_steps} is invalid; it must be >= 0")
        if not self.bit_attack_step_size > 0:
            raise UserError(f"bit-attack-step-size {self.bit_attack_step_size} is invalid; "
                            "it must be > 0")
        _next_post_init(super())  # the method's validation, next in the MRO

    def patterns(self, ctx: Context, q: Quantized, x: torch.Tensor, y: torch.Tensor
                 ) -> torch.Tensor:
        r = attack_codes(ctx.model, q, x, y, budget=self.bit_budget, steps=self.bit_attack_steps,
                         step_size=self.bit_attack_step_size, selection=self.bit_attack_params,
                         generator=ctx.generator, batch_size=x.shape[0], progress=False)
        return torch.bitwise_xor(r.codes, q.codes)


# ---- the registered names -------------------------------------------------------------------

@register
@dataclass
class RandBET(RandomPatterns, BitErrorTraining):
    """Random bit error training: bit error training on fresh random patterns."""

    name: ClassVar[str] = "randbet"


@register
@dataclass
class PattBET(FixedPattern, BitErrorTraining):
    """Bit error training on one fixed pattern for the whole run (it overfits to it)."""

    name: ClassVar[str] = "pattbet"


@register
@dataclass
class AdvBET(AdversarialPatterns, BitErrorTraining):
    """Adversarial bit error training: bit error training on adversarial bit flips."""

    name: ClassVar[str] = "advbet"
