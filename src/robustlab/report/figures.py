"""What every figure module shares: matplotlib without a display, atomic PNG writes, result loading."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.io import atomic_write, read_json

Result = Mapping[str, Any] | str | Path


# Sizes chosen so that text stays at 11-14 px when a figure is shown at the report's width.
STYLE = {"font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "xtick.labelsize": 9,
         "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 11}


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), with the report's font sizes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def panel_grid(n: int, width: float, height: float, *, extra: float = 0.5,
               **share: Any) -> tuple[Any, Any, Any]:
    """pyplot, a figure and its 2-D axes for `n` panels, at most 4 a row, each `width` × `height`
    inches plus `extra` inches below for a shared legend (`share`: sharex/sharey)."""
    import math

    plt = pyplot()
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + extra),
                             squeeze=False, **share)
    return plt, fig, axes


def hide_unused(axes: Any, n: int) -> None:
    """Blank the panels after the first `n` of a grid."""
    for ax in list(axes.flat)[n:]:
        ax.axis("off")


def wilson_bars(rates: Any, ns: Any) -> list[list[float]]:
    """Matplotlib error bars (2×N, in %) of rates with Wilson 95 % intervals over n examples
    each (0 where n or the rate is unknown)."""
    import math

    from robustlab.report.stats import wilson

    lo, hi = [], []
    for r, n in zip(rates, ns):
        if not isinstance(n, (int, float)) or n <= 0 or r is None or math.isnan(r):
            lo.append(0.0)
            hi.append(0.0)
            continue
        a, b = wilson(min(n, max(0, round(r * n))), n)
        lo.append(100 * max(0.0, r - a))
        hi.append(100 * max(0.0, b - r))
    return [lo, hi]


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
