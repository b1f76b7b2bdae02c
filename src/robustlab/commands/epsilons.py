"""`robustlab epsilons`: distances of test images to the nearest training image of another class
(`tasks.epsilons`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from robustlab.cli import add_data, add_device
from robustlab.tasks.epsilons import Epsilons
from robustlab.tasks.spec import add_options

KINDS = ("epsilons",)  # the spec kinds this command runs (no generic `robustlab KIND`)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "epsilons", help="how large can an attack radius be? nearest other-class distances",
        description="Per norm, the distance of each test image to its nearest training image of "
        "another class: histogram, low quantiles, the fraction within the default radius, and a "
        "figure of an image perturbed randomly and adversarially at several radii. Writes "
        "OUT/results/epsilons.json and figures beside it.")
    add_data(p)
    add_options(p, Epsilons)
    p.add_argument("--run", default=None, metavar="RUN",
                   help="a run whose model makes the adversarial example images (PGD); without "
                   "it they step towards the nearest other-class training image")
    p.add_argument("--out", default=None, help="output folder (default: runs/epsilons-DATA)")
    p.add_argument("--no-figures", action="store_true", help="write no PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from robustlab import data
    from robustlab.device import resolve_device
    from robustlab.errors import UserError
    from robustlab.io import write_result
    from robustlab.tasks.spec import make_result

    if args.out is not None and not args.out.strip():
        raise UserError("--out '' is empty; give a folder or leave --out out")
    spec = Epsilons.from_args(args)
    spec.check()
    device = resolve_device(args.device)
    model = None
    if args.run:
        from robustlab.runs import open_run

        model = open_run(args.run, device=device, with_data=False).predictor()
    train, test = data.load(args.data, data_dir=args.data_dir)
    out = Path(args.out or f"runs/epsilons-{Path(args.data).stem}")
    results = out / "results"
    n = min(spec.n_test, len(test)) * len(spec.norms)
    with tqdm(total=n, desc="distances", unit="img", leave=False,
              disable=True if args.quiet else None) as bar:
        body = spec.measure(train, test, model=model, dataset=args.data, device=device,
                            examples_path=results / "epsilons_examples.safetensors",
                            progress=bar.update)
    res = make_result(spec, None, body)
    if args.run:
        res["run"] = str(args.run)
    path = write_result(out, "epsilons", res)
    print(spec.table(res))
    print(f"written to {path}")
    if not args.no_figures:
        print("figures: " + ", ".join(str(f) for f in spec.figures(res, results)))
    return 0
