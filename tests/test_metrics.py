"""Confidence-thresholded metrics against hand-computed values (spec §2)."""

from __future__ import annotations

import math

import pytest
import torch

from robustlab.errors import UserError
from robustlab.evaluate import metrics as M

T, F_ = True, False


def test_err_and_rerr() -> None:
    clean_wrong = torch.tensor([F_, F_, T, F_])
    adv_wrong = torch.tensor([T, F_, F_, F_])
    assert M.err(clean_wrong) == 0.25
    assert M.rerr(clean_wrong, adv_wrong) == 0.5  # wrong clean OR after the attack


def test_threshold_at_tpr_uses_exact_tpr_without_rounding() -> None:
    conf = torch.arange(1, 201, dtype=torch.float64) / 200  # 0.005, 0.010, …, 1.0
    # 99% of 200 = 198 values must be ≥ τ → τ is the 198th largest = 3/200
    assert M.threshold_at_tpr(conf, 0.99) == pytest.approx(3 / 200)
    # 99.5% → 199 values → τ = 2/200: different (the original rounded 1 − 0.995 to 0.01)
    assert M.threshold_at_tpr(conf, 0.995) == pytest.approx(2 / 200)
    assert M.threshold_at_tpr(conf, 0.98) == pytest.approx(5 / 200)
    assert M.threshold_at_tpr(conf, 1.0) == pytest.approx(1 / 200)
    # the defining property: at least the fraction tpr has c ≥ τ, and τ is the largest such
    for tpr in (0.9, 0.95, 0.99, 0.995):
        tau = M.threshold_at_tpr(conf, tpr)
        assert M.tpr_at(conf, tau) >= tpr
        assert M.tpr_at(conf, tau + 1e-9) < tpr
    # unordered input with ties
    assert M.threshold_at_tpr(torch.tensor([0.9, 0.5, 0.7, 0.7]), 0.75) == pytest.approx(0.7)


def test_threshold_errors() -> None:
    with pytest.raises(UserError):
        M.threshold_at_tpr(torch.tensor([]), 0.99)
    with pytest.raises(UserError):
        M.threshold_at_tpr(torch.tensor([0.5]), 0.0)


def test_rerr_at_tau_matches_hand_computation() -> None:
    #            n:   0     1     2     3     4     5
    clean_wrong = torch.tensor([F_, F_, F_, T, F_, F_])
    clean_conf = torch.tensor([0.95, 0.99, 0.60, 0.97, 0.50, 0.92])
    adv_wrong = torch.tensor([T, T, T, T, F_, F_])
    adv_conf = torch.tensor([0.98, 0.40, 0.95, 0.30, 0.99, 0.20])
    tau = 0.9
    # numerator: n0 (adv wrong, .98 ≥ τ), n2 (adv wrong .95), n3 (clean wrong .97) → 3
    # denominator: n0, n1 (clean .99), n2 (adv .95), n3, n4 (adv .99), n5 (clean .92) → 6
    assert M.rerr_at(tau, clean_wrong, clean_conf, adv_wrong, adv_conf) == pytest.approx(3 / 6)
    tau = 0.96
    # numerator: n0 (.98), n3 (clean .97) → 2; denominator: n0, n1, n3, n4 → 4
    assert M.rerr_at(tau, clean_wrong, clean_conf, adv_wrong, adv_conf) == pytest.approx(2 / 4)
    # τ = 0 is RErr
    assert M.rerr_at(0.0, clean_wrong, clean_conf, adv_wrong, adv_conf) == \
        M.rerr(clean_wrong, adv_wrong) == pytest.approx(4 / 6)
    # everything rejected → NaN
    assert math.isnan(M.rerr_at(1.1, clean_wrong, clean_conf, adv_wrong, adv_conf))


def test_fpr_at_tau() -> None:
    clean_wrong = torch.tensor([F_, F_, F_, T, F_, F_])
    adv_wrong = torch.tensor([T, T, T, T, F_, F_])
    adv_conf = torch.tensor([0.98, 0.40, 0.95, 0.99, 0.99, 0.20])
    # correct clean, adversarial wrong with c ≥ .9: n0, n2 (n3 was wrong clean) → 2/6
    assert M.fpr_at(0.9, clean_wrong, adv_wrong, adv_conf) == pytest.approx(2 / 6)
    assert M.fpr_at(0.0, clean_wrong, adv_wrong, adv_conf) == pytest.approx(3 / 6)


def test_roc_auc_with_ties_and_detection_auc() -> None:
    pos = torch.tensor([0.9, 0.8, 0.6])
    neg = torch.tensor([0.7, 0.6, 0.1])
    # pairs (p > n): .9 beats 3, .8 beats 3, .6 beats .1 and ties .6 → 1 + 0.5
    assert M.roc_auc(pos, neg) == pytest.approx((3 + 3 + 1.5) / 9)
    assert M.roc_auc(torch.tensor([1.0]), torch.tensor([0.0])) == 1.0
    assert M.roc_auc(torch.tensor([0.0]), torch.tensor([1.0])) == 0.0
    assert math.isnan(M.roc_auc(pos, torch.tensor([])))
    clean_wrong = torch.tensor([F_, F_, T, F_])
    clean_conf = torch.tensor([0.9, 0.8, 0.99, 0.7])
    adv_wrong = torch.tensor([T, F_, T, T])
    adv_conf = torch.tensor([0.85, 0.3, 0.2, 0.75])
    # positives: clean conf of correct {.9, .8, .7}; negatives: successful adv of correct {.85, .75}
    # pairs: .9 > both (2), .8 > .75 (1), .7 > none → 3/6
    assert M.detection_auc(clean_wrong, clean_conf, adv_wrong, adv_conf) == pytest.approx(0.5)


def test_err_at_and_distal_fpr() -> None:
    wrong = torch.tensor([T, F_, T, F_])
    conf = torch.tensor([0.99, 0.98, 0.5, 0.3])
    assert M.err_at(0.9, wrong, conf) == pytest.approx(1 / 2)
    assert M.err_at(0.0, wrong, conf) == pytest.approx(2 / 4)
    assert M.distal_fpr(0.9, conf) == pytest.approx(2 / 4)


def test_adversarial_metrics_bundle() -> None:
    clean_wrong = torch.tensor([F_, F_, F_, T])
    clean_conf = torch.tensor([0.95, 0.99, 0.6, 0.97])
    adv_wrong = torch.tensor([T, T, F_, T])
    adv_conf = torch.tensor([0.98, 0.4, 0.95, 0.3])
    out = M.adversarial_metrics(clean_wrong, clean_conf, adv_wrong, adv_conf,
                                {"0.99": 0.9, "0.995": 0.96})
    assert out["err"] == 0.25 and out["rerr"] == 0.75
    assert out["at"]["0.99"]["rerr"] == pytest.approx(2 / 4)  # n0, n3 of n0, n1, n2, n3
    assert out["at"]["0.995"]["rerr"] == pytest.approx(2 / 3)  # n0, n3 of n0, n1, n3
    assert out["at"]["0.99"]["fpr"] == pytest.approx(1 / 4)
