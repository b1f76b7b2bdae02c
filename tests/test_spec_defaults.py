"""Every default that spec.md states, pinned: a changed default changes every reported number."""

from __future__ import annotations

import inspect

import pytest

from robustlab.attacks import distal, frames, patch_attack
from robustlab.attacks.pgd import pgd
from robustlab.evaluate import biterrors as eval_be
from robustlab.evaluate.flatness import flatness
from robustlab.train.adversarial_methods import AT, CCAT, PatchAT
from robustlab.train.biterror_methods import RandBET, curriculum_threshold
from robustlab.train.trainer import TrainConfig
from robustlab.train.weight_methods import AWP
from robustlab.weights.ascent import average_case


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_training_defaults() -> None:
    # §4: f = 0.5 (AT and CCAT), ρ = 10, CCAT attack with momentum; SGD momentum 0.9,
    # weight decay 5e-4, batch 128
    assert AT().fraction == 0.5 and CCAT().fraction == 0.5 and PatchAT().fraction == 0.5
    assert CCAT().rho == 10.0
    c = TrainConfig()
    assert (c.optimizer, c.momentum, c.weight_decay, c.batch_size) == ("sgd", 0.9, 5e-4, 128)
    assert c.label_smoothing == 0.0 and c.clip is None


def test_bit_error_training_and_awp_defaults() -> None:
    # §7: perturbed gradient clamped to ±0.05; curriculum at clean loss 1.75 on 10 classes
    assert RandBET().grad_clamp == 0.05
    assert curriculum_threshold(10) == pytest.approx(1.75)
    # §8: AWP γ ≈ 0.005–0.01
    assert 0.005 <= AWP().awp_gamma <= 0.01


def test_attack_defaults() -> None:
    p = _defaults(pgd)
    assert p["l1_fraction"] == 0.025  # §3: top 2.5 % of |g|
    pa = _defaults(patch_attack)
    # §3 patches, evaluation: 100 steps of 0.05, optimized locations moving by 2 px
    assert (pa["steps"], pa["step_size"], pa["stride"]) == (100, 0.05, 2)
    assert pa["location"] in ("optimized-full", "optimized")
    assert _defaults(distal)["eps"] == 0.3
    assert _defaults(frames)["width"] is None  # ⌊0.1·H⌋, see test_attacks


def test_evaluation_defaults() -> None:
    # §6: K = 50 patterns, seeds 100..149; the rate grids of 28×28 and 32×32 images
    ev = _defaults(eval_be.bit_errors)
    assert ev["patterns"] == 50 and ev["seed"] == 100
    assert eval_be.default_rates((1, 28, 28)) == [0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05,
                                                  0.10, 0.15, 0.20]
    assert eval_be.default_rates((3, 32, 32))[0] == 0.00005
    assert eval_be.default_rates((3, 32, 32))[-1] == 0.025
    # §8: average-case flatness K = 10 samples on 1000 test examples
    f = _defaults(flatness)
    assert f["samples"] == 10 and f["n_test"] == 1000
    assert _defaults(average_case)["samples"] == 10
