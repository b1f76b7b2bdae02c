"""Norms and suite threats as registered objects (issue 14): each Lp norm is one class holding
its norm, random start, steepest-ascent step and projection; each suite threat one class holding
its defaults, validation and attack. Adding either is one class, seen by pgd/apgd and the suite."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlab.attacks import apgd, pgd, square
from robustlab.attacks.norms import NORMS, Linf, get_norm
from robustlab.attacks.threat import default_eps
from robustlab.errors import UserError
from robustlab.evaluate.adversarial import (
    SUITE_THREATS,
    LpThreat,
    SuiteThreat,
    adversarial,
    parse_eps,
    parse_suite,
)

torch.set_num_threads(1)


def test_registry_names_and_unknown_norm() -> None:
    assert tuple(NORMS) == ("linf", "l2", "l1", "l0")
    assert all(NORMS[k].name == k for k in NORMS)
    with pytest.raises(UserError, match="unknown norm 'l3'; choose one of linf, l2, l1, l0") as e:
        get_norm("l3")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="APGD norm 'l0' is not supported; choose one of linf, l2, l1"):
        apgd(nn.Flatten(), torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), norm="l0", eps=1.0)


@pytest.mark.parametrize("name", list(NORMS))
def test_random_start_projected_lies_in_ball_and_box(name: str) -> None:
    lp = NORMS[name]
    x = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    eps = {"linf": 0.2, "l2": 1.0, "l1": 3.0, "l0": 5.0}[name]
    d0 = lp.random_start(x, eps, torch.Generator().manual_seed(1))
    assert float(lp.norm(d0).max()) <= eps * (1 + 1e-5)
    big = 10 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    d = lp.project(big, x, eps)
    assert float(lp.norm(d).max()) <= eps * (1 + 1e-5) + 1e-6
    assert float((x + d).min()) >= 0 and float((x + d).max()) <= 1
    # the projection of a point inside the ball and box is the point itself
    inside = lp.project(d, x, eps)
    assert torch.allclose(inside, d, atol=1e-6)


def test_steepest_ascent_directions_attain_the_dual_norm() -> None:
    g = torch.randn(8, 1, 5, 5, generator=torch.Generator().manual_seed(3))
    flat = g.flatten(1)
    # L∞ step: ‖d‖∞ = 1 and ⟨g, d⟩ = ‖g‖₁
    d = NORMS["linf"].direction(g).flatten(1)
    assert torch.equal(d.abs().amax(1), torch.ones(8))
    assert torch.allclose((flat * d).sum(1), flat.abs().sum(1))
    # L2 step: ‖d‖₂ = 1 and ⟨g, d⟩ = ‖g‖₂
    d = NORMS["l2"].direction(g).flatten(1)
    assert torch.allclose(d.norm(dim=1), torch.ones(8))
    assert torch.allclose((flat * d).sum(1), flat.norm(dim=1))
    # L1 step on a single entry (fraction 1/25): ‖d‖₁ = 1 and ⟨g, d⟩ = ‖g‖∞
    d = NORMS["l1"].direction(g, l1_fraction=1 / 25).flatten(1)
    assert torch.allclose(d.abs().sum(1), torch.ones(8))
    assert torch.allclose((flat * d).sum(1), flat.abs().amax(1))


def test_default_radii_come_from_the_norm_classes() -> None:
    assert default_eps("linf", (1, 28, 28)) == 0.1
    assert default_eps("linf", (1, 28, 28), "mnist") == 0.3
    assert default_eps("l2", (3, 32, 32), unseen=True) == 1.0
    assert default_eps("l2", (1, 14, 14)) == pytest.approx(1.5 * math.sqrt(0.25))
    assert default_eps("l0", (1, 14, 14)) == float(math.ceil(15 * 0.25))
    assert NORMS["l0"].default_step_size(15.0, 20) == 75.0
    assert NORMS["l2"].default_step_size(1.0, 10) == 0.25


class Linf2(Linf):
    """A toy norm: L∞ under another name with its own radii (one class, registered)."""

    name = "linf2"
    radii = {"gray28": (0.05, 0.1), "color32": (0.01, 0.02)}


@pytest.fixture()
def toy_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(NORMS, "linf2", Linf2())
    monkeypatch.setitem(SUITE_THREATS, "linf2", LpThreat("linf2"))


def test_a_new_norm_is_one_class_seen_by_pgd_apgd_and_the_suite(toy_norm, trained) -> None:
    model, test = trained
    x, y = test.x[:20], test.y[:20]
    for attack, kw in ((pgd, {"steps": 5}), (apgd, {"steps": 6, "loss": "dlr"})):
        a = attack(model, x, y, norm="linf2", eps=0.3, generator=torch.Generator().manual_seed(0), **kw)
        b = attack(model, x, y, norm="linf", eps=0.3, generator=torch.Generator().manual_seed(0), **kw)
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.logits, b.logits)
    assert default_eps("linf2", (1, 28, 28)) == 0.05
    res = adversarial(model, test, "linf2:0.3,linf:0.3", n_test=30, steps=3, queries=20, targets=2,
                      batch_size=16, sanity=False, progress=False)
    t2, t1 = res["threats"]["linf2:0.3"], res["threats"]["linf:0.3"]
    assert t2["threat"] == "linf2" and t2["eps"] == 0.3
    # Square has no version of the new norm: skipped with a note; the APGD attacks run as for L∞
    assert t2["attacks"] == ["apgd-ce", "apgd-t", "apgd-conf"]
    assert t2["notes"] == ["square skipped: no linf2 version"]
    res = adversarial(model, test, "linf2:0.3,linf:0.3", n_test=30, steps=3, targets=2, batch_size=16,
                      attacks="apgd-ce,apgd-t", sanity=False, progress=False)
    t2, t1 = res["threats"]["linf2:0.3"], res["threats"]["linf:0.3"]
    assert t2["attacks"] == t1["attacks"] == ["apgd-ce", "apgd-t"]
    # (the item keys differ, so do the seeds: same verdicts, not bit-identical confidences)
    assert t2["adv_wrong"] == t1["adv_wrong"] and t2["rerr"] == t1["rerr"] > 0.5
    assert parse_eps("linf2=0.2") == {"linf2": 0.2}


class Blank(SuiteThreat):
    """A toy threat: every image replaced by the constant `:LEVEL` (default 0.5); reports Err."""

    name = "blank"

    def check_param(self, part: str, param: float) -> None:
        if param > 1:
            raise UserError(f"{part!r}: the level must be in [0, 1]")

    def run(self, item, ctx, item_seed):
        level = 0.5 if item.param is None else item.param
        logits = ctx.logits_of(torch.full_like(ctx.x_att, level))
        ctx.bar.update(1)
        return {"threat": "blank", "level": level,
                "err": float((logits.argmax(1) != ctx.y_att).float().mean())}, None


def test_a_new_suite_threat_is_one_registered_class(monkeypatch, trained) -> None:
    monkeypatch.setitem(SUITE_THREATS, "blank", Blank())
    model, test = trained
    assert [i.threat for i in parse_suite("blank:0.2,linf")] == ["blank", "linf"]
    with pytest.raises(UserError, match="the level must be in"):
        parse_suite("blank:2")
    res = adversarial(model, test, "blank:0", n_test=25, sanity=False, progress=False)
    want = float((model(torch.zeros_like(test.x[:25])).argmax(1) != test.y[:25]).float().mean())
    assert res["threats"]["blank:0"]["err"] == want
    assert res["threats"]["blank:0"]["level"] == 0.0


def test_shared_argument_checks_give_the_same_message() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x, y = torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    for bad, msg in (({"eps": -1.0}, "eps -1.0 is invalid"), ({"restarts": 0}, "restarts 0 is invalid"),
                     ({"early_stop": 2.0}, "early-stop confidence 2.0 is invalid"),
                     ({"steps": -1}, "steps -1 is invalid")):
        for attack in (pgd, apgd) if "steps" in bad else (pgd, apgd, square):
            kw = {"eps": 0.1, **bad}
            with pytest.raises(UserError, match=msg):
                attack(model, x, y, **kw)
