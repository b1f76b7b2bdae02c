"""`robustlab eval RUN`: clean test error, per-class error and confusion matrix (`tasks.clean`)."""

from __future__ import annotations

import argparse

from robustlab.commands.options import add_run_options
from robustlab.tasks.clean import Clean
from robustlab.tasks.spec import add_options

KINDS = ("clean",)  # the spec kinds this command runs (no generic `robustlab KIND`)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="clean test error of a run",
                       description="Clean test error, per-class error and confusion matrix of a "
                       "run's model (at its quantized weights when it was trained quantized); "
                       "writes RUN/results/eval.json.")
    p.add_argument("run", metavar="RUN", help="run directory")
    add_options(p, Clean)
    add_run_options(p, quiet=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab.io import write_result
    from robustlab.runs import open_run
    from robustlab.tasks import evaluate

    spec = Clean.from_args(args)
    r = open_run(args.run, device=args.device, data_dir=args.data_dir, best=args.best)
    res, _ = evaluate(spec, r, write=False)
    path = write_result(r.path, "eval", {**res, "snapshot": "best" if args.best else "last"})
    print(spec.table(res))
    print(f"written to {path}")
    return 0
