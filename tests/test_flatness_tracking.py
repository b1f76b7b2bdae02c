"""Robust overfitting tracking: robust_metrics, the trainer epoch hook, best vs last."""

import pytest
import torch
import torch.nn.functional as F

from robustlab import attacks, models
from robustlab.data import synthetic
from robustlab.errors import UserError
from robustlab.evaluate.flatness import flatness
from robustlab.evaluate.robust_tracking import (
    best_vs_last,
    epoch_hook,
    make_attack,
    robust_metrics,
)
from robustlab.train import fit

torch.set_num_threads(1)


def setup():
    train, test = synthetic(64, 40, shape=(1, 6, 6), num_classes=3, seed=2)
    m = models.create("mlp", in_shape=(1, 6, 6), num_classes=3, hidden=(16,), seed=0)
    return m, train, test


def test_identity_attack_gives_clean_numbers():
    m, _, test = setup()
    m.eval()
    r = robust_metrics(m, test, lambda f, x, y, g: x, torch.Generator(), batch_size=7)
    with torch.no_grad():
        logits = m(test.x)
    assert r["robust_loss"] == pytest.approx(float(F.cross_entropy(logits, test.y)), abs=1e-6)
    assert r["clean_loss"] == pytest.approx(r["robust_loss"], abs=1e-9)
    err = float((logits.argmax(1) != test.y).double().mean())
    assert r["clean_err"] == pytest.approx(err) and r["robust_err"] == pytest.approx(err)


def test_pgd_metrics_match_a_one_batch_recomputation():
    m, _, test = setup()
    m.eval()
    settings = {"steps": 5, "init": "zero", "eps": 0.2}
    r = robust_metrics(m, test, settings, torch.Generator().manual_seed(0), batch_size=16)
    attack, resolved = make_attack(settings, test.shape)
    assert resolved["eps"] == 0.2 and resolved["norm"] == "linf"
    assert attack == attacks.PGD(**{k: v for k, v in resolved.items() if k != "attack"})
    xa = attack(m, test.x, test.y, generator=torch.Generator().manual_seed(0)).x_adv
    assert (xa - test.x).abs().max() <= 0.2 + 1e-6
    with torch.no_grad():
        la, lc = m(xa), m(test.x)
    wrong = (la.argmax(1) != test.y) | (lc.argmax(1) != test.y)
    assert r["robust_err"] == pytest.approx(float(wrong.double().mean()))
    assert r["robust_loss"] == pytest.approx(float(F.cross_entropy(la, test.y)), rel=1e-4)
    assert r["robust_loss"] > r["clean_loss"] and r["robust_err"] >= r["clean_err"]
    with pytest.raises(UserError, match="unknown attack setting"):
        make_attack({"bogus": 1}, test.shape)


def test_a_standard_attack_object_gives_the_settings_numbers():
    """robust_metrics / epoch_hook with `attack=rl.attacks.PGD(...)` equal the settings dict."""
    m, _, test = setup()
    m.eval()
    settings = {"steps": 4, "eps": 0.15}
    a = robust_metrics(m, test, settings, torch.Generator().manual_seed(2), batch_size=16)
    b = robust_metrics(m, test, attacks.PGD(eps=0.15, steps=4), torch.Generator().manual_seed(2),
                       batch_size=16)
    assert a == b and a["robust_loss"] > a["clean_loss"]

    class Ctx:  # what the trainer hands an epoch hook
        device, forward = "cpu", m

        @staticmethod
        def eval_mode():
            import contextlib
            return contextlib.nullcontext()

    assert epoch_hook(test, settings, seed=2, batch_size=16)(Ctx()) == \
        epoch_hook(test, attacks.PGD(eps=0.15, steps=4), seed=2, batch_size=16)(Ctx())


def test_trainer_hook_and_best_vs_last(tmp_path):
    m, train, test = setup()
    hook = epoch_hook(test, {"steps": 3}, seed=1)
    hist = fit(m, train, epochs=3, lr=0.1, batch_size=32, epoch_hooks=[hook], out=tmp_path,
               select_best="val_robust_err", progress=False, device="cpu")
    assert all({"val_robust_loss", "val_robust_err", "val_clean_loss", "val_clean_err"} <= h.keys()
               for h in hist)
    s = best_vs_last(hist)
    errs = [h["val_robust_err"] for h in hist]
    assert s["best"]["val_robust_err"] == min(errs)
    assert s["best_epoch"] == 1 + errs.index(min(errs)) and s["last_epoch"] == 3
    assert s["overfitting"]["val_robust_err"] == pytest.approx(errs[-1] - min(errs))
    assert (tmp_path / "model_best.safetensors").is_file()
    with pytest.raises(UserError, match="records"):
        best_vs_last(hist, key="nope")


def test_flatness_with_default_pgd_is_zero_at_xi_zero():
    m, _, test = setup()
    r = flatness(m, test, kind="worst", xi=[0.0, 0.05], steps=2, n_test=20,
                 attack_settings={"steps": 3}, progress=False)
    assert r["flatness"][0] == 0.0 and r["flatness"][1] > 0
    assert r["attack"]["attack"] == "pgd" and r["attack"]["steps"] == 3
