"""Figures of bit error results: RErr vs bit error rate, and RErr/energy vs supply voltage.

Pure functions of the result dicts written by `robustlab biterrors` and `robustlab energy` (or
paths to those JSON files); nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.report.figures import Result, load_result, pyplot, save


def _load(r: Result) -> Mapping[str, Any]:
    d = load_result(r, "bit error result")
    if not isinstance(r, Mapping):
        d.setdefault("label", Path(r).parent.parent.name)
    return d






def plot_rerr_vs_rate(results: Result | Sequence[Result], path: str | Path, *,
                      labels: Sequence[str] | None = None, title: str | None = None) -> Path:
    """RErr (%) against bit error rate (%, log x) for one or several runs on the same axes.

    Each curve is the mean over patterns with a min–max band; rates of 0 are left out (log axis).
    A result's label is `labels[i]`, else its "label" entry, else "run i".
    """
    rs = [_load(r) for r in ([results] if isinstance(results, (Mapping, str, Path)) else results)]
    if not rs:
        raise UserError("no bit error results to plot")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for i, r in enumerate(rs):
        try:
            rates, rerr = r["rates"], r["rerr"]
            pts = [(100 * p, 100 * m, 100 * lo, 100 * hi) for p, m, lo, hi
                   in zip(rates, rerr["mean"], rerr["min"], rerr["max"]) if p > 0]
        except (KeyError, TypeError):
            plt.close(fig)
            raise UserError(f"result {i} is not a bit error result (needs rates and rerr)") from None
        pts.sort()
        label = labels[i] if labels is not None and i < len(labels) else r.get("label", f"run {i}")
        if not pts:
            continue
        x, m, lo, hi = (list(v) for v in zip(*pts))
        ci = _intervals(r, [p for p in rates if p > 0])
        (line,) = ax.plot(x, m, marker="o", ms=3, label=f"{label} (Err {100 * r['clean_err']:.2f}%)")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        if ci:
            dodge = 1 + 0.03 * (i - (len(rs) - 1) / 2)  # keep the error bars of models apart
            ax.errorbar([v * dodge for v in x], m, yerr=[[max(0.0, a - b) for a, (b, _) in zip(m, ci)],
                                    [max(0.0, c - a) for a, (_, c) in zip(m, ci)]],
                        fmt="none", ecolor=line.get_color(), lw=1, capsize=2.5)
    ax.set_xscale("log")
    ticks = sorted({100 * p for r in rs for p in (r.get("rates") or []) if p > 0})
    if ticks:
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel("bit error rate p (%, log scale)")
    ax.set_ylabel("RErr (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    k = rs[0].get("patterns")
    ax.set_title(title or f"robust error under random bit errors ({k} patterns)")
    fig.tight_layout()
    return save(fig, path)


def _intervals(r: Mapping[str, Any], rates: list[float]) -> list[tuple[float, float]] | None:
    """95 % intervals (in %) of the mean RErr per rate, as in the summary table."""
    from robustlab.report.metric import rate_label
    from robustlab.report.summary import result_values

    vals = result_values("biterrors", dict(r) | {"evaluator": "biterrors"})
    out = []
    for p in sorted(rates):
        m = vals.get(f"RErr p={rate_label(p)}")
        if m is None or m.interval is None:
            return None
        out.append((100 * m.lo, 100 * m.hi))  # type: ignore[operator]
    return out


def plot_energy(result: Result, path: str | Path, *, title: str | None = None) -> Path:
    """Mean RErr and relative energy against supply voltage, with the lowest safe voltage marked."""
    r = _load(result)
    try:
        rows = r["voltages"]
        v = [row["voltage"] for row in rows]
        rerr = [100 * row["rerr_mean"] for row in rows]
        energy = [row["relative_energy"] for row in rows]
    except (KeyError, TypeError):
        raise UserError("not an energy result (needs voltages)") from None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(v, rerr, marker="o", ms=3, color="C0", label="RErr (mean)")
    ax.axhline(100 * (r["clean_err"] + r["tolerance"]), color="C0", ls=":", lw=1,
               label="clean Err + tolerance")
    ax.set_xlabel("supply voltage")
    ax.set_ylabel("RErr (%)")
    ax.invert_xaxis()
    ax2 = ax.twinx()
    ax2.plot(v, energy, marker="s", ms=3, color="C1", label="relative energy")
    ax2.set_ylabel("energy per access (relative)")
    if r.get("lowest_safe_voltage") is not None:
        ax.axvline(r["lowest_safe_voltage"], color="C2", ls="--", lw=1,
                   label=f"lowest safe {r['lowest_safe_voltage']:g} "
                         f"(saves {100 * r['energy_saved']:.1f}%)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize="small", loc="center left")
    ax.set_title(title or "robust error and energy vs voltage", fontsize="medium")
    return save(fig, path)
