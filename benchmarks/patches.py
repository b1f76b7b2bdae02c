"""Patch adversarial training with fixed, random and optimized locations (spec §4, §9.4): the
`patches` preset's runs and evaluation, timed.

Trains the runs of configs/patches.yaml with their `TrainSpec`s:

    normal         plain cross-entropy
    patch_fixed    patch AT, half of every batch patched at a fixed corner
    patch_random   patch AT, patches at random allowed locations
    patch_opt      patch AT, location-optimized patches (4 moves of --stride per step)

into --cache (a finished run with the same settings is reused) and evaluates each with the
preset's `patches` spec (`robustlab.tasks.patches.Patches`): the first --n-test test images
attacked with 7×7 patches (8×8 on 32×32 data) whose content is optimized by signed gradient
steps (0.05, --steps iterations, --restarts restarts, worst case per example) at a fixed
location, at random locations and at optimized locations. Reports clean Err and RErr per (model,
attack location) and the training and evaluation seconds (a reused run keeps the seconds of its
training). Writes benchmarks/results/patches.json. --bf16 applies to training only (the patch
evaluation runs in float32).

The preset's default scale (small) trains convnet width 8 with BN for 4 epochs against 5-step
patches and attacks 500 images with 20 steps and 1 restart; --scale full: width 32, 30 epochs, 25
training steps, 1000 images, 100 steps, 3 restarts.

    python benchmarks/patches.py --device cuda --scale full                       # the real run
    python benchmarks/patches.py --device cpu --epochs 1 --subset 2000 --n-test 100 --steps 5
    python benchmarks/patches.py --smoke --device cpu              # tiny synthetic check (seconds)
"""

from __future__ import annotations

import argparse

import common

from robustlab.io import atomic_write_json, versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_preset_options(ap, "patches")
    common.add_attack_options(ap)
    ap.add_argument("--patch-size", type=int, default=None, help="side (default: image side / 4)")
    ap.add_argument("--stride", type=int, default=None, help="pixels per location move (2)")
    a = ap.parse_args()
    preset = common.bench_preset("patches", a)
    for r in preset["runs"].values():  # the training patches are the evaluated ones
        if r.get("method") == "patch-at":
            r["options"].update({k: v for k, v in (("patch_size", a.patch_size),
                                                   ("patch_stride", a.stride)) if v})
    ws = common.bench_workspace(preset, a)
    rows, locations = [], None
    for key in preset["runs"]:
        run, t_train = common.bench_run(ws, key)
        spec = common.preset_eval(ws, key, "patches", n_test=a.n_test, steps=a.steps,
                           restarts=a.restarts, size=a.patch_size, stride=a.stride)
        res, t_eval = common.timed_eval(spec, run, progress=False if a.quiet else None)
        if locations is None:
            locations = list(res["locations"])
            print(f"{'model':<13} {'Err':>6}" + "".join(f" {'RErr ' + e:>20}" for e in locations))
        err, rerr = res["clean"]["err"], {loc: v["rerr"] for loc, v in res["locations"].items()}
        rows.append({"model": key, "label": ws.run_label(key), "method": run.meta.get("method"),
                     "err": err, "rerr": rerr, "train_s": t_train, "eval_s": t_eval,
                     "result": res})
        print(f"{key:<13} {100 * err:6.1f}" + "".join(f" {100 * rerr[e]:20.1f}" for e in locations))
    out = {"benchmark": "patches", "device": str(run.device), "data": run.meta["data"]["name"],
           "config": vars(a), "preset": preset, "rows": rows, "versions": versions()}
    atomic_write_json(a.out, out)
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
