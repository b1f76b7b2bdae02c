"""The one result type of every input attack, confidences, and the per-example worst case.

A *model* is any callable `x -> logits` (N×K). Attacks never need the class behind it; they
also never switch it to eval mode — callers do (the suite, the training methods).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """c(x) = max_k softmax_k, per example."""
    return F.softmax(logits.float(), dim=1).amax(1)


def wrong_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{k≠y} softmax_k, per example: the confidence in the most likely wrong class."""
    p = F.softmax(logits.float(), dim=1)
    return p.scatter(1, y.view(-1, 1), float("-inf")).amax(1)


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


@dataclasses.dataclass
class AttackResult:
    """Adversarial inputs of one attack (or the worst case of several) on a batch.

    `logits` are recomputed in float32 at `x_adv` (also after bf16 attacks): they give the
    verdict. `info` holds attack-specific tensors (e.g. patch positions), batched along dim 0.
    """

    x_adv: torch.Tensor
    logits: torch.Tensor
    y: torch.Tensor | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def pred(self) -> torch.Tensor:
        return self.logits.argmax(1)

    @property
    def conf(self) -> torch.Tensor:
        """Confidence max_k softmax_k at `x_adv`."""
        return confidence(self.logits)

    @property
    def success(self) -> torch.Tensor | None:
        """Misclassified at `x_adv` (None without integer labels)."""
        if self.y is None or self.y.dtype.is_floating_point:
            return None
        return self.pred != self.y

    @property
    def wrong_conf(self) -> torch.Tensor | None:
        if self.y is None or self.y.dtype.is_floating_point:
            return None
        return wrong_confidence(self.logits, self.y)

    def key(self) -> torch.Tensor:
        labels = None if self.y is None or self.y.dtype.is_floating_point else self.y
        return worst_case_key(self.logits, labels)

    def detach(self) -> AttackResult:
        return AttackResult(self.x_adv.detach(), self.logits.detach(), self.y, dict(self.info))

    def to(self, device: torch.device | str) -> AttackResult:
        info = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.info.items()}
        y = None if self.y is None else self.y.to(device)
        return AttackResult(self.x_adv.to(device), self.logits.to(device), y, info)


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per example: `a` where mask, else `b` (mask of shape N, tensors N×…)."""
    return torch.where(mask.view(-1, *([1] * (a.ndim - 1))), a, b)


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
                            best.y, info)
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
    return AttackResult(x_adv, logits, base.y, info)


@torch.no_grad()
def evaluate_logits(model: Model, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """float32 logits of `model` at `x` without autocast (the final verdict of an attack)."""
    with torch.autocast(x.device.type, enabled=False):
        if batch_size is None or x.shape[0] <= batch_size:
            return model(x).float()
        return torch.cat([model(x[i:i + batch_size]).float()
                          for i in range(0, x.shape[0], batch_size)])
