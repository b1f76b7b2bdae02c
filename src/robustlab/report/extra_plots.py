"""Figures the capability modules do not draw themselves: flatness per run and RErr per patch
location mode. Pure functions of result dicts (`robustlab flatness`, `robustlab.experiments.patches`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.report.figures import pyplot, save


def plot_flatness_bars(results: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """Flatness per run, one bar per relative radius ξ."""
    if not results:
        raise UserError("no flatness results to plot")
    xis = sorted({d["xi"] for _, r in results for d in r.get("details") or []})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(results) * max(1, len(xis)) + 2), 3.6))
    width = 0.8 / max(1, len(xis))
    for j, xi in enumerate(xis):
        vals = []
        for _, r in results:
            match = [d["flatness"] for d in r.get("details") or [] if d["xi"] == xi]
            vals.append(match[0] if match else float("nan"))
        pos = [i + (j - (len(xis) - 1) / 2) * width for i in range(len(results))]
        ax.bar(pos, vals, width=width * 0.95, label=f"ξ = {xi:g}", color=f"C{j % 10}")
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([lab for lab, _ in results], rotation=20, ha="right", fontsize="small")
    kinds = sorted({f"{r.get('flatness_kind')}-case flatness of the {r.get('variant', 'robust')} loss"
                    for _, r in results})
    ax.set_ylabel("flatness (loss increase)")
    ax.set_title(f"{'; '.join(kinds)}: lower is flatter", fontsize="medium")
    ax.grid(True, axis="y", alpha=0.3)
    if len(xis) > 1:
        ax.legend(fontsize="small")
    return save(fig, path, dpi=110)


def plot_patch_locations(results: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """RErr (%) under adversarial patches per location mode (fixed, random, optimized), one bar
    group per run (results of `robustlab.experiments.patches`)."""
    if not results:
        raise UserError("no patch results to plot")
    locs: list[str] = []
    for _, r in results:
        locs += [k for k in r.get("locations") or {} if k not in locs]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(results) + 2), 3.6))
    width = 0.8 / max(1, len(locs))
    for j, loc in enumerate(locs):
        vals = [100 * (r.get("locations") or {}).get(loc, {}).get("rerr", float("nan"))
                for _, r in results]
        pos = [i + (j - (len(locs) - 1) / 2) * width for i in range(len(results))]
        ax.bar(pos, vals, width=width * 0.95, label=loc, color=f"C{j % 10}")
    ax.scatter(range(len(results)), [100 * (r.get("clean") or {}).get("err", float("nan"))
                                     for _, r in results], marker="_", s=400, color="k",
               label="clean Err", zorder=3)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([lab for lab, _ in results], rotation=20, ha="right", fontsize="small")
    ax.set_ylabel("RErr (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", title="patch location", title_fontsize="small",
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("robust error under adversarial patches by location mode", fontsize="medium")
    return save(fig, path, dpi=110)
