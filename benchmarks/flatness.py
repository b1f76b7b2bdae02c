"""Robust overfitting and flatness (spec §8, §9.5) at Fashion-MNIST scale.

Trains four models long enough to overfit robustly, with per-epoch robust loss/error on a held-out
split of the training set (robust overfitting tracking) and per-epoch weight snapshots:

    at        adversarial training (PGD-L∞, ε = 0.1, f = --fraction)
    at-awp    the same with adversarial weight perturbations (γ = --awp-gamma)
    at-clip   the same with weight clipping (w_max = --clip)
    at-ls     the same with label smoothing (--label-smoothing)

For each run it evaluates the best snapshot (lowest held-out robust error), the last one and every
--snapshot-every-th epoch: clean Err and RErr on --n-test test images (PGD-L∞, --eval-steps), robust
loss on as many test and training images (their difference is the robust generalization gap), and
average-case (ξ = --xi-average, K = --samples) and worst-case (ξ = --xi-worst) robust flatness.
The table shows best and last per run; Kendall τ between each flatness and the gap (and the robust
test loss) is computed over all evaluated snapshots of all runs. Writes
benchmarks/results/flatness.json and flatness_correlation_{average,worst}.png.

    python benchmarks/flatness.py --device cuda                 # the real benchmark (GPU)
    python benchmarks/flatness.py --smoke --device cpu          # tiny synthetic check (seconds)

Defaults: training subset 10000 images (robust overfitting appears sooner on less data), 40 epochs,
batch 128, SGD lr 0.05 cosine, held-out split 1000 images.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch

from robustlab import data, models
from robustlab.device import resolve_device
from robustlab.evaluate.flatness import flatness
from robustlab.evaluate.robust_tracking import best_vs_last, epoch_hook, robust_metrics
from robustlab.io import atomic_write_json, versions
from robustlab.report.flatness_plots import plot_correlation
from robustlab.train import fit
from robustlab.train.methods import create

RUNS = ("at", "at-awp", "at-clip", "at-ls")


def load_data(args: argparse.Namespace) -> tuple[data.Dataset, data.Dataset, data.Dataset]:
    if args.smoke:
        train, test = data.synthetic(256, 128, shape=(1, 12, 12), num_classes=4, seed=0)
    else:
        train, test = data.load_default("fashion-mnist")
    train, val = data.split(train, min(args.val, len(train) // 5) / len(train), seed=0)
    if args.subset:
        train = train.subset(slice(0, args.subset))
    return train, val, test


def method_for(run: str, args: argparse.Namespace):
    common = {"fraction": args.fraction, "attack_steps": args.attack_steps}
    if run == "at-awp":
        return create("awp", awp_base="at", awp_gamma=args.awp_gamma, **common)
    return create("at", **common)


def train_run(run: str, train, val, args, device) -> tuple[torch.nn.Module, dict, list]:
    model = models.create(args.model, dataset=train, seed=args.seed)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(ctx) -> dict[str, float]:
        snapshots[ctx.epoch + 1] = {k: v.detach().cpu().clone()
                                    for k, v in ctx.model.state_dict().items()}
        return {}

    track = epoch_hook(val, {"steps": args.attack_steps}, seed=args.seed)
    hist = fit(model, train, method=method_for(run, args), epochs=args.epochs, lr=args.lr,
               batch_size=args.batch_size, seed=args.seed, device=device,
               clip=args.clip if run == "at-clip" else None,
               label_smoothing=args.label_smoothing if run == "at-ls" else 0.0,
               epoch_hooks=[track, snapshot], progress=False if args.quiet else None)
    return model, snapshots, hist


def evaluate(model, state, train, test, args, device) -> dict[str, Any]:
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    m.to(device).eval()
    settings = {"steps": args.eval_steps}
    gen = torch.Generator().manual_seed(args.seed)
    rm = robust_metrics(m, test, settings, gen, device=device, n_test=args.n_test)
    out: dict[str, Any] = {"clean_err": rm["clean_err"], "rerr": rm["robust_err"]}
    common = dict(n_test=args.n_test, attack_settings=settings, train=train, seed=args.seed,
                  device=device, progress=False if args.quiet else None)
    avg = flatness(m, test, kind="average", xi=args.xi_average, samples=args.samples, **common)
    worst = flatness(m, test, kind="worst", xi=args.xi_worst, steps=args.worst_steps,
                     restarts=args.restarts, **common)
    out.update(robust_loss=avg["loss"], train_robust_loss=avg["train_loss"], gap=avg["gap"],
               flatness_average=avg["flatness"][0], flatness_worst=worst["flatness"][0])
    out["_results"] = {"average": avg, "worst": worst}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"subset of {', '.join(RUNS)}")
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--subset", type=int, default=10000, help="training images (0 = all)")
    ap.add_argument("--val", type=int, default=1000, help="held-out images for tracking")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--fraction", type=float, default=1.0, help="AT fraction (1 = Madry)")
    ap.add_argument("--attack-steps", type=int, default=10, help="training/tracking PGD steps")
    ap.add_argument("--awp-gamma", type=float, default=0.005)
    ap.add_argument("--clip", type=float, default=0.1)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--eval-steps", type=int, default=20, help="evaluation PGD steps")
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--xi-average", type=float, default=0.5)
    ap.add_argument("--xi-worst", type=float, default=0.003)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--worst-steps", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--snapshot-every", type=int, default=10,
                    help="also evaluate every N-th epoch (0: best and last only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic problem, 2 epochs")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/flatness.json")
    a = ap.parse_args()
    if a.smoke:
        a.epochs, a.subset, a.val, a.n_test = min(a.epochs, 2), 0, 64, 32
        a.samples, a.worst_steps, a.eval_steps, a.attack_steps = 2, 2, 2, 2
        a.model, a.snapshot_every = "mlp", 1
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    bad = [r for r in runs if r not in RUNS]
    if bad:
        raise SystemExit(f"unknown run {bad[0]!r}; choose from {', '.join(RUNS)}")
    device = resolve_device(a.device)
    torch.manual_seed(a.seed)
    train, val, test = load_data(a)
    print(f"data {train.name}: {len(train)} train, {len(val)} held out, {len(test)} test; "
          f"device {device}")
    rows, for_tau = [], {"average": [], "worst": []}
    t0 = time.perf_counter()
    for run in runs:
        t = time.perf_counter()
        model, snaps, hist = train_run(run, train, val, a, device)
        summary = best_vs_last(hist)
        best, last = summary["best_epoch"], summary["last_epoch"]
        epochs = {best: "best", last: "last"} if best != last else {best: "best=last"}
        if a.snapshot_every:
            for e in range(a.snapshot_every, last + 1, a.snapshot_every):
                epochs.setdefault(e, f"epoch {e}")
        for e in sorted(epochs):
            r = evaluate(model, snaps[e], train, test, a, device)
            res = r.pop("_results")
            label = f"{run}@{e}"
            for kind in ("average", "worst"):
                for_tau[kind].append({**res[kind], "label": label})
            rows.append({"run": run, "snapshot": epochs[e], "epoch": e,
                         "val_robust_err": hist[e - 1]["val_robust_err"], **r})
        rows[-1]["train_time_s"] = round(time.perf_counter() - t, 1)
        print(f"{run}: best epoch {best}, last {last} ({time.perf_counter() - t:.0f}s)")
    out_dir = Path(a.out).parent
    corr = {}
    for kind in ("average", "worst"):
        c = plot_correlation(for_tau[kind], out_dir / f"flatness_correlation_{kind}.png")
        corr[kind] = {k: c[k] for k in ("n", "tau_gap", "p_gap", "tau_loss", "p_loss")}
    head = (f"{'run':<8} {'snapshot':<9} {'ep':>3} {'Err%':>6} {'RErr%':>6} {'RLoss':>7} "
            f"{'gap':>7} {'avg-flat':>9} {'worst-flat':>10}")
    print(head)
    for r in rows:
        if r["snapshot"] in ("best", "last", "best=last"):
            print(f"{r['run']:<8} {r['snapshot']:<9} {r['epoch']:>3} {100 * r['clean_err']:6.2f} "
                  f"{100 * r['rerr']:6.2f} {r['robust_loss']:7.3f} {r['gap']:7.3f} "
                  f"{r['flatness_average']:9.4f} {r['flatness_worst']:10.4f}")
    for kind, c in corr.items():
        print(f"Kendall τ ({kind}-case flatness, {c['n']} snapshots): vs gap {c['tau_gap']:.3f} "
              f"(p={c['p_gap']:.3g}), vs robust test loss {c['tau_loss']:.3f}")
    result = {"benchmark": "flatness", "config": vars(a), "data": train.name,
              "device": str(device), "rows": rows, "kendall": corr,
              "total_time_s": round(time.perf_counter() - t0, 1), "versions": versions()}
    atomic_write_json(a.out, result)
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
