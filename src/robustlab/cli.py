"""The `robustlab` command. Subcommands live in `robustlab.commands.<name>` and are discovered.

User mistakes print one line on stderr and exit with status 2; nothing half-written is left.
Central behaviour every command gets from `main` (no command needs to do anything):

- output paths (`--out`, `--plot`, `--export`) are checked before any work (`io.check_output_*`),
  and an OS error on a path later on (permission, read-only, a file where a folder should be…)
  becomes one line naming the path, exit 2;
- a command that evaluates a run (a positional RUN) gets `--data` (evaluate on other data of the
  same shape) and holds a lock on the result it writes, so two writers of the same result of
  the same run cannot both proceed (`runs.command_context`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from robustlab.commands.options import (  # noqa: F401  (re-exported for the commands)
    add_device,
    add_run_options,
    add_speed,
)
from robustlab.errors import UserError
from robustlab.values import (  # noqa: F401  (re-exported for the commands)
    list_of,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    seed_int,
    unit_interval_open,
)

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def add_data(p: argparse.ArgumentParser, default: str | None = "fashion-mnist") -> None:
    p.add_argument("--data", default=default, help="dataset name or .npz path (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")


# commands that write results into the runs they open, and the result they write (the lock label)
RUN_WRITERS: dict[str, Callable[[argparse.Namespace], str]] = {
    "eval": lambda a: "eval",
    "attack": lambda a: f"attack-{getattr(a, 'name', 'attack')}",
    "biterrors": lambda a: "biterrors",
    "bitattack": lambda a: "bitattack",
    "flatness": lambda a: "flatness",
    "energy": lambda a: "energy",
    "demo": lambda a: "demo",
    "reproduce": lambda a: "demo",
}
# commands whose result JSON is written last, after their figures (`io.results_last`)
RESULTS_LAST = {"eval", "attack", "biterrors", "bitattack", "flatness", "energy", "epsilons"}
# output options that name a file (every other `out` names a folder)
_OUTPUT_FILES = {("report", "out"), ("biterrors", "plot"), ("biterrors", "export")}


def _check_outputs(args: argparse.Namespace) -> None:
    from robustlab.io import check_output_dir, check_output_file

    for opt in ("out", "plot", "export"):
        value = getattr(args, opt, None)
        if value is None:
            continue
        what = f"--{opt}"
        if (args.command, opt) in _OUTPUT_FILES:
            check_output_file(value, what)
        else:
            check_output_dir(value, what)


def add_run_data(p: argparse.ArgumentParser) -> None:
    """`--data` for a command that evaluates runs: other data of the same shape."""
    p.add_argument("--data", default=None, metavar="DATA",
                   help="evaluate on this dataset (name or .npz path) instead of the run's own; "
                   "it must have the run's image shape and classes")
    p.set_defaults(_run_data=True)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Give every command that opens runs (a positional RUN) a `--data` override."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                dests = {a.dest for a in p._actions}
                if name not in RUN_WRITERS and "_writes" not in p._defaults:
                    continue
                if dests & {"run", "runs"} and "data" not in dests:
                    add_run_data(p)


def commands() -> list[Any]:
    import robustlab.commands as pkg

    mods = [importlib.import_module(f"robustlab.commands.{m.name}")
            for m in pkgutil.iter_modules(pkg.__path__)]
    return [m for m in mods if hasattr(m, "register")]


def build_parser() -> Parser:
    parser = Parser(prog="robustlab", description="Adversarial and bit error robustness of image "
                    "classifiers, and the flatness that links them.")
    from robustlab import __version__

    parser.add_argument("--version", action="version", version=f"robustlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    served: set[str] = set()
    for mod in commands():
        mod.register(sub)
        served.update(getattr(mod, "KINDS", ()))
    add_spec_commands(sub, served)
    _add_run_options(parser)
    return parser


# ---- one generic command per registered evaluation kind without a command module of its own ----

def add_spec_commands(sub: argparse._SubParsersAction, served: set[str] = frozenset()) -> list[str]:
    """`robustlab KIND RUN [options]` for every registered spec (`robustlab.tasks`) whose kind is
    neither served by a command module (its `KINDS`) nor the name of a command; the options are
    the spec's fields (`tasks.spec.add_options`). Returns the commands added."""
    from robustlab import tasks
    from robustlab.tasks.spec import add_options

    added = []
    for kind, cls in sorted(tasks.load_all().items()):
        if kind in served or kind in sub.choices:
            continue
        p = sub.add_parser(kind, help=cls.title or f"{kind} evaluation of a run",
                           description=(cls.title or f"The {kind} evaluation of a run.")
                           + f" Writes RUN/results/{kind}.json (or NAME.json with --name).")
        p.add_argument("run", metavar="RUN", help="run directory")
        add_options(p, cls)
        if "name" not in {a.dest for a in p._actions}:
            p.add_argument("--name", default=None, help="result name (default: the kind)")
        add_run_options(p)
        add_run_data(p)
        p.set_defaults(func=run_spec, _spec_kind=kind,
                       _writes=lambda a, kind=kind: getattr(a, "name", None) or kind)
        added.append(kind)
    return added


def run_spec(args: argparse.Namespace) -> int:
    """A generic evaluation command: open RUN, run the spec built from the options, write the
    result, print the spec's table."""
    from robustlab import tasks
    from robustlab.runs import open_run

    cls = tasks.spec_class(args._spec_kind)
    spec = cls.from_args(args)
    r = open_run(args.run, device=getattr(args, "device", "auto"), data_dir=args.data_dir,
                 best=args.best)
    result, path = tasks.evaluate(spec, r, name=args.name,
                                  progress=False if args.quiet else None)
    text = spec.table(result)
    if text:
        print(text, end="" if text.endswith("\n") else "\n")
    print(f"written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from robustlab import runs
    from robustlab.io import os_error_message, results_last

    lock = RUN_WRITERS.get(args.command) or getattr(args, "_writes", None)
    try:
        _check_outputs(args)
        with runs.command_context(args.command, lock=lock(args) if lock else None,
                                  data=getattr(args, "data", None)
                                  if getattr(args, "_run_data", False) else None), \
                (results_last() if args.command in RESULTS_LAST else contextlib.nullcontext()):
            return int(args.func(args) or 0)
    except UserError as e:
        sys.stderr.write(f"robustlab {args.command}: error: {_one_line(e)}\n")
        return EXIT_USAGE
    except OSError as e:  # a path the user gave (or a folder under it) cannot be used
        sys.stderr.write(f"robustlab {args.command}: error: {os_error_message(e)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
