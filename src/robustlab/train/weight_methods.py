"""Training against adversarial weight perturbations: AWP (spec §8).

**AWP** (`--method awp`) wraps any loss-based method (`Method.loss_based`: `at`, `ccat`,
`trades`, `patch-at`, `normal`; `--awp-base`): the base's `prepare` computes its batch (e.g. the
adversarial examples) once at w; one normalized ascent step on the conv/linear weights,
ν_l = γ‖w_l‖·g_l/‖g_l‖ with g the gradient of the base's `loss_on` at w, gives w + ν; the gradient
of the same loss on the same batch at w + ν is applied to w.

AWP's own options are `awp_*`; every other option goes to the base (`AWP(awp_base="trades",
beta=3)`, `--method awp --awp-base trades --beta 3`), or a configured base is given directly
(`AWP(base=PatchAT(patch_size=5))`). Adversarial bit error training (`advbet`) lives with the other
bit error methods in `robustlab.train.biterror_methods`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, ClassVar

import torch

from robustlab.errors import UserError
from robustlab.train.methods import Context, Method, Option, create, discover, register
from robustlab.weights.ball import RelativeBall, select


def _bases() -> dict[str, type[Method]]:
    """The registered methods AWP can wrap, by name."""
    return {n: c for n, c in sorted(discover().items()) if c.loss_based()}


@register
@dataclasses.dataclass(init=False, eq=False)
class AWP(Method):
    """Adversarial weight perturbation around a loss-based base method (module docstring)."""

    name: ClassVar[str] = "awp"

    awp_base: str = field(default="at", metadata={
        "help": "the loss-based method AWP perturbs the weights against "
                "(at, trades, patch-at, ccat, normal); its options apply"})
    awp_gamma: float = field(default=0.005, metadata={
        "help": "relative size γ of the weight perturbation, ‖ν_l‖ = γ‖w_l‖ (0.005-0.01)"})
    awp_warmup: int = field(default=0, metadata={
        "help": "epochs of the plain base method before weights are perturbed"})

    def __init__(self, awp_base: str | None = None, awp_gamma: float = 0.005, awp_warmup: int = 0,
                 *, base: Method | None = None, **base_options: Any) -> None:
        """`base`: a configured loss-based method; else `awp_base` (default "at") built with
        `base_options`."""
        if base is not None:
            if base_options:
                raise UserError(f"awp: give the base's options to the base, not "
                                f"{', '.join(sorted(base_options))}")
            if awp_base is not None and awp_base != base.name:
                raise UserError(f"awp-base {awp_base!r} disagrees with the given base "
                                f"{base.name!r}")
            if not type(base).loss_based():
                raise UserError(f"awp cannot wrap {base.name!r}: it is not a loss-based method")
            awp_base = base.name
        awp_base = "at" if awp_base is None else awp_base
        bases = _bases()
        if awp_base not in bases:
            raise UserError(f"awp-base {awp_base!r} is invalid; choose one of "
                            f"{', '.join(bases)}")
        if not awp_gamma >= 0:
            raise UserError(f"awp-gamma {awp_gamma} is invalid; it must be >= 0")
        if awp_warmup < 0:
            raise UserError(f"awp-warmup {awp_warmup} is invalid; it must be >= 0")
        if base is None:
            takes = {o.name for o in bases[awp_base].options()}
            bad = sorted(set(base_options) - takes)
            if bad:
                raise UserError(f"--{bad[0].replace('_', '-')} does not apply to awp-base "
                                f"{awp_base!r}")
            base = create(awp_base, **base_options)
        self.awp_base, self.awp_gamma, self.awp_warmup = awp_base, awp_gamma, awp_warmup
        self.base = base
        self._names: list[str] | None = None

    @classmethod
    def over(cls, base: Method, **options: Any) -> AWP:
        """AWP around an already configured loss-based method (e.g. `PatchAT(patch_size=5)`);
        `options` are AWP's own (`awp_gamma`, `awp_warmup`)."""
        return cls(base=base, **options)

    @classmethod
    def options(cls) -> list[Option]:
        """AWP's own options, then those of every method it can wrap (each applies to its base)."""
        own = super().options()
        seen = {o.name for o in own}
        for base in _bases().values():
            for o in base.options():
                if o.name not in seen:
                    seen.add(o.name)
                    own.append(o)
        return own

    def config(self) -> dict[str, Any]:
        """AWP's own options and the base's configuration (`base`)."""
        return {"name": self.name, "awp_base": self.awp_base, "awp_gamma": self.awp_gamma,
                "awp_warmup": self.awp_warmup, "base": self.base.config()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AWP) and self.config() == other.config()

    __hash__ = None  # type: ignore[assignment]  # mutable, like every dataclass method

    def step_cost(self) -> float:
        return self.base.step_cost() + 1.0  # the base's loss once more, at w + ν

    def prepare(self, ctx: Context, x: torch.Tensor, y: torch.Tensor) -> Any:
        return self.base.prepare(ctx, x, y)

    def loss_on(self, ctx: Context, batch: Any, params: dict[str, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.loss_on(ctx, batch, params)

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
            return self.base.backward(ctx, x, y)
        batch = self.base.prepare(ctx, x, y)  # the batch (e.g. the attack) once, at w
        loss_w, _ = self.base.loss_on(ctx, batch)
        nu = self.perturbation(ctx, loss_w)
        params = ctx.params()
        perturbed = {**params, **{n: params[n] + nu[n].detach() for n in nu}}
        loss, logits = self.base.loss_on(ctx, batch, perturbed)
        loss.backward()
        return loss.detach(), logits.detach()

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)
