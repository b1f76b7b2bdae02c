"""Patch adversarial training with fixed, random and optimized locations (spec §4, §9.4).

Trains four models on Fashion-MNIST:

    normal         plain cross-entropy
    patch-fixed    patch AT, half of every batch patched at a fixed corner
    patch-random   patch AT, patches at random allowed locations
    patch-opt      patch AT, location-optimized patches (4 moves of --stride per step)

and attacks the first --n-test test images of each with 7×7 patches (8×8 on 32×32 data) whose
content is optimized by signed gradient steps (0.05, --steps iterations, --restarts restarts,
worst case per example) at a fixed location, at random locations and at optimized locations.
Reports clean Err and RErr per (model, attack location). Writes benchmarks/results/patches.json.

    python benchmarks/patches.py --device cuda                                    # the real run
    python benchmarks/patches.py --device cpu --epochs 1 --subset 2000 --n-test 100 --steps 5

Defaults: convnet (BN), 10 epochs, batch 128, SGD lr 0.05 cosine, training attack 10 steps of 0.1,
evaluation 100 steps with 3 restarts.
"""

from __future__ import annotations

import argparse
import time

import torch

from robustlab import data, models
from robustlab.attacks.patches import patch_attack
from robustlab.device import resolve_device
from robustlab.io import atomic_write_json, versions
from robustlab.train import fit
from robustlab.train.adversarial_methods import PatchAT
from robustlab.train.methods import Method

TRAIN = {"normal": None, "patch-fixed": "fixed", "patch-random": "random",
         "patch-opt": "optimized-full"}
EVAL = ("fixed", "random", "optimized-full")


def evaluate(model, test: data.Dataset, location: str, a: argparse.Namespace,
             device: torch.device) -> float:
    g = torch.Generator().manual_seed(a.seed)
    wrong = 0
    n = min(a.n_test, len(test))
    for i in range(0, n, a.batch_eval):
        x = test.x[i:min(n, i + a.batch_eval)].to(device)
        y = test.y[i:min(n, i + a.batch_eval)].to(device)
        res = patch_attack(model, x, y, size=a.patch_size, steps=a.steps, step_size=0.05,
                           location=location, stride=a.stride, exclude=a.exclude,
                           restarts=a.restarts, generator=g, bf16=a.bf16)
        with torch.no_grad():
            clean_wrong = model(x).argmax(1) != y
        wrong += int((res.success | clean_wrong).sum())
    return wrong / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--subset", type=int, default=0, help="training images (0 = all)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--runs", default=",".join(TRAIN))
    ap.add_argument("--patch-size", type=int, default=None, help="side (default: image side / 4)")
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--exclude", type=int, default=0, help="central box side patches avoid")
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--batch-eval", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/patches.json")
    a = ap.parse_args()
    device = resolve_device(a.device)
    train, test = data.load(a.data)
    if a.subset:
        train = train.subset(slice(0, a.subset))
    rows = []
    print(f"{'model':<13} {'Err':>6}" + "".join(f" {'RErr ' + e:>20}" for e in EVAL))
    for key in a.runs.split(","):
        loc = TRAIN[key]
        method = Method() if loc is None else PatchAT(
            fraction=0.5, patch_size=a.patch_size, location=loc, patch_stride=a.stride,
            patch_exclude=a.exclude, attack_steps=a.train_steps)
        model = models.create(a.model, dataset=train, seed=a.seed)
        t0 = time.perf_counter()
        fit(model, train, method=method, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
            seed=a.seed, device=device, bf16=a.bf16, progress=False if a.quiet else None)
        t_train = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            n = min(a.n_test, len(test))
            err = float(sum(int((model(test.x[i:min(n, i + 500)].to(device)).argmax(1)
                                 != test.y[i:min(n, i + 500)].to(device)).sum())
                            for i in range(0, n, 500)) / n)
        t0 = time.perf_counter()
        rerr = {loc_e: evaluate(model, test, loc_e, a, device) for loc_e in EVAL}
        rows.append({"model": key, "method": method.config(), "err": err, "rerr": rerr,
                     "train_s": round(t_train, 1), "eval_s": round(time.perf_counter() - t0, 1)})
        print(f"{key:<13} {100 * err:6.1f}" + "".join(f" {100 * rerr[e]:20.1f}" for e in EVAL))
    out = {"benchmark": "patches", "device": str(device), "data": a.data, "config": vars(a),
           "rows": rows, "versions": versions()}
    atomic_write_json(a.out, out)
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
