"""Robust overfitting (spec §8): early stopping keeps the best snapshot; report best vs last.

Data splits (spec §1) are deterministic and pinned, so numbers stay comparable across versions."""

from __future__ import annotations

import math

import pytest
import torch

from robustlab import checkpoint, models
from robustlab.data import Dataset, split, synthetic
from robustlab.evaluate.robust_tracking import best_vs_last
from robustlab.train import fit


def test_best_vs_last_picks_the_minimum_in_the_middle() -> None:
    hist = [{"epoch": 1, "val_robust_err": 0.6, "val_robust_loss": 1.4},
            {"epoch": 2, "val_robust_err": 0.3, "val_robust_loss": 1.0},
            {"epoch": 3, "val_robust_err": math.nan, "val_robust_loss": 0.9},
            {"epoch": 4, "val_robust_err": 0.3, "val_robust_loss": 1.1},
            {"epoch": 5, "val_robust_err": 0.45, "val_robust_loss": 1.3}]
    s = best_vs_last(hist)
    assert s["best_epoch"] == 2 and s["last_epoch"] == 5  # the first of tied minima; NaN skipped
    assert s["overfitting"]["val_robust_err"] == pytest.approx(0.15)
    assert s["overfitting"]["val_robust_loss"] == pytest.approx(0.3)
    assert best_vs_last(hist, key="val_robust_loss")["best_epoch"] == 3


def test_early_stopping_keeps_the_weights_of_the_best_epoch(tmp_path) -> None:
    train, _ = synthetic(64, 8, shape=(1, 6, 6), num_classes=3, seed=2)
    model = models.create("mlp", in_shape=(1, 6, 6), num_classes=3, hidden=(8,), seed=0)
    scripted = iter([0.5, 0.2, 0.4])  # the best epoch is the second
    snapshots: list[dict[str, torch.Tensor]] = []

    def hook(ctx) -> dict[str, float]:
        snapshots.append({k: v.detach().clone() for k, v in ctx.model.state_dict().items()})
        return {"val_robust_err": next(scripted)}

    fit(model, train, epochs=3, lr=0.1, batch_size=32, epoch_hooks=[hook], out=tmp_path,
        select_best="val_robust_err", progress=False, log=False, device="cpu")
    best, meta = checkpoint.load(tmp_path, best=True)
    last, _ = checkpoint.load(tmp_path)
    assert meta.get("best_epoch") == 2
    for k, v in best.state_dict().items():
        assert torch.equal(v, snapshots[1][k]), k
    assert any(not torch.equal(v, snapshots[1][k]) for k, v in last.state_dict().items())


def test_split_is_the_pinned_seeded_permutation() -> None:
    ds = Dataset("ids", (torch.arange(20) / 32).view(20, 1, 1, 1), torch.arange(20) % 2, 2)

    def ids(d: Dataset) -> list[int]:
        return (d.x.flatten() * 32).round().long().tolist()

    rest, part = split(ds, 0.25, seed=3)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3))
    assert ids(part) == sorted(perm[:5].tolist()) and ids(rest) == sorted(perm[5:].tolist())
    again = split(ds, 0.25, seed=3)[1]
    assert torch.equal(again.x, part.x)
    assert not torch.equal(split(ds, 0.25, seed=4)[1].x, part.x)
