"""Figures the capability modules do not draw themselves: RErr vs adversarial bit budget and
flatness per run. Pure functions of result dicts (as written by `robustlab bitattack` and
`robustlab flatness`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.io import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    plt = _plt()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110,
                                                          bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_bit_attack(results: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """RErr (%) against the number of adversarially flipped bits, one colour per run and one line
    style per attack method (projected attack solid, BFA dashed, random dotted)."""
    if not results:
        raise UserError("no bit attack results to plot")
    styles = {"attack": "-", "bfa": "--", "random": ":"}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, r) in enumerate(results):
        for method, res in (r.get("results") or {}).items():
            budgets = res.get("budget") or r.get("budgets") or []
            pts = [(b, 100 * v) for b, v in zip(budgets, res.get("rerr") or []) if v is not None]
            if not pts:
                continue
            x, y = zip(*pts)
            name = label if method == "attack" else f"{label} ({method})"
            ax.plot(x, y, styles.get(method, "-."), color=f"C{i % 10}", marker="o", ms=3,
                    label=name)
        if r.get("clean_err") is not None:
            ax.axhline(100 * r["clean_err"], color=f"C{i % 10}", lw=0.6, alpha=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("flipped bits (budget ε)")
    ax.set_ylabel("RErr (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.set_title("robust error under adversarial bit errors (thin lines: clean Err)",
                 fontsize="medium")
    return _save(fig, path)


def plot_flatness_bars(results: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """Flatness per run (one bar group per ξ), with the robust loss printed above each bar."""
    if not results:
        raise UserError("no flatness results to plot")
    xis = sorted({d["xi"] for _, r in results for d in r.get("details") or []})
    plt = _plt()
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
    kinds = sorted({f"{r.get('flatness_kind')} ({r.get('variant', 'robust')})" for _, r in results})
    ax.set_ylabel("flatness (loss increase)")
    ax.set_title(f"{', '.join(kinds)}-case flatness: lower is flatter", fontsize="medium")
    ax.grid(True, axis="y", alpha=0.3)
    if len(xis) > 1:
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_patch_locations(results: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """RErr (%) under adversarial patches per location mode (fixed, random, optimized), one bar
    group per run (results of `robustlab.experiments.patches`)."""
    if not results:
        raise UserError("no patch results to plot")
    locs: list[str] = []
    for _, r in results:
        locs += [k for k in r.get("locations") or {} if k not in locs]
    plt = _plt()
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
    return _save(fig, path)
