"""What every figure module shares: matplotlib without a display, atomic PNG writes, result loading."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.io import atomic_write, read_json

Result = Mapping[str, Any] | str | Path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write `fig` as a PNG atomically and close it."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi,
                                                          bbox_inches="tight"))
    finally:
        pyplot().close(fig)


def load_result(r: Result, what: str = "result") -> dict[str, Any]:
    """A result dict as given, or read from its JSON file (a user error when unreadable)."""
    if isinstance(r, Mapping):
        return dict(r)
    try:
        return read_json(r)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {what} {r}: {e}") from None
