"""Adversarial bit errors (spec §8, §9.2): RErr against the number of flipped bits.

Trains four 8-bit RQuant models (quantization-aware) on Fashion-MNIST:

    rquant     plain training
    clipping   + weight clipping (w_max = --clip)
    randbet    + clipping + random bit error training (p = --randbet-p)
    advbet     + clipping + adversarial bit error training (--advbet-budget bits per batch)

and attacks each with the projected adversarial bit error attack and with BFA (progressive bit
search), side by side, plus random flips of the same budget as a reference. The attacks are
computed on --n-attack training images; RErr (wrong clean or wrong with the flips) is measured on
--n-test test images. Writes benchmarks/results/bitattack.json and bitattack.png.

    python benchmarks/bitattack.py --device cuda               # the real benchmark (GPU)
    python benchmarks/bitattack.py --smoke --device cpu        # tiny synthetic check

Defaults: convnet (BN), 10 epochs, batch 128, SGD lr 0.05 cosine, budgets 10..320.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import bench_data, choose

from robustlab import data, models
from robustlab.device import resolve_device
from robustlab.evaluate.bitattack import bit_attack
from robustlab.io import atomic_write_json, versions
from robustlab.quant import RQUANT8
from robustlab.report.flatness_plots import plot_bit_attack
from robustlab.train import fit
from robustlab.train.methods import create

MODELS = ("rquant", "clipping", "randbet", "advbet")


def train_model(name: str, train: data.Dataset, a: argparse.Namespace, device) -> torch.nn.Module:
    model = models.create(a.model, dataset=train, seed=a.seed)
    method = create("normal")
    if name == "randbet":
        method = create("randbet", bit_error_rate=a.randbet_p)
    elif name == "advbet":
        method = create("advbet", bit_budget=a.advbet_budget, bit_attack_steps=a.advbet_steps)
    fit(model, train, method=method, quant=RQUANT8, epochs=a.epochs, lr=a.lr,
        batch_size=a.batch_size, seed=a.seed, device=device,
        clip=None if name == "rquant" else a.clip, progress=False if a.quiet else None)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", default=",".join(MODELS), help=f"subset of {', '.join(MODELS)}")
    ap.add_argument("--model", default="convnet", help="architecture")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--subset", type=int, default=0, help="training images (0 = all)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--clip", type=float, default=0.1)
    ap.add_argument("--randbet-p", type=float, default=0.01)
    ap.add_argument("--advbet-budget", type=int, default=160)
    ap.add_argument("--advbet-steps", type=int, default=5)
    ap.add_argument("--budgets", default="10,20,40,80,160,320")
    ap.add_argument("--methods", default="attack,bfa,random")
    ap.add_argument("--steps", type=int, default=20, help="iterations of the projected attack")
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--n-attack", type=int, default=512)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic problem, 1 epoch")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/bitattack.json")
    a = ap.parse_args()
    budgets = [int(b) for b in a.budgets.split(",")]
    if a.smoke:
        a.epochs, a.n_attack, a.n_test, a.steps, a.model = 1, 64, 128, 3, "mlp"
        a.advbet_budget, a.advbet_steps = 8, 1
        budgets = [b for b in budgets if b <= 20] or [4]
    names = choose(a.models, MODELS, "model")
    device = resolve_device(a.device)
    train, test = bench_data(a.smoke, a.subset, a.n_test)
    print(f"data {train.name}: {len(train)} train, {len(test)} test; device {device}")
    results, t0 = {}, time.perf_counter()
    for name in names:
        t = time.perf_counter()
        model = train_model(name, train, a, device)
        t_train = time.perf_counter() - t
        res = bit_attack(model, test, budgets=budgets, method=a.methods, scheme=RQUANT8,
                         attack_data=train, n_attack=a.n_attack, steps=a.steps,
                         restarts=a.restarts, seed=a.seed, device=device,
                         progress=False if a.quiet else None)
        res["train_time_s"] = round(t_train, 1)
        res["attack_time_s"] = round(time.perf_counter() - t - t_train, 1)
        results[name] = res
        print(f"{name}: clean Err {100 * res['clean_err']:.2f}% "
              f"(train {t_train:.0f}s, attacks {res['attack_time_s']:.0f}s)")
    print(f"\nRErr (%) by flipped bits on {len(test)} test images")
    print(f"{'model':<9} {'method':<7} {'clean':>6} " + " ".join(f"{b:>6}" for b in budgets))
    for name, res in results.items():
        for m in res["methods"]:
            vals = " ".join(f"{100 * v:6.2f}" for v in res["results"][m]["rerr"])
            print(f"{name:<9} {m:<7} {100 * res['clean_err']:6.2f} {vals}")
    png = plot_bit_attack(list(results.values()), a.out.replace(".json", ".png"),
                          labels=list(results))
    atomic_write_json(a.out, {"benchmark": "bitattack", "config": {**vars(a), "budgets": budgets},
                              "data": train.name, "device": str(device), "models": results,
                              "total_time_s": round(time.perf_counter() - t0, 1),
                              "versions": versions()})
    print(f"written to {a.out} and {png}")


if __name__ == "__main__":
    main()
