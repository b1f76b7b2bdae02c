"""Random bit errors (spec §5–§7, §9.1): the `bit-errors` preset's runs and evaluation — and speed.

Trains the runs of configs/bit-errors.yaml with their `TrainSpec`s, 8-bit quantization-aware:

    normal        8-bit, global range [-1, 1], symmetric signed, truncation ("Normal")
    rquant        RQuant (per tensor, asymmetric, unsigned, rounded)
    clip          RQuant + weight clipping (w_max 0.1; --clip)
    clip_ls       RQuant + clipping + label smoothing 0.1 (--label-smoothing)
    randbet       RQuant + clipping + RandBET (p = 2%; --randbet-p)
    pattbet       RQuant + clipping + PattBET (p = 2%, pattern seed 7; --pattern-seed),
                  evaluated on its own training pattern and on random patterns

into --cache (a finished run with the same settings is reused) and evaluates each with the
preset's `biterrors` spec (`robustlab.tasks.biterrors.BitErrors`: Err and RErr under K random
bit error patterns per rate, seeds 100…), PattBET also with its `own-pattern` evaluation (K = 1,
seed = its pattern seed) at every rate.

Speed: (a) milliseconds per pattern per 1M 8-bit weights to generate a mask, inject it (XOR) and
dequantize (the engine's `biterrors.masks`, `Quantized.dequantize_flat`); (b) the evaluation's
total time ÷ (K × R × one clean test-set forward pass), target ≤ 1.2, as the evaluation times it.
Writes benchmarks/results/biterrors.json.

    python benchmarks/biterrors.py --device cuda --scale full          # the real benchmark (GPU)
    python benchmarks/biterrors.py --smoke --device cpu                # tiny synthetic check

Defaults: the preset at its default scale (small: convnet width 8 with BN, 12000 training
images, 5 epochs, batch 128, SGD lr 0.05; rates 0.1…10%, 10 patterns on 2000 test images);
--scale full: width 32, all images, 30 epochs, rates 0.1, 0.5, 1, 2, 3, 4, 5, 10, 15, 20%,
50 patterns on all 10,000 test images. --epochs, --subset, --model, --norm, --lr, --batch-size,
--seed, --clip, --randbet-p, --pattern-seed, --label-smoothing, --rates, --patterns, --n-test
override the preset.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from common import (
    add_preset_options,
    add_run_overrides,
    bench_preset,
    bench_run,
    bench_workspace,
    override_runs,
    preset_eval,
    timed_eval,
)

from robustlab import biterrors as be
from robustlab.device import resolve_device
from robustlab.experiments import eval_settings
from robustlab.io import atomic_write_json, versions
from robustlab.quant import RQUANT8
from robustlab.tasks.biterrors import rate
from robustlab.values import list_of


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def injection_speed(device: torch.device, rates: list[float], repeats: int = 5) -> dict[str, float]:
    """(a): ms per pattern per 1M 8-bit weights (mask + XOR + dequantize), one rate and all rates."""
    n = 1 << 20
    g = torch.Generator().manual_seed(0)
    q = RQUANT8.quantize({f"w{i}": torch.randn(n // 16, generator=g).to(device) for i in range(16)})
    q.dequantize()  # build the lookup caches

    def one(rs: list[float], seed: int) -> None:
        m = be.masks(q, seed, rs)
        for r in range(len(rs)):
            q.dequantize_flat(torch.bitwise_xor(q.codes, m[r]))

    def timed(rs: list[float]) -> float:
        one(rs, 0)
        times = []
        for k in range(repeats):
            sync(device)
            t = time.perf_counter()
            one(rs, 1 + k)
            sync(device)
            times.append(time.perf_counter() - t)
        return 1000 * statistics.median(times) * (1 << 20) / q.numel

    def mask_only(rs: list[float]) -> float:
        times = []
        for k in range(repeats):
            sync(device)
            t = time.perf_counter()
            be.masks(q, 1 + k, rs)
            sync(device)
            times.append(time.perf_counter() - t)
        return 1000 * statistics.median(times)

    single, multi = timed([0.01]), timed(rates)
    return {"weights": q.numel, "ms_per_pattern_one_rate": single,
            "ms_mask_only_one_rate": mask_only([0.01]),
            "ms_per_pattern_all_rates": multi, "ms_per_pattern_rate_all_rates": multi / len(rates),
            "rates": len(rates)}


def eval_overhead(res: dict[str, Any]) -> dict[str, float]:
    """(b): total evaluation time ÷ (K × R × one clean forward pass over the test set), as the
    `biterrors` evaluation timed it (`timing` of its result)."""
    t = res["timing"]
    return {"total_s": t["total_s"], "clean_forward_s": t["clean_forward_s"],
            "evaluations": res["patterns"] * len(res["rates"]), "ratio": t["overhead_ratio"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_preset_options(ap, "bit-errors")
    add_run_overrides(ap)
    ap.set_defaults(out="benchmarks/results/biterrors.json")
    ap.add_argument("--norm", default=None, help="normalization layer: none, bn or gn")
    ap.add_argument("--pattern-seed", type=int, default=None, help="PattBET's training pattern")
    ap.add_argument("--label-smoothing", type=float, default=None, help="of clip_ls")
    ap.add_argument("--rates", type=list_of(rate), default=None,
                    help="bit error rates, fractions or percentages")
    ap.add_argument("--patterns", type=int, default=None, help="random patterns per rate")
    ap.add_argument("--n-test", type=int, default=None, help="test images (first N of the "
                    "preset's test subset)")
    ap.add_argument("--batch-size-eval", type=int, default=None, help="images per forward pass")
    a = ap.parse_args()
    preset = bench_preset("bit-errors", a)
    if a.norm:
        preset["model"]["norm"] = a.norm
    override_runs(preset, a, pattern_seed=a.pattern_seed, label_smoothing=a.label_smoothing)
    for r in preset["runs"].values():  # a run's own pattern is the one it was trained on
        if "own-pattern" in (r.get("evaluate") or {}) and "pattern_seed" in (r.get("options") or {}):
            r["evaluate"]["own-pattern"]["seed"] = r["options"]["pattern_seed"]
    ws = bench_workspace(preset, a)
    device = resolve_device(a.device)
    train = ws.data()[0]
    print(f"data {train.name}: {len(train)} train, {len(ws.test_subset())} test; device {device}; "
          f"runs in {ws.out}")
    progress = False if a.quiet else None

    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    speed_b = None
    names = list(preset["runs"])
    for name in names:
        run, t_train = bench_run(ws, name)
        spec = preset_eval(ws, name, "biterrors", rates=a.rates, patterns=a.patterns,
                           n_test=a.n_test, batch_size=a.batch_size_eval)
        res, t_eval = timed_eval(spec, run, progress=progress)
        label = ws.run_label(name)
        row: dict[str, Any] = {"label": label, "run": str(run.path), "scheme": str(run.quant),
                               "train_time_s": t_train, "eval_time_s": t_eval,
                               "clean_err": res["clean_err"], "n_test": res["n_test"],
                               "patterns": res["patterns"], "rates": res["rates"],
                               "err": res["err"], "rerr": res["rerr"], "settings": res["settings"]}
        if "own-pattern" in eval_settings(ws, name):  # PattBET: its training pattern (K = 1)
            own_spec = preset_eval(ws, name, "own-pattern", rates=res["rates"], n_test=a.n_test,
                                   batch_size=a.batch_size_eval)
            row["own_pattern_rerr"] = timed_eval(own_spec, run, progress=False)[0]["rerr"]["mean"]
        if name == "rquant" or (speed_b is None and name == names[-1]):
            speed_b = eval_overhead(res)
        results[name] = row
        print(f"{label}: clean Err {100 * res['clean_err']:.2f}% "
              f"(train {t_train:.0f}s, eval {t_eval:.0f}s)")

    first = next(iter(results.values()))
    rates, patterns = first["rates"], first["patterns"]
    head = " ".join(f"{100 * r:>6g}" for r in rates)
    print(f"\nRErr (%) under random bit errors, mean over {patterns} patterns on "
          f"{first['n_test']} test images; p in %")
    print(f"{'model':<42} {'Err':>6} {head}")
    for row in results.values():
        vals = " ".join(f"{100 * v:6.2f}" for v in row["rerr"]["mean"])
        print(f"{row['label']:<42} {100 * row['clean_err']:6.2f} {vals}")
        if "own_pattern_rerr" in row:
            own = " ".join(f"{100 * v:6.2f}" for v in row["own_pattern_rerr"])
            print(f"{'  ... on its own training pattern':<42} {'':>6} {own}")
    print(f"\nPerturbed Err (%) (wrong with bit errors), mean over {patterns} patterns")
    for row in results.values():
        vals = " ".join(f"{100 * v:6.2f}" for v in row["err"]["mean"])
        print(f"{row['label']:<42} {100 * row['clean_err']:6.2f} {vals}")

    speed_a = injection_speed(device, rates, repeats=2 if a.smoke else 5)
    print(f"\nspeed on {device}:")
    print(f"  (a) mask + inject + dequantize, 1M 8-bit weights: "
          f"{speed_a['ms_per_pattern_one_rate']:.2f} ms per pattern (one rate; mask alone "
          f"{speed_a['ms_mask_only_one_rate']:.2f} ms), "
          f"{speed_a['ms_per_pattern_all_rates']:.2f} ms per pattern for all {len(rates)} rates")
    if speed_b is not None:
        print(f"  (b) total eval {speed_b['total_s']:.2f}s ÷ ({speed_b['evaluations']} × clean "
              f"forward {1000 * speed_b['clean_forward_s']:.2f} ms) = {speed_b['ratio']:.3f} "
              "(target ≤ 1.2)")
    atomic_write_json(a.out, {"benchmark": "biterrors", "config": {**vars(a), "rates": rates},
                              "preset": preset, "data": train.name, "n_train": len(train),
                              "n_test": first["n_test"], "device": str(device), "rows": results,
                              "speed": {"injection": speed_a, "eval_overhead": speed_b},
                              "total_time_s": round(time.perf_counter() - t0, 1),
                              "versions": versions()})
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
