"""Objectives of a weight attack: the (robust) loss as a function of a parameter dict.

An objective maps a partial parameter dict (the perturbed tensors) and an integer `seed` to the
mean loss over a fixed evaluation set. The seed drives every random draw of the inner input attack
(a fresh `torch.Generator` per call), so two calls with equal weights and equal seeds give
bit-identical losses — this is what makes flatness exactly 0 at ξ = 0.

An input attack follows the standard interface of `robustlab.attacks`:
`attack(model, x, y, *, generator) -> AttackResult` (e.g. `rl.attacks.PGD(...)`, `APGD(...)`), where
`model(x) -> logits`; `attack=None` means clean inputs (δ = 0). `adversarial_inputs` runs one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from robustlab.attacks.base import eval_mode  # noqa: F401 (re-exported as weights.eval_mode)
from robustlab.models import Batches, Predictor

Params = dict[str, torch.Tensor]
#: The standard input attack: `attack(model, x, y, *, generator) -> AttackResult`.
Attack = Callable[..., Any]


def _takes_generator_keyword(attack: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(attack)
    except (TypeError, ValueError):  # builtins without a signature: assume the standard form
        return True
    return "generator" in sig.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def adversarial_inputs(attack: Attack, model: Callable[[torch.Tensor], torch.Tensor],
                       x: torch.Tensor, y: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """`x_adv` (detached) of one input attack on (x, y). `attack` is called as
    `attack(model, x, y, generator=generator)` and may return an `AttackResult` or the adversarial
    tensor itself; a callable without a `generator` keyword gets the generator positionally
    (the older `(model_fn, x, y, generator) -> x_adv` form)."""
    if _takes_generator_keyword(attack):
        out = attack(model, x, y, generator=generator)
    else:
        out = attack(model, x, y, generator)
    return (out.x_adv if hasattr(out, "x_adv") else out).detach()


class Objective(Protocol):
    """What the weight-attack engine needs: a loss value and its gradient w.r.t. `params`."""

    def value(self, params: Params, seed: int) -> torch.Tensor:
        """Mean loss (0-d tensor, detached)."""

    def value_and_grad(self, params: Params, seed: int) -> tuple[torch.Tensor, Params]:
        """Mean loss and its gradient w.r.t. every tensor in `params`."""


class FunctionObjective:
    """Wrap a differentiable function `fn(params) -> scalar` (closed-form tests, toy losses)."""

    def __init__(self, fn: Callable[[Params], torch.Tensor]) -> None:
        self.fn = fn

    def value(self, params: Params, seed: int) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(params).detach()

    def value_and_grad(self, params: Params, seed: int) -> tuple[torch.Tensor, Params]:
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        loss = self.fn(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        return loss.detach(), {n: torch.zeros_like(p) if g is None else g
                               for (n, p), g in zip(leaves.items(), grads)}


class ModelObjective:
    """Mean cross-entropy of `model` on (x, y), on inputs from `attack` recomputed for the given
    weights (robust loss), or on clean inputs when `attack` is None. Evaluated in eval mode;
    norm-layer parameters and buffers are never touched. `fixed` holds constant replacements for
    parameters that are not perturbed (e.g. the dequantized weights of a quantized run).

    With `y=None`, `x` is a data source instead of a tensor: a robustlab `Dataset` or a
    `robustlab.sources.Stream`, read batch by batch on every evaluation (a streamed test set is
    never held in memory). Every evaluation runs through the predictor core
    (`robustlab.models.Predictor.sweep`)."""

    def __init__(self, model: nn.Module, x: Any, y: torch.Tensor | None = None,
                 attack: Attack | None = None, *, batch_size: int = 256,
                 fixed: Params | None = None) -> None:
        self.model, self.attack = model, attack
        self.fixed = {n: p.detach() for n, p in (fixed or {}).items()}
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.batches = Batches(x if y is None else (x, y), batch_size, self.device)
        self.n = len(self.batches)

    def predictor(self, params: Params) -> Predictor:
        """The model at `params` (perturbed tensors) and `fixed` (the others)."""
        return Predictor(self.model, {**self.fixed, **params}, quant=False)

    def model_fn(self, params: Params) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.predictor(params).forward

    def _adversary(self, gen: torch.Generator) -> Callable[..., torch.Tensor] | None:
        if self.attack is None:
            return None
        attack = self.attack
        return lambda pred, x, y: adversarial_inputs(attack, pred.forward, x, y, gen)

    def evaluate(self, params: Params, seed: int) -> dict[str, torch.Tensor]:
        """Mean loss and error on the attacked inputs, clean error and robust error (wrong clean
        or attacked, spec §2), as 0-d tensors."""
        params = {n: p.detach() for n, p in params.items()}
        gen = torch.Generator().manual_seed(int(seed))
        s = self.predictor(params).sweep(self.batches, adversary=self._adversary(gen), loss=True)
        n = max(self.n, 1)
        return {"loss": (s.loss / n).float(), "err": (s.wrong.sum().double() / n).float(),
                "clean_err": (s.clean_wrong.sum().double() / n).float(),
                "robust_err": (s.robust_wrong.sum().double() / n).float()}

    def value(self, params: Params, seed: int) -> torch.Tensor:
        return self.evaluate(params, seed)["loss"]

    def value_and_grad(self, params: Params, seed: int) -> tuple[torch.Tensor, Params]:
        detached = {n: p.detach() for n, p in params.items()}
        leaves = {n: p.clone().requires_grad_(True) for n, p in detached.items()}
        gen = torch.Generator().manual_seed(int(seed))
        loss, grads, _ = self.predictor(leaves).loss_and_grad(
            self.batches, list(leaves.values()), n=max(self.n, 1),
            adversary=self._adversary(gen), attack_at=self.predictor(detached))
        assert grads is not None
        return loss.float(), dict(zip(leaves, grads))
