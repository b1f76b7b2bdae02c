"""Adversarial bit errors (spec §3a, §8, §9.2): RErr against the number of flipped bits.

Trains 8-bit models on Fashion-MNIST, for every architecture of --archs (default lenet, mlp):

    normal     plain float training, attacked at RQuant (8 bit) after training
    rquant     quantization-aware (RQuant 8 bit)
    clipping   + weight clipping (w_max = --clip)
    randbet    + clipping + random bit error training (p = --randbet-p)
    advbet     + clipping + adversarial bit error training (--advbet-budget bits per batch; opt-in)

and attacks each with the projected adversarial bit error attack (its defaults: --steps,
--restarts) and with BFA (progressive bit search), plus random flips of the same budget as a
reference. The attacks are computed on --n-attack training images; RErr (wrong clean or wrong
with the flips) is measured on --n-test test images. Prints, per model, the projected attack,
BFA, their per-budget worst case with the attack that found it, and the envelope
max_{b′ ≤ b} RErr(b′); then whether the projected attack alone is ≥ BFA at every budget.
Writes benchmarks/results/bitattack.json and bitattack.png.

    python benchmarks/bitattack.py --device cuda               # the real benchmark (GPU)
    python benchmarks/bitattack.py --smoke --device cpu        # tiny synthetic check

Defaults: 10 epochs, batch 128, SGD lr 0.05 cosine, budgets 10..320.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import bench_data, choose

from robustlab import data, models
from robustlab.device import resolve_device
from robustlab.evaluate.bitattack import RESTARTS, STEPS, bit_attack
from robustlab.io import atomic_write_json, read_json, versions
from robustlab.quant import RQUANT8
from robustlab.report.flatness_plots import plot_bit_attack
from robustlab.train import fit
from robustlab.train.methods import create

MODELS = ("normal", "rquant", "clipping", "randbet", "advbet")
DEFAULT_MODELS = "normal,rquant,clipping,randbet"


def train_model(name: str, arch: str, train: data.Dataset, a: argparse.Namespace,
                device) -> torch.nn.Module:
    model = models.create(arch, dataset=train, seed=a.seed)
    method = create("normal")
    if name == "randbet":
        method = create("randbet", bit_error_rate=a.randbet_p)
    elif name == "advbet":
        method = create("advbet", bit_budget=a.advbet_budget, bit_attack_steps=a.advbet_steps)
    fit(model, train, method=method, quant=None if name == "normal" else RQUANT8,
        epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, seed=a.seed, device=device,
        clip=None if name in ("normal", "rquant") else a.clip,
        progress=False if a.quiet else None, log=not a.quiet)
    return model.eval()


def pct(v: float) -> str:
    return f"{100 * v:5.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"subset of {', '.join(MODELS)}")
    ap.add_argument("--archs", default="lenet,mlp", help="architectures, comma-separated")
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
    ap.add_argument("--steps", type=int, default=STEPS, help="iterations of the projected attack")
    ap.add_argument("--restarts", type=int, default=RESTARTS)
    ap.add_argument("--n-attack", type=int, default=512)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic problem, 1 epoch")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/bitattack.json")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default; 1 on a busy shared machine)")
    ap.add_argument("--merge", default=None, metavar="JSON,...",
                    help="no runs: print the tables of these result files and merge them to --out")
    a = ap.parse_args()
    if a.merge:
        return merge(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    budgets = [int(b) for b in a.budgets.split(",")]
    if a.smoke:
        a.epochs, a.n_attack, a.n_test, a.steps, a.archs = 1, 64, 128, 3, "mlp"
        a.advbet_budget, a.advbet_steps = 8, 1
        budgets = [b for b in budgets if b <= 20] or [4]
    names = choose(a.models, MODELS, "model")
    archs = [s.strip() for s in a.archs.split(",") if s.strip()]
    device = resolve_device(a.device)
    train, test = bench_data(a.smoke, a.subset, a.n_test)
    print(f"data {train.name}: {len(train)} train, {len(test)} test; device {device}")
    results, t0 = {}, time.perf_counter()
    for arch in archs:
        for name in names:
            key = f"{arch}/{name}"
            t = time.perf_counter()
            model = train_model(name, arch, train, a, device)
            t_train = time.perf_counter() - t
            res = bit_attack(model, test, budgets=budgets, method=a.methods, quant=RQUANT8,
                             attack_data=train, n_attack=a.n_attack, steps=a.steps,
                             restarts=a.restarts, seed=a.seed, device=device,
                             progress=False if a.quiet else None)
            res["train_time_s"] = round(t_train, 1)
            res["attack_time_s"] = round(time.perf_counter() - t - t_train, 1)
            results[key] = res
            print(f"{key}: clean Err {100 * res['clean_err']:.2f}% "
                  f"(train {t_train:.0f}s, attacks {res['attack_time_s']:.0f}s)", flush=True)
            save(a, budgets, train, device, results, t0, partial=True)  # survives interruption
    verdict = table(results, budgets, len(test), a.n_attack)
    png = plot_bit_attack(list(results.values()), a.out.replace(".json", ".png"),
                          labels=list(results))
    save(a, budgets, train, device, results, t0, verdict=verdict)
    print(f"written to {a.out} and {png}")


def table(results: dict, budgets: list[int], n_test: int, n_attack: int) -> dict:
    """Print the per-model table (methods, worst case, envelope, who found it, as text and as
    Markdown); returns {model: budgets at which the projected attack is behind BFA}."""
    print(f"\nRErr (%) by flipped bits on {n_test} test images "
          f"(attacks computed on {n_attack} training images)")
    print(f"{'model':<16} {'':<10} {'clean':>5} " + " ".join(f"{b:>5}" for b in budgets))
    verdict, md = {}, []
    short = {"attack": "proj", "bfa": "bfa", "attack+bfa": "both"}
    for key, res in results.items():
        r = res["results"]
        rows = [(m, r[m]["rerr"]) for m in res["methods"]]
        if "worst" in r:
            rows += [("worst", r["worst"]["rerr"]), ("envelope", r["worst"]["rerr_env"])]
        for i, (m, vals) in enumerate(rows):
            print(f"{key if i == 0 else '':<16} {m:<10} {pct(res['clean_err'])} "
                  + " ".join(pct(v) for v in vals))
        if "worst" in r:
            found = [short.get(f, f) for f in r["worst"]["found_by"]]
            print(f"{'':<16} {'found by':<10} {'':>5} " + " ".join(f"{f:>5}" for f in found))
            w = r["worst"]
            md.append(f"| {key} | projected | {pct(res['clean_err']).strip()} | "
                      + " | ".join(pct(v).strip() for v in r["attack"]["rerr"]) + " |"
                      if "attack" in r else None)
            md.append("| | BFA | | " + " | ".join(pct(v).strip() for v in r["bfa"]["rerr"]) + " |"
                      if "bfa" in r else None)
            md.append("| | worst (by) | | " + " | ".join(
                f"{pct(v).strip()} ({f})" for v, f in zip(w["rerr"], found)) + " |")
            md.append("| | envelope | | " + " | ".join(pct(v).strip() for v in w["rerr_env"])
                      + " |")
        if "attack" in r and "bfa" in r:
            verdict[key] = [b for b, x, y in zip(budgets, r["attack"]["rerr"], r["bfa"]["rerr"])
                            if x < y]
    if verdict:
        print("\nprojected attack >= BFA at every budget:")
        for key, behind in verdict.items():
            print(f"  {key:<16} " + ("yes" if not behind else
                                     f"no (behind at {', '.join(map(str, behind))} bits)"))
    md = [line for line in md if line]
    if md:
        print("\n| model | attack | clean | " + " | ".join(str(b) for b in budgets) + " |")
        print("|---" * (len(budgets) + 3) + "|")
        print("\n".join(md))
    return verdict


def merge(a: argparse.Namespace) -> None:
    """--merge: print the table of earlier runs' JSON files and write them as one file."""
    results, files = {}, [f.strip() for f in a.merge.split(",") if f.strip()]
    docs = [read_json(f) for f in files]
    for d in docs:
        for key, res in d["models"].items():
            results.setdefault(key, res)
    budgets = docs[0]["config"]["budgets"]
    first = next(iter(results.values()))
    verdict = table(results, budgets, first["n_test"], first["n_attack"])
    png = plot_bit_attack(list(results.values()), a.out.replace(".json", ".png"),
                          labels=list(results))
    atomic_write_json(a.out, {"benchmark": "bitattack", "merged_from": files,
                              "configs": [d["config"] for d in docs], "data": docs[0]["data"],
                              "device": docs[0]["device"], "models": results,
                              "projected_behind_bfa": verdict,
                              "total_time_s": sum(d["total_time_s"] for d in docs),
                              "versions": versions()})
    print(f"written to {a.out} and {png}")


def save(a: argparse.Namespace, budgets: list[int], train: data.Dataset, device, results: dict,
         t0: float, verdict: dict | None = None, partial: bool = False) -> None:
    atomic_write_json(a.out, {"benchmark": "bitattack", "config": {**vars(a), "budgets": budgets},
                              "data": train.name, "device": str(device), "models": results,
                              "projected_behind_bfa": verdict, "partial": partial,
                              "total_time_s": round(time.perf_counter() - t0, 1),
                              "versions": versions()})


if __name__ == "__main__":
    main()
