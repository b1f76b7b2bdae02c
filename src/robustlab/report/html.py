"""One self-contained HTML report of every run under a folder.

`write_report(root)` reads `root/**/model.json`, `metrics.jsonl` and `results/*.json` (plus the
`plan.json` and `table.json` that `robustlab demo` / `robustlab reproduce` leave in `root`) and
writes `root/report.html`: a summary table of every model × metric, the figures of each capability
(one section per spec `group`, each result kind's figures from its spec's `report_figures`,
embedded as base64 PNG), training curves,
the preset's findings, and the commands, settings and versions that produced the results.
The page loads nothing from the network (a Content-Security-Policy forbids it) and works offline.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.io import atomic_write_text, read_json, versions
from robustlab.report import headline, summary
from robustlab.report import rows as rows_mod

log = logging.getLogger("robustlab.report")

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")

STYLE = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dee7; --bg:#ffffff; --band:#f5f7fa; --accent:#2457a6; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
header { background: #1f3b66; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #cfd9ea; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid var(--line);
      padding: 8px 28px; z-index: 2; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; font-weight: 500; }
main { padding: 8px 28px 40px; max-width: 1400px; }
h2 { border-bottom: 2px solid var(--line); padding-bottom: 4px; margin-top: 32px; }
h3 { margin: 20px 0 8px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: right; }
th { background: var(--band); }
td.name, th.name { text-align: left; }
tr.group td { background: #e8edf5; font-weight: 600; text-align: left; }
td.best { font-weight: 700; color: #0b6b2e; }
td .iv { display: block; font-size: 11px; color: var(--muted); font-weight: 400; }
td.dir { text-align: center; color: var(--muted); } td.n { color: var(--muted); font-size: 12px; }
tr.group .setting { font-weight: 400; color: var(--muted); font-size: 12px; margin-left: 8px; }
tr.flat td { color: #9aa1ad; background: #fafafa; } tr.flat td.best { color: #9aa1ad; }
.rownote { display: block; font-size: 11px; font-style: italic; color: #8a6d1d; }
ul.story li { margin: 3px 0; } .setting-note { color: var(--muted); font-size: 13px; }
table.flags td { text-align: left; vertical-align: top; }
ul.settings { font-size: 13px; color: var(--muted); margin: 4px 0 8px; padding-left: 20px; }
.figures { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fff;
         max-width: 100%; }
figure img { display: block; max-width: 100%; height: auto; }
figure.half { max-width: calc(50% - 9px); }
figure.third { max-width: calc(33.3% - 12px); }
figure.wide { width: 100%; overflow-x: auto; }
figure.wide img { max-width: none; height: 400px; width: auto; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 6px; max-width: 720px; }
pre { background: var(--band); border: 1px solid var(--line); padding: 8px 10px; overflow-x: auto;
      font-size: 12.5px; white-space: pre-wrap; word-break: break-word; }
.muted { color: var(--muted); }
.ok { color: #0b6b2e; font-weight: 700; } .bad { color: #b3261e; font-weight: 700; }
.na { color: var(--muted); font-weight: 700; }
.note { background: #fff8e1; border: 1px solid #f0d78c; padding: 6px 10px; border-radius: 4px; }
details { margin: 6px 0; } summary { cursor: pointer; color: var(--accent); }
"""

# Records image sizes and errors in the DOM so headless browsers (tests) can check the page.
SCRIPT = """
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    var t = e.target && e.target.tagName ? e.target.tagName + ' failed to load' : (e.message || 'error');
    errors.push(t);
  }, true);
  window.addEventListener('load', function () {
    var imgs = document.querySelectorAll('img');
    var sizes = [];
    for (var i = 0; i < imgs.length; i++) {
      var w = imgs[i].naturalWidth, h = imgs[i].naturalHeight;
      imgs[i].setAttribute('data-natural', w + 'x' + h);
      sizes.push(w + 'x' + h);
    }
    var s = document.getElementById('render-status');
    s.setAttribute('data-images', String(imgs.length));
    s.setAttribute('data-sizes', sizes.join(' '));
    s.setAttribute('data-errors', errors.join('; '));
    s.setAttribute('data-ready', '1');
  });
})();
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------

class Figures:
    """Calls plot functions that write PNG files and keeps the bytes; failures become notes."""

    def __init__(self, tmp: Path):
        self.tmp, self.count, self.failures, self.folders = tmp, 0, [], 0

    def make(self, title: str, caption: str, draw: Callable[[Path], Any], *,
             size: str = "full", order: int = 0) -> dict[str, Any] | None:
        """Draw one figure (`draw(png path)`); its dict, or None (a note) when drawing failed.
        `order` places it in its section (`EvalSpec.report_figures`)."""
        self.count += 1
        path = self.tmp / f"fig{self.count}.png"
        try:
            draw(path)
            data = path.read_bytes()
        except Exception as e:  # a broken figure must not take the whole report down
            self.fail(title, e)
            return None
        finally:
            try:
                import matplotlib.pyplot as plt

                plt.close("all")
            except ImportError:
                pass
        return {"title": title, "caption": caption, "png": data, "size": size, "order": order}

    def fail(self, title: str, e: Exception) -> None:
        """Note a figure that could not be drawn (the report lists them)."""
        log.warning("figure %r failed: %s", title, e)
        self.failures.append(f"{title}: {type(e).__name__}: {e}")

    def folder(self) -> Path:
        """A fresh empty folder for figure files that are drawn elsewhere and then embedded."""
        self.folders += 1
        path = self.tmp / f"spec{self.folders}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        raise ValueError("not a PNG file")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _figure_html(f: dict[str, Any]) -> str:
    b64 = base64.b64encode(f["png"]).decode("ascii")
    w, h = png_size(f["png"])
    cls = "wide" if w > 3.2 * h and w > 1600 else f.get("size", "full")
    return (f'<figure class="{cls}"><img alt="{_esc(f["title"])}" width="{w}" height="{h}" '
            f'src="data:image/png;base64,{b64}">'
            f'<figcaption><b>{_esc(f["title"])}</b>. {_esc(f["caption"])}</figcaption></figure>')


def training_figures(runs: list[dict[str, Any]], figs: Figures) -> list[dict[str, Any]]:
    from robustlab.report.training_plots import drawn, plot_training

    hist = [(r["label"], r["history"]) for r in runs if r["history"]]
    if not hist:
        return []
    what = drawn(hist)
    names = {"train": "training split", "val": "held-out validation split",
             "test": "held-out test split"}
    parts = []
    for panel, suffixes in what.items():
        styles = ", ".join(f"{'solid' if i == 0 else 'dashed'}: {names.get(sfx, sfx)}"
                           for i, sfx in enumerate(suffixes))
        parts.append(f"{panel} ({styles})")
    f = figs.make("Training curves", "Per epoch, one colour and marker per run: "
                  + "; ".join(parts) + ". The robust error on held-out data appears only for runs "
                  "that tracked robust overfitting.", lambda p: plot_training(hist, p))
    return [f] if f else []


def _results_by_group(runs: list[dict[str, Any]]
                      ) -> dict[str, dict[tuple[str, type[Any]], list[tuple[str, dict[str, Any]]]]]:
    """{report section (the spec's `group`): {(result name, spec): [(run label, result)]}} of
    every result of a registered kind, in the order of the runs and their results."""
    out: dict[str, dict[tuple[str, type[Any]], list[tuple[str, dict[str, Any]]]]] = {}
    for r in runs:
        for name, res in r["results"].items():
            kind = summary.kind_of(name, res)
            cls = summary.spec_for(kind)
            if cls is not None:
                out.setdefault(summary.group_of(kind), {}).setdefault((name, cls), []).append(
                    (r["label"], res))
    return out


def section_figures(group: str, results: dict[tuple[str, type[Any]], list[tuple[str, Any]]],
                    figs: Figures) -> list[dict[str, Any]]:
    """The figures of one report section: each kind's `report_figures` per result name, sorted
    by their `order` (then by result name)."""
    out = []
    for (name, cls), items in results.items():
        try:
            out += [f for f in cls.report_figures(items, name, figs) if f]
        except Exception as e:  # a broken figure must not take the whole report down
            figs.fail(f"{cls.title or cls.kind} ({name})", e)
    return sorted(out, key=lambda f: f.get("order", 0))


# section anchors kept from before the sections came from the specs; others: the group's words
SECTION_IDS = {"input attacks": "adversarial", "random bit errors": "biterrors",
               "adversarial bit errors": "bitattack"}


def sections(runs: list[dict[str, Any]], figs: Figures) -> list[tuple[str, str, str, list[Any]]]:
    """(anchor, heading, group, figures) of every report section with figures: the spec groups
    in `summary.SECTIONS` order (training curves under 'training'), other groups after them,
    'other' last."""
    by_group = _results_by_group(runs)
    order = [*summary.SECTIONS, *(g for g in by_group if g not in summary.SECTIONS and g != "other"),
             "other"]
    out = []
    for group in order:
        made = section_figures(group, by_group.get(group, {}), figs)
        if group == "training":
            made += training_figures(runs, figs)
        if made:
            heading = "Other evaluations" if group == "other" else group[:1].upper() + group[1:]
            out.append((SECTION_IDS.get(group, group.replace(" ", "-")), heading, group, made))
    return out


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------

def summary_table(runs: list[dict[str, Any]], table: rows_mod.Table | None = None) -> str:
    """Metrics as rows (grouped by capability), models as columns, each cell with its 95 %
    interval; the best model of a row in bold only where its interval is separated from the
    runner-up's; rows that cannot discriminate greyed with a note (`rows.build_table`)."""
    if not runs:
        return '<p class="muted">No runs found.</p>'
    table = table or rows_mod.build_table(runs)
    notes = summary.section_settings(runs)
    head = "".join(f"<th>{_esc(m)}</th>" for m in table.models)
    ncol = len(table.models) + 3
    out = ['<table class="summary"><thead><tr><th class="name">metric</th><th title="better">'
           f'↓↑</th><th>n</th>{head}</tr></thead><tbody>']
    for g in table.groups():
        out.append(f'<tr class="group"><td colspan="{ncol}">{_esc(g)}</td></tr>')
        for r in (r for r in table.rows if r.group == g):
            cells = []
            for i in range(len(table.models)):
                v, iv = rows_mod.cell_text(r, i)
                cls = ' class="best"' if r.best == i else ""
                tip = f' title="95 % interval {_esc(iv)}"' if iv else ""
                cells.append(f'<td{cls}{tip} data-model="{i}"><span class="v">{_esc(v)}</span>'
                             + (f'<span class="iv">{_esc(iv)}</span>' if iv else "") + "</td>")
            flat = ' class="flat"' if r.note else ""
            note_html = f'<span class="rownote">{_esc(r.note)}</span>' if r.note else ""
            unit = " (%)" if r.unit == "%" else ""
            out.append(f'<tr{flat} data-key="{_esc(r.key)}"><td class="name" title="key: '
                       f'{_esc(r.key)}; {_esc(r.setting)}">{_esc(r.label)}{unit}{note_html}</td>'
                       f'<td class="dir">{rows_mod.ARROW.get(r.better, "")}</td>'
                       f'<td class="n">{_esc(r.n)}</td>{"".join(cells)}</tr>')
    out.append("</tbody></table>")
    settings = "".join(f"<li><b>{_esc(g)}</b>: {_esc(notes[g])}</li>" for g in table.groups()
                       if notes.get(g))
    if settings:
        out.insert(0, f'<ul class="settings">{settings}</ul>')
    return "\n".join(out)


def headline_html(runs: list[dict[str, Any]], table: rows_mod.Table, figs: Figures) -> str:
    """The story first: clean vs robust error per threat, who is most robust to what at which
    clean-error cost (only where the intervals say so), the attack evaluation's sanity flags,
    and the rows that cannot tell the models apart."""
    rows = headline.headline_rows(table)
    parts = []
    fig = None
    if rows and headline.clean_row(table) is not None:
        labels = "; ".join(r.label for r in rows)
        fig = figs.make("Clean error vs robust error", "One point per model and threat: clean test "
                        "error (x) against the robust error of that threat (y), with 95 % Wilson "
                        "intervals over the evaluated examples as error bars (random bit errors: "
                        "over patterns). Filled markers joined by the dashed line form the Pareto "
                        "front: no other model has both lower clean and lower robust error. "
                        f"Panels: {labels}.",
                        lambda p: headline.plot_tradeoff(table, rows, p))
    if fig:
        parts.append(f'<div class="figures">{_figure_html(fig)}</div>')
    story = headline.threat_summary(table, rows)
    if story:
        parts.append("<h3>Who is most robust to what</h3><ul class=story>"
                     + "".join(f"<li>{_esc(t)}</li>" for t in story) + "</ul>")
    per_model = headline.model_summary(table, rows)
    if per_model:
        parts.append("<h3>Per model</h3><ul class=story>"
                     + "".join(f"<li>{_esc(t)}</li>" for t in per_model) + "</ul>")
    flags, checked = headline.sanity_flags(runs)
    parts.append("<h3>Sanity checks of the attack evaluation</h3>")
    if flags:
        body = "".join(f"<tr><td>{_esc(f['model'])}</td><td>{_esc(f['result'])}"
                       f"{' / ' + _esc(f['threat']) if f['threat'] else ''}</td>"
                       f"<td><b>{_esc(f['name'])}</b></td><td>{_esc(f['message'])}</td>"
                       f"<td><code>{_esc(json.dumps(f['numbers'])) if f['numbers'] is not None else ''}"
                       "</code></td></tr>" for f in flags)
        parts.append(f'<p class="note">{len(flags)} sanity flag(s) raised: the robust errors they '
                     "concern may be overestimates of robustness.</p><table class=flags><thead><tr>"
                     "<th>model</th><th>result</th><th>flag</th><th>message</th><th>numbers</th>"
                     f"</tr></thead><tbody>{body}</tbody></table>")
    elif checked:
        parts.append(f"<p>No sanity flag raised in {checked} adversarial result(s).</p>")
    else:
        parts.append('<p class="muted">Not recorded: these adversarial results predate the '
                     "evaluation's sanity checks (or no adversarial evaluation was run).</p>")
    contrib = headline.attack_contributions(runs)
    if contrib:
        parts.append("<details><summary>What each attack of the suite added (examples it "
                     "newly misclassified, per model and threat)</summary><table class=flags>"
                     "<thead><tr><th>model</th><th>result / threat</th><th>added</th></tr></thead>"
                     "<tbody>" + "".join(f"<tr><td>{_esc(m)}</td><td>{_esc(res)} / {_esc(t)}</td>"
                                         f"<td>{_esc(text)}</td></tr>"
                                         for m, res, t, text in contrib)
                     + "</tbody></table></details>")
    flat = [r for r in table.rows if r.note]
    if flat:
        items = "".join(f"<li>{_esc(r.label)}: {_esc(r.note)}</li>" for r in flat)
        parts.append("<h3>Rows that cannot discriminate</h3><p class=muted>"
                     f"{len(flat)} of {len(table.rows)} rows, greyed in the summary table: every "
                     "model at 0 % or 100 %, or every 95 % interval sharing a point. Their "
                     "differences are noise at these sample sizes (more test images or patterns "
                     "would narrow the intervals).</p>"
                     + (f"<ul class=story>{items}</ul>" if len(flat) <= 8 else
                        f"<details><summary>show the {len(flat)} rows</summary><ul class=story>"
                        f"{items}</ul></details>"))
    return "\n".join(parts)


def findings_html(table_json: dict[str, Any]) -> str:
    findings = table_json.get("findings") or []
    if not findings:
        return ""
    items = []
    for f in findings:
        mark, cls = {True: ("✓", "ok"), False: ("✗", "bad"), None: ("–", "na")}[f.get("ok")]
        checks = "".join(
            f"<li>{'holds' if r else 'fails' if r is False else 'not measured'}: "
            f"<code>{_esc(c)}</code></li>" for c, r in zip(f.get("checks", []), f.get("results", [])))
        items.append(f'<li><span class="{cls}">{mark}</span> {_esc(f.get("text", ""))}'
                     f"<ul class=muted>{checks}</ul></li>")
    scale = table_json.get("scale")
    return (f"<p>Qualitative findings of the paper (spec §9) checked on this table"
            f"{' at scale ' + _esc(scale) if scale else ''} (errors in %):</p><ul>{''.join(items)}</ul>")


# ---------------------------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------------------------

def provenance_html(root: Path, runs: list[dict[str, Any]], plan: dict[str, Any] | None) -> str:
    parts = []
    if plan:
        parts.append(f"<h3>Command</h3><pre>{_esc(plan.get('command') or '(not recorded)')}</pre>")
        if plan.get("source"):
            parts.append(f"<p class=muted>preset {_esc(plan.get('preset'))} from "
                         f"{_esc(plan.get('source'))}, scale {_esc(plan.get('scale'))}</p>")
        steps = plan.get("steps") or {}
        if steps:
            lines = []
            for key, s in steps.items():
                secs = f"{s['seconds']:.1f}s" if isinstance(s.get("seconds"), (int, float)) else ""
                status = s.get("status", "")
                if status == "skipped":
                    status = f"skipped: {s.get('reason', '')}"
                lines.append(f"<tr><td class=name>{_esc(s.get('title', key))}</td><td>{_esc(status)}"
                             f"</td><td>{secs}</td><td class=name><code>{_esc(s.get('command', ''))}"
                             "</code></td></tr>")
            parts.append("<h3>Steps</h3><table><thead><tr><th class=name>step</th><th>status</th>"
                         "<th>time</th><th class=name>equivalent command</th></tr></thead><tbody>"
                         + "".join(lines) + "</tbody></table>")
        if plan.get("preset_config"):
            import yaml

            parts.append("<details><summary>preset settings (after scale overrides)</summary><pre>"
                         + _esc(yaml.safe_dump(plan["preset_config"], sort_keys=False,
                                               allow_unicode=True)) + "</pre></details>")
    for r in runs:
        if r["config"]:
            parts.append(f"<details><summary>{_esc(r['label'])}: {_esc(r['name'])}/config.yaml"
                         f"</summary><pre>{_esc(r['config'])}</pre></details>")
    seen: dict[str, dict[str, str]] = {}
    for r in runs:
        for source in [r["meta"], *r["results"].values()]:
            v = source.get("versions") if isinstance(source, dict) else None
            if isinstance(v, dict):
                seen.setdefault(json.dumps(v, sort_keys=True), v)
    now = versions()
    seen.setdefault(json.dumps(now, sort_keys=True), now)
    keys = sorted({k for v in seen.values() for k in v})
    head = "".join(f"<th>{_esc(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v.get(k, '–'))}</td>" for k in keys) + "</tr>"
                   for v in seen.values())
    parts.append("<h3>Versions</h3><p class=muted>Every combination of versions recorded in the "
                 "checkpoints and results (and the one that wrote this report).</p>"
                 f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------

def _read(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None


def build_report(root: str | Path, *, title: str | None = None) -> tuple[str, dict[str, Any]]:
    """The report's HTML text and a summary {runs, figures, failures}."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"report: {root} is not a folder")
    runs = summary.collect(root)
    for r in runs:
        for res in r["results"].values():
            res.setdefault("_dir", str(Path(r["path"]) / "results"))
    plan = _read(root / "plan.json")
    table_json = _read(root / "table.json")
    order = list((plan or {}).get("runs") or {})
    runs.sort(key=lambda r: (order.index(r["name"]) if r["name"] in order else len(order), r["name"]))
    if not runs:
        raise UserError(f"report: no runs under {root} (a run is a folder with model.json)")
    title = title or (plan or {}).get("title") or f"robustlab report: {root.name}"
    data = sorted({f"{(r['meta'].get('data') or {}).get('name', '?')}" for r in runs})
    table = rows_mod.build_table(runs)
    settings = summary.section_settings(runs)
    sections_html, nav = [], [("headline", "Headline"), ("summary", "Summary")]
    with tempfile.TemporaryDirectory(prefix="robustlab-report-") as tmp:
        figs = Figures(Path(tmp))
        try:
            head_html = headline_html(runs, table, figs)
        except Exception as e:  # the story is a bonus: a surprise in it must not cost the report
            log.warning("headline failed: %s", e)
            figs.failures.append(f"headline: {type(e).__name__}: {e}")
            head_html = '<p class="muted">The headline could not be built (see the note above).</p>'

        for key, name, group, made in sections(runs, figs):
            nav.append((key, name))
            note = settings.get(group, "")
            note_html = f'<p class="setting-note">Settings: {_esc(note)}</p>' if note else ""
            sections_html.append(f'<section id="{key}"><h2>{_esc(name)}</h2>{note_html}'
                                 '<div class="figures">'
                                 + "".join(_figure_html(f) for f in made) + "</div></section>")
        n_figs = sum(s.count("<figure ") for s in sections_html) + head_html.count("<figure ")
    skipped = [s for s in ((plan or {}).get("steps") or {}).values() if s.get("status") == "skipped"]
    notes = ""
    if skipped:
        notes = ('<p class="note">Not available in this build, so not part of this report: '
                 + "; ".join(_esc(f"{s.get('title')} ({s.get('reason')})") for s in skipped) + "</p>")
    if figs.failures:
        notes += ('<p class="note">Figures that could not be drawn: '
                  + "; ".join(_esc(f) for f in figs.failures) + "</p>")
    findings = findings_html(table_json) if table_json else ""
    if findings:
        nav.insert(1, ("findings", "Findings"))
    nav.append(("provenance", "Commands & versions"))
    body = [f'<header><h1>{_esc(title)}</h1><p>{len(runs)} model(s) on {_esc(", ".join(data))} · '
            f'generated {_esc(time.strftime("%Y-%m-%d %H:%M"))} from {_esc(root)}</p></header>',
            "<nav>" + "".join(f'<a href="#{k}">{_esc(n)}</a>' for k, n in nav) + "</nav>", "<main>",
            notes,
            f'<section id="headline"><h2>Headline</h2>{head_html}</section>',
            '<section id="summary"><h2>Summary</h2><p class="muted">'
            + _esc(rows_mod.LEGEND) + " Hover a cell for its interval, a metric for its key and "
            "settings. RErr: robust error (wrong clean or after the attack); @99%: inputs of "
            "confidence below τ rejected, τ at 99% true positive rate on held-out clean images; "
            "p: random bit error rate. Greyed rows cannot discriminate between the models.</p>"
            + summary_table(runs, table) + "</section>"]
    if findings:
        body.append(f'<section id="findings"><h2>Findings</h2>{findings}</section>')
    body += sections_html
    body.append(f'<section id="provenance"><h2>Commands &amp; versions</h2>'
                f"{provenance_html(root, runs, plan)}</section>")
    body.append("</main>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{STYLE}</style><script>{SCRIPT}</script></head>"
            "<body>" + "\n".join(body)
            + '<div id="render-status" hidden></div></body></html>\n')
    return page, {"runs": len(runs), "figures": n_figs, "failures": list(figs.failures)}


def write_report(root: str | Path, out: str | Path | None = None, *,
                 title: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the report of every run under `root` to `out` (default `root/report.html`)."""
    page, info = build_report(root, title=title)
    path = atomic_write_text(Path(out) if out else Path(root) / "report.html", page)
    path.chmod(0o644)  # a page to share: readable like any other document
    return path, info

