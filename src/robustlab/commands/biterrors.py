"""`robustlab biterrors RUN [RUN ...]`: Err and RErr under random bit errors (and profiled chips).

Under `torchrun` the patterns are split across ranks; rank 0 writes the results.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robustlab.cli import add_device, list_of, nonneg_int, positive_int

SCHEME_HELP = ("quantization scheme: a preset rquant<bits> (per tensor, asymmetric, unsigned, "
               "rounded; the default) or normal<bits> (global ±1, symmetric signed, truncated), "
               "optionally followed by key=value overrides, e.g. 'rquant4', "
               "'rquant8,rounding=trunc', 'bits=8,per_tensor=false,mode=symmetric_unsigned,q_max=0.5' "
               "(modes: asymmetric, symmetric_signed, symmetric_unsigned; rounding: round, trunc; "
               "bits 2..8). Default: the run's own scheme, else rquant8")


def rate(text: str) -> float:
    """A bit error rate: a fraction in [0, 1] or a percentage such as '0.5%'."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; a bit error rate must be a "
                                         "fraction in [0, 1] or a percentage like 0.5%") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"bit error rate {text} is out of range; it must be in "
                                         "[0, 1] (or 0%..100%)")
    return value


rate.__name__ = "bit error rate"


def add_eval_options(p: argparse.ArgumentParser, default_patterns: int) -> None:
    """Options shared by `biterrors` and `energy`."""
    p.add_argument("--patterns", type=positive_int, default=default_patterns, metavar="K",
                   help="number of random patterns (seeds SEED0..SEED0+K-1; default %(default)s)")
    p.add_argument("--seed0", type=nonneg_int, default=100, help="first pattern seed (default 100)")
    p.add_argument("--scheme", default=None, help=SCHEME_HELP)
    p.add_argument("--n-test", type=positive_int, default=None, metavar="N",
                   help="evaluate on the first N test images only")
    p.add_argument("--batch-size", type=positive_int, default=1000)
    p.add_argument("--data-dir", default=None, help="where the run's dataset files are")
    p.add_argument("--best", action="store_true", help="evaluate the best snapshot, not the last")
    add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "biterrors", help="robust error under random bit errors in the quantized weights",
        description="Quantize each run's model, inject K seeded random bit error patterns at each "
        "rate (nested across rates, identical for every model of the same shapes) and report the "
        "test error Err and RErr (wrong clean or wrong with bit errors): mean, std, min, max over "
        "patterns. Writes RUN/results/biterrors.json and RUN/results/biterrors.png; with --chip, "
        "also evaluates the model stored on a profiled chip (RUN/results/biterrors_chip.json).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--rates", type=list_of(rate), default=None, metavar="P,P,...",
                   help="bit error rates as fractions or percentages (e.g. 0.001,0.01 or 0.1%%,1%%); "
                   "default: 0.1,0.5,1,2,3,4,5,10,15,20%% for 28×28 data, 0.005…2.5%% for 32×32")
    add_eval_options(p, default_patterns=50)
    p.add_argument("--chip", default=None, metavar="FILE",
                   help="chip map (.json or .npz; format in robustlab/examples/README.md)")
    p.add_argument("--offsets", type=list_of(nonneg_int), default=[0], metavar="N,N,...",
                   help="cell offsets of the weight layout on the chip (default 0)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also draw all runs on one figure at this path")
    p.add_argument("--export", default=None, metavar="NPZ",
                   help="write the quantized codes and ranges of the (single) run to this .npz")
    p.set_defaults(func=run)


def resolve_scheme(text: str | None, run_quant: Any) -> Any:
    from robustlab import quant

    if text:
        return quant.parse(text)
    return run_quant if run_quant is not None else quant.RQUANT8


def open_test_run(path: str, args: argparse.Namespace) -> Any:
    """Open a run and cut its test set to --n-test."""
    from robustlab.runs import open_run

    r = open_run(path, device=args.device, data_dir=args.data_dir, best=args.best)
    if args.n_test is not None and args.n_test < len(r.test):
        r.test = r.test.subset(slice(0, args.n_test))
    return r


def run(args: argparse.Namespace) -> int:
    from robustlab import biterrors as be
    from robustlab import distributed
    from robustlab.checkpoint import read_meta
    from robustlab.errors import UserError
    from robustlab.evaluate.biterrors import bit_errors, chip_errors
    from robustlab.io import write_result
    from robustlab.report.biterrors_plot import plot_rerr_vs_rate
    from robustlab.runs import quant_from_meta

    args.device = distributed.init(args.device)  # joins the process group under torchrun
    main = distributed.is_main()
    if args.export and len(args.runs) != 1:
        raise UserError("--export writes one model's codes; give exactly one RUN")
    chip = be.load_chip_map(args.chip) if args.chip else None  # validate before any work
    schemes = {}
    for path in args.runs:
        schemes[path] = resolve_scheme(args.scheme, quant_from_meta(read_meta(path)))
    progress = False if args.quiet else None
    results = []
    for path in args.runs:
        r = open_test_run(path, args)
        scheme = schemes[path]
        if args.export and main:
            from robustlab.quant import quantize_model

            out = quantize_model(r.model, scheme).export_npz(args.export)
            print(f"quantized codes ({scheme}) written to {out}")
        res = bit_errors(r.model, r.test, scheme=scheme, rates=args.rates, patterns=args.patterns,
                         seed0=args.seed0, batch_size=args.batch_size, device=r.device,
                         progress=progress)
        res = {"run": str(r.path), "label": Path(path).name, "snapshot": "best" if args.best else "last",
               "data": r.meta.get("data"), **res}
        results.append(res)
        if main:
            out = write_result(r.path, "biterrors", res)
            plot_rerr_vs_rate(res, r.path / "results" / "biterrors.png")
            print_table(res)
            print(f"written to {out}")
        if chip is not None:
            cres = chip_errors(r.model, r.test, chip, scheme=scheme, offsets=args.offsets,
                               patterns=args.patterns, seed0=args.seed0, batch_size=args.batch_size,
                               device=r.device, progress=progress)
            cres = {"run": str(r.path), "chip_file": str(args.chip), **cres}
            if not main:
                continue
            out = write_result(r.path, "biterrors_chip", cres)
            o = cres["overall"]
            print(f"chip {chip.name}: clean Err {100 * cres['clean_err']:.2f}%, mean RErr "
                  f"{100 * o['rerr_mean']:.2f}% (max {100 * o['rerr_max']:.2f}%) over "
                  f"{len(cres['offsets'])} offset(s) × {cres['patterns']} samples; written to {out}")
    if args.plot and main:
        print(f"figure written to {plot_rerr_vs_rate(results, args.plot)}")
    return 0


def print_table(res: dict[str, Any]) -> None:
    print(f"{res['label']}: {res['scheme']['bits']}-bit, clean Err {100 * res['clean_err']:.2f}% "
          f"(float {100 * res['float_err']:.2f}%), {res['patterns']} patterns, {res['n_test']} images")
    print(f"  {'p (%)':>8}  {'Err (%)':>8}  {'RErr (%)':>8}  {'± std':>6}  {'min':>6}  {'max':>6}")
    rr, er = res["rerr"], res["err"]
    for i, p in enumerate(res["rates"]):
        print(f"  {100 * p:8.3g}  {100 * er['mean'][i]:8.2f}  {100 * rr['mean'][i]:8.2f}  "
              f"{100 * rr['std'][i]:6.2f}  {100 * rr['min'][i]:6.2f}  {100 * rr['max'][i]:6.2f}")
