"""Training: the loop (`fit`), its configuration, and pluggable methods."""

from robustlab.train.methods import METHODS, Method, create, discover, register
from robustlab.train.trainer import TrainConfig, TrainContext, fit

__all__ = ["METHODS", "Method", "TrainConfig", "TrainContext", "create", "discover", "fit", "register"]


def __getattr__(name: str):
    """Method classes by their class name, e.g. `rl.train.CCAT`, once their modules are imported."""
    for cls in discover().values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module 'robustlab.train' has no attribute {name!r}")
