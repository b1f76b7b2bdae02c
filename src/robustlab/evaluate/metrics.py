"""Input robustness metrics (spec §2) as pure functions of tensors.

Conventions: `wrong` are bool tensors (misclassified), `conf` the confidences max_k softmax_k,
index n pairs a clean input x_n with its adversarial x̃_n. Every function returns a Python float;
a ratio with an empty denominator is NaN.
"""

from __future__ import annotations

import math

import torch

from robustlab.errors import UserError


def _f(num: torch.Tensor, den: torch.Tensor | int) -> float:
    den_f = float(den)
    return float(num) / den_f if den_f > 0 else math.nan


def err(wrong: torch.Tensor) -> float:
    """Err: the fraction of misclassified examples."""
    return _f(wrong.sum(), wrong.numel())


def rerr(clean_wrong: torch.Tensor, adv_wrong: torch.Tensor) -> float:
    """RErr: the fraction of examples misclassified clean or after the attack."""
    return _f((clean_wrong | adv_wrong).sum(), clean_wrong.numel())


def threshold_at_tpr(conf: torch.Tensor, tpr: float) -> float:
    """τ such that the fraction `tpr` of `conf` (correct clean held-out examples) have c ≥ τ.

    With n values sorted decreasingly, τ is the ⌈tpr·n⌉-th largest: the largest threshold that
    keeps at least tpr·n of them. No rounding of 1−tpr (99.5% stays 99.5%).
    """
    if not 0 < tpr <= 1:
        raise UserError(f"TPR {tpr} is invalid; it must be in (0, 1]")
    n = conf.numel()
    if n == 0:
        raise UserError("no correctly classified held-out examples to calibrate the confidence "
                        "threshold on; use a larger held-out split")
    k = min(n, max(1, math.ceil(tpr * n - 1e-9)))
    return float(conf.flatten().double().sort(descending=True).values[k - 1])


def tpr_at(conf: torch.Tensor, tau: float) -> float:
    """The fraction of `conf` at or above τ."""
    return _f((conf >= tau).sum(), conf.numel())


def rerr_at(tau: float, clean_wrong: torch.Tensor, clean_conf: torch.Tensor,
            adv_wrong: torch.Tensor, adv_conf: torch.Tensor) -> float:
    """RErr@τ = Σ max(1[x wrong ∧ c(x) ≥ τ], 1[x̃ wrong ∧ c(x̃) ≥ τ]) / Σ max(1[c(x) ≥ τ], 1[c(x̃) ≥ τ]).

    Rejected inputs (c < τ) are neither errors nor counted; with τ = 0 this is RErr.
    """
    ck, ak = clean_conf >= tau, adv_conf >= tau
    num = ((clean_wrong & ck) | (adv_wrong & ak)).sum()
    return _f(num, (ck | ak).sum())


def fpr_at(tau: float, clean_wrong: torch.Tensor, adv_wrong: torch.Tensor,
           adv_conf: torch.Tensor) -> float:
    """FPR@τ: the fraction of attacked examples, correct clean, whose x̃ is wrong with c(x̃) ≥ τ."""
    return _f((~clean_wrong & adv_wrong & (adv_conf >= tau)).sum(), clean_wrong.numel())


def err_at(tau: float, wrong: torch.Tensor, conf: torch.Tensor) -> float:
    """Err@τ (e.g. on corrupted inputs): errors among the inputs that are not rejected."""
    keep = conf >= tau
    return _f((wrong & keep).sum(), keep.sum())


def distal_fpr(tau: float, conf: torch.Tensor) -> float:
    """FPR of distal inputs: the fraction accepted (c ≥ τ)."""
    return _f((conf >= tau).sum(), conf.numel())


def roc_auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Area under the ROC curve separating `pos` (high scores) from `neg`; ties count one half.

    Mann–Whitney statistic with mid-ranks; NaN when either side is empty.
    """
    n_pos, n_neg = pos.numel(), neg.numel()
    if n_pos == 0 or n_neg == 0:
        return math.nan
    scores = torch.cat([pos.flatten(), neg.flatten()]).double()
    values, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True,
                                           return_counts=True)
    ends = counts.cumsum(0).double()
    mid = ends - (counts.double() - 1) / 2  # mean rank (1-based) of each distinct value
    rank_pos = mid[inverse[:n_pos]].sum()
    return float((rank_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def detection_auc(clean_wrong: torch.Tensor, clean_conf: torch.Tensor, adv_wrong: torch.Tensor,
                  adv_conf: torch.Tensor) -> float:
    """ROC AUC: positives the correct clean inputs, negatives their successful adversarial inputs."""
    correct = ~clean_wrong
    return roc_auc(clean_conf[correct], adv_conf[correct & adv_wrong])


def adversarial_metrics(clean_wrong: torch.Tensor, clean_conf: torch.Tensor, adv_wrong: torch.Tensor,
                        adv_conf: torch.Tensor, taus: dict[str, float]) -> dict:
    """Err, RErr, ROC AUC and, per TPR key of `taus`, τ, RErr@τ and FPR@τ."""
    out = {"n": int(clean_wrong.numel()), "err": err(clean_wrong),
           "rerr": rerr(clean_wrong, adv_wrong),
           "auc": detection_auc(clean_wrong, clean_conf, adv_wrong, adv_conf),
           "mean_adv_conf": _f(adv_conf.double().sum(), adv_conf.numel()), "at": {}}
    for key, tau in taus.items():
        out["at"][key] = {"tau": tau,
                          "rerr": rerr_at(tau, clean_wrong, clean_conf, adv_wrong, adv_conf),
                          "fpr": fpr_at(tau, clean_wrong, adv_wrong, adv_conf)}
    return out
