"""Result files → named scalar metrics (the summary table of reports and preset tables).

`collect(root)` finds every run under a folder (a directory with `model.json`) with its metadata,
per-epoch history (`metrics.jsonl`) and results (`results/*.json`); `result_metrics(name, r)`
turns one result dict into `{metric name: value}`; `run_metrics(run_dir)` merges them for a run.
Errors are fractions (the tables print them in %). Metric names:

- `Err`: clean test error (`eval`/`clean` results; else the adversarial suite's attacked split);
- `RErr <threat>`, `RErr@99% <threat>` (confidence threshold at 99% TPR), `FPR@99% distal`,
  `Err@99% corrupt`, `Err corrupt` — adversarial suites; `RErr patch <location>` — patches;
- `Err q` (quantized, no errors) and `RErr p=<rate>%` (mean over patterns) — random bit errors;
- `RErr <b> bits` (`… (bfa)`, `… (random)`) — adversarial bit errors per budget;
- `<kind> flatness ξ=<ξ>`, `robust loss`, `robust loss gap` — flatness;
- `train Err` (last epoch), `best val RErr`, `last val RErr` — training history.

A result stored under another name than its kind's usual one (e.g. `flatness-best.json`, or a
second suite `unseen.json`) gets its metric names prefixed with `<name>/`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from robustlab.io import read_json

log = logging.getLogger("robustlab.report")

DEFAULT_NAMES = {"clean": ("clean", "eval"), "adversarial": ("adversarial", "attack"),
                 "patches": ("patches",), "biterrors": ("biterrors",), "bitattack": ("bitattack",),
                 "flatness": ("flatness", "flatness-average", "flatness-worst",
                              "flatness-average-clean", "flatness-worst-clean"),
                 "energy": ("energy",), "chip": ("chip", "chip-errors")}


def rate_label(p: float) -> str:
    """0.01 → '1%', 0.005 → '0.5%', 0.0001 → '0.01%'."""
    return f"{100 * p:.4g}%"


def _tau_label(key: str) -> str:
    try:
        return f"{100 * float(key):g}%"
    except ValueError:
        return key


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def kind_of(name: str, r: dict[str, Any]) -> str:
    """What kind of result a dict is: clean, adversarial, biterrors, chip, energy, bitattack,
    flatness, landscape, or other."""
    ev = r.get("evaluator")
    if ev:
        return str(ev)
    if "threats" in r and "clean" in r:
        return "adversarial"
    if "flatness_kind" in r:
        return "flatness"
    if "dims" in r and "clean_loss" in r and "robust_loss" in r:
        return "landscape"
    if "locations" in r and "clean" in r:
        return "patches"
    if "budgets" in r and "results" in r:
        return "bitattack"
    if "voltages" in r:
        return "energy"
    if "chip" in r and "rerr" in r:
        return "chip"
    if "rates" in r and "rerr" in r:
        return "biterrors"
    if "confusion" in r and "err" in r:
        return "clean"
    return "other"


def result_metrics(name: str, r: dict[str, Any]) -> dict[str, float]:
    """Named scalar metrics of one result (see the module docstring); a malformed result gives {}."""
    try:
        return _result_metrics(name, r)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        log.warning("result %s: cannot read its metrics (%s: %s)", name, type(e).__name__, e)
        return {}


def _result_metrics(name: str, r: dict[str, Any]) -> dict[str, float]:
    kind = kind_of(name, r)
    out: dict[str, float] = {}
    pre = "" if name in DEFAULT_NAMES.get(kind, ()) else f"{name}/"
    if kind == "clean":
        if _num(r.get("err")) is not None:
            out[f"{pre}Err"] = float(r["err"])
    elif kind == "patches":
        for loc, v in (r.get("locations") or {}).items():
            if _num(v.get("rerr")) is not None:
                out[f"{pre}RErr patch {loc}"] = v["rerr"]
        if _num((r.get("clean") or {}).get("err")) is not None:
            out[f"{pre}Err (attacked split)"] = r["clean"]["err"]
    elif kind == "adversarial":
        taus = list((r.get("clean") or {}).get("tau") or {})
        for key, t in (r.get("threats") or {}).items():
            threat = t.get("threat", key)
            label = f"{pre}{key}"
            ats = {k: v for k, v in (t.get("at") or {}).items() if not taus or k == taus[0]}
            if threat == "distal":
                for tk, a in ats.items():
                    if _num(a.get("fpr")) is not None:
                        out[f"FPR@{_tau_label(tk)} {label}"] = a["fpr"]
            elif threat == "corrupt":
                if _num(t.get("mean_err")) is not None:
                    out[f"Err {label}"] = t["mean_err"]
                for tk, a in ats.items():
                    if _num(a.get("err")) is not None:
                        out[f"Err@{_tau_label(tk)} {label}"] = a["err"]
            else:
                if _num(t.get("rerr")) is not None:
                    out[f"RErr {label}"] = t["rerr"]
                for tk, a in ats.items():
                    if _num(a.get("rerr")) is not None:
                        out[f"RErr@{_tau_label(tk)} {label}"] = a["rerr"]
                    if _num(a.get("fpr")) is not None:
                        out[f"FPR@{_tau_label(tk)} {label}"] = a["fpr"]
                if _num(t.get("auc")) is not None:
                    out[f"AUC {label}"] = t["auc"]
        clean = r.get("clean") or {}
        if _num(clean.get("err")) is not None:
            out[f"{pre}Err (attacked split)"] = clean["err"]
    elif kind == "biterrors":
        if _num(r.get("clean_err")) is not None:
            out[f"{pre}Err q"] = r["clean_err"]
        for p, m in zip(r.get("rates") or [], (r.get("rerr") or {}).get("mean") or []):
            out[f"{pre}RErr p={rate_label(p)}"] = m
    elif kind == "bitattack":
        for method, res in (r.get("results") or {}).items():
            suffix = "" if method == "attack" else f" ({method})"
            for b, v in zip(res.get("budget") or r.get("budgets") or [], res.get("rerr") or []):
                if _num(v) is not None:
                    out[f"{pre}RErr {b} bits{suffix}"] = v
    elif kind == "flatness":
        variant = "" if r.get("variant", "robust") == "robust" else f"{r['variant']} "
        for d in r.get("details") or []:
            if _num(d.get("flatness")) is not None:
                out[f"{pre}{variant}{r['flatness_kind']} flatness ξ={d['xi']:g}"] = d["flatness"]
        if _num(r.get("loss")) is not None:
            out[f"{pre}{variant or 'robust '}loss"] = r["loss"]
        if _num(r.get("gap")) is not None:
            out[f"{pre}{variant or 'robust '}loss gap"] = r["gap"]
    elif kind == "energy":
        if _num(r.get("energy_saved")) is not None:
            out["energy saved"] = r["energy_saved"]
    return out


def history_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    if not history:
        return out
    last = history[-1]
    if _num(last.get("train_err")) is not None:
        out["train Err"] = last["train_err"]
    for prefix in ("val_", "test_"):
        key = f"{prefix}robust_err"
        vals = [h[key] for h in history if _num(h.get(key)) is not None and not math.isnan(h[key])]
        if vals:
            out[f"best {prefix[:-1]} RErr"] = min(vals)
            out[f"last {prefix[:-1]} RErr"] = vals[-1]
    return out


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def read_results(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """{result name: dict} of `run_dir/results/*.json` (unreadable files are left out)."""
    out = {}
    folder = Path(run_dir) / "results"
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            d = read_json(p)
        except (OSError, ValueError):
            continue
        if isinstance(d, dict):
            out[p.stem] = d
    return out


GROUPS = {"clean": "clean", "adversarial": "input attacks", "patches": "input attacks",
          "biterrors": "random bit errors",
          "chip": "random bit errors", "energy": "random bit errors",
          "bitattack": "adversarial bit errors", "flatness": "flatness", "training": "training"}


def run_metric_groups(run_dir: str | Path) -> dict[str, dict[str, float]]:
    """A run's metrics grouped by capability (`GROUPS` values), clean error first."""
    results = read_results(run_dir)
    order = list(GROUPS)
    groups: dict[str, dict[str, float]] = {}
    items = sorted(results.items(), key=lambda kv: (order.index(kind_of(*kv))
                                                    if kind_of(*kv) in order else 99, kv[0]))
    for name, r in items:
        g = GROUPS.get(kind_of(name, r), "other")
        for k, v in result_metrics(name, r).items():
            if k.endswith("Err (attacked split)"):
                if k == "Err (attacked split)" and "Err" not in groups.get("clean", {}):
                    groups.setdefault("clean", {})["Err"] = v
                continue
            groups.setdefault(g, {}).setdefault(k, v)
    hist = history_metrics(read_history(run_dir))
    if hist:
        groups.setdefault("training", {}).update(hist)
    ordered = {g: groups[g] for g in dict.fromkeys(GROUPS.values()) if g in groups}
    ordered.update({g: v for g, v in groups.items() if g not in ordered})
    return ordered


def run_metrics(run_dir: str | Path) -> dict[str, float]:
    """All metrics of one run in one flat dict: clean error first, then every result."""
    out: dict[str, float] = {}
    for metrics in run_metric_groups(run_dir).values():
        for k, v in metrics.items():
            out.setdefault(k, v)
    return out


def find_runs(root: str | Path) -> list[Path]:
    """Run directories (holding `model.json`) under `root`, `root` itself included, sorted."""
    root = Path(root)
    found = [p.parent for p in root.rglob("model.json")]
    return sorted(set(found), key=lambda p: str(p))


def run_label(run_dir: Path, root: Path, meta: dict[str, Any] | None = None) -> str:
    if meta and meta.get("label"):
        return str(meta["label"])
    try:
        rel = run_dir.relative_to(root)
        return str(rel) if str(rel) != "." else run_dir.name
    except ValueError:
        return run_dir.name


def collect(root: str | Path) -> list[dict[str, Any]]:
    """Every run under `root`: path, label, meta, history, results, config text and metrics."""
    root = Path(root)
    runs = []
    for d in find_runs(root):
        try:
            meta = read_json(d / "model.json")
        except (OSError, ValueError):
            meta = {}
        config = (d / "config.yaml").read_text(encoding="utf-8") if (d / "config.yaml").is_file() else ""
        runs.append({"path": d, "name": str(d.relative_to(root)) if d != root else d.name,
                     "label": run_label(d, root, meta), "meta": meta,
                     "history": read_history(d), "results": read_results(d), "config": config,
                     "groups": run_metric_groups(d)})
    return runs
