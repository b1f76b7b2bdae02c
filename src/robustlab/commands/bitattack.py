"""`robustlab bitattack RUN`: robust error under adversarial bit flips, per bit budget.

Options come from the spec `tasks.bitattack.BitAttack`. Under `torchrun` the attack runs and
random patterns are dealt to the ranks; rank 0 writes.
"""

from __future__ import annotations

import argparse

from robustlab.commands.options import add_run_options
from robustlab.tasks.bitattack import BitAttack
from robustlab.tasks.spec import add_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bitattack", help="adversarial bit errors: RErr per number of flipped bits",
        description="Flip at most BUDGET bits of the quantized weights (at most one per weight) "
        "to maximize the loss on an attack set, then report the robust error on the test set "
        "(wrong clean or wrong with the flips). Methods: attack (projected gradient attack), "
        "bfa (progressive bit search baseline), random (random flips). Reports per budget the "
        "worst case over attack and BFA, which found it, and the envelope (max over budgets "
        "<= b). Writes RUN/results/bitattack[-targetK].json and a PNG of RErr against the budget.")
    p.add_argument("run", metavar="RUN", help="run directory")
    add_options(p, BitAttack)
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab import distributed, tasks
    from robustlab.io import write_result
    from robustlab.runs import open_run

    spec = BitAttack.from_args(args)
    spec.check()
    device = distributed.init(args.device)  # joins the process group under torchrun
    r = open_run(args.run, device=device, data_dir=args.data_dir, best=args.best)
    res, _ = tasks.evaluate(spec, r, progress=False if args.quiet else None, write=False)
    if not distributed.is_main():
        return 0
    res["snapshot"] = "best" if args.best else "last"
    path = write_result(r.path, spec.result_name(), res)
    png = spec.figures(res, r.path / "results")[0]
    print(spec.table(res))
    print(f"written to {path} and {png}")
    return 0
