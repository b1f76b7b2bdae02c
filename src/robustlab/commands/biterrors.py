"""`robustlab biterrors RUN [RUN ...]`: Err and RErr under random bit errors (and profiled chips).

Options come from the specs `tasks.biterrors.BitErrors` and `tasks.chip.Chip`. Under `torchrun`
the patterns are split across ranks; rank 0 writes the results.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robustlab.commands.options import add_run_options
from robustlab.tasks.biterrors import BitErrors, resolve_quant
from robustlab.tasks.chip import Chip
from robustlab.tasks.spec import add_options

SHARED = ("patterns", "seed", "quant", "n_test", "batch_size")  # one option for both specs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "biterrors", help="robust error under random bit errors in the quantized weights",
        description="Quantize each run's model, inject K seeded random bit error patterns at each "
        "rate (nested across rates, identical for every model of the same shapes) and report the "
        "test error Err and RErr (wrong clean or wrong with bit errors): mean, std, min, max over "
        "patterns. Writes RUN/results/biterrors.json and RUN/results/biterrors.png; with --chip, "
        "also evaluates the model stored on a profiled chip (RUN/results/biterrors_chip.json).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    add_options(p, BitErrors)
    add_options(p, Chip, skip=SHARED)
    add_run_options(p)
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also draw all runs on one figure at this path")
    p.add_argument("--export", default=None, metavar="NPZ",
                   help="write the quantized codes and ranges of the (single) run to this .npz")
    p.set_defaults(func=run)


def open_test_run(path: str, args: argparse.Namespace) -> Any:
    """Open a run for evaluation with the command's runtime options."""
    from robustlab.runs import open_run

    return open_run(path, device=args.device, data_dir=args.data_dir, best=args.best)


def run(args: argparse.Namespace) -> int:
    from robustlab import distributed, tasks
    from robustlab.checkpoint import read_meta
    from robustlab.errors import UserError
    from robustlab.io import write_result
    from robustlab.report.biterrors_plot import plot_rerr_vs_rate
    from robustlab.runs import quant_from_meta

    args.device = distributed.init(args.device)  # joins the process group under torchrun
    main = distributed.is_main()
    spec = BitErrors.from_args(args)
    chip_spec = Chip.from_args(args) if args.chip else None
    if args.export and len(args.runs) != 1:
        raise UserError("--export writes one model's codes; give exactly one RUN")
    chip = chip_spec.load() if chip_spec is not None else None  # validate before any work
    for path in args.runs:  # bad schemes fail before any work
        resolve_quant(spec.quant, quant_from_meta(read_meta(path)))
    progress = False if args.quiet else None
    snapshot = "best" if args.best else "last"
    results = []
    for path in args.runs:
        r = open_test_run(path, args)
        if args.export and main:
            from robustlab.quant import quantize_model

            scheme = spec.scheme(r)
            out = quantize_model(r.model, scheme).export_npz(args.export)
            print(f"quantized codes ({scheme}) written to {out}")
        res, out = tasks.evaluate(spec, r, progress=progress, write=False)
        res = {**res, "label": Path(path).name, "snapshot": snapshot}
        results.append(res)
        if main:
            out = write_result(r.path, "biterrors", res)
            spec.figures(res, r.path / "results")
            print(spec.table(res))
            print(f"written to {out}")
        if chip_spec is not None:
            body = chip_spec.run(r, progress=progress, chip=chip)
            if not main:
                continue
            out = write_result(r.path, "biterrors_chip",
                               tasks.make_result(chip_spec, r, body))
            print(f"{chip_spec.table(body)}; written to {out}")
    if args.plot and main:
        print(f"figure written to {plot_rerr_vs_rate(results, args.plot)}")
    return 0
