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
from robustlab.report.figures import Result, load_result, pyplot, save


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


def plot_correlation(results: Iterable[Result], path: str | Path, *,
                     xi: float | None = None, annotate: bool = True) -> dict[str, Any]:
    """Two scatter panels — robust test loss vs flatness and test−train robust loss gap vs
    flatness — titled with Kendall τ; returns the `correlation` dict."""
    c = correlation(results, xi=xi)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key, name in ((axes[0], "loss", "robust test loss"),
                          (axes[1], "gap", "test − train robust loss")):
        pts = [p for p in c["points"] if p[key] is not None]
        ax.scatter([p["flatness"] for p in pts], [p[key] for p in pts], s=18)
        if annotate:
            for p in pts:
                ax.annotate(Path(str(p["label"])).name, (p["flatness"], p[key]), fontsize=6,
                            alpha=0.7)
        tau = c["tau_loss"] if key == "loss" else c["tau_gap"]
        ax.set_title(f"{name}: Kendall τ = {tau:.2f}")
        ax.set_xlabel(f"{c['kind'] or ''}-case flatness")
        ax.set_ylabel(name)
    save(fig, path)
    return c


def plot_bit_attack(results: Result | Sequence[Result], path: str | Path, *,
                    labels: Sequence[str] | None = None) -> Path:
    """RErr (%) against the bit budget (log x) for every method of one or several `bitattack`
    results on the same axes (one color per result, one line style per method: attack solid,
    BFA dash-dotted, random dotted; for a single result the random flips' max is dashed)."""
    rs = [results] if isinstance(results, (dict, str, Path)) else list(results)
    rs = [_load(r) for r in rs]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    styles = {"attack": "-", "bfa": "-.", "random": ":"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(rs):
        if "results" not in r or "budgets" not in r:
            raise UserError(f"{r.get('source', 'result')} is not a bitattack result")
        tag = labels[i] if labels else (Path(str(r["run"])).name if len(rs) > 1 and "run" in r
                                        else "")
        b = [max(v, 0.5) for v in r["budgets"]]  # budget 0 sits at 0.5 on the log axis
        for j, (m, vals) in enumerate(r["results"].items()):
            color = colors[(i if len(rs) > 1 else j) % len(colors)]
            ax.plot(b, [100 * v for v in vals["rerr"]], marker="o", ms=3, color=color,
                    ls=styles.get(m, "-"), label=f"{tag} {m}".strip())
            if "rerr_max" in vals and len(rs) == 1:
                ax.plot(b, [100 * v for v in vals["rerr_max"]], ls="--", lw=0.8, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("flipped bits (budget)")
    ax.set_ylabel("RErr (%)")
    ax.set_ylim(0, 100)
    ax.set_title("adversarial bit errors")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save(fig, path)
