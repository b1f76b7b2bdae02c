"""Training against adversarial weight perturbations: AWP and AdvBET (spec §8).

**AWP** (`--method awp`): adversarial examples x̃ are computed at w by the base method (any
loss-based method: `at`, `trades`, `patch-at`, `ccat`, `normal`; `--awp-base`); one normalized
ascent step on the conv/linear weights, ν_l = γ‖w_l‖·g_l/‖g_l‖ with g the gradient of the base
loss on those inputs, gives w + ν; the gradient of the same loss on the same adversarial inputs at
w + ν is applied to w. The base method's `prepare` (the attack, run once at w) and `loss_on` (its
loss at given weights, `robustlab.train.methods.Method`) make this exact for every base.

**AdvBET** (`--method advbet`): RandBET (clean plus clamped perturbed gradient, averaged, with the
loss-threshold curriculum) where the random bit error pattern is replaced by adversarial bit
errors: `bit_budget` flipped bits (at most one per weight) found on the current batch by the
projected attack of `robustlab.weights.bits`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from robustlab.errors import UserError
from robustlab.train.biterror_methods import RandBET
from robustlab.train.methods import METHODS, Context, Method, create, discover, register
from robustlab.weights.ball import RelativeBall, select
from robustlab.weights.bits import bit_attack, check_budget

if TYPE_CHECKING:
    from robustlab.quant import Quantized


def _loss_based(cls: type[Method]) -> bool:
    """Whether a method's gradient is that of `loss_on(prepare(...))` (AWP can wrap it)."""
    return cls.backward is Method.backward


@register
@dataclasses.dataclass
class AWP(Method):
    """Adversarial weight perturbation on top of AT or TRADES (module docstring)."""

    name: ClassVar[str] = "awp"

    awp_base: str = field(default="at", metadata={
        "help": "the loss-based method AWP perturbs the weights against "
                "(at, trades, patch-at, ccat, normal)"})
    awp_gamma: float = field(default=0.005, metadata={
        "help": "relative size γ of the weight perturbation, ‖ν_l‖ = γ‖w_l‖ (0.005-0.01)"})
    awp_warmup: int = field(default=0, metadata={
        "help": "epochs of the plain base method before weights are perturbed"})
    fraction: float = 0.5
    beta: float = field(default=6.0, metadata={"help": "TRADES weight β of the KL term"})
    eps: float | None = None
    attack_norm: str = "linf"
    attack_steps: int = 10
    attack_lr: float | None = None
    attack_init: str | None = field(default=None, metadata={
        "help": "start of the training attack (default: the base method's)"})

    def __post_init__(self) -> None:
        bases = sorted(n for n, c in discover().items() if _loss_based(c))
        if self.awp_base not in bases:
            raise UserError(f"awp-base {self.awp_base!r} is invalid; choose one of "
                            f"{', '.join(bases)}")
        if not self.awp_gamma >= 0:
            raise UserError(f"awp-gamma {self.awp_gamma} is invalid; it must be >= 0")
        if self.awp_warmup < 0:
            raise UserError(f"awp-warmup {self.awp_warmup} is invalid; it must be >= 0")
        # the base gets those of AWP's options it takes (attack_init only when given)
        own = {f.name for f in dataclasses.fields(METHODS[self.awp_base])}
        opts: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(AWP)
                                if f.name in own and not f.name.startswith("awp_")}
        if self.attack_init is None:
            opts.pop("attack_init", None)
        self._base = create(self.awp_base, **opts)
        self._names: list[str] | None = None

    @classmethod
    def over(cls, base: Method, **options: Any) -> AWP:
        """AWP around an already configured loss-based method (e.g. `PatchAT(patch_size=5)`);
        `options` are AWP's own (`awp_gamma`, `awp_warmup`)."""
        if not _loss_based(type(base)):
            raise UserError(f"awp cannot wrap {base.name!r}: it is not a loss-based method")
        awp = cls(awp_base=base.name, **options)
        awp._base, awp._given = base, True
        return awp

    def config(self) -> dict[str, Any]:
        """Its options; with a base given to `over`, also that base's own configuration."""
        out = super().config()
        if getattr(self, "_given", False):
            out["base"] = self._base.config()
        return out

    def loss(self, ctx: Context, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._base.loss(ctx, x, y)

    def perturbation(self, ctx: Context, proxy_loss: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
        """ν_l = γ‖w_l‖·g_l/‖g_l‖ on the conv/linear weights, from the loss at w."""
        params = ctx.params()
        if self._names is None:
            self._names = [n for n in select(ctx.model, "weights") if params[n].requires_grad]
        grads = torch.autograd.grad(proxy_loss, [params[n] for n in self._names],
                                    allow_unused=True)
        grads_d = {n: torch.zeros_like(params[n]) if g is None else g
                   for n, g in zip(self._names, grads)}
        ball = RelativeBall({n: params[n] for n in self._names}, self._names, self.awp_gamma)
        return ball.ascent(ball.zeros(), grads_d, self.awp_gamma)

    def backward(self, ctx: Context, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if ctx.epoch < self.awp_warmup or self.awp_gamma == 0:
            return self._base.backward(ctx, x, y)
        batch = self._base.prepare(ctx, x, y)  # the attack runs once, at w
        loss_w, _ = self._base.loss_on(ctx, batch)
        nu = self.perturbation(ctx, loss_w)
        params = ctx.params()
        perturbed = {**params, **{n: params[n] + nu[n].detach() for n in nu}}
        loss, logits = self._base.loss_on(ctx, batch, perturbed)
        loss.backward()
        return loss.detach(), logits.detach()


@dataclasses.dataclass
class _PatternFrom(RandBET):
    """RandBET (clean plus clamped perturbed gradient, curriculum) whose bit error pattern comes
    from `source(ctx, q, x, y)`, called with the batch it is trained on."""

    source: Callable[[Context, Quantized, torch.Tensor, torch.Tensor], torch.Tensor] | None = \
        field(default=None, repr=False, compare=False)

    def pattern(self, ctx: Context, q: Quantized, x: torch.Tensor, y: torch.Tensor
                ) -> torch.Tensor:
        assert self.source is not None
        return self.source(ctx, q, x, y)


@register
@dataclasses.dataclass
class AdvBET(Method):
    """Adversarial bit error training: RandBET with adversarial instead of random bit errors."""

    name: ClassVar[str] = "advbet"
    needs_quant: ClassVar[bool] = True

    bit_budget: int = field(default=160, metadata={
        "help": "flipped bits per batch of the training bit attack (at most one per weight)"})
    bit_attack_steps: int = field(default=5, metadata={
        "help": "iterations of the training bit attack"})
    bit_attack_step_size: float = field(default=0.25, metadata={
        "help": "step of the training bit attack (fraction of half the code range)"})
    bit_attack_params: str = field(default="all", metadata={
        "help": "tensors the training bit attack may flip: all, default, weights or names"})
    grad_clamp: float = field(default=0.05, metadata={
        "help": "element-wise clamp of the gradient at the bit-flipped weights"})
    loss_threshold: float = field(default=-1.0, metadata={
        "help": "bit errors start once the clean loss of a batch is below this; -1: 1.75 on "
                "10 classes (scaled by ln K/ln 10); inf: from the start"})

    def __post_init__(self) -> None:
        check_budget(self.bit_budget)
        if self.bit_attack_steps < 0:
            raise UserError(f"bit-attack-steps {self.bit_attack_steps} is invalid; it must be >= 0")
        if not self.bit_attack_step_size > 0:
            raise UserError(f"bit-attack-step-size {self.bit_attack_step_size} is invalid; "
                            "it must be > 0")
        self._inner = _PatternFrom(bit_error_rate=0.0, grad_clamp=self.grad_clamp,
                                   loss_threshold=self.loss_threshold,
                                   source=self.adversarial_pattern)

    def adversarial_pattern(self, ctx: Context, q: Quantized, x: torch.Tensor, y: torch.Tensor
                            ) -> torch.Tensor:
        """The XOR mask of `bit_budget` adversarial bit flips on the batch (x, y)."""
        r = bit_attack(ctx.model, q, x, y, budget=self.bit_budget, steps=self.bit_attack_steps,
                       step_size=self.bit_attack_step_size, selection=self.bit_attack_params,
                       generator=ctx.generator, batch_size=x.shape[0], progress=False)
        return torch.bitwise_xor(r.codes, q.codes)

    def backward(self, ctx: Context, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._inner.backward(ctx, x, y)

    def loss(self, ctx: Context, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._inner.loss(ctx, x, y)

    @property
    def active(self) -> bool:
        return self._inner.active

    def state_dict(self) -> dict[str, Any]:
        return self._inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._inner.load_state_dict(state)
