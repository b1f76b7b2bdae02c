"""The one result type of every input attack, confidences, and the per-example worst case.

A *model* is any callable `x -> logits` (N×K). Attacks never need the class behind it; when it
is an `nn.Module` they run it in eval mode and restore every submodule's mode afterwards
(`eval_mode`), so no attack changes a model's buffers. Inputs are validated against the box
`bounds` (default [0, 1]) by `check_bounds`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustlab import sources
from robustlab.errors import UserError

Model = Callable[[torch.Tensor], torch.Tensor]


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """c(x) = max_k softmax_k, per example."""
    return F.softmax(logits.float(), dim=1).amax(1)


def wrong_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{k≠y} softmax_k, per example: the confidence in the most likely wrong class."""
    p = F.softmax(logits.float(), dim=1)
    return p.scatter(1, y.view(-1, 1), float("-inf")).amax(1)


def target_key(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The worst-case key of a targeted attack: softmax_t, plus 1 when classified as the target t."""
    p = F.softmax(logits.float(), dim=1).gather(1, target.view(-1, 1)).squeeze(1)
    return p + (logits.argmax(1) == target).float()


def worst_case_key(logits: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Per-example score of an adversarial input; higher is worse for the model.

    With labels: the confidence in a wrong class, max_{k≠y} softmax_k (spec §2), plus 1 for a
    misclassified input, so that a misclassified candidate always beats a correctly classified
    one (for K = 2 the bonus changes nothing; for K > 2 it keeps RErr and RErr@τ monotone in the
    number of attacks). Without labels (distal inputs): the confidence max_k softmax_k.
    """
    if y is None:
        return confidence(logits)
    return wrong_confidence(logits, y) + (logits.argmax(1) != y).float()


@dataclasses.dataclass(frozen=True, kw_only=True)
class BoxOptions:
    """Base of every attack's callable form (`PGD(...)(model, x, y, generator=g)`): the options
    all attacks take (stop early at this confidence; the input box) and the call itself, which
    runs the subclass's `attack` function with the dataclass's fields."""

    attack: ClassVar[Callable[..., AttackResult]]

    early_stop: float | None = None
    bounds: tuple[float, float] = (0.0, 1.0)

    def __call__(self, model: Model, x: torch.Tensor, y: Any = None, *,
                 generator: torch.Generator | None = None, **kw: Any) -> AttackResult:
        return type(self).attack(model, x, y, generator=generator, **kw,
                                 **dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunOptions(BoxOptions):
    """How a gradient attack computes: bfloat16 gradients (fp32 verdicts), channels_last."""

    bf16: bool = False
    channels_last: bool | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class BallOptions(BoxOptions):
    """An attack in an Lp ball: the norm, the radius (None: the spec default for the image size)
    and the number of restarts. A subclass may override a default (FAB: `norm="l2"`)."""

    norm: str = "linf"
    eps: float | None = None
    restarts: int = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class TargetedOptions(BallOptions):
    """An iterative attack with targeted variants (APGD-T, FAB-T): iterations and the number of
    target classes (the top-k non-true classes)."""

    targets: int = 9
    steps: int = 100


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepOptions(RunOptions):
    """PGD's iteration options, in one place (PGD, frames and distal attacks take them)."""

    steps: int = 40
    step_size: float | None = None
    restarts: int = 1
    momentum: float = 0.0
    backtrack: bool = False


@dataclasses.dataclass
class AttackResult:
    """Adversarial inputs of one attack (or the worst case of several) on a batch.

    `logits` are float32 logits computed at exactly `x_adv` (also after bf16 attacks): they give
    the verdict. `info` holds attack-specific tensors (e.g. patch positions), batched along dim 0.
    `target` (targeted attacks only) holds each example's target class: then `success` means
    "classified as the target" and `key()` ranks by the target's confidence (`target_key`).
    """

    x_adv: torch.Tensor
    logits: torch.Tensor
    y: torch.Tensor | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    target: torch.Tensor | None = None

    @property
    def pred(self) -> torch.Tensor:
        return self.logits.argmax(1)

    @property
    def conf(self) -> torch.Tensor:
        """Confidence max_k softmax_k at `x_adv`."""
        return confidence(self.logits)

    @property
    def success(self) -> torch.Tensor | None:
        """Misclassified at `x_adv` (targeted: classified as the target; None without labels)."""
        if self.target is not None:
            return self.pred == self.target
        if self.y is None or self.y.dtype.is_floating_point:
            return None
        return self.pred != self.y

    @property
    def wrong_conf(self) -> torch.Tensor | None:
        if self.y is None or self.y.dtype.is_floating_point:
            return None
        return wrong_confidence(self.logits, self.y)

    def key(self) -> torch.Tensor:
        if self.target is not None:
            return target_key(self.logits, self.target)
        labels = None if self.y is None or self.y.dtype.is_floating_point else self.y
        return worst_case_key(self.logits, labels)

    def detach(self) -> AttackResult:
        return AttackResult(self.x_adv.detach(), self.logits.detach(), self.y, dict(self.info),
                            self.target)

    def to(self, device: torch.device | str) -> AttackResult:
        info = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.info.items()}
        y = None if self.y is None else self.y.to(device)
        t = None if self.target is None else self.target.to(device)
        return AttackResult(self.x_adv.to(device), self.logits.to(device), y, info, t)


def bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example vector `v` (N) viewed as N×1×…×1 to broadcast against `like` (N×…)."""
    return v.view(-1, *([1] * (like.ndim - 1)))


def take_rows(dst: torch.Tensor, mask: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """`torch.where(mask, src, dst)` per example (row), written into `dst` and returned.

    On the CPU only the rows where `mask` holds are copied (much cheaper than a full select
    when few rows change, and no slower when all do); elsewhere one in-place select without a
    host sync. `dst` must not share memory with a tensor that has to stay unchanged.
    """
    if dst.device.type != "cpu":
        return torch.where(bview(mask, src), src, dst, out=dst)
    rows = mask.nonzero().squeeze(1)
    if rows.numel():
        dst.index_copy_(0, rows, src.index_select(0, rows))
    return dst


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per example: `a` where mask, else `b` (mask of shape N, tensors N×…)."""
    return torch.where(bview(mask, a), a, b)


def check_attack_args(*, eps: float, steps: int | None = None, restarts: int = 1,
                      early_stop: float | None = None) -> None:
    """The argument checks every iterative attack shares (one-line `UserError`s).

    `eps` a finite number ≥ 0, `steps` (iterations or queries, when given) ≥ 0, `restarts` ≥ 1,
    `early_stop` (when given) a confidence in [0, 1].
    """
    if not eps >= 0 or math.isinf(eps):
        raise UserError(f"eps {eps} is invalid; it must be a finite number ≥ 0")
    if steps is not None and steps < 0:
        raise UserError(f"steps {steps} is invalid; it must be an integer ≥ 0")
    if restarts < 1:
        raise UserError(f"restarts {restarts} is invalid; it must be an integer ≥ 1")
    if early_stop is not None and not 0 <= early_stop <= 1:
        raise UserError(f"early-stop confidence {early_stop} is invalid; it must be in [0, 1]")


def worst_case(results: Sequence[AttackResult]) -> AttackResult:
    """Per-example worst case of several results on the same examples (see `worst_case_key`).

    Ties keep the earlier result. `info` entries present in every result are merged per example.
    """
    if not results:
        raise ValueError("worst_case() needs at least one result")
    best = results[0]
    best_key = best.key()
    for r in results[1:]:
        k = r.key()
        take = k > best_key
        info = {name: _select(take, r.info[name], v) for name, v in best.info.items()
                if isinstance(v, torch.Tensor) and isinstance(r.info.get(name), torch.Tensor)
                and r.info[name].shape == v.shape}
        best = AttackResult(_select(take, r.x_adv, best.x_adv), _select(take, r.logits, best.logits),
                            best.y, info, best.target)
        best_key = torch.where(take, k, best_key)
    return best


def merge_into(base: AttackResult, index: torch.Tensor, part: AttackResult) -> AttackResult:
    """`base` with the examples at `index` replaced by `part` where `part` is worse (worst case)."""
    k_old = base.key()[index]
    take = part.key() > k_old
    idx = index[take]
    x_adv, logits = base.x_adv.clone(), base.logits.clone()
    x_adv[idx] = part.x_adv[take]
    logits[idx] = part.logits[take]
    info = {}
    for name, v in base.info.items():
        pv = part.info.get(name)
        if isinstance(v, torch.Tensor) and isinstance(pv, torch.Tensor) and pv.shape[1:] == v.shape[1:]:
            v = v.clone()
            v[idx] = pv[take]
        info[name] = v
    return AttackResult(x_adv, logits, base.y, info, base.target)


def ranked_targets(clean: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Per example, the `k` non-true classes of highest clean logit, most likely first (the
    targets of APGD-T and FAB-T); at most C − 1."""
    masked = clean.scatter(1, y.view(-1, 1), float("-inf"))
    return masked.argsort(1, descending=True)[:, :min(k, clean.shape[1] - 1)]


@torch.no_grad()
def evaluate_logits(model: Model, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """float32 logits of `model` at `x` without autocast (the final verdict of an attack)."""
    with torch.autocast(x.device.type, enabled=False):
        if batch_size is None or x.shape[0] <= batch_size:
            return model(x).float()
        return torch.cat([model(x[i:i + batch_size]).float()
                          for i in range(0, x.shape[0], batch_size)])


def check_bounds(x: torch.Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """Validate the box `bounds` = (lo, hi) and that every entry of `x` lies in it; returns it.

    An input outside the box is a one-line `UserError` naming the range found (attacks never
    clamp a user's inputs silently). The one check is `robustlab.sources.check_bounds`.
    """
    return sources.check_bounds(x, bounds)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Run an `nn.Module` in eval mode and restore each submodule's own mode afterwards."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
