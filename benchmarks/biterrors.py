"""Random bit errors (spec §5–§7, §9.1): robust quantization, clipping, RandBET, PattBET — and speed.

Trains 8-bit quantization-aware models on Fashion-MNIST (scikit-learn digits at 28×28 when the
files are missing) and evaluates Err and RErr under K random bit error patterns per rate:

    normal        8-bit, global range [-1, 1], symmetric signed, truncation ("Normal")
    rquant        RQuant (per tensor, asymmetric, unsigned, rounded)
    clip          RQuant + weight clipping (w_max = --clip)
    randbet       RQuant + clipping + RandBET (p = --randbet-p)
    clip_ls       RQuant + clipping + label smoothing (--label-smoothing)
    pattbet       RQuant + clipping + PattBET (p = --randbet-p, pattern seed --pattern-seed),
                  evaluated on its own training pattern and on random patterns

Speed: (a) milliseconds per pattern per 1M 8-bit weights to generate a mask, inject it (XOR) and
dequantize; (b) total evaluation time ÷ (K × R × one clean test-set forward pass), target ≤ 1.2.
Writes benchmarks/results/biterrors.json.

    python benchmarks/biterrors.py --device cuda                       # the real benchmark (GPU)
    python benchmarks/biterrors.py --smoke --device cpu                # tiny check, seconds

Defaults: convnet (BN, width 32), 10 epochs, batch 128, SGD lr 0.05 cosine, weight decay 5e-4,
clip 0.1, RandBET p = 5%, label smoothing 0.1, K = 50 patterns (seeds 100..149), rates
0.1, 0.5, 1, 2, 3, 4, 5, 10, 15, 20% on all 10,000 test images.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from common import bench_data, choose

from robustlab import biterrors as be
from robustlab import data, models
from robustlab.device import resolve_device
from robustlab.evaluate.biterrors import RATES_28, Evaluator, bit_errors
from robustlab.io import atomic_write_json, versions
from robustlab.quant import NORMAL8, RQUANT8, Scheme
from robustlab.train import fit
from robustlab.train.methods import create

ROWS = {  # name: (label, scheme, clip?, method, label smoothing?)
    "normal": ("Normal (8-bit global symmetric [-1,1])", NORMAL8, False, "normal", False),
    "rquant": ("RQuant", RQUANT8, False, "normal", False),
    "clip": ("RQuant+Clipping", RQUANT8, True, "normal", False),
    "randbet": ("RQuant+Clipping+RandBET", RQUANT8, True, "randbet", False),
    "clip_ls": ("RQuant+Clipping+label smoothing", RQUANT8, True, "normal", True),
    "pattbet": ("RQuant+Clipping+PattBET", RQUANT8, True, "pattbet", False),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_model(name: str, train: data.Dataset, a: argparse.Namespace,
                device: torch.device) -> torch.nn.Module:
    _, scheme, clip, method_name, ls = ROWS[name]
    model = models.create(a.model, dataset=train, seed=a.seed,
                          **({"norm": a.norm} if a.model != "mlp" else {}))
    opts: dict[str, Any] = {}
    if method_name in ("randbet", "pattbet"):
        opts["bit_error_rate"] = a.randbet_p
    if method_name == "pattbet":
        opts["pattern_seed"] = a.pattern_seed
    fit(model, train, method=create(method_name, **opts), quant=scheme, epochs=a.epochs, lr=a.lr,
        batch_size=a.batch_size, seed=a.seed, device=device, clip=a.clip if clip else None,
        label_smoothing=a.label_smoothing if ls else 0.0, progress=False if a.quiet else None)
    return model.eval()


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


def eval_overhead(model: torch.nn.Module, test: data.Dataset, a: argparse.Namespace,
                  device: torch.device, scheme: Scheme, res: dict[str, Any],
                  seconds: float) -> dict[str, float]:
    """(b): total evaluation time ÷ (K × R × one clean forward pass over the test set)."""
    ev = Evaluator(model, test, a.batch_size_eval, device)
    params = scheme.quantize({k: v.detach() for k, v in model.named_parameters()}).dequantize()
    ev.wrong(params)
    times = [ev.timed_wrong(params)[1] for _ in range(5)]
    fwd = statistics.median(times)
    K, R = res["patterns"], len(res["rates"])
    return {"total_s": seconds, "clean_forward_s": fwd, "evaluations": K * R,
            "ratio": seconds / (K * R * fwd)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"subset of {', '.join(ROWS)}")
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--norm", default="bn", help="none, bn or gn (not for mlp)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--subset", type=int, default=0, help="training images (0 = all)")
    ap.add_argument("--n-test", type=int, default=0, help="test images (0 = all)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--batch-size-eval", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--clip", type=float, default=0.1)
    ap.add_argument("--randbet-p", type=float, default=0.05)
    ap.add_argument("--pattern-seed", type=int, default=0, help="PattBET's training pattern")
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--patterns", type=int, default=50)
    ap.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES_28), help="fractions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic problem, 1 epoch")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/biterrors.json")
    a = ap.parse_args()
    rates = [float(r) for r in a.rates.split(",")]
    if a.smoke:
        a.epochs, a.patterns, a.model = 1, 3, "mlp"
    names = choose(a.rows, ROWS, "row")
    device = resolve_device(a.device)
    train, test = bench_data(a.smoke, a.subset, a.n_test)
    print(f"data {train.name}: {len(train)} train, {len(test)} test; device {device}; "
          f"{a.patterns} patterns × {len(rates)} rates")

    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    speed_b = None
    for name in names:
        label, scheme, *_ = ROWS[name]
        t = time.perf_counter()
        model = train_model(name, train, a, device)
        t_train = time.perf_counter() - t
        t = time.perf_counter()
        res = bit_errors(model, test, quant=scheme, rates=rates, patterns=a.patterns,
                         seed=100, batch_size=a.batch_size_eval, device=device,
                         progress=False if a.quiet else None)
        t_eval = time.perf_counter() - t
        row: dict[str, Any] = {"label": label, "scheme": str(scheme), "train_time_s": round(t_train, 1),
                               "eval_time_s": round(t_eval, 1), "clean_err": res["clean_err"],
                               "rates": rates, "err": res["err"], "rerr": res["rerr"]}
        if name == "pattbet":  # its own training pattern (K = 1) vs the random patterns above
            own = bit_errors(model, test, quant=scheme, rates=rates, patterns=1,
                             seed=a.pattern_seed, batch_size=a.batch_size_eval, device=device,
                             progress=False)
            row["own_pattern_rerr"] = own["rerr"]["mean"]
        if name == "rquant" or (speed_b is None and name == names[-1]):
            speed_b = eval_overhead(model, test, a, device, scheme, res, t_eval)
        results[name] = row
        print(f"{label}: clean Err {100 * res['clean_err']:.2f}% "
              f"(train {t_train:.0f}s, eval {t_eval:.0f}s)")

    head = " ".join(f"{100 * r:>6g}" for r in rates)
    print(f"\nRErr (%) under random bit errors, mean over {a.patterns} patterns; p in %")
    print(f"{'model':<42} {'Err':>6} {head}")
    for row in results.values():
        vals = " ".join(f"{100 * v:6.2f}" for v in row["rerr"]["mean"])
        print(f"{row['label']:<42} {100 * row['clean_err']:6.2f} {vals}")
        if "own_pattern_rerr" in row:
            own = " ".join(f"{100 * v:6.2f}" for v in row["own_pattern_rerr"])
            print(f"{'  ... on its own training pattern':<42} {'':>6} {own}")
    print(f"\nPerturbed Err (%) (wrong with bit errors), mean over {a.patterns} patterns")
    for row in results.values():
        vals = " ".join(f"{100 * v:6.2f}" for v in row["err"]["mean"])
        print(f"{row['label']:<42} {100 * row['clean_err']:6.2f} {vals}")

    speed_a = injection_speed(device, rates)
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
                              "data": train.name, "n_train": len(train), "n_test": len(test),
                              "device": str(device), "rows": results,
                              "speed": {"injection": speed_a, "eval_overhead": speed_b},
                              "total_time_s": round(time.perf_counter() - t0, 1),
                              "versions": versions()})
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
