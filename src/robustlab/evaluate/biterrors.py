"""Robustness of a quantized model to random bit errors, profiled chips and voltage scaling (spec §6).

`bit_errors` quantizes the model once, predicts the clean test set once, then for each pattern
seed builds the XOR masks of all rates at once (nested patterns) and makes one pass over the test
set per rate at the perturbed, dequantized weights (`torch.func.functional_call`; the model's own
parameters are never modified). Per pattern and rate:

- Err  = fraction of test examples wrong with the perturbed weights;
- RErr = fraction wrong clean (quantized, no errors) OR wrong perturbed, so RErr ≥ clean Err.

Statistics over the K patterns: mean, std (sample, ddof=1; 0 when K = 1), min and max.

Under `torchrun` the patterns are split across ranks (`robustlab.distributed`) and the per-pattern
error counts are summed back exactly, so every rank returns the single-process result.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from robustlab import biterrors as be
from robustlab import distributed, sources
from robustlab.data import Dataset
from robustlab.device import resolve_device
from robustlab.errors import UNSET, UserError, renamed
from robustlab.models import Batches, Predictor, quant_of
from robustlab.quant import RQUANT8, Quantized, Scheme, model_params, popcount

# Default evaluation rates (fractions), spec §6.
RATES_28 = [0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.10, 0.15, 0.20]
RATES_32 = [0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.015, 0.02, 0.025]


def default_rates(shape: Sequence[int]) -> list[float]:
    """Default rates for an image shape C×H×W: the 32×32 set for 32×32 images, else the 28×28 set."""
    return list(RATES_32 if tuple(shape[-2:]) == (32, 32) else RATES_28)


def _check(patterns: int, batch_size: int, rates: Sequence[float]) -> list[float]:
    if isinstance(patterns, bool) or int(patterns) != patterns or patterns < 1:
        raise UserError(f"number of patterns {patterns!r} must be an integer ≥ 1")
    if int(batch_size) < 1:
        raise UserError(f"batch size {batch_size} must be ≥ 1")
    rates = [be.check_rate(r) for r in rates]
    if not rates:
        raise UserError("no bit error rates given")
    return rates


def stats(values: torch.Tensor) -> dict[str, list[float]]:
    """Per-column mean, std (ddof=1, 0 for one row), min, max of a K×R tensor, as lists."""
    v = values.double().cpu()
    if v.shape[0] == 0:
        raise ValueError("no rows")
    std = v.std(0, correction=1) if v.shape[0] > 1 else torch.zeros(v.shape[1], dtype=torch.float64)
    return {"mean": v.mean(0).tolist(), "std": std.tolist(), "min": v.min(0).values.tolist(),
            "max": v.max(0).values.tolist()}


class Evaluator:
    """A model and a test set kept on the device (an in-memory `Dataset`) or read again on every
    pass (a `sources.Stream`): which examples are wrong at given parameters, through the one
    predictor core (`rl.models.Predictor.sweep` over `rl.models.Batches`). Inputs are checked
    against `bounds` once."""

    def __init__(self, model: nn.Module, test: Dataset | sources.Stream, batch_size: int,
                 device: torch.device, bounds: Sequence[float] | None = None):
        self.model, self.device = model, device
        self.batches = Batches(test, batch_size, device, bounds)
        self.n = len(test)

    def wrong(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bool vector: test examples misclassified at `params` (taken as given)."""
        return Predictor(self.model, params, quant=False).sweep(self.batches).wrong

    def timed_wrong(self, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
        """`wrong(params)` and its wall-clock seconds (the device synchronized around it)."""
        self.sync()
        t0 = time.perf_counter()
        w = self.wrong(params)
        self.sync()
        return w, time.perf_counter() - t0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _setup(model: nn.Module, device: str | torch.device | None, scheme: Scheme | None
           ) -> tuple[torch.device, Scheme, Any]:
    """(device, scheme, restore): the model is moved to the device and put in eval mode; `restore()`
    gives every submodule back its previous train/eval flag."""
    dev = sources.model_device(model) if device is None else resolve_device(device)
    model.to(dev)
    return dev, scheme or quant_of(model) or RQUANT8, sources.eval_mode(model)


def bit_errors(model: nn.Module, test: Any, *, quant: Scheme | None = None,
               rates: Sequence[float] | None = None, patterns: int = 50, seed: int = 100,
               batch_size: int = 1000, device: str | torch.device | None = None,
               progress: bool | None = None, quantized: Quantized | None = None,
               bounds: Sequence[float] | None = (0.0, 1.0),
               scheme: Any = UNSET, seed0: Any = UNSET) -> dict[str, Any]:
    """Err and RErr of `model` on `test` under K random bit error patterns at each rate.

    Pattern k uses seed `seed + k`. `quant` (the scheme) defaults to the model's own (attached by a
    quantization-aware `rl.train.fit`, as a run records it), else RQuant 8-bit; pass `quantized` to
    evaluate given codes instead of quantizing the model's parameters. The model is moved to
    `device` (default: where its parameters are) and evaluated in eval mode; the caller's mode is
    restored afterwards. `test` is a robustlab `Dataset` or `(x, y)` tensors (kept on the device)
    or a torch `Dataset`/`DataLoader` (read again on every pass, K·R + 5 passes: memory does not
    grow with the test set). Inputs outside `bounds` are refused (`bounds=None`: no check).

    Example:
        >>> import torch, robustlab as rl
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(30, 1, 4, 4), torch.arange(30) % 3
        >>> r = rl.evaluate.bit_errors(model, (x, y), rates=[0.01, 0.1], patterns=3)
        >>> len(r["rerr"]["mean"])
        2
    """
    scheme = renamed("bit_errors", "scheme", scheme, "quant", quant)
    seed0 = renamed("bit_errors", "seed0", seed0, "seed", seed)
    test = sources.as_data(test)
    rates = _check(patterns, batch_size, default_rates(test.shape) if rates is None else rates)
    be.check_seed(seed0)
    be.check_seed(seed0 + patterns - 1)
    dev, scheme, was_training = _setup(model, device, scheme)
    try:
        t_start = time.perf_counter()
        ev = Evaluator(model, test, batch_size, dev, bounds)
        with torch.no_grad():
            float_wrong = ev.wrong(model_params(model))
            q = (quantized.to(dev) if quantized is not None
                 else scheme.quantize({k: v.detach() for k, v in model_params(model).items()}))
        clean_params = q.dequantize()
        clean_wrong, t_cold = ev.timed_wrong(clean_params)
        # the ratio's unit: a warm clean forward (median of three; the first pass is cold)
        t_clean = statistics.median(ev.timed_wrong(clean_params)[1] for _ in range(3))
        K, R = int(patterns), len(rates)
        err = torch.zeros(K, R, dtype=torch.int64, device=dev)  # numbers of wrong examples
        rerr = torch.zeros(K, R, dtype=torch.int64, device=dev)
        mine = distributed.shard(range(K))  # this rank's patterns (all in a single process)
        bar = tqdm(total=len(mine) * R, desc="bit errors", unit="eval", leave=False,
                   disable=not distributed.is_main() or (None if progress is None else not progress))
        for k in mine:
            m = be.masks(q, seed0 + k, rates)  # all rates of pattern k at once (nested)
            for r in range(R):
                wrong = ev.wrong(q.dequantize(torch.bitwise_xor(q.codes, m[r])))
                err[k, r] = wrong.sum()
                rerr[k, r] = (wrong | clean_wrong).sum()
                bar.update()
        bar.close()
        distributed.all_reduce_sum(err)  # rows of other ranks' patterns are 0 here
        distributed.all_reduce_sum(rerr)
        ev.sync()
        total = time.perf_counter() - t_start
    finally:
        was_training()  # restores every submodule's mode
    return {
        "scheme": q.scheme.to_dict(), "rates": rates, "patterns": K, "seeds": [seed0, seed0 + K - 1],
        "n_test": ev.n, "float_err": float(float_wrong.double().mean()),
        "clean_err": float(clean_wrong.double().mean()),
        "err": _summary(err, ev.n), "rerr": _summary(rerr, ev.n),
        "timing": {"total_s": total, "clean_forward_s": t_clean, "clean_forward_cold_s": t_cold,
                   "weights": q.numel,
                   "overhead_ratio": total / max(K * R * t_clean, 1e-12)},
    }


def chip_errors(model: nn.Module, test: Any, chip: be.ChipMap, *, quant: Scheme | None = None,
                offsets: Sequence[int] = (0,), patterns: int = 10, seed: int = 100,
                batch_size: int = 1000, device: str | torch.device | None = None,
                progress: bool | None = None,
                bounds: Sequence[float] | None = (0.0, 1.0),
                scheme: Any = UNSET, seed0: Any = UNSET) -> dict[str, Any]:
    """Err and RErr of `model` stored on a profiled chip: per weight-layout offset, K samples.

    Sample k of offset o reads the codes back through `chip.apply(q, seed + k, o)`. `test`,
    `device` and `bounds` as for `bit_errors`.
    """
    scheme = renamed("chip_errors", "scheme", scheme, "quant", quant)
    seed0 = renamed("chip_errors", "seed0", seed0, "seed", seed)
    test = sources.as_data(test)
    _check(patterns, batch_size, [0.0])
    offsets = [int(o) for o in offsets]
    if not offsets or min(offsets) < 0:
        raise UserError(f"chip offsets {offsets} must be a non-empty list of integers ≥ 0")
    be.check_seed(seed0 + patterns - 1)
    dev, scheme, was_training = _setup(model, device, scheme)
    try:
        ev = Evaluator(model, test, batch_size, dev, bounds)
        with torch.no_grad():
            q = scheme.quantize({k: v.detach() for k, v in model_params(model).items()})
        clean_wrong = ev.wrong(q.dequantize())
        K, O = int(patterns), len(offsets)
        err = torch.zeros(K, O, dtype=torch.int64, device=dev)
        rerr = torch.zeros(K, O, dtype=torch.int64, device=dev)
        flipped = torch.zeros(K, O, device=dev)
        mine = distributed.shard(range(K))  # this rank's samples (all in a single process)
        bar = tqdm(total=len(mine) * O, desc="chip", unit="eval", leave=False,
                   disable=not distributed.is_main() or (None if progress is None else not progress))
        for k in mine:
            for o, off in enumerate(offsets):
                codes = chip.apply(q, seed0 + k, off)
                diff = torch.bitwise_xor(codes, q.codes)
                flipped[k, o] = popcount(diff).sum().float() / (q.numel * q.scheme.bits)
                wrong = ev.wrong(q.dequantize(codes))
                err[k, o] = wrong.sum()
                rerr[k, o] = (wrong | clean_wrong).sum()
                bar.update()
        bar.close()
        for t in (err, rerr, flipped):
            distributed.all_reduce_sum(t)  # rows of other ranks' samples are 0 here
    finally:
        was_training()  # restores every submodule's mode
    return {"chip": chip.summary(), "scheme": q.scheme.to_dict(), "offsets": offsets,
            "patterns": K, "seeds": [seed0, seed0 + K - 1], "n_test": ev.n,
            "clean_err": float(clean_wrong.double().mean()),
            "bit_error_rate": stats(flipped),
            "err": _summary(err, ev.n), "rerr": _summary(rerr, ev.n),
            "overall": {"err_mean": float(err.double().mean()) / ev.n,
                        "rerr_mean": float(rerr.double().mean()) / ev.n,
                        "rerr_max": float(rerr.max()) / ev.n}}


def _summary(counts: torch.Tensor, n: int) -> dict[str, Any]:
    """Statistics of K×R error fractions given as counts of wrong examples out of n."""
    frac = counts.cpu().double() / n
    return {**stats(frac), "values": frac.tolist()}


def energy(model: nn.Module, test: Any, curve: be.EnergyCurve, *, tolerance: float = 0.01,
           quant: Scheme | None = None, patterns: int = 50, seed: int = 100,
           batch_size: int = 1000, device: str | torch.device | None = None,
           progress: bool | None = None,
           bounds: Sequence[float] | None = (0.0, 1.0),
           scheme: Any = UNSET, seed0: Any = UNSET) -> dict[str, Any]:
    """Lowest safe supply voltage and energy saved: RErr (mean over patterns) at each voltage's bit
    error rate must stay within `tolerance` (a fraction, 0.01 = 1 point) of the clean error.
    `test`, `device` and `bounds` as for `bit_errors`."""
    scheme = renamed("energy", "scheme", scheme, "quant", quant)
    seed0 = renamed("energy", "seed0", seed0, "seed", seed)
    test = sources.as_data(test)
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise UserError(f"tolerance {tolerance} must be a number ≥ 0")
    res = bit_errors(model, test, quant=scheme, rates=curve.bit_error_rate, patterns=patterns,
                     seed=seed0, batch_size=batch_size, device=device, progress=progress,
                     bounds=bounds)
    verdict = be.safe_voltage(curve, res["rerr"]["mean"], res["clean_err"], tolerance)
    rows = [{"voltage": v, "bit_error_rate": p, "relative_energy": curve.relative_energy(i),
             "rerr_mean": res["rerr"]["mean"][i], "rerr_max": res["rerr"]["max"][i],
             "err_mean": res["err"]["mean"][i], "safe": verdict["safe"][i]}
            for i, (v, p) in enumerate(zip(curve.voltage, curve.bit_error_rate))]
    return {"tolerance": tolerance, "clean_err": res["clean_err"], "patterns": res["patterns"],
            "seeds": res["seeds"], "scheme": res["scheme"], "n_test": res["n_test"],
            "curve": {"description": curve.description, "nominal_voltage": curve.voltage[0]},
            "voltages": rows, "lowest_safe_voltage": verdict["voltage"],
            "bit_error_rate": verdict["bit_error_rate"],
            "relative_energy": verdict["relative_energy"], "energy_saved": verdict["energy_saved"]}

