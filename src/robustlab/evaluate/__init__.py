"""Evaluation: clean error, adversarial suites, bit error sweeps, flatness.

`rl.evaluate.clean(...)`, `rl.evaluate.adversarial(...)`, `rl.evaluate.bit_errors(...)` and
`rl.evaluate.flatness(...)` are the functions of the submodules of the same idea, imported lazily.
"""

from __future__ import annotations

import importlib

_FUNCTIONS = {"clean": "clean", "adversarial": "adversarial", "bit_errors": "biterrors",
              "flatness": "flatness", "bit_attack": "bitattack"}


def __getattr__(name: str):
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(f"robustlab.evaluate.{_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module 'robustlab.evaluate' has no attribute {name!r}")
