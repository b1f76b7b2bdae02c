"""`robustlab energy RUN --curve FILE`: lowest safe supply voltage and the energy it saves."""

from __future__ import annotations

import argparse

from robustlab.cli import nonneg_float
from robustlab.commands.biterrors import add_eval_options, open_test_run, resolve_scheme


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "energy", help="lowest safe memory voltage of a run's quantized model and energy saved",
        description="For every point of a voltage → (bit error rate, energy) curve, evaluate the "
        "run's quantized model under K random bit error patterns at that rate; report the lowest "
        "voltage at which (and above which) the mean RErr stays within --tolerance percentage "
        "points of the clean error, and the energy per access saved there. Writes "
        "RUN/results/energy.json and RUN/results/energy.png.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--curve", required=True, metavar="CSV",
                   help="voltage,bit_error_rate,energy curve (format in robustlab/examples/README.md; "
                   "a synthetic example ships as robustlab/examples/synthetic_energy_curve.csv)")
    p.add_argument("--tolerance", type=nonneg_float, default=1.0, metavar="PP",
                   help="allowed RErr above the clean error, in percentage points (default 1.0)")
    add_eval_options(p, default_patterns=50)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab import biterrors as be
    from robustlab.checkpoint import read_meta
    from robustlab.evaluate.biterrors import energy
    from robustlab.io import write_result
    from robustlab.report.biterrors_plot import plot_energy
    from robustlab.runs import quant_from_meta

    curve = be.load_curve(args.curve)  # validate before any work
    scheme = resolve_scheme(args.scheme, quant_from_meta(read_meta(args.run)))
    r = open_test_run(args.run, args)
    res = energy(r.model, r.test, curve, tolerance=args.tolerance / 100, scheme=scheme,
                 patterns=args.patterns, seed0=args.seed0, batch_size=args.batch_size,
                 device=r.device, progress=False if args.quiet else None)
    res = {"run": str(r.path), "curve_file": str(args.curve), "tolerance_pp": args.tolerance, **res}
    out = write_result(r.path, "energy", res)
    plot_energy(res, r.path / "results" / "energy.png")
    print(f"clean Err {100 * res['clean_err']:.2f}%, tolerance {args.tolerance:g} points, "
          f"{res['patterns']} patterns")
    print(f"  {'voltage':>8}  {'p (%)':>9}  {'energy':>6}  {'RErr (%)':>8}  {'max':>6}  safe")
    for row in res["voltages"]:
        print(f"  {row['voltage']:8.3g}  {100 * row['bit_error_rate']:9.3g}  "
              f"{row['relative_energy']:6.3f}  {100 * row['rerr_mean']:8.2f}  "
              f"{100 * row['rerr_max']:6.2f}  {'yes' if row['safe'] else 'no'}")
    if res["lowest_safe_voltage"] is None:
        print("no safe voltage: RErr exceeds the tolerance already at the nominal voltage")
    else:
        print(f"lowest safe voltage {res['lowest_safe_voltage']:g} (bit error rate "
              f"{100 * res['bit_error_rate']:.3g}%): energy saved {100 * res['energy_saved']:.1f}%")
    print(f"written to {out}")
    return 0
