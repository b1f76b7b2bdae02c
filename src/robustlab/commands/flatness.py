"""`robustlab flatness RUN`: average- or worst-case flatness of the robust (or clean) loss.

Options come from the specs `tasks.flatness.Flatness` and `tasks.landscape.Landscape`. One
vocabulary: `--steps` are the inner PGD's iterations (as in every command; formerly
`--attack-steps`, still accepted), the ascent on ν is `--ascent-steps` and `--ascent-step-size`
(formerly `--steps` and `--step-size`). Under `torchrun` average-case samples and landscape points
are split across ranks; rank 0 writes.
"""

from __future__ import annotations

import argparse
import dataclasses

from robustlab.commands.options import add_run_options
from robustlab.tasks.flatness import CASES, Flatness
from robustlab.tasks.landscape import Landscape
from robustlab.tasks.spec import add_options

# the landscape's own options; the others are the flatness spec's (its first ξ, same attack)
LANDSCAPE_ONLY = ("direction", "points", "extent")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flatness", help="flatness of the robust loss under relative weight perturbations",
        description="Average-case (mean over random ν on the sphere of the relative ball "
        "‖ν_l‖ ≤ ξ‖w_l‖) or worst-case (projected normalized ascent on ν jointly with PGD) "
        "increase of the robust loss over the unperturbed model, with adversarial examples "
        "recomputed for every perturbed model. Writes RUN/results/flatness-KIND[-clean].json; "
        "--landscape adds a loss landscape JSON and PNG. Note: --steps is the number of PGD "
        "iterations (formerly --attack-steps); the ascent steps on ν, formerly --steps, are "
        "--ascent-steps.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--kind", dest="case", choices=CASES, default=Flatness.case,
                   help="average (random ν) or worst (ascent on ν) (default: average)")
    add_options(p, Flatness, skip=("case",))
    p.add_argument("--landscape", choices=["1d", "2d"], default=None,
                   help="also compute a loss landscape (clean and robust loss)")
    add_options(p, Landscape, skip=tuple(f.name for f in dataclasses.fields(Landscape)
                                         if f.name not in LANDSCAPE_ONLY))
    add_run_options(p)
    p.set_defaults(func=run)


def landscape_spec(spec: Flatness, args: argparse.Namespace) -> Landscape:
    """The landscape of `--landscape`: its own options, the flatness spec's others."""
    return Landscape(dims=1 if args.landscape == "1d" else 2, direction=args.direction,
                     xi=spec.xis()[0], points=args.points, extent=args.extent,
                     ascent_steps=spec.ascent_steps, params=spec.params, n_test=spec.n_test,
                     norm=spec.norm, eps=spec.eps, steps=spec.steps, seed=spec.seed,
                     batch_size=spec.batch_size)


def run(args: argparse.Namespace) -> int:
    from robustlab import distributed, tasks
    from robustlab.io import write_result
    from robustlab.runs import open_run
    from robustlab.tasks.flatness import check_radius
    from robustlab.weights import select

    spec = Flatness.from_args(args)
    spec.check()
    land = landscape_spec(spec, args) if args.landscape else None
    if land is not None:
        land.check()
    device = distributed.init(args.device)  # joins the process group under torchrun
    main = distributed.is_main()
    r = open_run(args.run, device=device, data_dir=args.data_dir, best=args.best)
    names = select(r.model, spec.params)  # bad selections fail before any work
    check_radius(r.params(), names, spec.xis(), land.extent if land is not None else None)
    progress = False if args.quiet else None
    want_nu = land is not None and land.direction == "adversarial" and spec.case == "worst"
    body, nus = spec.compute(r, progress=progress, return_nu=want_nu)
    snapshot = "best" if args.best else "last"
    if main:
        res = {**tasks.make_result(spec, r, body), "snapshot": snapshot}
        path = write_result(r.path, spec.result_name(), res)
        print(spec.table(res))
        print(f"written to {path}")
    if land is not None:
        lbody = land.run(r, progress=progress, nu=nus[0] if nus else None)
        if not main:
            return 0
        lres = {**tasks.make_result(land, r, lbody), "snapshot": snapshot}
        lpath = write_result(r.path, land.result_name(), lres)
        png = land.figures(lres, r.path / "results")[0]
        print(f"landscape written to {lpath} and {png}")
    return 0
