"""Figures of weight perturbations: loss landscapes, the flatness ↔ robust generalization study,
and robust error against the number of adversarially flipped bits.

Every function here is a pure function of result dicts (or result JSON paths) written by
`robustlab flatness` and `robustlab bitattack`; nothing is recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.report.figures import Result, hide_unused, load_result, panel_grid, pyplot, save


def _load(r: Result) -> dict[str, Any]:
    d = load_result(r, "flatness result")
    if not isinstance(r, Mapping):
        d.setdefault("source", str(r))
    return d






def plot_landscape(result: dict[str, Any], path: str | Path) -> Path:
    """Clean and robust loss along a 1-D direction (two curves) or over a 2-D plane (two
    contour panels) from a `landscape` result."""
    plt = pyplot()
    axis = result["axis"]
    what = f"{result['direction']} direction" + (" (+ random)" if result["dims"] == 2 else "")
    if result["dims"] == 1:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(axis, result["clean_loss"], label="clean loss", color="tab:blue")
        ax.plot(axis, result["robust_loss"], label="robust loss", color="tab:red")
        if result["direction"] == "adversarial" and result.get("xi"):
            for s in (-1, 1):
                ax.axvline(s * result["xi"], color="gray", lw=0.8, ls=":")
        ax.set_xlabel("α (relative weight perturbation)")
        ax.set_ylabel("cross-entropy")
        ax.set_title(f"loss landscape, {what}")
        ax.legend()
    else:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        for ax, key in zip(axes, ("clean_loss", "robust_loss")):
            cs = ax.contourf(axis, axis, [list(r) for r in zip(*result[key])], levels=20,
                             cmap="viridis")
            fig.colorbar(cs, ax=ax)
            ax.plot([0], [0], "w+")
            ax.set_title(key.replace("_", " "))
            ax.set_xlabel("α₁")
            ax.set_ylabel("α₂")
        fig.suptitle(f"loss landscape, {what}")
    return save(fig, path)


def plot_landscapes(items: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """1-D landscapes of several models side by side on one shared y-axis (clean and robust loss
    along each model's direction), so that their heights can be compared."""
    items = [(lab, r) for lab, r in items if r.get("dims") == 1]
    if not items:
        raise UserError("no 1-D landscape results to plot")
    _, fig, axes = panel_grid(len(items), 3.2, 2.7, sharey=True)
    for ax, (label, r) in zip(axes.flat, items):
        ax.plot(r["axis"], r["clean_loss"], label="clean loss", color="tab:blue", marker="o", ms=3)
        ax.plot(r["axis"], r["robust_loss"], label="robust loss", color="tab:red", marker="s", ms=3)
        if r.get("direction") == "adversarial" and r.get("xi"):
            for sgn in (-1, 1):
                ax.axvline(sgn * r["xi"], color="gray", lw=0.8, ls=":")
        ax.set_title(f"{label} ({r.get('direction', '?')})")
        ax.set_xlabel("α (relative weight step)")
        ax.grid(True, alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("cross-entropy")
    hide_unused(axes, len(items))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save(fig, path, dpi=100)


def points(results: Iterable[Result], *, xi: float | None = None) -> list[dict[str, Any]]:
    """One point per result (run or snapshot): label, kind, ξ, flatness, robust test loss and
    test−train robust loss gap (None when the result has no train loss). `xi` picks the entry of
    results that hold several radii (default: each result's first)."""
    out = []
    for r in map(_load, results):
        if "details" not in r or "flatness_kind" not in r:
            raise UserError(f"{r.get('source', 'result')} is not a flatness result")
        entry = r["details"][0]
        if xi is not None:
            match = [d for d in r["details"] if math.isclose(d["xi"], xi, rel_tol=1e-9)]
            if not match:
                continue
            entry = match[0]
        out.append({"label": r.get("label") or r.get("run") or r.get("source", "?"),
                    "kind": r["flatness_kind"], "variant": r.get("variant"), "xi": entry["xi"],
                    "flatness": entry["flatness"], "loss": r["loss"], "gap": r.get("gap")})
    return out


def kendall(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Kendall τ and its two-sided p-value (NaN with fewer than 3 points)."""
    if len(xs) < 3:
        return float("nan"), float("nan")
    from scipy.stats import kendalltau

    tau, p = kendalltau(xs, ys)
    return float(tau), float(p)


def correlation(results: Iterable[Result], *, xi: float | None = None) -> dict[str, Any]:
    """Kendall τ between flatness and the robust test loss, and between flatness and the
    test−train robust loss gap, over the given results (all of one flatness kind)."""
    pts = points(results, xi=xi)
    kinds = {(p["kind"], p["variant"]) for p in pts}
    if len(kinds) > 1:
        raise UserError(f"results mix flatness kinds {sorted(kinds)}; correlate one kind at a time")
    f = [p["flatness"] for p in pts]
    tau_l, p_l = kendall(f, [p["loss"] for p in pts])
    with_gap = [p for p in pts if p["gap"] is not None]
    tau_g, p_g = kendall([p["flatness"] for p in with_gap], [p["gap"] for p in with_gap])
    return {"n": len(pts), "kind": pts[0]["kind"] if pts else None, "tau_loss": tau_l,
            "p_loss": p_l, "tau_gap": tau_g, "p_gap": p_g, "points": pts}


def _label_offsets(xs: Sequence[float], ys: Sequence[float]) -> list[tuple[float, float]]:
    """Text offsets (points) that spread the labels of nearby points: alternate sides along y."""
    order = sorted(range(len(xs)), key=lambda i: (ys[i], xs[i]))
    out = [(0.0, 0.0)] * len(xs)
    for rank, i in enumerate(order):
        out[i] = (8.0 if rank % 2 == 0 else -8.0, 6.0 if (rank // 2) % 2 == 0 else -10.0)
    return out


def plot_correlation(results: Iterable[Result], path: str | Path, *,
                     xi: float | None = None, annotate: bool = True) -> dict[str, Any]:
    """Two scatter panels — robust test loss vs flatness and test−train robust loss gap vs
    flatness — titled with Kendall τ and its two-sided p-value; returns the `correlation` dict."""
    c = correlation(results, xi=xi)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0))
    for ax, key, name in ((axes[0], "loss", "robust test loss"),
                          (axes[1], "gap", "test − train robust loss")):
        pts = [p for p in c["points"] if p[key] is not None]
        xs, ys = [p["flatness"] for p in pts], [p[key] for p in pts]
        ax.scatter(xs, ys, s=30, zorder=3)
        if annotate:
            for p, (dx, dy) in zip(pts, _label_offsets(xs, ys)):
                ax.annotate(Path(str(p["label"])).name, (p["flatness"], p[key]), fontsize=9,
                            xytext=(dx, dy), textcoords="offset points",
                            ha="left" if dx > 0 else "right", annotation_clip=False)
        tau = c["tau_loss"] if key == "loss" else c["tau_gap"]
        pv = c["p_loss"] if key == "loss" else c["p_gap"]
        ax.set_title(f"{name}\nKendall τ = {tau:.2f} (p = {pv:.2g}, {len(pts)} models)")
        ax.set_xlabel(f"{c['kind'] or ''}-case flatness (loss increase)")
        ax.set_ylabel(name)
        ax.margins(0.25)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    save(fig, path)
    return c


METHOD_NAMES = {"attack": "projected attack", "bfa": "BFA", "random": "random flips",
                "worst": "worst case (attack, BFA)"}
METHOD_STYLES = {"attack": "-", "bfa": "-.", "random": ":", "worst": "--"}


def _wilson_err(vals: Sequence[float], n: Any) -> list[list[float]]:
    from robustlab.report.figures import wilson_bars

    return wilson_bars(list(vals), [n] * len(vals))


def plot_bit_attack(results: Result | Sequence[Result], path: str | Path, *,
                    labels: Sequence[str] | None = None) -> Path:
    """RErr (%) against the bit budget (log x) for every method of one or several `bitattack`
    results: one colour per result (model), one line style per method that was run (projected
    attack solid, BFA dash-dotted, random flips dotted, other methods dashed), 95 % Wilson
    intervals over the test examples as error bars; legends for models and methods outside."""
    rs = [results] if isinstance(results, (dict, str, Path)) else list(results)
    rs = [_load(r) for r in rs]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods: list[str] = []
    model_handles = []
    for i, r in enumerate(rs):
        if "results" not in r or "budgets" not in r:
            raise UserError(f"{r.get('source', 'result')} is not a bitattack result")
        tag = labels[i] if labels else (Path(str(r["run"])).name if "run" in r else f"run {i + 1}")
        color = colors[i % len(colors)]
        for m, vals in r["results"].items():
            if not isinstance(vals, dict) or not vals.get("rerr"):
                continue
            if m not in methods:
                methods.append(m)
            bud = vals.get("budget") or r["budgets"]
            dodge = 1 + 0.025 * (i - (len(rs) - 1) / 2)  # keep the error bars apart
            b = [max(v, 0.5) * dodge for v in bud]  # budget 0 sits at 0.5 on the log axis
            y = [100 * v for v in vals["rerr"]]
            ax.errorbar(b, y, yerr=_wilson_err(vals["rerr"], r.get("n_test")), marker="o", ms=3.5,
                        color=color, ls=METHOD_STYLES.get(m, "--"), lw=1.5, capsize=2,
                        elinewidth=0.8)
        model_handles.append(plt.Line2D([], [], color=color, lw=2, label=tag))
    ax.set_xscale("log")
    ticks = sorted({max(b, 0.5) for r in rs for b in r["budgets"]})
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" if t >= 1 else "0" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("flipped bits (budget, log scale)")
    ax.set_ylabel("RErr (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title("robust error under adversarial bit flips")
    spacer = plt.Line2D([], [], ls="", label=" ")
    method_handles = [plt.Line2D([], [], color="0.3", ls=METHOD_STYLES.get(m, "--"), lw=1.5,
                                 label=METHOD_NAMES.get(m, m)) for m in methods]
    ax.legend(handles=[plt.Line2D([], [], ls="", label="model:"), *model_handles, spacer,
                       plt.Line2D([], [], ls="", label="method:"), *method_handles],
              loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    return save(fig, path)
