"""robustlab: adversarial and bit error robustness of image classifiers, and the flatness between them.

Submodules (imported on first use, listed by `dir(robustlab)`):

- `data` (datasets), `sources` (your tensors, torch Datasets and DataLoaders), `models`
  (registry, `Normalized`, clipping), `quant` (fixed-point quantization), `biterrors` (patterns,
  chips, energy), `attacks` (input attacks), `weights` (weight perturbations), `train` (`fit`
  and methods), `evaluate` (clean, adversarial, bit errors, flatness, ...), `report`,
  `checkpoint`, `runs`, `device`, `io`, `errors`, `cli`.

Example:
    >>> import robustlab as rl
    >>> {"attacks", "data", "evaluate", "models", "train"} <= set(dir(rl))
    True
"""

from __future__ import annotations

import importlib

from robustlab.errors import UserError

__version__ = "0.1.0"

_SUBMODULES = {
    "data", "models", "quant", "biterrors", "attacks", "weights", "train", "evaluate",
    "report", "checkpoint", "device", "cli", "sources", "runs", "io", "errors",
}
__all__ = ["UserError", "__version__"]


def __getattr__(name: str):
    """Import submodules lazily so `import robustlab as rl; rl.data.load(...)` works."""
    if name in _SUBMODULES:
        return importlib.import_module(f"robustlab.{name}")
    raise AttributeError(f"module 'robustlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names and every submodule (also those not imported yet)."""
    return sorted({n for n in globals() if n not in ("annotations", "importlib")} | _SUBMODULES)
