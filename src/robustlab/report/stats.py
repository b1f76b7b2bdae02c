"""95 % intervals for the numbers of the report and of `robustlab table`.

- `wilson(k, n)`: Wilson score interval of a proportion of k successes in n trials (error
  rates over test examples);
- `mean_interval(values)`: Student-t interval of the mean of a few i.i.d. values (bit error rates
  over patterns, flatness over random perturbations);
- `auc_interval(auc, n_pos, n_neg)`: Hanley & McNeil (1982) normal interval of a ROC AUC;
- `separated(a, b)` / `common_point(intervals)`: whether intervals overlap.

Every interval is a pair (lo, hi); None where the data do not allow one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n: centre (k + z²/2)/(n + z²) ± the half-width
    z·√(k(n−k)/n + z²/4)/(n + z²), clipped to [0, 1]. n must be positive."""
    if n <= 0:
        raise ValueError(f"wilson: n={n} must be positive")
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k={k} must lie in [0, n={n}]")
    z2 = z * z
    centre = (k + z2 / 2) / (n + z2)
    half = z * math.sqrt(k * (n - k) / n + z2 / 4) / (n + z2)
    return max(0.0, centre - half), min(1.0, centre + half)


def t_quantile(df: int, q: float = 0.975) -> float:
    """Quantile q of Student's t with `df` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(q, df))


def mean_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """Student-t 95 % interval of the mean of `values` (None with fewer than two values)."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if len(v) < 2:
        return None
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    half = t_quantile(len(v) - 1) * sd / math.sqrt(len(v))
    return m - half, m + half


def mean_interval_from_std(mean: float, std: float, k: int) -> tuple[float, float] | None:
    """The same interval from a mean, a sample standard deviation (ddof 1) and the count k."""
    if k < 2 or std is None or math.isnan(std):
        return None
    half = t_quantile(k - 1) * std / math.sqrt(k)
    return mean - half, mean + half


def auc_interval(auc: float, n_pos: int, n_neg: int, z: float = Z95) -> tuple[float, float] | None:
    """Hanley–McNeil interval of a ROC AUC from n_pos positives and n_neg negatives, clipped to
    [0, 1] (None when either class is empty)."""
    if n_pos < 1 or n_neg < 1 or math.isnan(auc):
        return None
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) \
        / (n_pos * n_neg)
    half = z * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def separated(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """True when both intervals exist and do not overlap."""
    if a is None or b is None:
        return False
    return a[1] < b[0] or b[1] < a[0]


def common_point(intervals: Sequence[tuple[float, float]]) -> bool:
    """True when all intervals share a point (every model equal within noise)."""
    return bool(intervals) and max(lo for lo, _ in intervals) <= min(hi for _, hi in intervals)
