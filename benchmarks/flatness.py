"""Robust overfitting and flatness (spec §8, §9.5): the `flatness` preset's runs, evaluated at
several snapshots, and the Kendall τ between flatness and the robust generalization gap.

Trains the runs of configs/flatness.yaml with their `TrainSpec`s (AT, AT-AWP, TRADES, AT with
weight clipping, AT with label smoothing; PGD-L∞ ε = 0.1) into --cache (a finished run with the
same settings is reused), with the preset's robust tracking (robust error per epoch on the
held-out part of the training set; the best epoch's weights are kept) and weight snapshots every
--snapshot-every epochs. At the best snapshot (`robustlab.tasks.tracking.Tracking`), the last one
and every snapshot it evaluates the preset's `flatness` spec (`robustlab.tasks.flatness.Flatness`,
average case, ξ = --xi-average, K = --samples random ν) and the same spec in the worst case
(ξ = --xi-worst, --worst-steps ascent steps, --restarts): clean Err, RErr and robust loss of the
inner PGD-L∞ (--eval-steps) on the first --n-test test images, the robust loss on as many training
images (their difference is the robust generalization gap), and both flatness values. The table
shows best and last per run; Kendall τ between each flatness and the gap (and the robust test
loss) is computed over all evaluated snapshots of all runs (what the preset does not compute).
Writes benchmarks/results/flatness.json and flatness_correlation_{average,worst}.png.

    python benchmarks/flatness.py --device cuda --scale full    # the real benchmark (GPU)
    python benchmarks/flatness.py --smoke --device cpu          # tiny synthetic check (seconds)

Defaults: the preset at its default scale (small: training subset 4000 images, 10% held out for
tracking, convnet width 8 with BN, 12 epochs, multistep lr 0.05, 3-step training PGD; flatness
on 500 test images, 5 PGD steps, 5 samples); --scale full: all images, width 32, 100 epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from common import add_preset_options, bench_preset, bench_run, bench_workspace, preset_eval, timed_eval

from robustlab import checkpoint
from robustlab.checkpoint import read_weights, save_weights
from robustlab.io import atomic_write_json, versions
from robustlab.report.flatness_plots import plot_correlation
from robustlab.report.summary import read_history
from robustlab.tasks.tracking import Tracking


def snapshot_hook(folder: Path, every: int) -> Any:
    """A trainer epoch hook saving the weights of every `every`-th epoch to `folder`."""
    def hook(ctx: Any) -> dict[str, float]:
        if every and (ctx.epoch + 1) % every == 0:
            folder.mkdir(parents=True, exist_ok=True)
            save_weights(folder / f"epoch_{ctx.epoch + 1}.safetensors", ctx.model)
        return {}
    return hook


def snapshots(run: Any, every: int) -> dict[int, tuple[str, Path]]:
    """{epoch: (label, weights file)}: the best (robust tracking) and last epochs, then every
    `every`-th one."""
    track = Tracking().run(run)
    best, last = track["best_epoch"], track["last_epoch"]
    out = {best: ("best", run.path / checkpoint.BEST), last: ("last", run.path / checkpoint.WEIGHTS)}
    if best == last:
        out = {last: ("best=last", run.path / checkpoint.WEIGHTS)}
    for e in range(every, last + 1, every) if every else ():
        out.setdefault(e, (f"epoch {e}", run.path / "snapshots" / f"epoch_{e}.safetensors"))
    return dict(sorted(out.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_preset_options(ap, "flatness")
    ap.add_argument("--n-test", type=int, default=None, help="test (and training) images")
    ap.add_argument("--eval-steps", type=int, default=None, help="PGD steps of the robust loss")
    ap.add_argument("--xi-average", type=float, default=None, help="(default: the preset's 0.5)")
    ap.add_argument("--xi-worst", type=float, default=0.003)
    ap.add_argument("--samples", type=int, default=None, help="random ν (average case)")
    ap.add_argument("--worst-steps", type=int, default=20, help="ascent steps on ν (worst case)")
    ap.add_argument("--restarts", type=int, default=1, help="restarts of the ascent on ν")
    ap.add_argument("--snapshot-every", type=int, default=10,
                    help="also evaluate every N-th epoch (0: best and last only)")
    a = ap.parse_args()
    if a.smoke:
        a.worst_steps, a.snapshot_every = min(a.worst_steps, 2), 1
    preset = bench_preset("flatness", a)
    ws = bench_workspace(preset, a, snapshot_every=a.snapshot_every)
    print(f"data {preset['data']['name']}, runs {', '.join(preset['runs'])}; device {a.device}")
    rows, for_tau = [], {"average": [], "worst": []}
    t0 = time.perf_counter()
    for key in preset["runs"]:
        t = time.perf_counter()
        run, t_train = bench_run(ws, key, [snapshot_hook(ws.run_dir(key) / "snapshots",
                                                         a.snapshot_every)])
        avg = preset_eval(ws, key, "flatness", n_test=a.n_test, steps=a.eval_steps,
                          samples=a.samples, xi=a.xi_average)
        specs = {"average": avg, "worst": dataclasses.replace(
            avg, case="worst", xi=[a.xi_worst], ascent_steps=a.worst_steps, restarts=a.restarts)}
        history = read_history(run.path)
        for e, (label, weights) in snapshots(run, a.snapshot_every).items():
            run.model.load_state_dict(read_weights(weights, run.device))
            res, secs = {}, 0.0
            for kind, spec in specs.items():
                res[kind], s = timed_eval(spec, run, progress=False if a.quiet else None)
                for_tau[kind].append({**res[kind], "label": f"{key}@{e}"})
                secs += s
            r = res["average"]
            rows.append({"run": key, "snapshot": label, "epoch": e,
                         "val_robust_err": history[e - 1].get("val_robust_err"),
                         "clean_err": r["clean_err"], "rerr": r["robust_err"],
                         "robust_loss": r["loss"], "train_robust_loss": r["train_loss"],
                         "gap": r["gap"], "flatness_average": r["flatness"][0],
                         "flatness_worst": res["worst"]["flatness"][0], "eval_s": secs})
        rows[-1]["train_time_s"] = t_train
        print(f"{key}: {', '.join(f'{v[0]} {e}' for e, v in snapshots(run, 0).items())} "
              f"(trained in {t_train:.0f}s, {time.perf_counter() - t:.0f}s here)")
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
    result = {"benchmark": "flatness", "config": vars(a), "preset": preset,
              "data": run.meta["data"]["name"], "device": str(run.device), "rows": rows,
              "kendall": corr, "total_time_s": round(time.perf_counter() - t0, 1),
              "versions": versions()}
    atomic_write_json(a.out, result)
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
