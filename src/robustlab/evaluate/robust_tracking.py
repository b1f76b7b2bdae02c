"""Robust overfitting: per-epoch robust loss and error on a held-out split, best vs last (spec §8).

The trainer calls `robust_metrics` once per epoch through `epoch_hook(...)`; `best_vs_last` turns
the per-epoch history into the numbers a report shows (the early-stopping snapshot against the
final one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from robustlab import sources
from robustlab.errors import UNSET, UserError, renamed
from robustlab.models import Predictor
from robustlab.weights.objective import Attack, adversarial_inputs

Model = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_SETTINGS: dict[str, Any] = {"norm": "linf", "steps": 10}


def make_attack(settings: dict[str, Any] | None, shape: Sequence[int]
                ) -> tuple[Attack, dict[str, Any]]:
    """A PGD attack (`robustlab.attacks.PGD`, the standard `(model, x, y, *, generator) ->
    AttackResult` interface) from PGD settings (its fields; `eps` defaults to the spec's radius
    for the image `shape`, `dataset="mnist"` selects MNIST's larger L∞ radius), and the resolved
    settings."""
    import dataclasses

    from robustlab.attacks.pgd import PGD
    from robustlab.attacks.threat import default_eps

    s = {**DEFAULT_SETTINGS, **(settings or {})}
    dataset = s.pop("dataset", None)
    fields = {f.name for f in dataclasses.fields(PGD)}
    bad = sorted(set(s) - fields)
    if bad:
        raise UserError(f"unknown attack setting {bad[0]!r}; allowed: {', '.join(sorted(fields))}")
    if s.get("eps") is None:
        s["eps"] = default_eps(s["norm"], tuple(shape), dataset)
    return PGD(**s), {"attack": "pgd", **s}


def robust_metrics(model_fn: Model, dataset: Any, attack_settings: dict[str, Any] | Attack | None,
                   generator: torch.Generator, *, batch_size: int = 256,
                   device: torch.device | str | None = None, n_test: int | None = None,
                   n: Any = UNSET) -> dict[str, float]:
    """Robust loss / error and clean loss / error of `model_fn` (x → logits, already in eval mode)
    on the first `n_test` examples of `dataset` (all by default).

    `attack_settings`: a dict of PGD settings (see `make_attack`; default PGD-L∞ with 10 steps
    at the spec's ε), or an attack `(model, x, y, *, generator) -> AttackResult` such as
    `robustlab.attacks.PGD(...)`. robust_err counts an example wrong clean or attacked
    (spec §2); robust_loss is the mean cross-entropy on the attacked inputs.
    """
    n = renamed("robust_metrics", "n", n, "n_test", n_test)
    dataset = sources.as_data(dataset)
    if callable(attack_settings):
        attack = attack_settings
    else:
        attack, _ = make_attack(attack_settings, dataset.shape)
    if batch_size < 1:
        raise UserError(f"batch size {batch_size} must be >= 1")
    ds = dataset if n is None else dataset.subset(slice(0, int(n)))
    if len(ds) == 0:
        raise UserError("robust tracking needs a non-empty held-out split")
    pred = Predictor.of(model_fn)  # a model carrying a quantization scheme: its dequantized weights
    s = pred.sweep(ds.batches(batch_size, device=device), loss=True,
                   adversary=lambda p, x, y: adversarial_inputs(attack, p.forward, x, y, generator))
    sums = torch.stack([s.loss, s.robust_wrong.sum().double(), s.clean_loss,
                        s.clean_wrong.sum().double()])
    acc = (sums.cpu() / len(ds)).tolist()
    return {"robust_loss": acc[0], "robust_err": acc[1], "clean_loss": acc[2], "clean_err": acc[3]}


def epoch_hook(dataset: Any, attack_settings: dict[str, Any] | Attack | None = None, *,
               seed: int = 0, prefix: str = "val_", n_test: int | None = None,
               batch_size: int = 256,
               n: Any = UNSET) -> Callable[[Any], dict[str, float]]:
    """A trainer epoch hook: `robust_metrics` of the training model (in eval mode, through
    `ctx.forward`, i.e. quantized when the run is) with a generator reseeded to `seed` every epoch,
    so epochs are compared on identical attack randomness. Keys get `prefix`. `dataset`: anything
    `robustlab.sources.as_data` takes (a `DataLoader` is streamed every epoch)."""
    n = renamed("epoch_hook", "n", n, "n_test", n_test)
    dataset = sources.as_data(dataset)
    if not callable(attack_settings):
        attack, _ = make_attack(attack_settings, dataset.shape)
    else:
        attack = attack_settings

    def hook(ctx: Any) -> dict[str, float]:
        with ctx.eval_mode():
            m = robust_metrics(ctx.forward, dataset, attack, torch.Generator().manual_seed(seed),
                               batch_size=batch_size, device=ctx.device, n_test=n)
        return {f"{prefix}{k}": v for k, v in m.items()}

    return hook


def best_vs_last(history: Sequence[dict[str, Any]], key: str = "val_robust_err"
                 ) -> dict[str, Any]:
    """The epoch minimizing `key` (first one on ties) against the last epoch: both metric rows,
    and the robust-overfitting amount last − best for every numeric metric they share."""
    rows = [h for h in history if isinstance(h.get(key), (int, float)) and not math.isnan(h[key])]
    if not rows:
        raise UserError(f"no epoch in the history records {key!r}; train with robust tracking")
    best = min(rows, key=lambda h: h[key])
    last = rows[-1]
    shared = [k for k in best if k in last and isinstance(best[k], (int, float))
              and isinstance(last[k], (int, float)) and k not in ("epoch",)]
    return {"key": key, "best_epoch": best.get("epoch"), "last_epoch": last.get("epoch"),
            "best": dict(best), "last": dict(last),
            "overfitting": {k: last[k] - best[k] for k in shared}}
