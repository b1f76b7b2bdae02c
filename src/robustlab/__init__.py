"""robustlab: adversarial and bit error robustness of image classifiers, and the flatness between them."""

from __future__ import annotations

import importlib

from robustlab.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]

_SUBMODULES = {
    "data", "models", "quant", "biterrors", "attacks", "weights", "train", "evaluate",
    "report", "checkpoint", "device", "cli",
}


def __getattr__(name: str):
    """Import submodules lazily so `import robustlab as rl; rl.data.load(...)` works."""
    if name in _SUBMODULES:
        return importlib.import_module(f"robustlab.{name}")
    raise AttributeError(f"module 'robustlab' has no attribute {name!r}")
