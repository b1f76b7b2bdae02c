"""Input-robust training methods (spec §4): `at`, `ccat`, `trades`, `patch-at`.

Each method configures an attack of `robustlab.attacks` (`PGD`, `Patch`) and calls it through the
one attack interface `attack(model, x, y, *, generator) -> AttackResult`, with the model in eval
mode (`ctx.eval_mode()`) and `ctx.forward` as the model, so the attack sees the quantized weights
of a quantization-aware run and draws all randomness from `ctx.generator`.

AT, CCAT and PatchAT share `SplitAdversarial`: the last f·n examples of a batch are replaced by
adversarial ones, and the clean and adversarial parts go through one training-mode forward pass,
(1−f)·CE(clean) + f·`adversarial_loss`(adversarial). The returned logits (for the running training
error) are those of the inputs trained on: the clean part followed by the adversarial part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import field
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F

from robustlab.attacks import INITS, LOCATIONS, PGD, AttackResult, Patch, default_eps, lp_norm
from robustlab.attacks.patches import parse_location
from robustlab.attacks.pgd import parse_init
from robustlab.attacks.threat import check_norm
from robustlab.errors import UserError
from robustlab.train.methods import Context, Method, register, soft_cross_entropy

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (x, adversarial inputs, y)


class Attack(Protocol):
    """The one input-attack interface of `robustlab.attacks` (`PGD`, `Patch`, `APGD`, ...)."""

    def __call__(self, model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: Any,
                 *, generator: torch.Generator | None = None) -> AttackResult: ...


def attack_inputs(ctx: Context, attack: Attack, x: torch.Tensor, y: Any) -> torch.Tensor:
    """`attack(ctx.forward, x, y, generator=ctx.generator)` with the model in eval mode: the
    adversarial inputs, detached."""
    with ctx.eval_mode():
        return attack(ctx.forward, x, y, generator=ctx.generator).x_adv.detach()


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise UserError(f"fraction {fraction} is invalid; it must be in (0, 1]")


def _check_steps_lr(m: AT | TRADES | PatchAT) -> None:
    if m.attack_steps < 1:
        raise UserError(f"attack-steps {m.attack_steps} is invalid; it must be an integer ≥ 1")
    if m.attack_lr is not None and not m.attack_lr > 0:
        raise UserError(f"attack-lr {m.attack_lr} is invalid; it must be > 0")


def _check_common(m: AT | TRADES) -> None:
    if m.eps is not None and not m.eps >= 0:
        raise UserError(f"eps {m.eps} is invalid; it must be ≥ 0")
    check_norm(m.attack_norm)
    _check_steps_lr(m)
    parse_init(m.attack_init)


@dataclasses.dataclass
class SplitAdversarial(Method):
    """(1−f)·CE(clean part) + f·`adversarial_loss`(adversarial part): the last k = max(1, round(f·n))
    examples of each batch are replaced by `input_attack()`'s adversarial examples."""

    fraction: float = field(default=0.5, metadata={
        "help": "fraction f of each batch replaced by adversarial examples (1 = Madry)"})

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)

    def input_attack(self) -> Attack:
        """The configured training attack."""
        raise NotImplementedError

    def attack(self, ctx: Context, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial inputs for (x, y), computed with the model in eval mode."""
        return attack_inputs(ctx, self.input_attack(), x, y)

    def attack_passes(self) -> float:
        """Forward-backward passes of the attack per example (for `step_cost`)."""
        raise NotImplementedError

    def step_cost(self) -> float:
        return 1.0 + self.fraction * self.attack_passes()

    def adversarial_loss(self, ctx: Context, logits: torch.Tensor, x: torch.Tensor,
                         x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of the adversarial part (default: the run's criterion)."""
        return ctx.criterion(logits, y)

    def prepare(self, ctx: Context, x: torch.Tensor, y: torch.Tensor) -> Batch:
        """Attack the last f·n examples (at the current weights, in eval mode)."""
        n = x.shape[0]
        k = min(n, max(1, int(round(self.fraction * n))))
        return x, self.attack(ctx, x[n - k:], y[n - k:]), y

    def loss_on(self, ctx: Context, batch: Batch,
                params: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of a prepared batch at `params` (default: the model's own weights), both
        parts in one forward pass."""
        x, x_adv, y = batch
        n, k = x.shape[0], x_adv.shape[0]
        logits = ctx.forward(torch.cat([x[:n - k], x_adv]), params)
        loss = self.fraction * self.adversarial_loss(ctx, logits[n - k:], x[n - k:], x_adv,
                                                      y[n - k:])
        if k < n:
            loss = loss + (1 - self.fraction) * ctx.criterion(logits[:n - k], y[:n - k])
        return loss, logits


@register
@dataclasses.dataclass
class AT(SplitAdversarial):
    """Adversarial training: (1−f)·CE(clean) + f·CE(PGD examples), f = `fraction` (1.0 = Madry)."""

    name: ClassVar[str] = "at"
    objective: ClassVar[str] = "ce"

    eps: float | None = field(default=None, metadata={
        "help": "radius of the training attack (default: the spec's for the image size, "
                "e.g. L∞ 0.1 on 28×28 gray, 8/255 on 32×32 color)"})
    attack_norm: str = field(default="linf", metadata={"help": "norm of the training attack: "
                                                               "linf, l2, l1, l0"})
    attack_steps: int = field(default=10, metadata={"help": "iterations of the training attack"})
    attack_lr: float | None = field(default=None, metadata={
        "help": "step size of the training attack (default 2.5·eps/steps; patch-at: 0.1)"})
    attack_init: str = field(default="cube", metadata={
        "help": f"start of the training attack: {', '.join(INITS)} or a comma list (random mix)"})
    attack_momentum: float = field(default=0.0, metadata={
        "help": "momentum β of the training attack (0 = off)"})
    attack_backtrack: bool = field(default=False, metadata={
        "help": "backtracking step sizes in the training attack"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.attack_momentum < 1:
            raise UserError(f"attack-momentum {self.attack_momentum} is invalid; it must be in [0, 1)")
        _check_common(self)

    def attack_passes(self) -> float:
        return float(self.attack_steps)

    def radius(self, x: torch.Tensor) -> float:
        return self.eps if self.eps is not None else default_eps(self.attack_norm, tuple(x.shape[1:]))

    def input_attack(self) -> PGD:
        """PGD with the method's attack options (eps None: the spec default for the image size)."""
        return PGD(norm=self.attack_norm, eps=self.eps, steps=self.attack_steps,
                   step_size=self.attack_lr, objective=self.objective, init=self.attack_init,
                   momentum=self.attack_momentum, backtrack=self.attack_backtrack)


@register
@dataclasses.dataclass
class CCAT(AT):
    """Confidence-calibrated AT: the attack maximizes the wrong-class confidence (`conf`), and the
    adversarial part is trained towards λ·onehot(y) + (1−λ)/K, λ = (1 − min(1, ‖δ‖/ε))^ρ.

    At test time inputs with confidence below τ are rejected (see `robustlab attack`).
    """

    name: ClassVar[str] = "ccat"
    objective: ClassVar[str] = "conf"

    rho: float = field(default=10.0, metadata={"help": "power ρ of the CCAT transition λ"})
    attack_init: str = "norm"  # spread ‖δ‖∞ over [0, ε]: a uniform cube start has ‖δ‖∞ ≈ ε (λ ≈ 0)
    attack_momentum: float = 0.9
    attack_backtrack: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.rho >= 0:
            raise UserError(f"rho {self.rho} is invalid; it must be ≥ 0")

    def adversarial_loss(self, ctx: Context, logits: torch.Tensor, x: torch.Tensor,
                         x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = soft_target(x_adv - x, y, ctx.num_classes, self.radius(x), self.rho,
                             self.attack_norm)
        return soft_cross_entropy(logits, target)


def soft_target(delta: torch.Tensor, y: torch.Tensor, num_classes: int, eps: float, rho: float,
                norm: str = "linf") -> torch.Tensor:
    """CCAT's target λ·onehot(y) + (1−λ)/K with λ = (1 − min(1, ‖δ‖/ε))^ρ, per example."""
    if eps > 0:
        lam = (1 - (lp_norm(delta, norm) / eps).clamp(max=1.0)) ** rho
    else:
        lam = torch.ones(delta.shape[0], device=delta.device)
    onehot = F.one_hot(y, num_classes).to(delta.dtype)
    return lam[:, None] * onehot + (1 - lam[:, None]) / num_classes


def kl_objective(logits: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p_clean ‖ softmax(logits)): what the TRADES attack maximizes."""
    return (p_clean * (p_clean.clamp(min=1e-12).log() - F.log_softmax(logits, 1))).sum(1)


@register
@dataclasses.dataclass
class TRADES(Method):
    """TRADES: CE(clean) + β·KL(f(x) ‖ f(x̃)), x̃ maximizing that KL in the ball."""

    name: ClassVar[str] = "trades"

    beta: float = field(default=6.0, metadata={"help": "TRADES weight β of the KL term"})
    eps: float | None = None
    attack_norm: str = "linf"
    attack_steps: int = 10
    attack_lr: float | None = None
    attack_init: str = "tiny"

    def __post_init__(self) -> None:
        if not self.beta >= 0:
            raise UserError(f"beta {self.beta} is invalid; it must be ≥ 0")
        _check_common(self)

    def step_cost(self) -> float:
        return 1.0 + self.attack_steps

    def input_attack(self) -> PGD:
        """PGD maximizing KL(p ‖ softmax(f(x̃))), labelled with the clean probabilities p."""
        return PGD(norm=self.attack_norm, eps=self.eps, steps=self.attack_steps,
                   step_size=self.attack_lr, objective=kl_objective, init=self.attack_init)

    def prepare(self, ctx: Context, x: torch.Tensor, y: torch.Tensor) -> Batch:
        """x̃ maximizing KL(f(x) ‖ f(x̃)) at the current weights, in eval mode."""
        with ctx.eval_mode(), torch.no_grad():
            p_clean = F.softmax(ctx.forward(x), 1)
        return x, attack_inputs(ctx, self.input_attack(), x, p_clean), y

    def loss_on(self, ctx: Context, batch: Batch,
                params: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CE(clean) + β·KL of a prepared batch at `params` (default: the model's own weights)."""
        x, x_adv, y = batch
        n = x.shape[0]
        logits = ctx.forward(torch.cat([x, x_adv]), params)
        clean, adv = logits[:n], logits[n:]
        kl = F.kl_div(F.log_softmax(adv, 1), F.log_softmax(clean, 1), reduction="batchmean",
                      log_target=True)
        return ctx.criterion(clean, y) + self.beta * kl, clean


@register
@dataclasses.dataclass
class PatchAT(SplitAdversarial):
    """Patch adversarial training: a fraction f of each batch carries an adversarial patch
    (content by signed steps of `attack-lr`, location by `location`); loss (1−f)·CE + f·CE_patch."""

    name: ClassVar[str] = "patch-at"

    patch_size: int | None = field(default=None, metadata={
        "help": "side of the square patch (default: a quarter of the image side, 7 on 28×28)"})
    location: str = field(default="optimized-full", metadata={
        "help": f"patch location mode: {', '.join(LOCATIONS)}"})
    patch_stride: int = field(default=2, metadata={"help": "pixels per location move"})
    patch_exclude: int = field(default=0, metadata={
        "help": "side of the central box patches must not overlap (0 = none)"})
    attack_steps: int = 10
    attack_lr: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.location = parse_location(self.location)
        if self.patch_size is not None and self.patch_size < 1:
            raise UserError(f"patch-size {self.patch_size} is invalid; it must be an integer ≥ 1")
        if self.patch_stride < 1:
            raise UserError(f"patch-stride {self.patch_stride} is invalid; it must be ≥ 1")
        _check_steps_lr(self)

    def attack_passes(self) -> float:
        # location moves: extra forward passes per step
        return self.attack_steps * (2.0 if self.location.startswith("optimized") else 1.0)

    def input_attack(self) -> Patch:
        """The patch attack with the method's options (step size 0.1 unless `attack_lr`)."""
        return Patch(size=self.patch_size, steps=self.attack_steps,
                     step_size=self.attack_lr if self.attack_lr is not None else 0.1,
                     location=self.location, stride=self.patch_stride, exclude=self.patch_exclude)
