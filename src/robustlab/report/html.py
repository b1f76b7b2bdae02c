"""One self-contained HTML report of every run under a folder.

`write_report(root)` reads `root/**/model.json`, `metrics.jsonl` and `results/*.json` (plus the
`plan.json` and `table.json` that `robustlab demo` / `robustlab reproduce` leave in `root`) and
writes `root/report.html`: a summary table of every model × metric, the figures of each capability
(drawn by the capability modules' own plot functions, embedded as base64 PNG), training curves,
the preset's findings, and the commands, settings and versions that produced the results.
The page loads nothing from the network (a Content-Security-Policy forbids it) and works offline.
"""

from __future__ import annotations

import base64
import html
import importlib
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
        self.tmp, self.count, self.failures = tmp, 0, []

    def make(self, title: str, caption: str, draw: Callable[[Path], Any], *,
             size: str = "full") -> dict[str, Any] | None:
        self.count += 1
        path = self.tmp / f"fig{self.count}.png"
        try:
            draw(path)
            data = path.read_bytes()
        except Exception as e:  # a broken figure must not take the whole report down
            log.warning("figure %r failed: %s", title, e)
            self.failures.append(f"{title}: {type(e).__name__}: {e}")
            return None
        finally:
            try:
                import matplotlib.pyplot as plt

                plt.close("all")
            except ImportError:
                pass
        return {"title": title, "caption": caption, "png": data, "size": size}


def _function(module: str, name: str) -> Callable[..., Any] | None:
    """A plot function of another module, or None when that module/function is not in this build."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


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


def _results_of(runs: list[dict[str, Any]], *kinds: str
                ) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """{result name: [(run label, result)]} for results of one of `kinds`."""
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for r in runs:
        for name, res in r["results"].items():
            if summary.kind_of(name, res) in kinds:
                out.setdefault(name, []).append((r["label"], res))
    return out


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


def _wilson_note(items: list[tuple[str, dict[str, Any]]], key: str = "n_test") -> str:
    ns = sorted({r.get(key) for _, r in items if isinstance(r.get(key), int)})
    if not ns:
        return ""
    return f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"


def biterror_figures(runs: list[dict[str, Any]], figs: Figures) -> list[dict[str, Any]]:
    out = []
    plot = _function("robustlab.report.biterrors_plot", "plot_rerr_vs_rate")
    for name, items in _results_of(runs, "biterrors").items():
        if plot is None:
            break
        k = items[0][1].get("patterns")
        f = figs.make(f"RErr vs bit error rate ({name})",
                      f"Mean robust error over {k} random bit error patterns per rate on "
                      f"{_wilson_note(items)} test images; error bars: 95 % interval of the mean "
                      "(t over patterns, never narrower than Wilson over images); shaded: min–max "
                      "over patterns. The legend gives each model's quantized clean error.",
                      lambda p, items=items: plot([r for _, r in items], p,
                                                  labels=[lab for lab, _ in items]))
        out.append(f)
    energy = _function("robustlab.report.biterrors_plot", "plot_energy")
    for name, items in _results_of(runs, "energy").items():
        for label, r in items:
            if energy is not None:
                out.append(figs.make(f"Energy of {label} ({name})", "Mean RErr and relative energy "
                                     "per memory access against supply voltage.",
                                     lambda p, r=r: energy(r, p)))
    return [f for f in out if f]


def adversarial_figures(runs: list[dict[str, Any]], figs: Figures) -> list[dict[str, Any]]:
    mod = "robustlab.report.adversarial_plots"
    bars = _function(mod, "plot_rerr_bars")
    hist = _function(mod, "plot_confidence_grid")
    grid = _function(mod, "plot_examples")
    from robustlab.report.extra_plots import plot_patch_locations

    out, patch_bars, hists, grids = [], [], [], []
    for name, items in _results_of(runs, "patches").items():
        patch_bars.append(figs.make(f"RErr per patch location mode ({name})",
                                    "Robust error under adversarial patches whose location is fixed, "
                                    "random or optimized during the attack, with 95 % Wilson "
                                    f"intervals over the {_wilson_note(items, 'n')} attacked images "
                                    "(black bar: clean Err of those images).",
                                    lambda p, items=items: plot_patch_locations(items, p)))
    for name, items in _results_of(runs, "adversarial", "patches").items():
        kind = summary.kind_of(name, items[0][1])
        if kind == "adversarial":
            ns = [{"n": (r.get("config") or {}).get("n")} for _, r in items]
            note = _wilson_note([("", x) for x in ns], "n")
            if bars is not None:
                out.append(figs.make(
                    f"RErr per threat model ({name})",
                    "Per threat model and model: light bars without rejection (RErr; distal: "
                    "every input counts, 100 %; corruptions: mean Err), dark bars with inputs of "
                    "confidence below τ rejected, τ at 99 % TPR (RErr@τ; distal: FPR@τ; "
                    f"corruptions: Err@τ). Error bars: 95 % Wilson intervals over the {note} "
                    "attacked images (RErr@τ: over those not rejected).",
                    lambda p, items=items: bars(items, p)))
            if hist is not None:
                hists.append(figs.make(
                    f"Confidence per model and threat ({name})",
                    "Rows: models; columns: threat models. Green: confidence of the correctly "
                    "classified clean images; red: confidence of the adversarial inputs that are "
                    "misclassified (distal: of every distal input); dashed: τ at 99 % TPR. Each "
                    "panel is a density histogram on its own y-scale.",
                    lambda p, items=items: hist(items, p)))
        for label, r in items:
            if grid is not None and r.get("examples_file"):
                f = Path(r["examples_file"])
                ex_path = f if f.is_absolute() else Path(r["_dir"]) / f
                if ex_path.is_file():
                    grids.append(figs.make(
                        f"Adversarial examples for {label} ({name})", "Clean test images (top "
                        "row, titled with the true class) and their adversarial versions per "
                        "threat model, titled with the predicted class and confidence; red frame: "
                        "the attack succeeded (misclassified), green: it failed.",
                        lambda p, e=ex_path, label=label: grid(e, p, title=label, max_columns=4),
                        size="half"))
    return [f for f in out + patch_bars + hists + grids if f]


def bitattack_figures(runs: list[dict[str, Any]], figs: Figures) -> list[dict[str, Any]]:
    from robustlab.report.flatness_plots import METHOD_NAMES

    plot = _function("robustlab.report.flatness_plots", "plot_bit_attack")
    out = []
    for name, items in _results_of(runs, "bitattack").items():
        methods = list(dict.fromkeys(m for _, r in items for m in (r.get("results") or {})))
        styles = {"attack": "solid", "bfa": "dash-dotted", "random": "dotted", "worst": "dashed"}
        what = ", ".join(f"{METHOD_NAMES.get(m, m)} ({styles.get(m, 'dashed')})" for m in methods)
        if plot is not None:
            out.append(figs.make(f"RErr vs flipped bits ({name})", "Robust error of each model "
                                 "(colour) after bit flips within the budget (at most one per "
                                 f"weight), per method (line style): {what}. Error bars: 95 % "
                                 f"Wilson intervals over the {_wilson_note(items)} test images.",
                                 lambda p, items=items: plot([r for _, r in items], p,
                                                             labels=[lab for lab, _ in items])))
    return [f for f in out if f]


def flatness_figures(runs: list[dict[str, Any]], figs: Figures) -> list[dict[str, Any]]:
    from robustlab.report.extra_plots import plot_flatness_bars

    out = []
    corr = _function("robustlab.report.flatness_plots", "plot_correlation")
    for name, items in _results_of(runs, "flatness").items():
        samples = sorted({len(d.get("perturbed_losses") or []) for _, r in items
                          for d in r.get("details") or []} - {0})
        xis = sorted({d["xi"] for _, r in items for d in r.get("details") or []})
        err = (f"Error bars: 95 % t interval of the mean over the {samples[-1]} random "
               "perturbations." if samples and samples[-1] > 1 else
               "No error bars: one random perturbation (or a worst case) per model.")
        out.append(figs.make(f"Flatness per model ({name})",
                             "Increase of the robust loss under relative weight perturbations "
                             f"‖ν_l‖ ≤ ξ‖w_l‖, ξ = {', '.join(f'{x:g}' for x in xis)} "
                             f"(adversarial examples recomputed per perturbed model). {err}",
                             lambda p, items=items: plot_flatness_bars(items, p)))
        with_gap = [r for _, r in items if r.get("gap") is not None]
        if corr is not None and len(with_gap) >= 3:
            labelled = [{**r, "label": lab} for lab, r in items]
            out.append(figs.make(f"Flatness vs robust generalization ({name})",
                                 "Robust test loss and test−train robust loss gap against flatness, "
                                 "one point per model, with Kendall τ and its two-sided p-value "
                                 "(few models: a weak test).",
                                 lambda p, labelled=labelled: corr(labelled, p)))
    from robustlab.report.flatness_plots import plot_landscape, plot_landscapes

    for name, items in _results_of(runs, "landscape").items():
        one_d = [(lab, r) for lab, r in items if r.get("dims") == 1]
        if one_d:
            out.append(figs.make(f"Loss landscapes ({name})",
                                 "Clean (blue) and robust (red) loss along a weight direction "
                                 "through each model (α: step relative to each filter's norm; "
                                 "dotted: ±ξ for adversarial directions); one shared y-axis.",
                                 lambda p, one_d=one_d: plot_landscapes(one_d, p)))
        for label, r in items:
            if r.get("dims") != 1:
                out.append(figs.make(f"Loss landscape of {label} ({name})",
                                     "Clean and robust loss over a 2-D plane of weight directions.",
                                     lambda p, r=r: plot_landscape(r, p)))
    return [f for f in out if f]


BUILT_IN_KINDS = {"clean", "adversarial", "patches", "biterrors", "chip", "energy", "bitattack",
                  "flatness", "landscape", "epsilons", "tracking"}  # drawn by the sections above


def spec_figures(runs: list[dict[str, Any]], figs: Figures) -> list[dict[str, Any]]:
    """Figures of results of other registered kinds: their spec's `figures(result, folder)`."""
    out = []
    for r in runs:
        for name, res in r["results"].items():
            kind = summary.kind_of(name, res)
            cls = summary.spec_for(kind)
            if kind in BUILT_IN_KINDS or cls is None or not summary.overrides(cls, "figures"):
                continue
            folder = figs.tmp / f"spec{figs.count}-{len(out)}"
            folder.mkdir(parents=True, exist_ok=True)
            title = f"{cls.title or kind} ({name}, {r['label']})"
            try:
                paths = summary.spec_instance(cls, res).figures(res, folder)
            except Exception as e:  # a broken figure must not take the whole report down
                log.warning("figure %r failed: %s", title, e)
                figs.failures.append(f"{title}: {type(e).__name__}: {e}")
                continue
            for i, path in enumerate(p for p in paths if Path(p).suffix == ".png"):
                fig = figs.make(title if i == 0 else f"{title} [{i + 1}]", cls.title or kind,
                                lambda dest, src=Path(path): dest.write_bytes(src.read_bytes()))
                if fig:
                    out.append(fig)
    return out


SECTION_GROUPS = {"adversarial": ("input attacks",), "biterrors": ("random bit errors",),
                  "bitattack": ("adversarial bit errors",), "flatness": ("flatness",),
                  "training": ("training",), "other": ("other",)}

SECTIONS: list[tuple[str, str, Callable[[list[dict[str, Any]], Figures], list[dict[str, Any]]]]] = [
    ("adversarial", "Input attacks", adversarial_figures),
    ("biterrors", "Random bit errors", biterror_figures),
    ("bitattack", "Adversarial bit errors", bitattack_figures),
    ("flatness", "Flatness", flatness_figures),
    ("training", "Training", training_figures),
    ("other", "Other evaluations", spec_figures),
]


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

        for key, name, build in SECTIONS:
            made = build(runs, figs)
            if not made:
                continue
            nav.append((key, name))
            note = "; ".join(v for g, v in settings.items() if g in SECTION_GROUPS.get(key, ()))
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

