"""Training methods: one small dataclass each, registered by name.

A method turns a batch into gradients on the model's float parameters. A loss-based method splits
its loss into `prepare` (the batch as the loss needs it, e.g. with adversarial inputs, computed
once) and `loss_on` (the loss of that batch at given weights); the default `backward` calls
`loss_on(prepare(x, y)).backward()`. Methods that need several forward passes (bit error
training, AWP) override `backward`; AWP wraps any loss-based method through `prepare`/`loss_on`.

A method's options (`options(cls)`) are its dataclass fields; each becomes a CLI option of
`robustlab train` (`--field-name`, documented by `metadata={"help": ...}`), a preset key and a
keyword of `create`. A wrapper (AWP) also takes the options of the methods it wraps. Per-run
state that must survive `--resume` goes through `state_dict` / `load_state_dict` (JSON-able
values only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pkgutil
import typing
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import UserError


class Context(Protocol):
    """What a training method sees of the training loop (`robustlab.train.trainer.TrainContext`
    implements it): the model, the forward pass, the criterion and the randomness. Methods depend
    on this interface, never on the trainer."""

    model: nn.Module
    device: torch.device
    num_classes: int
    quant: Any
    epoch: int
    generator: torch.Generator

    def params(self) -> dict[str, torch.Tensor]:
        """The model's own parameters by name."""

    def forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None, *,
                quantize: bool = True) -> torch.Tensor:
        """Float logits at `params` (default: the model's own), fake-quantized when the run is
        (`quantize=False`: at exactly `params`, e.g. weights that are already bit-flipped)."""

    def criterion(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of logits against integer labels."""

    def eval_mode(self) -> contextlib.AbstractContextManager[None]:
        """The model in eval mode inside, previous mode restored after."""


METHODS: dict[str, type[Method]] = {}


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a method: `--name-with-dashes` on `robustlab train`, a preset key, a keyword
    of `create`. `type` is the resolved annotation (e.g. `float | None`)."""

    name: str
    type: Any
    default: Any
    help: str = ""


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under `cls.name`."""
    METHODS[cls.name] = cls
    return cls


@dataclasses.dataclass
class Method:
    """Plain training: cross-entropy on clean inputs (with the context's label smoothing)."""

    name: ClassVar[str] = "normal"
    needs_quant: ClassVar[bool] = False  # True: the run is quantization-aware (RQuant 8-bit unless given)

    @classmethod
    def options(cls) -> list[Option]:
        """The options this method takes: its dataclass fields, types resolved."""
        hints = typing.get_type_hints(cls)
        return [Option(f.name, hints.get(f.name, Any),
                       f.default if f.default is not dataclasses.MISSING else None,
                       f.metadata.get("help", ""))
                for f in dataclasses.fields(cls)]

    @classmethod
    def loss_based(cls) -> bool:
        """Whether the gradient is that of `loss_on(prepare(...))` (what AWP can wrap)."""
        return cls.backward is Method.backward

    def prepare(self, ctx: Context, x: torch.Tensor, y: torch.Tensor) -> Any:
        """The batch as the loss needs it, computed once at the current weights (adversarial
        methods run their attack here). Default: `(x, y)` unchanged."""
        return x, y

    def loss_on(self, ctx: Context, batch: Any, params: dict[str, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scalar loss of a prepared batch at `params` (default: the model's own weights) and the
        logits of the inputs trained on. Wrappers such as AWP evaluate it at other weights."""
        x, y = batch
        logits = ctx.forward(x) if params is None else ctx.forward(x, params)
        return ctx.criterion(logits, y), logits

    def loss(self, ctx: Context, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scalar loss and the logits of the inputs trained on (for the running accuracy):
        `loss_on(prepare(x, y))`."""
        return self.loss_on(ctx, self.prepare(ctx, x, y))

    def backward(self, ctx: Context, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate gradients into the model's parameters; return (loss, clean logits), detached."""
        loss, logits = self.loss(ctx, x, y)
        loss.backward()
        return loss.detach(), logits.detach()

    def step_cost(self) -> float:
        """Rough cost of one training step relative to plain training (for plans and ETAs)."""
        return 1.0

    def config(self) -> dict[str, Any]:
        """The method's name and option values (recorded in model.json; compared on --resume)."""
        return {"name": self.name, **{o.name: getattr(self, o.name) for o in self.options()}}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


register(Method)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against a probability target (rows summing to 1)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def discover() -> dict[str, type[Method]]:
    """Import every module of `robustlab.train` so their `@register` calls run."""
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{info.name}")
    return METHODS


def create(name: str, **options: Any) -> Method:
    """Build a registered method; unknown names or options are user errors."""
    methods = discover()
    if name not in methods:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(sorted(methods))}")
    cls = methods[name]
    fields = {o.name for o in cls.options()}
    bad = sorted(set(options) - fields)
    if bad:
        raise UserError(f"method {name!r} takes no option {bad[0]!r}; it takes "
                        f"{', '.join(sorted(fields)) or 'no options'}")
    return cls(**options)


def options(cls: type[Method]) -> list[Option]:
    """The options of a method class (what `robustlab train` makes flags of)."""
    return cls.options()
