"""Typed command-line values: each parser's error names the bad value and what is allowed.

Below the task layer (specs use them for their generated options) and used by `cli`."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


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
seed_int = _number(int, lambda v: 0 <= v < 2 ** 64, "an integer in 0..2^64−1")
positive_float = _number(float, lambda v: 0 < v < math.inf, "a finite number > 0")
nonneg_float = _number(float, lambda v: 0 <= v < math.inf, "a finite number ≥ 0")
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
