"""`robustlab energy RUN --curve FILE`: lowest safe supply voltage and the energy it saves.

Options come from the spec `tasks.energy.Energy`."""

from __future__ import annotations

import argparse
import dataclasses

from robustlab.commands.options import add_run_options
from robustlab.tasks.energy import Energy
from robustlab.tasks.spec import add_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "energy", help="lowest safe memory voltage of a run's quantized model and energy saved",
        description="For every point of a voltage → (bit error rate, energy) curve, evaluate the "
        "run's quantized model under K random bit error patterns at that rate; report the lowest "
        "voltage at which (and above which) the mean RErr stays within --tolerance percentage "
        "points of the clean error, and the energy per access saved there. Writes "
        "RUN/results/energy.json and RUN/results/energy.png.")
    p.add_argument("run", metavar="RUN", help="run directory")
    curve = next(f for f in dataclasses.fields(Energy) if f.name == "curve")
    p.add_argument("--curve", required=True, metavar=curve.metadata["metavar"],
                   help=curve.metadata["help"])  # the one setting the command requires
    add_options(p, Energy, skip=("curve",))
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab import tasks
    from robustlab.checkpoint import read_meta
    from robustlab.commands.biterrors import open_test_run
    from robustlab.io import write_result
    from robustlab.runs import quant_from_meta
    from robustlab.tasks.biterrors import resolve_quant

    spec = Energy.from_args(args)
    curve = spec.load()  # validate before any work
    resolve_quant(spec.quant, quant_from_meta(read_meta(args.run)))
    r = open_test_run(args.run, args)
    body = spec.run(r, progress=False if args.quiet else None, curve=curve)
    res = tasks.make_result(spec, r, body)
    out = write_result(r.path, "energy", res)
    spec.figures(res, r.path / "results")
    print(spec.table(res))
    print(f"written to {out}")
    return 0
