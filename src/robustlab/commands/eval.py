"""`robustlab eval RUN`: clean test error, per-class error and confusion matrix."""

from __future__ import annotations

import argparse

from robustlab.cli import add_device, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="clean test error of a run",
                       description="Clean test error, per-class error and confusion matrix of a "
                       "run's model (at its quantized weights when it was trained quantized); "
                       "writes RUN/results/eval.json.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--data-dir", default=None, help="where the run's dataset files are")
    p.add_argument("--best", action="store_true", help="evaluate the best snapshot, not the last")
    p.add_argument("--batch-size", type=positive_int, default=512)
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab.evaluate.clean import clean
    from robustlab.io import write_result
    from robustlab.runs import open_run

    r = open_run(args.run, device=args.device, data_dir=args.data_dir, best=args.best)
    res = clean(r.predictor(), r.test, batch_size=args.batch_size, device=r.device)
    path = write_result(r.path, "eval", {"run": str(r.path), "snapshot": "best" if args.best else "last",
                                         "data": r.meta.get("data"),
                                         **({"trained_on": r.meta["trained_on"]}
                                            if "trained_on" in r.meta else {}), **res})
    print(f"clean test error {100 * res['err']:.2f}% on {res['n']} images")
    width = max(len(c) for c in res["classes"])
    for name, e in zip(res["classes"], res["per_class_err"]):
        print(f"  {name:<{width}}  {100 * e:6.2f}%")
    print(f"written to {path}")
    return 0
