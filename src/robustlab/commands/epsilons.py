"""`robustlab epsilons`: distances of test images to the nearest training image of another class."""

from __future__ import annotations

import argparse
from pathlib import Path

from robustlab.cli import add_data, add_device, list_of, nonneg_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "epsilons", help="how large can an attack radius be? nearest other-class distances",
        description="Per norm, the distance of each test image to its nearest training image of "
        "another class: histogram, low quantiles, the fraction within the default radius, and a "
        "figure of an image perturbed randomly and adversarially at several radii. Writes "
        "OUT/results/epsilons.json and figures beside it.")
    add_data(p)
    p.add_argument("--norms", type=list_of(str), default=["linf", "l2", "l1", "l0"],
                   help="comma list of linf, l2, l1, l0 (default: all)")
    p.add_argument("--n-test", type=positive_int, default=500, help="first test images to measure")
    p.add_argument("--n-train", type=positive_int, default=None,
                   help="first training images to search (default: all)")
    p.add_argument("--run", default=None, metavar="RUN",
                   help="a run whose model makes the adversarial example images (PGD); without "
                   "it they step towards the nearest other-class training image")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: runs/epsilons-DATA)")
    p.add_argument("--no-figures", action="store_true", help="write no PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from robustlab import data
    from robustlab.attacks.threat import check_norm
    from robustlab.device import resolve_device
    from robustlab.errors import UserError
    from robustlab.evaluate.epsilons import epsilons
    from robustlab.io import write_result

    if args.out is not None and not args.out.strip():
        raise UserError("--out '' is empty; give a folder or leave --out out")
    if args.seed >= 2**64:
        raise UserError(f"--seed {args.seed} is out of range; it must be an integer in 0..2^64−1")
    for norm in args.norms:
        check_norm(norm)
    device = resolve_device(args.device)
    model = None
    if args.run:
        from robustlab.runs import open_run

        r = open_run(args.run, device=device, with_data=False)
        model = r.predictor()
    train, test = data.load(args.data, data_dir=args.data_dir)
    out = Path(args.out or f"runs/epsilons-{Path(args.data).stem}")
    results = out / "results"
    n = min(args.n_test, len(test)) * len(args.norms)
    with tqdm(total=n, desc="distances", unit="img", leave=False,
              disable=True if args.quiet else None) as bar:
        res = epsilons(train, test, args.norms, n_test=args.n_test, n_train=args.n_train,
                       model=model, dataset=args.data, seed=args.seed, device=device,
                       examples_path=results / "epsilons_examples.safetensors",
                       progress=bar.update)
    if args.run:
        res["run"] = str(args.run)
    path = write_result(out, "epsilons", res)
    d = res["data"]
    print(f"{d['name']}: {d['n_test']} test images against {d['n_train']} training images")
    qs = list(next(iter(res["norms"].values()))["quantiles"])
    print(f"{'norm':<5} {'min':>8} " + " ".join(f"{'q' + q:>8}" for q in qs)
          + f" {'default ε':>9} {'within ε':>8}")
    for norm, v in res["norms"].items():
        print(f"{norm:<5} {v['min']:8.4g} " + " ".join(f"{v['quantiles'][q]:8.4g}" for q in qs)
              + f" {v['default_eps']:9.4g} {100 * v['frac_within_default_eps']:7.2f}%")
    print(f"written to {path}")
    if not args.no_figures:
        from robustlab.report import adversarial_plots as plots

        figs = [plots.plot_epsilon_histograms(res, results / "epsilons_hist.png")]
        if res.get("examples_file"):
            figs.append(plots.plot_epsilon_examples(results / res["examples_file"],
                                                    results / "epsilons_examples.png"))
        print("figures: " + ", ".join(str(f) for f in figs))
    return 0
