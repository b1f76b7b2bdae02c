"""`robustlab attack RUN`: adversarial evaluation suite with confidence thresholding
(`tasks.adversarial`: the options are the spec's fields).

Under `torchrun` the attacked examples are split across ranks; rank 0 writes the results.
"""

from __future__ import annotations

import argparse
import sys

from robustlab.commands.options import add_run_options, add_speed
from robustlab.tasks.adversarial import Adversarial, flag_lines
from robustlab.tasks.spec import add_options

KINDS = ("adversarial",)  # the spec kinds this command runs (no generic `robustlab KIND`)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack", help="adversarial evaluation (Lp, frames, patches, distal, corruptions)",
        description="Attack the first --n-test test images of a run's model with every threat "
        "model of --suite and report Err, RErr, the confidence threshold τ at each TPR (from the "
        "last --holdout fraction of the test set), RErr@τ, FPR@τ and ROC AUC. Writes "
        "RUN/results/NAME.json, example images and figures beside it.")
    p.add_argument("run", metavar="RUN", help="run directory")
    add_options(p, Adversarial)
    p.add_argument("--name", default="attack", help="result name (default: %(default)s)")
    p.add_argument("--no-figures", action="store_true", help="write no PNG figures")
    add_run_options(p)
    add_speed(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from robustlab import distributed
    from robustlab.errors import UserError
    from robustlab.io import write_result
    from robustlab.runs import open_run
    from robustlab.tasks.spec import make_result

    spec = Adversarial.from_args(args)
    spec.check()  # the cheap things, before loading anything
    if not args.name.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"result name {args.name!r} must be letters, digits, - or _")
    device = distributed.init(args.device)  # joins the process group under torchrun
    r = open_run(args.run, device=device, data_dir=args.data_dir, best=args.best)
    if args.channels_last:
        r.model.to(memory_format=torch.channels_last)
    body = spec.run(r, progress=False if args.quiet else None, name=args.name, bf16=args.bf16,
                    channels_last=True if args.channels_last else None)
    if not distributed.is_main():
        return 0
    res = {**make_result(spec, r, body), "snapshot": "best" if args.best else "last"}
    path = write_result(r.path, args.name, res)
    print(spec.table(res))
    for line in flag_lines(res):
        print(line, file=sys.stderr)
    print(f"written to {path}")
    if not args.no_figures:
        figs = spec.figures(res, r.path / "results", name=args.name, title=r.path.name)
        print("figures: " + ", ".join(str(f) for f in figs))
    return 0

