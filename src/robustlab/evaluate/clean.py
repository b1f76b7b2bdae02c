"""Clean test error, per-class error and the confusion matrix."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from robustlab import sources
from robustlab.device import resolve_device
from robustlab.errors import UserError
from robustlab.models import Predictor


def predict_with_labels(model: Callable[[torch.Tensor], torch.Tensor], data: Any, *,
                        batch_size: int = 512, device: torch.device | str | None = None,
                        bounds: Sequence[float] | None = (0.0, 1.0)
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of `model` on every example of `data` (streamed; CPU float32 / int64).

    The model runs in eval mode (at its dequantized weights when it carries a quantization
    scheme, `rl.models.Predictor`); the caller's mode is restored afterwards.
    """
    ds = sources.as_data(data)
    pred = Predictor.of(model)
    dev = pred.device if device is None else resolve_device(device)
    s = pred.sweep(sources.batches_of(ds, int(batch_size), dev, bounds), keep_logits=True,
                   name=getattr(ds, "name", ""))
    return s.logits, s.y.cpu()


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, Any]:
    pred = logits.argmax(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    per_class_n = confusion.sum(1)
    per_class_err = 1 - confusion.diag().double() / per_class_n.clamp(min=1)
    return {"n": int(len(y)), "err": float((pred != y).double().mean()),
            "loss": float(F.cross_entropy(logits, y)),
            "per_class_err": per_class_err.tolist(), "confusion": confusion.tolist()}


def clean(model: Callable[[torch.Tensor], torch.Tensor], test: Any, *, batch_size: int = 512,
          device: torch.device | str | None = None,
          bounds: Sequence[float] | None = (0.0, 1.0)) -> dict[str, Any]:
    """Err, loss, per-class error and confusion matrix (rows: true class, columns: predicted).

    `test` is a robustlab `Dataset`, an `(x, y)` pair of tensors, a torch `Dataset` or a
    `DataLoader` (streamed batch by batch). Inputs outside `bounds` are refused (one line);
    `bounds=None` skips the check. `device` defaults to the model's. The model runs in eval mode
    and its mode is restored afterwards. A model trained with `rl.train.fit(..., quant=...)` is
    evaluated at its dequantized weights (`rl.models.Predictor`), as `robustlab eval` does.

    Example:
        >>> import torch, robustlab as rl
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(20, 1, 4, 4), torch.arange(20) % 3
        >>> r = rl.evaluate.clean(model, (x, y))
        >>> r["n"], len(r["confusion"])
        (20, 3)
    """
    ds = sources.as_data(test)
    logits, y = predict_with_labels(model, ds, batch_size=batch_size, device=device, bounds=bounds)
    if len(y) and int(y.max()) >= logits.shape[1]:
        raise UserError(f"labels go up to {int(y.max())} but the model outputs {logits.shape[1]} "
                        f"scores per image")
    known = ds.num_classes if not isinstance(ds, sources.Stream) else ds.known_num_classes()
    k = max(int(known or 0), logits.shape[1], int(y.max()) + 1 if len(y) else 0)
    classes = list(ds.classes) if len(ds.classes) == k else [str(i) for i in range(k)]
    return {**metrics_from_logits(logits, y, k), "classes": classes}
