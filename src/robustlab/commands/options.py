"""Command-line options shared by the commands (one spelling, one default, one help text each).

Not a command (no `register`): the commands and `robustlab.cli` import these helpers, so no
command needs to import back up into `cli`.
"""

from __future__ import annotations

import argparse


def add_device(p: argparse.ArgumentParser) -> None:
    """`--device {auto,cpu,cuda}` (default auto)."""
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to compute (auto: CUDA when available)")


def add_speed(p: argparse.ArgumentParser) -> None:
    """`--channels-last` and `--bf16`."""
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (final verdicts in fp32)")


def add_run_options(p: argparse.ArgumentParser, *, quiet: bool = True) -> None:
    """The runtime options of a command that evaluates runs (not evaluation settings): `--best`,
    `--data-dir`, `--quiet` (unless `quiet=False`) and `--device`; an option `p` already has (e.g.
    from a spec field of the same name) is left as it is."""
    dests = {a.dest for a in p._actions}
    if "best" not in dests:
        p.add_argument("--best", action="store_true", help="evaluate the best snapshot, not the last")
    if "data_dir" not in dests:
        p.add_argument("--data-dir", default=None, help="where the run's dataset files are")
    if quiet and "quiet" not in dests:
        p.add_argument("--quiet", action="store_true", help="no progress output")
    if "device" not in dests:
        add_device(p)
