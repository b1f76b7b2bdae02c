"""Figures the capability modules do not draw themselves: flatness per run and RErr per patch
location mode. Pure functions of result dicts (`robustlab flatness`, `robustlab.experiments.patches`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.report.figures import pyplot, save, wilson_bars
from robustlab.report.stats import mean_interval


def plot_flatness_bars(results: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """Flatness per run, one bar per relative radius ξ."""
    if not results:
        raise UserError("no flatness results to plot")
    xis = sorted({d["xi"] for _, r in results for d in r.get("details") or []})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(results) * max(1, len(xis)) + 2), 3.6))
    width = 0.8 / max(1, len(xis))
    for j, xi in enumerate(xis):
        vals, lo, hi = [], [], []
        for _, r in results:
            match = [d for d in r.get("details") or [] if d["xi"] == xi]
            d = match[0] if match else {}
            v = d.get("flatness", float("nan"))
            vals.append(v)
            losses, base = d.get("perturbed_losses"), d.get("loss")
            iv = (mean_interval([x - base for x in losses])
                  if isinstance(losses, list) and base is not None else None)
            lo.append(max(0.0, v - iv[0]) if iv else 0.0)
            hi.append(max(0.0, iv[1] - v) if iv else 0.0)
        pos = [i + (j - (len(xis) - 1) / 2) * width for i in range(len(results))]
        ax.bar(pos, vals, width=width * 0.95, label=f"ξ = {xi:g}", color=f"C{j % 10}",
               yerr=[lo, hi] if any(lo) or any(hi) else None, error_kw={"lw": 1, "capsize": 3})
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([lab for lab, _ in results], rotation=20, ha="right")
    kinds = sorted({f"{r.get('flatness_kind')}-case flatness of the {r.get('variant', 'robust')} loss"
                    for _, r in results})
    ax.set_ylabel("flatness (loss increase)")
    ax.set_title(f"{'; '.join(kinds)}" + (f", ξ = {xis[0]:g}" if len(xis) == 1 else "")
                 + " (lower is flatter)")
    ax.grid(True, axis="y", alpha=0.3)
    if len(xis) > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
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
        rates = [(r.get("locations") or {}).get(loc, {}).get("rerr", float("nan"))
                 for _, r in results]
        pos = [i + (j - (len(locs) - 1) / 2) * width for i in range(len(results))]
        ax.bar(pos, [100 * v for v in rates], width=width * 0.95, label=loc, color=f"C{j % 10}",
               yerr=wilson_bars(rates, [r.get("n") for _, r in results]),
               error_kw={"lw": 0.8, "capsize": 2})
    ax.scatter(range(len(results)), [100 * (r.get("clean") or {}).get("err", float("nan"))
                                     for _, r in results], marker="_", s=400, color="k",
               label="clean Err", zorder=3)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([lab for lab, _ in results], rotation=20, ha="right")
    ax.set_ylabel("RErr (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(title="patch location", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("robust error under adversarial patches by location mode")
    fig.tight_layout()
    return save(fig, path, dpi=110)
