"""Pieces the benchmark scripts share (run them as `python benchmarks/NAME.py`)."""

from __future__ import annotations

from pathlib import Path

import torch

from robustlab import data, models
from robustlab.checkpoint import read_weights

STRENGTH_CACHE = "/tmp/robustlab_attack_strength"  # where attack_strength.py keeps its models


def cached_model(key: str, cache: str, train: data.Dataset) -> torch.nn.Module:
    """The LeNet `key` (normal, at, ccat) that `attack_strength.py` trained and cached, frozen
    and in eval mode (exit with one line when it is missing)."""
    path = Path(cache) / f"{key}.safetensors"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run benchmarks/attack_strength.py --models {key} first")
    model = models.create("lenet", dataset=train, seed=0)
    model.load_state_dict(read_weights(path))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def choose(csv: str, allowed: tuple[str, ...] | dict, what: str) -> list[str]:
    """The comma-separated names in `csv`, each one of `allowed` (else exit with one line)."""
    names = [n.strip() for n in csv.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise SystemExit(f"unknown {what} {bad[0]!r}; choose from {', '.join(allowed)}")
    return names


def bench_data(smoke: bool, subset: int, n_test: int) -> tuple[data.Dataset, data.Dataset]:
    """Fashion-MNIST (digits at 28×28 when missing), or a tiny synthetic problem for `--smoke`;
    the first `subset` training and `n_test` test images (0 = all)."""
    if smoke:
        train, test = data.synthetic(512, 256, shape=(1, 8, 8), num_classes=4, seed=0)
    else:
        train, test = data.load_default("fashion-mnist")
    if subset:
        train = train.subset(slice(0, subset))
    if n_test:
        test = test.subset(slice(0, n_test))
    return train, test
