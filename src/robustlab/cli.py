"""The `robustlab` command. Subcommands live in `robustlab.commands.<name>` and are discovered.

User mistakes print one line on stderr and exit with status 2; nothing half-written is left.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from robustlab.errors import UserError

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


# ---- typed option values: the message names the bad value and what is allowed ----

def _number(kind: Callable[[str], Any], test: Callable[[Any], bool], allowed: str):
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; it must be {allowed}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range; it must be {allowed}")
        return value

    parse.__name__ = allowed
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer ≥ 1")
nonneg_int = _number(int, lambda v: v >= 0, "an integer ≥ 0")
positive_float = _number(float, lambda v: v > 0, "a number > 0")
nonneg_float = _number(float, lambda v: v >= 0, "a number ≥ 0")
probability = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
unit_interval_open = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def list_of(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """Comma-separated values, each parsed by `item`."""

    def parse(text: str) -> list[Any]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return [item(p) for p in parts]

    parse.__name__ = f"list of {getattr(item, '__name__', 'values')}"
    return parse


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to compute (auto: CUDA when available)")


def add_speed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (final verdicts in fp32)")


def add_data(p: argparse.ArgumentParser, default: str | None = "fashion-mnist") -> None:
    p.add_argument("--data", default=default, help="dataset name or .npz path (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")


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
    for mod in commands():
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        sys.stderr.write(f"robustlab {args.command}: error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
