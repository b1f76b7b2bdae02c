"""`robustlab demo`: train a small set of models, evaluate every capability, write a report."""

from __future__ import annotations

import argparse

from robustlab.cli import add_device


def add_preset_options(p: argparse.ArgumentParser, default_out: str | None,
                       out_help: str | None = None) -> None:
    """Options shared by `demo` and `reproduce`."""
    p.add_argument("--scale", default=None, choices=["smoke", "small", "full"],
                   help="smoke: a minute or two (tests); small: minutes on a CPU; full: the "
                   "papers' budgets, for a GPU (default: the preset's default)")
    p.add_argument("--out", default=default_out,
                   help=out_help or f"output folder (default: {default_out})")
    p.add_argument("--fresh", action="store_true",
                   help="start over instead of reusing finished runs and results")
    p.add_argument("--data", default=None,
                   help="dataset instead of the preset's (default: Fashion-MNIST when installed, "
                   "else scikit-learn digits)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument("--config", default=None, metavar="YAML",
                   help="preset file to use instead of the built-in one")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_device(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train small models, evaluate everything, write an HTML report",
                       description="The main job: on the default data (Fashion-MNIST from the "
                       "Debian package, scikit-learn digits if absent) train Normal, AT, CCAT, "
                       "RQuant+Clipping+RandBET, AWP and patch AT models at a small budget, "
                       "evaluate each on clean data, the Lp attack suite with confidence "
                       "thresholding, patches, random and adversarial bit errors and flatness, and "
                       "write OUT/report.html. Re-running reuses finished runs; --fresh starts over.")
    add_preset_options(p, "runs/demo")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.set_defaults(func=run)


def preset_overrides(args: argparse.Namespace) -> dict:
    return {"data": {"name": args.data}} if args.data else {}


def command_line(args: argparse.Namespace, *positional: str) -> str:
    """The command as a user would type it again (for the report's provenance)."""
    parts = ["robustlab", args.command, *positional]
    for opt in ("scale", "out", "data", "data_dir", "config", "device"):
        v = getattr(args, opt, None)
        if v is not None and not (opt == "device" and v == "auto"):
            parts += [f"--{opt.replace('_', '-')}", str(v)]
    parts += [f"--{f.replace('_', '-')}" for f in ("fresh", "quiet", "no_report")
              if getattr(args, f, False)]
    return " ".join(parts)


def check_preset_args(args: argparse.Namespace) -> None:
    """Refuse empty paths before anything is read or written."""
    from robustlab.data import check_data_dir
    from robustlab.errors import UserError

    for opt in ("out", "config", "data_dir"):
        v = getattr(args, opt, None)
        if v is not None and not str(v).strip():
            raise UserError(f"--{opt.replace('_', '-')} '' is empty; give a path or leave the "
                            f"option out")
    check_data_dir(args.data_dir)


def load_preset(name: str, args: argparse.Namespace) -> dict:
    """`experiments.load_preset` with a file that is not UTF-8 text reported on one line."""
    from robustlab import experiments
    from robustlab.errors import UserError

    check_preset_args(args)
    try:
        return experiments.load_preset(name, args.scale, preset_overrides(args))
    except UnicodeDecodeError as e:
        raise UserError(f"preset file {name} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                        f"offset {e.start}); save it as UTF-8 YAML") from None


def run(args: argparse.Namespace) -> int:
    from robustlab import experiments

    preset = load_preset(args.config or "demo", args)
    res = experiments.run_preset(preset, args.out, fresh=args.fresh, device=args.device,
                                 data_dir=args.data_dir, progress=False if args.quiet else None,
                                 report=not args.no_report, command=command_line(args))
    print(experiments.format_table(res["table"]))
    if "report" in res:
        print(f"report written to {res['report']}")
    return 0
