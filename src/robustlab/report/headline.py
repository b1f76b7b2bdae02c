"""The story first: which model is most robust to what, at what clean-error cost, and how sure.

Everything here is computed from the summary table's rows (`robustlab.report.rows`): the
threats shown (`headline_rows`), the clean vs robust error scatter with the Pareto front
(`plot_tradeoff`), the generated sentences (`threat_summary`, `model_summary`) — which call a
model best only where its 95 % interval is separated from the runner-up's — and the sanity flags
that the attack evaluations recorded (`sanity_flags`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.report import stats
from robustlab.report.figures import hide_unused, panel_grid, save
from robustlab.report.metric import Metric
from robustlab.report.rows import Row, Table, fmt_interval, fmt_number

MARKERS = "osD^vP*Xh<>p"

_LP = re.compile(r"^RErr (linf|l2|l1|l0|frames|patch)([:@=-][\w.:@=-]*)?$")  # suite keys
_RATE = re.compile(r"^RErr p=([\d.e-]+)%$")
_BITS = re.compile(r"^RErr (\d+) bits( \((?:worst|max)\))?$")


def _informative_last(rows: list[Row]) -> Row | None:
    good = [r for r in rows if not r.note]
    return (good or rows)[-1] if rows else None


def headline_rows(table: Table) -> list[Row]:
    """The rows of the headline: robust error per input threat (the suite's Lp balls, frames,
    patch), random bit errors at the largest rate that still tells models apart, adversarial bit
    errors at the largest such budget (the worst case over attacks when recorded)."""
    out = [r for r in table.rows if _LP.match(r.key)]
    rates = sorted((r for r in table.rows if _RATE.match(r.key)),
                   key=lambda r: float(_RATE.match(r.key).group(1)))  # type: ignore[union-attr]
    pick = _informative_last(rates)
    if pick:
        out.append(pick)
    bits = [r for r in table.rows if _BITS.match(r.key)]
    worst = [r for r in bits if _BITS.match(r.key).group(2)]  # type: ignore[union-attr]
    bits = sorted(worst or bits, key=lambda r: int(_BITS.match(r.key).group(1)))  # type: ignore[union-attr]
    pick = _informative_last(bits)
    if pick:
        out.append(pick)
    return out


def clean_row(table: Table) -> Row | None:
    return table.row("Err")


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better)."""
    out = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points)
                   if j != i):
            out.append(i)
    return out


def _pairs(table: Table, row: Row) -> list[tuple[int, Metric, Metric]]:
    clean = clean_row(table)
    if clean is None:
        return []
    return [(i, c, m) for i, (c, m) in enumerate(zip(clean.cells, row.cells))
            if c is not None and m is not None and not math.isnan(c.value)
            and not math.isnan(m.value)]


def _err(m: Metric) -> list[float]:
    if m.interval is None:
        return [0.0, 0.0]
    return [100 * max(0.0, m.value - m.lo), 100 * max(0.0, m.hi - m.value)]  # type: ignore[operator]


def plot_tradeoff(table: Table, rows: Sequence[Row], path: str | Path) -> Path:
    """One panel per row: clean error (x) against that row's error (y), one point per model with
    95 % error bars; filled markers joined by a dashed line form the Pareto front (no model has
    both lower clean and lower robust error)."""
    panels = [(r, _pairs(table, r)) for r in rows]
    panels = [(r, p) for r, p in panels if p]
    if not panels:
        raise UserError("no clean error and robust error to plot against each other")
    plt, fig, axes = panel_grid(len(panels), 3.35, 3.1, sharex=True)
    for ax, (row, pts) in zip(axes.flat, panels):
        xy = [(c.value, m.value) for _, c, m in pts]
        front = set(pareto(xy))
        for j, (i, c, m) in enumerate(pts):
            color, marker = f"C{i % 10}", MARKERS[i % len(MARKERS)]
            ax.errorbar([100 * c.value], [100 * m.value], xerr=[[e] for e in _err(c)],
                        yerr=[[e] for e in _err(m)], fmt="none", ecolor=color, lw=0.9,
                        alpha=0.45, capsize=0, zorder=2)
            ax.plot([100 * c.value], [100 * m.value], marker=marker, ms=8, ls="",
                    color=color, mfc=color if j in front else "white", mec=color, mew=1.8,
                    zorder=4)
        fx = sorted((100 * xy[j][0], 100 * xy[j][1]) for j in front)
        if len(fx) > 1:
            ax.plot([p[0] for p in fx], [p[1] for p in fx], ls="--", color="0.25", lw=1.2, zorder=3)
        ax.set_title(_wrap(row.label), fontsize=10)
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("clean Err (%)")
        ax.set_ylabel(f"{row.key.split(' ')[0]} (%)")
        ax.grid(True, alpha=0.3)
        ax.margins(0.15)
        if row.note:
            ax.text(0.5, 0.02, "cannot discriminate", transform=ax.transAxes, ha="center",
                    va="bottom", fontsize=8, color="0.35")
    hide_unused(axes, len(panels))
    handles = [plt.Line2D([], [], marker=MARKERS[i % len(MARKERS)], color=f"C{i % 10}", ls="",
                          ms=7, label=m) for i, m in enumerate(table.models)]
    handles.append(plt.Line2D([], [], color="0.25", ls="--", label="Pareto front (filled)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06 + 0.04 * (len(handles) > 7), 1, 1))
    return save(fig, path, dpi=100)


def _wrap(text: str, width: int = 34) -> str:
    words, lines, cur = text.split(" "), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return "\n".join(lines + [cur])


def _show(row: Row, m: Metric) -> str:
    unit = " %" if row.unit == "%" else ""
    iv = fmt_interval(m, row.unit)
    return f"{fmt_number(m.value, row.unit)}{unit}" + (f" {iv}" if iv else "")


def _cost(table: Table, i: int) -> str:
    """'+x.x points clean error' relative to the model with the lowest clean error."""
    clean = clean_row(table)
    if clean is None or clean.cells[i] is None:
        return ""
    vals = [(j, c.value) for j, c in enumerate(clean.cells) if c is not None]
    j0, low = min(vals, key=lambda jc: jc[1])
    d = 100 * (clean.cells[i].value - low)  # type: ignore[union-attr]
    if j0 == i or d == 0:
        return "with the lowest clean error"
    sep = stats.separated(clean.cells[i].interval, clean.cells[j0].interval)  # type: ignore[union-attr]
    return (f"at +{d:.1f} points clean error vs {table.models[j0]}"
            + ("" if sep else " (within noise)"))


def threat_summary(table: Table, rows: Sequence[Row]) -> list[str]:
    """One sentence per headline row: the separated winner and its clean-error cost, or the
    models that are tied with the lowest value, or why the row cannot discriminate."""
    out = []
    flat: dict[str, list[str]] = {}
    for row in rows:
        vals = row.finite()
        if not vals:
            continue
        if row.note:
            flat.setdefault(row.note, []).append(row.label)
            continue
        sign = -1.0 if row.better == "higher" else 1.0
        ranked = sorted(vals, key=lambda ic: sign * ic[1].value)
        i0, m0 = ranked[0]
        if len(ranked) == 1:
            out.append(f"{row.label}: {table.models[i0]} {_show(row, m0)} (one model).")
        elif row.best is not None:
            i1, m1 = ranked[1]
            cost = _cost(table, i0)
            out.append(f"Most robust to {row.label}: {table.models[i0]} {_show(row, m0)} vs "
                       f"{table.models[i1]} {_show(row, m1)}" + (f", {cost}." if cost else "."))
        else:
            tied = [table.models[i] for i, m in ranked[1:]
                    if not stats.separated(m.interval, m0.interval)]
            out.append(f"{row.label}: no separated winner — lowest {table.models[i0]} "
                       f"{_show(row, m0)}, within noise of it: {', '.join(tied) or 'none'}.")
    for note, labels in flat.items():
        out.append(f"Cannot tell the models apart ({note}): {', '.join(labels)}.")
    return out


def model_summary(table: Table, rows: Sequence[Row]) -> list[str]:
    """Per model: clean error with its interval and cost, the headline threats where it is the
    separated best, and those where it is tied with the best within noise."""
    clean = clean_row(table)
    out = []
    for i, model in enumerate(table.models):
        parts = [f"{model}:"]
        if clean is not None and clean.cells[i] is not None:
            cost = _cost(table, i)
            cost = cost.replace("at +", "+").replace(" clean error vs ", " above ") \
                .replace(" (within noise)", ", within noise") if cost.startswith("at +") \
                else "the lowest"
            parts.append(f"clean Err {_show(clean, clean.cells[i])}"  # type: ignore[arg-type]
                         f" ({cost}).")
        best, tied = [], []
        for row in rows:
            if row.note or row.cells[i] is None:
                continue
            if row.best == i:
                best.append(row.label)
                continue
            sign = -1.0 if row.better == "higher" else 1.0
            ranked = sorted(row.finite(), key=lambda ic: sign * ic[1].value)
            if ranked and row.best is None and (ranked[0][0] == i or not stats.separated(
                    row.cells[i].interval, ranked[0][1].interval)):  # type: ignore[union-attr]
                tied.append(row.label)
        parts.append(f"Most robust (separated) to: {', '.join(best) if best else 'none'}.")
        if tied:
            parts.append(f"Tied for best within noise on: {', '.join(tied)}.")
        out.append(" ".join(parts))
    return out


def sanity_flags(runs: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The sanity flags recorded in adversarial results (a result's `flags` list and each
    threat's), as [{model, result, threat, name, message, numbers}], and the number of
    results that recorded flags at all (0: this evaluation version checks nothing)."""
    out, checked = [], 0
    for r in runs:
        for name, res in r["results"].items():
            if not isinstance(res, dict):
                continue
            threats = res.get("threats")
            sources = [("", res.get("flags"))]
            sources += [(k, t.get("flags")) for k, t in
                        (threats.items() if isinstance(threats, dict) else []) if isinstance(t, dict)]
            if any(isinstance(f, list) for _, f in sources):
                checked += 1
            for threat, flags in sources:
                for f in flags if isinstance(flags, list) else []:
                    if isinstance(f, dict):
                        nums = f.get("numbers")
                        t = f.get("threat") or (nums.get("threat") if isinstance(nums, dict)
                                                else None) or threat
                        out.append({"model": r["label"], "result": name, "threat": str(t or ""),
                                    "name": str(f.get("name", "")),
                                    "message": str(f.get("message", "")),
                                    "numbers": f.get("numbers")})
                    elif isinstance(f, str):
                        out.append({"model": r["label"], "result": name, "threat": threat,
                                    "name": f, "message": "", "numbers": None})
    return out, checked


def attack_contributions(runs: Sequence[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """Per model and threat of the adversarial results that record it (`by_attack`): what each
    attack of the suite added — (model, result, threat, 'APGD-CE +12 · Square +0 …')."""
    out = []
    for r in runs:
        for name, res in r["results"].items():
            threats = res.get("threats") if isinstance(res, dict) else None
            for key, t in (threats.items() if isinstance(threats, dict) else []):
                by = t.get("by_attack") if isinstance(t, dict) else None
                if not isinstance(by, dict) or not by:
                    continue
                text = " · ".join(f"{a} +{v.get('added', '?')}" for a, v in by.items()
                                  if isinstance(v, dict))
                n = t.get("n")
                out.append((str(r["label"]), name, key, text + (f" (of {n})" if n else "")))
    return out
