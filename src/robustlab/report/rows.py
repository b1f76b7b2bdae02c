"""The summary table shared by the HTML report and `robustlab table`: one function builds the
rows (`build_table`), and text, Markdown, CSV and JSON are renderings of the same rows, so every
format shows the same numbers and intervals.

A row is one metric over every model: its key (the stable name used by `--metrics` and by the
presets' findings, e.g. `RErr@99% linf`), a label that says what it is (`RErr@99% L∞ ε=0.1`),
the better direction, the unit, on how many examples/patterns/samples it was measured, each
model's value with its 95 % interval, the best model — marked only when its interval does not
overlap the runner-up's — and a note when the row cannot tell the models apart (every model at
0 % or 100 %, or every interval sharing a point).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from robustlab.errors import UserError
from robustlab.report import stats
from robustlab.report.metric import Metric

OVER = {"examples": ("image", "images"), "patterns": ("pattern", "patterns"),
        "samples": ("sample", "samples")}
ARROW = {"lower": "↓", "higher": "↑"}
LEGEND = ("Rates in %, other numbers as measured; [lo, hi]: 95 % interval (Wilson over test "
          "images for error rates; Student t over patterns for random bit errors, never narrower "
          "than Wilson over images; t over random perturbations for flatness; Hanley–McNeil for "
          "ROC AUC); ↓/↑: lower/higher is better; n: what the interval is over. Best: the best "
          "model, marked only where its interval does not overlap the runner-up's.")


@dataclass
class Row:
    """One metric over every model of a table (cells aligned with `Table.models`)."""

    group: str
    key: str
    label: str
    better: str
    unit: str
    cells: list[Metric | None]
    n: str = ""
    setting: str = ""
    best: int | None = None
    note: str = ""

    def finite(self) -> list[tuple[int, Metric]]:
        return [(i, c) for i, c in enumerate(self.cells)
                if c is not None and not math.isnan(c.value)]


@dataclass
class Table:
    """Models (display labels, unique), their run names, and the rows."""

    models: list[str]
    runs: list[str]
    rows: list[Row] = field(default_factory=list)

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)

    def groups(self) -> list[str]:
        return list(dict.fromkeys(r.group for r in self.rows))


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------

def _n_text(cells: Sequence[Metric | None]) -> str:
    ns = [(c.n, c.over) for c in cells if c is not None and c.n]
    if not ns:
        return ""
    overs = {o for _, o in ns}
    over = overs.pop() if len(overs) == 1 else ""
    lo, hi = min(n for n, _ in ns), max(n for n, _ in ns)
    word = OVER.get(over, ("", ""))[hi != 1]
    return (f"{lo}" if lo == hi else f"{lo}–{hi}") + (f" {word}" if word else "")


def best_index(row: Row) -> int | None:
    """The best model of a row when its 95 % interval is separated from the runner-up's."""
    vals = row.finite()
    if len(vals) < 2:
        return None
    sign = -1.0 if row.better == "higher" else 1.0
    ranked = sorted(vals, key=lambda ic: sign * ic[1].value)
    (i, first), (_, second) = ranked[0], ranked[1]
    if first.value == second.value or not stats.separated(first.interval, second.interval):
        return None
    return i


def flat_note(row: Row) -> str:
    """Why a row cannot tell the models apart (two or more models), or ''."""
    vals = [c for _, c in row.finite()]
    if len(vals) < 2:  # one model: nothing to tell apart
        return ""
    if row.unit == "%":
        if all(c.value <= 0 for c in vals):
            return "every model at 0 %"
        if all(c.value >= 1 for c in vals):
            return "every model at 100 %"
    if all(c.interval is not None for c in vals) \
            and stats.common_point([c.interval for c in vals]):  # type: ignore[misc]
        return "every model equal within the 95 % intervals"
    return ""


def _unique(labels: Sequence[str], names: Sequence[str]) -> list[str]:
    out = []
    for lab, name in zip(labels, names):
        out.append(lab if labels.count(lab) == 1 else f"{lab} ({name})")
    return out


def select(keys: Sequence[str], patterns: str | Sequence[str] | None) -> list[str]:
    """Metric keys matching comma-separated patterns (exact key, or a glob over keys), in the
    order of the patterns; a pattern that matches nothing is a user error."""
    if patterns is None:
        return list(keys)
    pats = [p.strip() for p in (patterns.split(",") if isinstance(patterns, str) else patterns)]
    pats = [p for p in pats if p]
    out: list[str] = []
    for p in pats:
        found = [k for k in keys if k == p] or [k for k in keys if fnmatch.fnmatchcase(k, p)]
        if not found:
            sample = ", ".join(list(keys)[:6])
            raise UserError(f"--metrics: no metric matches {p!r}; metric keys are e.g. {sample} "
                            "(globs like 'RErr*linf' allowed)")
        out += [k for k in found if k not in out]
    return out


def build_table(runs: Sequence[dict[str, Any]], metrics: str | Sequence[str] | None = None
                ) -> Table:
    """The summary table of runs as read by `summary.collect` (each with `values`: {group: {key:
    Metric}}, `label`, `name`): metrics as rows (grouped by capability), models as columns."""
    runs = list(runs)
    table = Table(_unique([str(r["label"]) for r in runs], [str(r["name"]) for r in runs]),
                  [str(r["name"]) for r in runs])
    order: dict[str, str] = {}
    for r in runs:
        for g, ms in r["values"].items():
            for k in ms:
                order.setdefault(k, g)
    keys = select(list(order), metrics)
    if metrics is None:
        keys = sorted(keys, key=lambda k: list(dict.fromkeys(order.values())).index(order[k]))
    for k in keys:
        g = order[k]
        cells = [r["values"].get(g, {}).get(k) for r in runs]
        first = next(c for c in cells if c is not None)
        settings = list(dict.fromkeys(c.setting for c in cells if c is not None and c.setting))
        row = Row(g, k, first.label or k, first.better, first.unit, cells, _n_text(cells),
                  "; ".join(settings))
        row.best = best_index(row)
        row.note = flat_note(row)
        table.rows.append(row)
    return table


# ---------------------------------------------------------------------------------------------
# formatting (every format uses these two)
# ---------------------------------------------------------------------------------------------

def fmt_number(v: float, unit: str) -> str:
    """A value as shown: rates in % with one decimal, other numbers with three decimals (one
    decimal from 10 up)."""
    if v is None or math.isnan(v):
        return "–"
    if unit == "%":
        return f"{100 * v:.1f}"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def fmt_interval(m: Metric | None, unit: str) -> str:
    """'[lo, hi]' of a cell, '' without an interval."""
    if m is None or m.interval is None:
        return ""
    return f"[{fmt_number(m.lo, unit)}, {fmt_number(m.hi, unit)}]"  # type: ignore[arg-type]


def cell_text(row: Row, i: int) -> tuple[str, str]:
    """(value, interval) strings of model i in a row."""
    c = row.cells[i]
    return (fmt_number(c.value, row.unit) if c is not None else "–"), fmt_interval(c, row.unit)


def to_text(table: Table) -> str:
    """Aligned plain text: metric, direction, n, then 'value [lo, hi]' per model; '*' marks the
    separated best, '~' a row that cannot discriminate."""
    head = ["metric", "↓↑", "n", *table.models]
    lines: list[list[str]] = []
    for g in table.groups():
        lines.append([g.upper()])
        for r in (r for r in table.rows if r.group == g):
            cells = []
            for i in range(len(table.models)):
                v, iv = cell_text(r, i)
                cells.append(f"{v} {iv}".strip() + (" *" if r.best == i else ""))
            lines.append([("~ " if r.note else "  ") + r.label + (" (%)" if r.unit == "%" else ""),
                          ARROW.get(r.better, ""), r.n, *cells]
                         + ([f"({r.note})"] if r.note else []))
    widths = [max([len(head[j])] + [len(row[j]) for row in lines if len(row) > 1 and j < len(row)])
              for j in range(len(head))]
    def fmt(row: list[str]) -> str:
        if len(row) == 1:
            return row[0]
        parts = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2])]
        parts += [c.rjust(widths[3 + j]) for j, c in enumerate(row[3:3 + len(table.models)])]
        parts += row[3 + len(table.models):]
        return "  ".join(parts).rstrip()
    out = [fmt(head), "-" * len(fmt(head))] + [fmt(row) for row in lines]
    out.append("")
    out.append("*: best, its 95 % interval separated from the runner-up's; ~: row cannot "
               "discriminate.")
    out.append(LEGEND)
    return "\n".join(out)


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table with the same cells (best in bold, notes in a column)."""
    head = ["metric", "↓↑", "n", *table.models, "note"]
    out = ["| " + " | ".join(_md(h) for h in head) + " |",
           "|" + "|".join([":---", ":-:", "--:"] + ["--:"] * len(table.models) + [":---"]) + "|"]
    for g in table.groups():
        out.append("| " + " | ".join([f"**{_md(g)}**"] + [""] * (len(head) - 1)) + " |")
        for r in (r for r in table.rows if r.group == g):
            cells = []
            for i in range(len(table.models)):
                v, iv = cell_text(r, i)
                text = f"**{v}**" if r.best == i else v
                cells.append(f"{text} {iv}".strip())
            text = r.label + (" (%)" if r.unit == "%" else "")
            label = f"*{_md(text)}*" if r.note else _md(text)
            out.append("| " + " | ".join([label, ARROW.get(r.better, ""), r.n, *cells,
                                          _md(r.note)]) + " |")
    out.append("")
    out.append(_md(LEGEND))
    return "\n".join(out)


def to_csv(table: Table) -> str:
    """One line per metric: key, label, direction, unit, n, then value, lo, hi per model (the
    shown numbers: rates in %), the best model and the note."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["group", "key", "label", "better", "unit", "n"]
    for m in table.models:
        head += [m, f"{m} lo", f"{m} hi"]
    w.writerow(head + ["best", "note"])
    for r in table.rows:
        vals: list[str] = []
        for i, c in enumerate(r.cells):
            vals.append(cell_text(r, i)[0] if c is not None else "")
            vals += ([fmt_number(c.lo, r.unit), fmt_number(c.hi, r.unit)]
                     if c is not None and c.interval is not None else ["", ""])
        w.writerow([r.group, r.key, r.label, r.better, r.unit, r.n, *vals,
                    table.models[r.best] if r.best is not None else "", r.note])
    return buf.getvalue()


def to_dict(table: Table) -> dict[str, Any]:
    """Everything as plain data: raw values (fractions for rates) and the shown strings."""
    rows = []
    for r in table.rows:
        vals = {}
        for i, (m, c) in enumerate(zip(table.models, r.cells)):
            if c is None:
                vals[m] = None
                continue
            v, iv = cell_text(r, i)
            vals[m] = {"value": c.value, "lo": c.lo, "hi": c.hi, "n": c.n, "over": c.over,
                       "text": v, "interval": iv}
        rows.append({"group": r.group, "key": r.key, "label": r.label, "better": r.better,
                     "unit": r.unit, "n": r.n, "setting": r.setting, "values": vals,
                     "best": table.models[r.best] if r.best is not None else None,
                     "note": r.note})
    return {"models": table.models, "runs": table.runs, "rows": rows, "legend": LEGEND}


def to_json(table: Table) -> str:
    return json.dumps(to_dict(table), indent=1, ensure_ascii=False)


FORMATS = {"text": to_text, "md": to_markdown, "csv": to_csv, "json": to_json}


def render(table: Table, fmt: str = "text") -> str:
    """The table in one of FORMATS."""
    if fmt not in FORMATS:
        raise UserError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[fmt](table)
