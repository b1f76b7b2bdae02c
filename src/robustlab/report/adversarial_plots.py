"""Figures of input-robustness results: pure functions of the result dicts (or files) written by
`robustlab attack` and `robustlab epsilons`.

- `plot_confidence_histograms(result, path)`: clean vs adversarial confidence per threat model;
- `plot_rerr_bars(results, path)`: RErr and RErr@τ per threat model, one bar group per run;
- `plot_examples(examples_file, path)`: clean images and their adversarial versions per threat;
- `plot_epsilon_histograms(result, path)`, `plot_epsilon_examples(examples_file, path)`: the
  distances to the nearest other-class training image, and perturbed images at several radii.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.report.figures import Result, hide_unused, load_result, panel_grid, pyplot, save


def _first_tpr(r: Mapping[str, Any], tpr: str | None) -> str | None:
    taus = (r.get("clean") or {}).get("tau") or {}
    if tpr is not None:
        return tpr if tpr in taus else None
    return next(iter(taus), None)


def _pct(key: str | None) -> str:
    try:
        return f"{100 * float(key):g}%"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(key)


def _hist_data(r: Mapping[str, Any]) -> tuple[list[tuple[str, dict[str, Any]]], list[float],
                                                list[bool], float | None, str | None]:
    threats = [(k, t) for k, t in (r.get("threats") or {}).items()
               if t.get("adv_conf") is not None or t.get("threat") == "distal"]
    clean = r.get("clean") or {}
    c_conf = clean.get("conf") or []
    c_wrong = clean.get("wrong") or [False] * len(c_conf)
    return threats, c_conf, c_wrong, None, None


def _hist_panel(ax: Any, t: dict[str, Any], c_conf: list[float], c_wrong: list[bool],
                tau: float | None, edges: list[float]) -> None:
    ok_conf = [c for c, w in zip(c_conf, c_wrong) if not w]
    if ok_conf:
        ax.hist(ok_conf, bins=edges, alpha=0.55, color="tab:green", label="clean (correct)",
                density=True)
    if t.get("threat") == "distal":
        adv, lab = t.get("conf") or [], "adversarial (wrong) / distal"
    else:
        wrong = t.get("adv_wrong") or [True] * len(t["adv_conf"])
        adv = [c for c, w, cw in zip(t["adv_conf"], wrong, c_wrong) if w and not cw]
        lab = "adversarial (wrong) / distal"
    if adv:
        ax.hist(adv, bins=edges, alpha=0.55, color="tab:red", label=lab, density=True)
    if tau is not None:
        ax.axvline(tau, color="k", lw=1.2, ls="--", label="τ")
    ax.set_xlim(0, 1)
    ax.grid(True, axis="x", alpha=0.3)


def _threat_title(key: str, t: dict[str, Any]) -> str:
    from robustlab.report.summary import threat_label

    return threat_label(key, t)


def plot_confidence_histograms(result: Result, path: str | Path, *, title: str | None = None,
                               tpr: str | None = None, bins: int = 25) -> Path:
    """Per threat model: confidences of the clean attacked examples (correctly classified) and of
    their adversarial versions (those that are misclassified), with τ as a vertical line."""
    r = load_result(result)
    threats, c_conf, c_wrong, _, _ = _hist_data(r)
    if not threats:
        raise UserError("the result holds no adversarial confidences to plot")
    key = _first_tpr(r, tpr)
    tau = ((r.get("clean") or {}).get("tau") or {}).get(key) if key else None
    _, fig, axes = panel_grid(len(threats), 3.3, 2.6, extra=0.6, sharex=True)
    edges = [i / bins for i in range(bins + 1)]
    for ax, (k, t) in zip(axes.flat, threats):
        _hist_panel(ax, t, c_conf, c_wrong, tau, edges)
        ax.set_title(_threat_title(k, t))
        ax.set_xlabel("confidence")
        ax.set_ylabel("density")
    hide_unused(axes, len(threats))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle((title + ": " if title else "") + "confidence"
                 + (f" (dashed: τ at {_pct(key)} TPR)" if tau is not None else ""))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save(fig, path)


def plot_confidence_grid(results: Sequence[tuple[str, Result]], path: str | Path, *,
                         tpr: str | None = None, bins: int = 20) -> Path:
    """Every model (rows) × every threat (columns): confidence histograms of the correctly
    classified clean examples and of the successful adversarial (or distal) inputs, τ dashed.
    One figure, so that models can be compared column by column."""
    items = [(label, load_result(r)) for label, r in results]
    items = [(label, r) for label, r in items if _hist_data(r)[0]]
    if not items:
        raise UserError("no adversarial confidences to plot")
    keys: list[str] = []
    info: dict[str, dict[str, Any]] = {}
    for _, r in items:
        for k, t in _hist_data(r)[0]:
            if k not in keys:
                keys.append(k)
                info[k] = t
    plt = pyplot()
    pw = min(2.2, 12.5 / len(keys))
    fig, axes = plt.subplots(len(items), len(keys), figsize=(pw * len(keys) + 0.9,
                                                              1.55 * len(items) + 1.0),
                             squeeze=False, sharex=True)
    edges = [i / bins for i in range(bins + 1)]
    for i, (label, r) in enumerate(items):
        threats, c_conf, c_wrong, _, _ = _hist_data(r)
        by_key = dict(threats)
        key = _first_tpr(r, tpr)
        tau = ((r.get("clean") or {}).get("tau") or {}).get(key) if key else None
        for j, k in enumerate(keys):
            ax = axes[i, j]
            if k in by_key:
                _hist_panel(ax, by_key[k], c_conf, c_wrong, tau, edges)
            else:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes,
                        color="0.5")
            ax.set_yticks([])
            if i == 0:
                ax.set_title(_threat_title(k, info[k]), fontsize=9.5)
            if j == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9.5)
            if i == len(items) - 1:
                ax.set_xlabel("confidence", fontsize=9)
                ax.tick_params(axis="x", labelsize=8)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.supylabel("density (per panel)", fontsize=9, x=0.002)
    fig.tight_layout(rect=(0.01, 0.4 / (1.55 * len(items) + 1.0), 1, 1))
    return save(fig, path, dpi=100)


def _bar_values(r: Mapping[str, Any], key: str | None) -> dict[str, tuple[Any, Any]]:
    """{threat: (metric without rejection, metric at τ)} as `summary.Metric`s (value and 95 %
    interval): RErr, FPR for distal (100 % without rejection), Err for corruptions."""
    from robustlab.report.metric import Metric
    from robustlab.report.summary import result_values

    vals = result_values("adversarial", {k: v for k, v in r.items() if k != "evaluator"}
                         | {"evaluator": "adversarial"})
    tk = _pct(key) if key else ""
    out: dict[str, tuple[Any, Any]] = {}
    for k, t in (r.get("threats") or {}).items():
        if t.get("threat") == "distal":
            out[k] = (Metric(1.0), vals.get(f"FPR@{tk} {k}"))
        elif t.get("threat") == "corrupt":
            out[k] = (vals.get(f"Err {k}"), vals.get(f"Err@{tk} {k}"))
        else:
            out[k] = (vals.get(f"RErr {k}"), vals.get(f"RErr@{tk} {k}"))
    return out


def _bar(m: Any) -> tuple[float, float, float]:
    """(value, lower, upper error) in % of a Metric (NaN when missing)."""
    if m is None:
        return math.nan, 0.0, 0.0
    if m.interval is None:
        return 100 * m.value, 0.0, 0.0
    return 100 * m.value, 100 * max(0.0, m.value - m.lo), 100 * max(0.0, m.hi - m.value)


def plot_rerr_bars(results: Result | Sequence[tuple[str, Result]] | Sequence[Result],
                   path: str | Path, *, tpr: str | None = None, title: str | None = None) -> Path:
    """Grouped bars per threat model: RErr (light) and RErr@τ (dark) for every run, each with
    its 95 % interval as an error bar.

    `results` is one result, a list of results, or a list of (label, result). Distal inputs show
    FPR@τ, corruptions the mean Err / Err@τ.
    """
    if isinstance(results, (Mapping, str, Path)):
        items: list[tuple[str, Mapping[str, Any]]] = [("", load_result(results))]
    else:
        items = []
        for i, it in enumerate(results):
            if isinstance(it, tuple):
                items.append((str(it[0]), load_result(it[1])))
            else:
                items.append((f"run {i + 1}", load_result(it)))
    if not items:
        raise UserError("no adversarial results to plot")
    key = _first_tpr(items[0][1], tpr)
    values = [(label, _bar_values(r, key)) for label, r in items]
    threats: list[str] = []
    info: dict[str, dict[str, Any]] = {}
    for _, r in items:
        for k, t in (r.get("threats") or {}).items():
            if k not in threats:
                threats.append(k)
                info[k] = t
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(min(11.5, max(5.5, 0.32 * len(threats) * len(items) + 2.0)),
                                    3.9))
    width = 0.8 / len(items)
    cmap = plt.get_cmap("tab10")
    for i, (label, v) in enumerate(values):
        xs = [j + (i - (len(items) - 1) / 2) * width for j in range(len(threats))]
        plain = [_bar(v.get(t, (None, None))[0]) for t in threats]
        at = [_bar(v.get(t, (None, None))[1]) for t in threats]
        ax.bar(xs, [p[0] for p in plain], width * 0.95, color=cmap(i % 10), alpha=0.3)
        ax.bar(xs, [p[0] for p in at], width * 0.95, color=cmap(i % 10), label=label or None,
               yerr=[[p[1] for p in at], [p[2] for p in at]], error_kw={"lw": 0.8, "capsize": 1.5})
        ax.errorbar(xs, [p[0] for p in plain], yerr=[[p[1] for p in plain], [p[2] for p in plain]],
                    fmt="none", ecolor="0.45", lw=0.8, capsize=1.5)
    ax.set_xticks(range(len(threats)))
    ax.set_xticklabels([_threat_title(t, info[t]) for t in threats], rotation=25, ha="right")
    ax.set_ylabel("error (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title((title + ": " if title else "") + f"light: without rejection; dark: at τ "
                 f"({_pct(key)} TPR)")
    if any(label for label, _ in items):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return save(fig, path)


def _show(ax: Any, imgs: Any, j: int) -> bool:
    """Draw image j of `imgs` (C×H×W in [0, 1]) on a bare axis; False (axis off) if there is none."""
    ax.set_xticks([])
    ax.set_yticks([])
    if j >= imgs.shape[0]:
        ax.axis("off")
        return False
    img = imgs[j].float().clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).numpy())
    return True

def plot_examples(examples_file: str | Path, path: str | Path, *, title: str | None = None,
                  max_columns: int = 8) -> Path:
    """A grid: the clean images (top row, titled with the true class), then their adversarial
    versions per threat model, titled with the predicted class and confidence; a red frame marks
    an attack that succeeded (prediction ≠ true class), a green one an attack that failed."""
    from robustlab.evaluate.adversarial import load_examples

    ex, classes = load_examples(examples_file)
    if not ex:
        raise UserError(f"{examples_file} holds no examples")
    first = next(iter(ex.values()))
    cols = min(max_columns, first["clean"].shape[0])
    truth = first.get("y")
    rows = [("clean", first["clean"], truth, None)]
    rows += [(k, v["adv"], v.get("pred"), v.get("conf")) for k, v in ex.items()]
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols + 1.0, 1.45 * len(rows) + 0.3),
                             squeeze=False)
    for i, (name, imgs, labels, confs) in enumerate(rows):
        for j in range(cols):
            ax = axes[i, j]
            if not _show(ax, imgs, j):
                continue
            color = "black"
            if labels is not None:
                c = int(labels[j])
                name_c = classes[c] if c < len(classes) else str(c)
                text = name_c if confs is None else f"{name_c} {float(confs[j]):.2f}"
                if i > 0 and truth is not None and j < len(truth):
                    ok = c == int(truth[j])
                    color = "#1a7f37" if ok else "#c62828"
                    for sp in ax.spines.values():
                        sp.set_visible(True)
                        sp.set_color(color)
                        sp.set_linewidth(2.5)
                ax.set_title(text[:14], fontsize=8, color=color)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle((title + ": " if title else "") + "red frame: attack succeeded, green: failed",
                 fontsize=9.5)
    fig.tight_layout()
    return save(fig, path)


def plot_epsilon_histograms(result: Result, path: str | Path, *, bins: int = 30) -> Path:
    """Per norm: histogram of the distance of each test image to its nearest training image of
    another class, with the low quantiles and the default radius marked."""
    r = load_result(result)
    norms = r.get("norms") or {}
    if not norms:
        raise UserError("the result holds no distances to plot")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(norms), figsize=(3.4 * len(norms), 2.8), squeeze=False)
    for ax, (norm, d) in zip(axes.flat, norms.items()):
        hist = d["histogram"]
        edges, counts = hist["edges"], hist["counts"]
        ax.stairs(counts, edges, fill=True, alpha=0.6)
        for q, v in (d.get("quantiles") or {}).items():
            ax.axvline(v, color="k", lw=0.8, ls=":")
            ax.text(v, max(counts) * 0.95 if counts else 1, f"q{float(q) * 100:g}", fontsize=6,
                    rotation=90, va="top")
        if d.get("default_eps") is not None:
            ax.axvline(d["default_eps"], color="tab:red", lw=1.2, label=f"ε = {d['default_eps']:g}")
            ax.legend(fontsize=7)
        ax.set_title(f"{norm}: min {d['min']:.3g}, median {d['median']:.3g}", fontsize=9)
        ax.set_xlabel("distance to nearest other-class training image", fontsize=7)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return save(fig, path)


def plot_epsilon_examples(examples_file: str | Path, path: str | Path) -> Path:
    """Rows: norm × (random, adversarial); columns: radii; images perturbed at that radius."""
    import json

    from safetensors import safe_open

    with safe_open(str(examples_file), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    radii = json.loads(meta.get("radii", "{}"))
    rows = [f"{n}/{kind}" for n in radii for kind in ("random", "adversarial")
            if f"{n}/{kind}" in tensors]
    rows += [k for k in tensors if k != "clean" and k not in rows]
    if not rows:
        raise UserError(f"{examples_file} holds no perturbed images")
    cols = 1 + max(t.shape[0] for k, t in tensors.items() if k != "clean")
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols + 0.8, 1.35 * len(rows)),
                             squeeze=False)
    clean = tensors["clean"]
    for i, row in enumerate(rows):
        imgs = _with_clean(clean, tensors[row])
        norm = row.split("/")[0]
        rs = [0.0] + list(radii.get(norm, []))
        for j in range(cols):
            ax = axes[i, j]
            if not _show(ax, imgs, j):
                continue
            ax.set_title(f"{rs[j]:g}" if j < len(rs) else "", fontsize=6)
            if j == 0:
                ax.set_ylabel(row, fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def _with_clean(clean: Any, perturbed: Any) -> Any:
    import torch

    return torch.cat([clean[:1], perturbed])


def example_figures(items: Sequence[tuple[str, Mapping[str, Any]]], name: str, figs: Any,
                    order: int = 3) -> list[dict[str, Any]]:
    """The report's example grids (`plot_examples`) of each (run label, result) whose saved
    examples file exists, titled 'Adversarial examples for <label> (<name>)' (`report.html`)."""
    out = []
    for label, r in items:
        if not r.get("examples_file"):
            continue
        f = Path(r["examples_file"])
        ex_path = f if f.is_absolute() else Path(r["_dir"]) / f
        if ex_path.is_file():
            fig = figs.make(
                f"Adversarial examples for {label} ({name})", "Clean test images (top row, titled "
                "with the true class) and their adversarial versions per threat model, titled with "
                "the predicted class and confidence; red frame: the attack succeeded "
                "(misclassified), green: it failed.",
                lambda p, e=ex_path, label=label: plot_examples(e, p, title=label, max_columns=4),
                size="half", order=order)
            if fig:
                out.append(fig)
    return out
