"""Clean test error, per-class error and the confusion matrix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from robustlab.data import Dataset


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], torch.Tensor], ds: Dataset, *, batch_size: int = 512,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits of `model` on every example of `ds` (on the CPU, float32)."""
    return torch.cat([model(x).float().cpu() for x, _ in ds.batches(batch_size, device=device)])


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, Any]:
    pred = logits.argmax(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    per_class_n = confusion.sum(1)
    per_class_err = 1 - confusion.diag().double() / per_class_n.clamp(min=1)
    return {"n": int(len(y)), "err": float((pred != y).double().mean()),
            "loss": float(F.cross_entropy(logits, y)),
            "per_class_err": per_class_err.tolist(), "confusion": confusion.tolist()}


def clean(model: Callable[[torch.Tensor], torch.Tensor], test: Dataset, *, batch_size: int = 512,
          device: torch.device | str = "cpu") -> dict[str, Any]:
    """Err, loss, per-class error and confusion matrix (rows: true class, columns: predicted)."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    logits = predict(model, test, batch_size=batch_size, device=device)
    return {**metrics_from_logits(logits, test.y, test.num_classes), "classes": test.classes}
