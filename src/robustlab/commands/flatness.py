"""`robustlab flatness RUN`: average- or worst-case flatness of the robust (or clean) loss.

Under `torchrun` average-case samples and landscape points are split across ranks; rank 0 writes.
"""

from __future__ import annotations

import argparse
import math

from robustlab.cli import add_device, list_of, nonneg_float, nonneg_int, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flatness", help="flatness of the robust loss under relative weight perturbations",
        description="Average-case (mean over random ν on the sphere of the relative ball "
        "‖ν_l‖ ≤ ξ‖w_l‖) or worst-case (projected normalized ascent on ν jointly with PGD) "
        "increase of the robust loss over the unperturbed model, with adversarial examples "
        "recomputed for every perturbed model. Writes RUN/results/flatness-KIND[-clean].json; "
        "--landscape adds a loss landscape JSON and PNG.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--kind", choices=["average", "worst"], default="average")
    p.add_argument("--xi", type=list_of(nonneg_float), default=None,
                   help="relative radii, comma-separated (default: 0.5 average, 0.003 worst)")
    p.add_argument("--clean", action="store_true", help="flatness of the clean loss (δ = 0)")
    p.add_argument("--samples", type=positive_int, default=10, help="random ν (average case)")
    p.add_argument("--steps", type=nonneg_int, default=20, help="ascent steps on ν (worst case)")
    p.add_argument("--restarts", type=positive_int, default=1, help="restarts (worst case)")
    p.add_argument("--step-size", type=positive_float, default=None,
                   help="ν step η relative to ‖w_l‖ (worst case; default ξ/4)")
    p.add_argument("--params", default="default",
                   help="perturbed tensors: default (conv/linear weights and biases), weights, "
                   "or comma-separated parameter names")
    p.add_argument("--n-test", type=positive_int, default=1000, help="first N test images")
    p.add_argument("--no-train", action="store_true",
                   help="skip the robust loss on N training images (the test−train gap)")
    p.add_argument("--norm", choices=["linf", "l2", "l1", "l0"], default="linf",
                   help="threat model of the inner PGD")
    p.add_argument("--eps", type=nonneg_float, default=None,
                   help="PGD radius (default: the spec's radius for the image size)")
    p.add_argument("--attack-steps", type=positive_int, default=20, help="PGD iterations")
    p.add_argument("--landscape", choices=["1d", "2d"], default=None,
                   help="also compute a loss landscape (clean and robust loss)")
    p.add_argument("--direction", choices=["random", "adversarial"], default="random",
                   help="landscape direction (random: filter-normalized)")
    p.add_argument("--points", type=positive_int, default=None,
                   help="landscape points per axis (default 21 in 1-D, 11 in 2-D)")
    p.add_argument("--extent", type=positive_float, default=None,
                   help="landscape coordinates in [-E, E] (default 2·ξ)")
    p.add_argument("--best", action="store_true", help="use the best snapshot, not the last")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--data-dir", default=None, help="where the run's dataset files are")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robustlab import distributed
    from robustlab.evaluate.flatness import flatness, landscape
    from robustlab.io import write_result
    from robustlab.report.flatness_plots import plot_landscape
    from robustlab.runs import open_run
    from robustlab.weights import select

    xis = args.xi if args.xi is not None else [0.5 if args.kind == "average" else 0.003]
    _check_finite_options(args, xis)
    device = distributed.init(args.device)  # joins the process group under torchrun
    main = distributed.is_main()
    r = open_run(args.run, device=device, data_dir=args.data_dir, best=args.best)
    names = select(r.model, args.params)  # bad selections fail before any work
    _check_radius(r.params(), names, xis, args.extent)
    progress = False if args.quiet else None
    settings = {"norm": args.norm, "steps": args.attack_steps}
    if args.eps is not None:
        settings["eps"] = args.eps
    if r.meta.get("data", {}).get("name") == "mnist":
        settings["dataset"] = "mnist"
    want_nu = args.landscape is not None and args.direction == "adversarial" and \
        args.kind == "worst"
    res = flatness(r.model, r.test, kind=args.kind, xi=xis, clean=args.clean,
                   attack_settings=settings, n=args.n_test, samples=args.samples,
                   steps=args.steps, restarts=args.restarts, step_size=args.step_size,
                   selection=args.params, params=r.params(),
                   train=None if args.no_train else r.train, seed=args.seed,
                   batch_size=args.batch_size, device=r.device, progress=progress,
                   return_nu=want_nu)
    nus = res.pop("nu", None)
    _check_result(res, xis)
    name = f"flatness-{args.kind}" + ("-clean" if args.clean else "")
    snapshot = "best" if args.best else "last"
    if main:
        path = write_result(r.path, name, {"run": str(r.path), "snapshot": snapshot,
                                           "data": r.meta.get("data"), **res})
        what = "clean" if args.clean else "robust"
        print(f"{what} loss {res['loss']:.4f} on {res['n']} test images"
              + (f", test-train gap {res['gap']:.4f}" if "gap" in res else ""))
        for v, f in zip(res["xi"], res["flatness"]):
            print(f"  {args.kind}-case flatness at xi={v:g}: {f:.4f}")
        print(f"written to {path}")
    if args.landscape:
        dims = 1 if args.landscape == "1d" else 2
        land = landscape(r.model, r.test, dims=dims, direction=args.direction, xi=xis[0],
                         extent=args.extent, points=args.points or (21 if dims == 1 else 11),
                         attack_settings=settings, n=args.n_test, selection=args.params,
                         params=r.params(), nu=nus[0] if nus else None, steps=args.steps,
                         seed=args.seed, batch_size=args.batch_size, device=r.device,
                         progress=progress)
        if not main:
            return 0
        lname = f"landscape-{args.landscape}-{args.direction}"
        lpath = write_result(r.path, lname, {"run": str(r.path), "snapshot": snapshot, **land})
        png = plot_landscape(land, Path(lpath).with_suffix(".png"))
        print(f"landscape written to {lpath} and {png}")
    return 0


F32_MAX = 3.4028234663852886e38


def _check_finite_options(args: argparse.Namespace, xis: list[float]) -> None:
    """Radii, step sizes and extents must be finite numbers; seeds fit 64 bits."""
    from robustlab.errors import UserError

    for opt, values in (("xi", xis), ("eps", [args.eps]), ("step_size", [args.step_size]),
                        ("extent", [args.extent])):
        for v in values:
            if v is not None and not (math.isfinite(v) and v <= F32_MAX):
                raise UserError(f"--{opt.replace('_', '-')} {v} is invalid; it must be a finite "
                                f"number")
    if args.seed >= 2**64:
        raise UserError(f"--seed {args.seed} is out of range; it must be an integer in 0..2^64−1")


def _check_radius(params: dict, names, xis: list[float], extent: float | None) -> None:
    """ξ·‖w_l‖ (and the landscape's extent·‖w_l‖) must be representable in float32."""
    import torch

    from robustlab.errors import UserError

    selected = [params[n] for n in (names or params) if n in params]
    if not selected:
        return
    norm = max(float(torch.linalg.vector_norm(w.detach().double())) for w in selected)
    for v in [*xis, *([extent] if extent is not None else [])]:
        if not v * max(norm, 1.0) <= F32_MAX:
            raise UserError(f"--xi {v:g} is too large: a perturbation of {v:g}·‖w‖ (‖w‖ up to "
                            f"{norm:.3g}) overflows float32; relative radii are usually ≤ 1")


def _check_result(res: dict, xis: list[float]) -> None:
    """A perturbed loss that overflowed is reported, not written."""
    from robustlab.errors import UserError

    values = [res.get("loss"), *res.get("flatness", [])]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise UserError(f"--xi {','.join(f'{x:g}' for x in xis)}: the perturbed loss is not finite "
                        f"(flatness {res.get('flatness')}); use a smaller --xi")
