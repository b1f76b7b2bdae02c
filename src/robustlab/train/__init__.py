"""Training: the loop (`fit`), its configuration, and pluggable methods."""

import importlib
import pkgutil

from robustlab.train.methods import METHODS, Method, create, discover, options, register
from robustlab.train.trainer import TrainConfig, TrainContext, fit

__all__ = ["METHODS", "Method", "TrainConfig", "TrainContext", "create", "discover", "fit",
           "options", "register"]


def __getattr__(name: str):
    """Classes of the method modules by name, e.g. `rl.train.CCAT`, `rl.train.BitErrorTraining`,
    `rl.train.FixedPattern`."""
    if not name.startswith("_"):
        for info in pkgutil.iter_modules(__path__):
            mod = importlib.import_module(f"{__name__}.{info.name}")
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and cls.__module__ == mod.__name__:
                return cls
    raise AttributeError(f"module 'robustlab.train' has no attribute {name!r}")
