"""The Python API speaks the CLI's vocabulary (`n_test=`, `quant=`, `seed=`); the old keywords
(`n=`, `scheme=`, `seed0=`) still work for one release, with a one-line note, and give the same
numbers."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from robustlab import models
from robustlab.data import Dataset
from robustlab.errors import UNSET, renamed
from robustlab.quant import NORMAL8

adversarial, bitattack, biterrors, flatness, patches, robust_tracking = (
    importlib.import_module(f"robustlab.evaluate.{m}")
    for m in ("adversarial", "bitattack", "biterrors", "flatness", "patches", "robust_tracking"))

RENAMED = [  # (function, old keyword, new keyword)
    (biterrors.bit_errors, "scheme", "quant"), (biterrors.bit_errors, "seed0", "seed"),
    (biterrors.chip_errors, "scheme", "quant"), (biterrors.chip_errors, "seed0", "seed"),
    (biterrors.energy, "scheme", "quant"), (biterrors.energy, "seed0", "seed"),
    (bitattack.bit_attack, "scheme", "quant"),
    (flatness.flatness, "n", "n_test"), (flatness.landscape, "n", "n_test"),
    (robust_tracking.robust_metrics, "n", "n_test"), (robust_tracking.epoch_hook, "n", "n_test"),
    (patches.patches, "n", "n_test"), (adversarial.adversarial, "n", "n_test"),
]


@pytest.mark.parametrize("fn,old,new", RENAMED, ids=lambda v: getattr(v, "__name__", str(v)))
def test_signatures_use_the_vocabulary(fn, old, new):
    params = inspect.signature(fn).parameters
    assert params[new].kind is inspect.Parameter.KEYWORD_ONLY
    assert params[old].default is UNSET  # still accepted, not advertised


@pytest.mark.deprecated_spelling
def test_renamed_helper(capsys):
    assert renamed("f", "n", UNSET, "n_test", 5) == 5
    assert capsys.readouterr().err == ""
    assert renamed("f", "n", 7, "n_test", 5) == 7
    assert capsys.readouterr().err == "robustlab: note: f(n=…) is deprecated; use n_test=\n"


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 6, 6, generator=g)
    y = torch.arange(24) % 3
    model = models.create("mlp", in_shape=(1, 6, 6), num_classes=3, hidden=(8,), seed=1).eval()
    return model, Dataset("toy", x, y, 3)


@pytest.mark.deprecated_spelling
def test_bit_errors_old_keywords_same_numbers(tiny, capsys):
    model, test = tiny
    new = biterrors.bit_errors(model, test, quant=NORMAL8, rates=[0.05, 0.2], patterns=2, seed=3,
                               progress=False)
    assert capsys.readouterr().err == ""
    old = biterrors.bit_errors(model, test, scheme=NORMAL8, rates=[0.05, 0.2], patterns=2, seed0=3,
                               progress=False)
    err = capsys.readouterr().err
    assert "bit_errors(scheme=…) is deprecated; use quant=" in err
    assert "bit_errors(seed0=…) is deprecated; use seed=" in err
    assert old["seeds"] == new["seeds"] == [3, 4]
    assert old["scheme"] == new["scheme"] == NORMAL8.to_dict()
    assert old["rerr"] == new["rerr"] and old["err"] == new["err"]


@pytest.mark.deprecated_spelling
def test_flatness_and_landscape_old_n(tiny, capsys):
    model, test = tiny
    kw = dict(xi=0.1, clean=True, samples=2, seed=4, progress=False)
    new = flatness.flatness(model, test, n_test=10, **kw)
    old = flatness.flatness(model, test, n=10, **kw)
    assert "flatness(n=…) is deprecated; use n_test=" in capsys.readouterr().err
    assert new["n"] == old["n"] == 10 and new["flatness"] == old["flatness"]
    lk = dict(xi=0.1, points=3, attack_settings={"steps": 1}, seed=4, progress=False)
    a = flatness.landscape(model, test, n_test=12, **lk)
    b = flatness.landscape(model, test, n=12, **lk)
    assert "landscape(n=…) is deprecated" in capsys.readouterr().err
    assert a["robust_loss"] == b["robust_loss"] and a["clean_loss"] == b["clean_loss"]


@pytest.mark.deprecated_spelling
def test_robust_metrics_old_n(tiny, capsys):
    model, test = tiny
    s = {"steps": 2}
    a = robust_tracking.robust_metrics(model, test, s, torch.Generator().manual_seed(0), n_test=9)
    b = robust_tracking.robust_metrics(model, test, s, torch.Generator().manual_seed(0), n=9)
    assert "robust_metrics(n=…) is deprecated" in capsys.readouterr().err
    assert a == b
    full = robust_tracking.robust_metrics(model, test, s, torch.Generator().manual_seed(0))
    assert full != a  # n_test is honoured: 9 of 24 images differ from all of them


@pytest.mark.deprecated_spelling
def test_patches_and_adversarial_old_n(tiny, capsys):
    model, test = tiny
    a = patches.patches(model, test, locations=["fixed"], n_test=6, size=2, steps=1, n_examples=0)
    b = patches.patches(model, test, locations=["fixed"], n=6, size=2, steps=1, n_examples=0)
    assert "patches(n=…) is deprecated" in capsys.readouterr().err
    assert a["n"] == b["n"] == 6 and a["locations"] == b["locations"]
    kw = dict(attacks="pgd", steps=1, sanity=False, tprs=(0.9,), progress=False)
    c = adversarial.adversarial(model, test, "linf", n_test=16, **kw)
    d = adversarial.adversarial(model, test, "linf", n=16, **kw)
    assert "adversarial(n=…) is deprecated" in capsys.readouterr().err
    assert c["config"]["n"] == d["config"]["n"] == 16
    assert c["threats"]["linf"]["rerr"] == d["threats"]["linf"]["rerr"]


@pytest.mark.deprecated_spelling
def test_the_suite_sees_every_note(capsys):
    """tests/conftest.py records each note (a keyword via `renamed`, an old CLI flag through the
    parser, which bound `deprecated` at import) to fail unmarked tests that print one."""
    import conftest

    from robustlab.cli import build_parser

    notes = conftest.DEPRECATION_NOTES
    before = len(notes)
    args = build_parser().parse_args(["eval", "RUN", "--n", "5"])
    assert args.n_test == 5
    assert renamed("f", "seed0", 3, "seed", 0) == 3
    assert notes[before:] == ["--n is deprecated; use --n-test", "f(seed0=…) is deprecated; use seed="]
    assert capsys.readouterr().err.count("is deprecated; use") == 2  # still printed
