"""Trainer overhead: images/s of `robustlab.train.fit`, run through its `TrainSpec`, vs a minimal
hand-written PyTorch loop.

Same model (the spec's: convnet, width 32, BN), same data (Fashion-MNIST training images when
present, else random 28×28 images), same batch size (128), SGD with momentum and weight decay (the
spec's defaults), one epoch over `--n` images, best of `--repeats` interleaved rounds. Also the
trainer with --channels-last --bf16. `TrainSpec.run(None, data=…)` is `fit` plus the spec's
checks, so the overhead measured is what `robustlab train` and the presets pay. Target: the
trainer costs ≤ 5% more than the hand loop. Writes benchmarks/results/train_speed.json.

    python benchmarks/train_speed.py [--n 8192] [--repeats 3] [--device cpu]
    python benchmarks/train_speed.py --smoke        # 256 random images, one round (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robustlab import data
from robustlab.device import resolve_device
from robustlab.tasks.train import TrainSpec


def images(n: int, smoke: bool = False) -> data.Dataset:
    """The first `n` Fashion-MNIST training images, or random ones (with `smoke`, or missing data)."""
    if not smoke:
        try:
            train, _ = data.load("fashion-mnist")
            return train.subset(slice(0, n))
        except Exception:  # noqa: BLE001 - any missing data: fall back to random images
            pass
    g = torch.Generator().manual_seed(0)
    return data.Dataset("random", torch.rand(n, 1, 28, 28, generator=g),
                        torch.randint(0, 10, (n,), generator=g), 10)


def hand_loop(spec: TrainSpec, ds, device) -> None:
    """One epoch of plain SGD on the spec's model, batch size, learning rate and momentum."""
    model = spec.make_model(ds).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum,
                          weight_decay=spec.weight_decay)
    model.train()
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    for i in range(0, len(ds), spec.batch_size):
        idx = perm[i:i + spec.batch_size]
        x, y = ds.x[idx].to(device), ds.y[idx].to(device)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true", help="256 random images, one round")
    ap.add_argument("--out", default="benchmarks/results/train_speed.json")
    a = ap.parse_args()
    if a.smoke:
        a.n, a.repeats = min(a.n, 256), 1
    device = resolve_device(a.device)
    ds = images(a.n, a.smoke)
    spec = TrainSpec(model="convnet", epochs=1, schedule="constant", seed=0)
    fast = dataclasses.replace(spec, channels_last=True, bf16=True)
    assert spec.optimizer == "sgd" and not spec.nesterov, "the hand loop is plain SGD"

    def trainer(s: TrainSpec) -> None:
        s.run(None, data=(ds, None, None), device=device, progress=False)

    variants = {
        "hand loop": lambda: hand_loop(spec, ds, device),
        "trainer": lambda: trainer(spec),
        "trainer --channels-last --bf16": lambda: trainer(fast),
    }
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(a.repeats):  # interleaved and rotated: load changes and order effects hit all alike
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(timed(variants[name], device))
    best = {name: min(t) for name, t in times.items()}
    rows = {name: {"seconds": t, "images_per_s": len(ds) / t} for name, t in best.items()}
    overhead = best["trainer"] / best["hand loop"] - 1
    print(f"device {device}, {len(ds)} images ({ds.name}), threads {torch.get_num_threads()}")
    for name, r in rows.items():
        print(f"  {name:<32} {r['images_per_s']:8.0f} img/s")
    print(f"  trainer overhead vs hand loop: {100 * overhead:+.1f}% (target ≤ +5%)")
    print(f"  speed-up of --channels-last --bf16: "
          f"{best['trainer'] / best['trainer --channels-last --bf16']:.2f}×")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(device), "n": len(ds), "data": ds.name, "rows": rows,
                               "trainer_overhead": overhead}, indent=2))


if __name__ == "__main__":
    main()
