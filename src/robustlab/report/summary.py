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
second suite `unseen.json`) gets its metric names prefixed with `<name>/` (`EvalSpec.prefix`).
Each kind's metrics, setting line and report section (`group`) come from its spec
(`robustlab.tasks`), found through the result's `kind`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from robustlab.io import read_json
from robustlab.report.metric import Metric
from robustlab.report.metric import number as _num
from robustlab.report.metric import plural as _plural
from robustlab.report.metric import rate_label as rate_label  # re-exported (older callers)
from robustlab.report.metric import threat_label as threat_label  # re-exported

log = logging.getLogger("robustlab.report")


def kind_of(name: str, r: dict[str, Any]) -> str:
    """What kind of result a dict is: the registry key it carries (results with a `schema`), else,
    for older files, guessed from their keys: clean, adversarial, biterrors, chip, energy,
    bitattack, flatness, landscape, or other."""
    if r.get("schema") is not None and r.get("kind"):
        return str(r["kind"])
    return _legacy_kind(r)


def _legacy_kind(r: dict[str, Any]) -> str:
    """The kind of a result written before results carried `schema` (guessed from its keys)."""
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


def result_setting(name: str, r: dict[str, Any]) -> str:
    """One line of what a result was measured on and how (n, attacks, steps, patterns), for
    section headers; '' when unknown. The result's spec says it (`EvalSpec.setting_line`), found
    through its `kind` (guessed from the keys only for files without `schema`)."""
    cls = spec_for(kind_of(name, r))
    if cls is None:
        return ""
    try:
        return str(spec_instance(cls, r).setting_line(r))
    except (AttributeError, KeyError, TypeError, ValueError):
        return ""


def section_settings(runs: list[dict[str, Any]]) -> dict[str, str]:
    """Per capability group (`SECTIONS`): the distinct `result_setting`s of every run's
    results, joined; runs that differ are named."""
    seen: dict[str, dict[str, list[str]]] = {}
    for r in runs:
        for name, res in r["results"].items():
            text = result_setting(name, res)
            if text:
                g = group_of(kind_of(name, res))
                seen.setdefault(g, {}).setdefault(text, []).append(str(r["label"]))
        if r.get("history"):
            seen.setdefault("training", {}).setdefault(
                _plural(len(r["history"]), "epoch"), []).append(str(r["label"]))
    out = {}
    for g, texts in seen.items():
        everyone = set().union(*map(set, texts.values()))
        out[g] = " | ".join(t if set(labels) == everyone else f"{', '.join(labels)}: {t}"
                            for t, labels in texts.items())
    return out


def result_values(name: str, r: dict[str, Any]) -> dict[str, Metric]:
    """Named metrics of one result with intervals and labels; a malformed result gives {}."""
    try:
        return _result_values(name, r)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as e:
        log.warning("result %s: cannot read its metrics (%s: %s)", name, type(e).__name__, e)
        return {}


def result_metrics(name: str, r: dict[str, Any]) -> dict[str, float]:
    """Named scalar metrics of one result (see the module docstring); a malformed result gives {}."""
    return {k: m.value for k, m in result_values(name, r).items()}


def spec_for(kind: str) -> type[Any] | None:
    """The registered spec class of `kind` (`robustlab.tasks`), or None."""
    from robustlab import tasks

    if not _LOADED:
        tasks.load_all()
        _LOADED.append(True)
    return tasks.REGISTRY.get(kind)


_LOADED: list[bool] = []


def spec_instance(cls: type[Any], r: dict[str, Any]) -> Any:
    """The spec that wrote `r` (its recorded settings), else the spec with its defaults."""
    return cls.from_result(r)


def overrides(cls: type[Any], method: str) -> bool:
    from robustlab.tasks.spec import EvalSpec

    return getattr(cls, method, None) is not getattr(EvalSpec, method)


def _spec_values(cls: type[Any], name: str, r: dict[str, Any]) -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    for k, v in spec_instance(cls, r).metrics(name, r).items():
        if isinstance(v, Metric):
            out[k] = v
        elif _num(v) is not None:
            out[k] = Metric(float(v), label=k, over="", unit="%" if "err" in k.lower() else "")
    return out


def _result_values(name: str, r: dict[str, Any]) -> dict[str, Metric]:
    kind = kind_of(name, r)
    cls = spec_for(kind)
    if cls is not None and overrides(cls, "metrics"):  # the spec knows its metrics
        return _spec_values(cls, name, r)
    return {}  # every kind with metrics has a spec (tasks/*.py) that yields them


def history_values(history: list[dict[str, Any]]) -> dict[str, Metric]:
    """Training metrics of a per-epoch history: last train error, best/last robust held-out error
    (no intervals: the history does not record on how many examples)."""
    out: dict[str, Metric] = {}
    if not history:
        return out
    last = history[-1]
    if _num(last.get("train_err")) is not None:
        out["train Err"] = Metric(float(last["train_err"]), label="train Err (last epoch)", over="",
                                  setting=f"{len(history)} epochs")
    for prefix in ("val_", "test_"):
        key = f"{prefix}robust_err"
        vals = [h[key] for h in history if _num(h.get(key)) is not None and not math.isnan(h[key])]
        if vals:
            split = "held-out" if prefix == "val_" else "test"
            out[f"best {prefix[:-1]} RErr"] = Metric(float(min(vals)), over="",
                                                     label=f"best {split} RErr (over epochs)")
            out[f"last {prefix[:-1]} RErr"] = Metric(float(vals[-1]), over="",
                                                     label=f"last {split} RErr (last epoch)")
    return out


def history_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    return {k: m.value for k, m in history_values(history).items()}


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


# the report's sections, in order (a spec's `group`; results of other groups come last)
SECTIONS = ("clean", "input attacks", "random bit errors", "adversarial bit errors", "flatness",
            "training")


def group_of(kind: str) -> str:
    """The capability group of a kind: its spec's `group`; 'other' for kinds without a spec."""
    cls = spec_for(kind)
    return str(getattr(cls, "group", "") or "other") if cls is not None else "other"


def _order(kind: str) -> tuple[int, str]:
    """Results sort by section, then by kind; those of other groups last (then by name)."""
    g = group_of(kind)
    return (SECTIONS.index(g), kind) if g in SECTIONS else (len(SECTIONS), "")


def value_groups(results: dict[str, dict[str, Any]], history: list[dict[str, Any]]
                 ) -> dict[str, dict[str, Metric]]:
    """Metrics of one run's results and history grouped by capability (`SECTIONS`), clean
    error first. Without a clean result, the adversarial suite's attacked split gives `Err`."""
    groups: dict[str, dict[str, Metric]] = {}
    items = sorted(results.items(), key=lambda kv: (_order(kind_of(*kv)), kv[0]))
    for name, r in items:
        g = group_of(kind_of(name, r))
        for k, v in result_values(name, r).items():
            if k.endswith("Err (attacked split)"):
                if k == "Err (attacked split)" and "Err" not in groups.get("clean", {}):
                    v.label = "Err clean (attacked split)"
                    groups.setdefault("clean", {})["Err"] = v
                continue
            groups.setdefault(g, {}).setdefault(k, v)
    hist = history_values(history)
    if hist:
        groups.setdefault("training", {}).update(hist)
    ordered = {g: groups[g] for g in SECTIONS if g in groups}
    ordered.update({g: v for g, v in groups.items() if g not in ordered})
    return ordered


def run_value_groups(run_dir: str | Path) -> dict[str, dict[str, Metric]]:
    """`value_groups` of the run in `run_dir`."""
    return value_groups(read_results(run_dir), read_history(run_dir))


def run_metric_groups(run_dir: str | Path) -> dict[str, dict[str, float]]:
    """A run's metrics grouped by capability (`SECTIONS`), clean error first."""
    return {g: {k: m.value for k, m in ms.items()} for g, ms in run_value_groups(run_dir).items()}


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
    found = [p.parent for p in root.rglob("model.json")  # not in hidden folders (.replaced/)
             if not any(part.startswith(".") for part in p.relative_to(root).parts[:-1])]
    return sorted(set(found), key=lambda p: str(p))


def run_label(run_dir: Path, root: Path, meta: dict[str, Any] | None = None) -> str:
    if meta and meta.get("label"):
        return str(meta["label"])
    try:
        rel = run_dir.relative_to(root)
        return str(rel) if str(rel) != "." else run_dir.name
    except ValueError:
        return run_dir.name


def _plan_order(root: Path) -> list[str]:
    try:
        plan = read_json(root / "plan.json") if (root / "plan.json").is_file() else {}
    except (OSError, ValueError):
        plan = {}
    return list((plan.get("runs") if isinstance(plan, dict) else None) or {})


def collect_paths(paths: list[str | Path]) -> list[dict[str, Any]]:
    """`collect` over several folders or runs, in the given order (each folder's runs in its
    preset's order); a run reached twice is kept once. Run names are relative to the folder,
    prefixed with the folder's name when several folders are given."""
    out, seen = [], set()
    for p in paths:
        for r in collect(p):
            key = Path(r["path"]).resolve()
            if key in seen:
                continue
            seen.add(key)
            if len(paths) > 1 and Path(p).resolve() != key:
                r["name"] = f"{Path(p).name}/{r['name']}"
            out.append(r)
    return out


def collect(root: str | Path) -> list[dict[str, Any]]:
    """Every run under `root` (in the order of `root/plan.json` when a preset made them, else by
    path): path, name, label, meta, history, results, config text and metrics (`values`: grouped
    `Metric`s; `groups`: the same as plain numbers)."""
    root = Path(root)
    runs = []
    for d in find_runs(root):
        from robustlab.checkpoint import read_meta

        meta = read_meta(d)  # schema-checked: a malformed model.json is a one-line error
        config = (d / "config.yaml").read_text(encoding="utf-8") if (d / "config.yaml").is_file() else ""
        history, results = read_history(d), read_results(d)
        values = value_groups(results, history)
        runs.append({"path": d, "name": str(d.relative_to(root)) if d != root else d.name,
                     "label": run_label(d, root, meta), "meta": meta,
                     "history": history, "results": results, "config": config,
                     "values": values,
                     "groups": {g: {k: m.value for k, m in ms.items()} for g, ms in values.items()}})
    order = _plan_order(root)
    runs.sort(key=lambda r: (order.index(r["name"]) if r["name"] in order else len(order), r["name"]))
    return runs
