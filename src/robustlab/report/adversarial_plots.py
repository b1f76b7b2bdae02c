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
from robustlab.report.figures import Result, load_result, pyplot, save


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


def plot_confidence_histograms(result: Result, path: str | Path, *, title: str | None = None,
                               tpr: str | None = None, bins: int = 25) -> Path:
    """Per threat model: confidences of the clean attacked examples (correctly classified) and of
    their adversarial versions (those that are misclassified), with τ as a vertical line."""
    r = load_result(result)
    threats = [(k, t) for k, t in (r.get("threats") or {}).items()
               if t.get("adv_conf") is not None or t.get("threat") == "distal"]
    if not threats:
        raise UserError("the result holds no adversarial confidences to plot")
    clean = r.get("clean") or {}
    c_conf = clean.get("conf") or []
    c_wrong = clean.get("wrong") or [False] * len(c_conf)
    key = _first_tpr(r, tpr)
    tau = (clean.get("tau") or {}).get(key) if key else None
    plt = pyplot()
    cols = min(4, len(threats))
    rows = math.ceil(len(threats) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    edges = [i / bins for i in range(bins + 1)]
    ok_conf = [c for c, w in zip(c_conf, c_wrong) if not w]
    for ax, (k, t) in zip(axes.flat, threats):
        ax.hist(ok_conf, bins=edges, alpha=0.6, color="tab:green", label="clean (correct)",
                density=True)
        if t.get("threat") == "distal":
            adv, lab = t.get("conf") or [], "distal"
        else:
            wrong = t.get("adv_wrong") or [True] * len(t["adv_conf"])
            adv = [c for c, w, cw in zip(t["adv_conf"], wrong, c_wrong) if w and not cw]
            lab = "adversarial (wrong)"
        if adv:
            ax.hist(adv, bins=edges, alpha=0.6, color="tab:red", label=lab, density=True)
        if tau is not None:
            ax.axvline(tau, color="k", lw=1, ls="--")
        ax.set_title(k, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(threats):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle((title + ": " if title else "") + "confidence"
                 + (f" (dashed: τ at {_pct(key)} TPR)" if tau is not None else ""), fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def _bar_values(r: Mapping[str, Any], key: str | None) -> dict[str, tuple[float, float]]:
    """{threat: (error without rejection, error at τ)}: RErr, FPR for distal, Err for corrupt."""
    out = {}
    for k, t in (r.get("threats") or {}).items():
        at = (t.get("at") or {}).get(key, {}) if key else {}
        if t.get("threat") == "distal":
            out[k] = (1.0, at.get("fpr", math.nan))  # without rejection every distal input counts
        elif t.get("threat") == "corrupt":
            out[k] = (t.get("mean_err", math.nan), at.get("err", math.nan))
        else:
            out[k] = (t.get("rerr", math.nan), at.get("rerr", math.nan))
    return out


def plot_rerr_bars(results: Result | Sequence[tuple[str, Result]] | Sequence[Result],
                   path: str | Path, *, tpr: str | None = None, title: str | None = None) -> Path:
    """Grouped bars per threat model: RErr (light) and RErr@τ (dark) for every run.

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
    for _, v in values:
        threats += [k for k in v if k not in threats]
    plt = pyplot()
    # about 0.25 in per bar, but never wider than a page (bars get thinner instead)
    fig, ax = plt.subplots(figsize=(min(12.0, max(5.0, 0.25 * len(threats) * len(items) + 1.5)), 3.6))
    width = 0.8 / len(items)
    cmap = plt.get_cmap("tab10")
    for i, (label, v) in enumerate(values):
        xs = [j + (i - (len(items) - 1) / 2) * width for j in range(len(threats))]
        plain = [100 * v.get(t, (math.nan, math.nan))[0] for t in threats]
        at = [100 * v.get(t, (math.nan, math.nan))[1] for t in threats]
        ax.bar(xs, plain, width * 0.95, color=cmap(i % 10), alpha=0.35)
        ax.bar(xs, at, width * 0.95, color=cmap(i % 10), label=label or None)
    ax.set_xticks(range(len(threats)))
    ax.set_xticklabels(threats, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("error (%)")
    ax.set_ylim(0, 100)
    ax.set_title((title + ": " if title else "") + f"RErr (light) and RErr@τ {_pct(key)} TPR "
                 "(dark); distal: FPR@τ; corrupt: Err", fontsize=9)
    if any(label for label, _ in items):
        ax.legend(fontsize=8)
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
    """A grid: the clean images (top row), then their adversarial versions per threat model, each
    titled with the predicted class and confidence."""
    from robustlab.evaluate.adversarial import load_examples

    ex, classes = load_examples(examples_file)
    if not ex:
        raise UserError(f"{examples_file} holds no examples")
    first = next(iter(ex.values()))
    cols = min(max_columns, first["clean"].shape[0])
    rows = [("clean", first["clean"], first.get("y"), None)]
    rows += [(k, v["adv"], v.get("pred"), v.get("conf")) for k, v in ex.items()]
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.25 * cols + 0.8, 1.35 * len(rows)),
                             squeeze=False)
    for i, (name, imgs, labels, confs) in enumerate(rows):
        for j in range(cols):
            ax = axes[i, j]
            if not _show(ax, imgs, j):
                continue
            if labels is not None:
                c = int(labels[j])
                name_c = classes[c] if c < len(classes) else str(c)
                text = name_c if confs is None else f"{name_c} {float(confs[j]):.2f}"
                ax.set_title(text[:14], fontsize=6)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
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
