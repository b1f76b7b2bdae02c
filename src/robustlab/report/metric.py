"""One number of a result with what it is (`Metric`) and the helpers that build one.

Shared by the report's summary (`report.summary`), the specs' `metrics()` (`tasks/*.py`) and the
tables (`report.rows`): `rate_metric` (a proportion with its Wilson interval), `mean_metric` (a
mean over patterns or samples with its t interval), `auc_metric` (a ROC AUC with its Hanley &
McNeil interval), and the small formatters of labels (`rate_label`, `tau_label`,
`threat_label`, `NORM_NAMES`, `plural`, `sig3`, `number`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from robustlab.report import stats


@dataclass
class Metric:
    """One number of one result with what it is: its 95 % interval (`lo`, `hi`, None when the
    data allow none) over `n` `over` (examples, patterns, samples), a display `label` that names
    the threat and radius, the better direction, the unit ("%" for rates, "" otherwise) and the
    settings that produced it."""

    value: float
    lo: float | None = None
    hi: float | None = None
    n: int | None = None
    over: str = "examples"
    label: str = ""
    better: str = "lower"
    unit: str = "%"
    setting: str = ""

    @property
    def interval(self) -> tuple[float, float] | None:
        return None if self.lo is None or self.hi is None else (self.lo, self.hi)


NORM_NAMES = {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}  # threat norms as labels


def rate_label(p: float) -> str:
    """0.01 → '1%', 0.005 → '0.5%', 0.0001 → '0.01%'."""
    return f"{100 * p:.4g}%"


def tau_label(key: str) -> str:
    """A TPR key of a result ('0.99') as a label ('99%'); other keys unchanged."""
    try:
        return f"{100 * float(key):g}%"
    except ValueError:
        return key


def threat_label(key: str, t: dict[str, Any]) -> str:
    """'L∞ ε=0.1', 'frames w=2', 'patch 7×7', 'distal ε=0.3', 'corruptions (2 kinds)'."""
    from robustlab.evaluate.adversarial import SUITE_THREATS

    threat = t.get("threat", key)
    suite_threat = SUITE_THREATS.get(threat)  # each threat labels itself (`SuiteThreat.label`)
    text = suite_threat.label(t) if suite_threat is not None else str(threat)
    return text if key in (threat, "corrupt") or key.startswith(threat) else f"{key}: {text}"


def n_note(items: list[tuple[str, dict[str, Any]]], key: str = "n_test") -> str:
    """'n = 200' or 'n = 100–200': the range of `key` over (label, result) pairs ('' if none)."""
    ns = sorted({r.get(key) for _, r in items if isinstance(r.get(key), int)})
    if not ns:
        return ""
    return f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"


def number(v: Any) -> float | None:
    """`v` as a float when it is a number (not a bool); else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def plural(k: Any, word: str) -> str:
    """'1 step', '3 steps'."""
    return f"{k} {word}" + ("" if k == 1 else "s")


def sig3(v: Any) -> str:
    """A number to 3 significant digits ('0.0314'); anything else as str()."""
    return f"{v:.3g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def rate_metric(value: float, n: Any, *, label: str, setting: str = "", better: str = "lower",
                k: int | None = None, over: str = "examples") -> Metric:
    """A proportion with its Wilson interval over n (no interval when n is unknown)."""
    n_i = int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0 else None
    lo = hi = None
    if n_i is not None and not math.isnan(value):
        kk = k if k is not None else min(n_i, max(0, round(value * n_i)))
        lo, hi = stats.wilson(kk, n_i)
    return Metric(float(value), lo, hi, n_i, over if n_i else "", label, better, "%", setting)


def mean_metric(value: float, values: list[float] | None, std: float | None, k: int | None, *,
                label: str, over: str, unit: str = "%", setting: str = "",
                fallback_n: Any = None) -> Metric:
    """A mean over k patterns/samples with its t interval; for rates never narrower than the
    Wilson interval over `fallback_n` examples (which is the interval with a single pattern)."""
    iv = stats.mean_interval(values) if values else None
    if iv is None and isinstance(k, int) and std is not None:
        iv = stats.mean_interval_from_std(value, std, k)
    if iv is not None:
        lo, hi = iv
        if unit == "%":
            w = rate_metric(value, fallback_n, label=label).interval if fallback_n else None
            if w is not None:
                lo, hi = min(lo, w[0]), max(hi, w[1])
            lo, hi = max(0.0, lo), min(1.0, hi)
        return Metric(float(value), lo, hi, k if isinstance(k, int) else len(values or []), over,
                      label, "lower", unit, setting)
    if unit == "%" and fallback_n:
        return rate_metric(value, fallback_n, label=label, setting=setting)
    return Metric(float(value), None, None, k if isinstance(k, int) else None, over if k else "",
                  label, "lower", unit, setting)


def rerr_at_count(t: dict[str, Any], clean: dict[str, Any], tau: float, rate: float
                  ) -> tuple[int, int] | None:
    """(errors, non-rejected) behind RErr@τ, recounted from the per-example confidences."""
    c, cw = clean.get("conf"), clean.get("wrong")
    a, aw = t.get("adv_conf"), t.get("adv_wrong")
    if not (isinstance(c, list) and isinstance(cw, list) and isinstance(a, list)
            and isinstance(aw, list)) or len(a) > len(c):
        return None
    m = len(a)
    d = sum(1 for i in range(m) if c[i] >= tau or a[i] >= tau)
    for dd in (d, d - 1, d + 1, d - 2, d + 2):
        if dd > 0 and abs(rate * dd - round(rate * dd)) < 1e-6:
            return round(rate * dd), dd
    return None


def auc_metric(t: dict[str, Any], clean: dict[str, Any], label: str, setting: str) -> Metric:
    """A threat's ROC AUC (`t["auc"]`) with its Hanley & McNeil interval over the per-example
    verdicts (clean right = positives, newly wrong under attack = negatives)."""
    auc = float(t["auc"])
    cw, aw = clean.get("wrong"), t.get("adv_wrong")
    iv = None
    if isinstance(cw, list) and isinstance(aw, list) and len(aw) <= len(cw):
        pos = sum(1 for w in cw[:len(aw)] if not w)
        neg = sum(1 for w, c in zip(aw, cw) if w and not c)
        iv = stats.auc_interval(auc, pos, neg)
    lo, hi = iv if iv else (None, None)
    return Metric(auc, lo, hi, len(aw) if iv and isinstance(aw, list) else None,
                  "examples" if iv else "", label, "higher", "", setting)


__all__ = ["Metric", "auc_metric", "mean_metric", "number", "plural", "rate_label", "rate_metric",
           "rerr_at_count", "sig3", "tau_label"]
