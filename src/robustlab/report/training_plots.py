"""Training curves of one or several runs from their per-epoch histories (`metrics.jsonl`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.report.figures import pyplot, save

History = Sequence[dict[str, Any]]

# (panel title, [(history key, line style, legend suffix)])
PANELS = [
    ("loss", [("train_loss", "-", "train"), ("val_loss", "--", "val")]),
    ("error (%)", [("train_err", "-", "train"), ("val_err", "--", "val")]),
    ("robust error on held-out data (%)", [("val_robust_err", "-", "val"),
                                            ("test_robust_err", "--", "test")]),
]


MARKERS = "osD^vP*Xh<>p"


def drawn(histories: Sequence[tuple[str, History]]) -> dict[str, list[str]]:
    """{panel title: [line suffixes that have data]}: what `plot_training` draws (for captions)."""
    runs = [list(h) for _, h in histories if h]
    out: dict[str, list[str]] = {}
    for title, lines in PANELS:
        have = [suffix for key, _, suffix in lines
                if any(isinstance(row.get(key), (int, float)) for h in runs for row in h)]
        if have:
            out[title] = have
    return out


def plot_training(histories: Sequence[tuple[str, History]], path: str | Path, *,
                  title: str | None = None) -> Path:
    """Loss, error and (when recorded) robust held-out error per epoch, one colour per run."""
    runs = [(label, list(h)) for label, h in histories if h]
    if not runs:
        raise UserError("no training history to plot")
    panels = [(t, lines) for t, lines in PANELS
              if any(any(k in row for row in h) for _, h in runs for k, _, _ in lines)]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (ptitle, lines) in zip(axes[0], panels):
        for i, (label, h) in enumerate(runs):
            color, marker = f"C{i % 10}", MARKERS[i % len(MARKERS)]
            for key, style, suffix in lines:
                pts = [(row.get("epoch", j + 1), row[key]) for j, row in enumerate(h)
                       if isinstance(row.get(key), (int, float))]
                if not pts:
                    continue
                x, y = zip(*pts)
                scale = 100.0 if "err" in key else 1.0
                ax.plot(x, [scale * v for v in y], style, color=color, marker=marker,
                        ms=7 - 4 * i / max(1, len(runs) - 1), mfc="none" if i % 2 else color,
                        lw=2.2 - 1.2 * i / max(1, len(runs) - 1), alpha=0.85,
                        label=f"{label} ({suffix})")
        ax.set_title(ptitle)
        ax.set_ylabel(ptitle)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        h2, l2 = ax.get_legend_handles_labels()
        for h, lab in zip(h2, l2):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.045 * ((len(labels) - 1) // 4)))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08 + 0.045 * ((len(labels) - 1) // 4), 1, 1))
    return save(fig, path, dpi=110)
