"""The default worst-case suite (spec §3a): attacks in sequence on undecided examples, the
per-example worst case, verdict records, and early exit at the largest τ."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from robustlab import data
from robustlab.errors import UserError
from robustlab.evaluate.adversarial import STANDARD, adversarial, parse_attacks


class Tempered(nn.Module):
    """logits / T: spreads the confidences, so that τ at TPR 0.99 and 0.3 lie far apart."""

    def __init__(self, model: nn.Module, t: float) -> None:
        super().__init__()
        self.model, self.t = model, t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.t


@pytest.fixture(scope="module")
def soft(trained) -> tuple[nn.Module, data.Dataset]:
    return Tempered(trained[0], 3.0).eval(), trained[1]


def test_parse_attacks() -> None:
    assert parse_attacks("standard") == STANDARD == ("apgd-ce", "apgd-t", "apgd-conf", "fab-t", "square")
    assert parse_attacks("pgd") == ("pgd",)
    assert parse_attacks("apgd-t, square,apgd-t") == ("apgd-t", "square")
    assert parse_attacks(["standard", "pgd"]) == (*STANDARD, "pgd")
    for bad, fragment in (("fab", "unknown attack 'fab'"), ("", "no attack")):
        with pytest.raises(UserError, match=fragment) as e:
            parse_attacks(bad)
        assert "\n" not in str(e.value)


def _tau_max(res: dict) -> float:
    return max(res["clean"]["tau"].values())


def test_default_suite_records_which_attack_decided_each_example(trained) -> None:
    model, test = trained
    res = adversarial(model, test, "linf:0.25,l2:1.2,l1:6,l0", n_test=60, steps=3, queries=30,
                      targets=2, batch_size=32, sanity=False, progress=False)
    assert res["config"]["attacks"] == list(STANDARD) and res["config"]["queries"] == 30
    clean_wrong = torch.tensor(res["clean"]["wrong"])
    clean_conf = torch.tensor(res["clean"]["conf"])
    for key, names in (("linf:0.25", list(STANDARD)), ("l2:1.2", list(STANDARD)),
                       ("l1:6", ["apgd-ce", "apgd-t", "apgd-conf"]),
                       ("l0", ["ce/zero×1", "conf/zero×1"])):
        t = res["threats"][key]
        assert t["attacks"] == names, key
        by, verdict = t["by_attack"], t["verdict_by"]
        assert len(verdict) == 60 and set(verdict) <= {*names, "clean"}
        adv_wrong = torch.tensor(t["adv_wrong"])
        # every example an attack added is misclassified now and was not clean
        assert sum(v["added"] for v in by.values()) == int((adv_wrong & ~clean_wrong).sum()), key
        assert [by[a]["kept"] for a in names] == [verdict.count(a) for a in names]
        # the first attack sees every example not decided by its clean input
        decided_clean = clean_wrong & (clean_conf >= _tau_max(res) - 1e-6)
        assert by[names[0]]["attacked"] == 60 - int(decided_clean.sum()), key
        assert all(by[a]["attacked"] <= by[b]["attacked"] for a, b in zip(names[1:], names))
        # an example whose clean input was kept has its clean confidence
        for i, v in enumerate(verdict):
            if v == "clean":
                assert t["adv_conf"][i] == pytest.approx(res["clean"]["conf"][i], abs=1e-5)
    assert res["threats"]["l1:6"]["notes"] == ["square skipped: no l1 version"]
    assert 0 < res["threats"]["linf:0.25"]["rerr"] <= 1
    json.dumps(res)


def test_decided_only_at_the_largest_tau(soft) -> None:
    """A later attack runs on every example that is not misclassified with c ≥ the LARGEST τ."""
    model, test = soft
    kw = dict(n_test=100, steps=8, tprs=(0.99, 0.3), attacks="pgd", batch_size=100, sanity=False,
              progress=False)
    first = adversarial(model, test, "linf:0.6", objectives=("ce",), **kw)
    both = adversarial(model, test, "linf:0.6", objectives=("ce", "conf"), **kw)
    t1 = first["threats"]["linf:0.6"]
    tau_lo, tau_hi = min(first["clean"]["tau"].values()), _tau_max(first)
    conf = torch.tensor(t1["adv_conf"])
    wrong = torch.tensor(t1["adv_wrong"])
    undecided = int((~(wrong & (conf >= tau_hi))).sum())
    between = int((wrong & (conf >= tau_lo) & (conf < tau_hi)).sum())
    assert between > 0  # otherwise this test could not tell the smallest τ from the largest
    assert both["threats"]["linf:0.6"]["by_attack"]["conf/zero×1"]["attacked"] == undecided


def test_without_tprs_an_example_is_decided_once_misclassified(soft) -> None:
    """`tprs=()` (RErr only): AutoAttack's rule, a later attack runs only on the examples every
    earlier attack left correct; no τ metrics are reported; early exit on/off agree."""
    model, test = soft
    kw = dict(n_test=100, steps=6, tprs=(), attacks="pgd", objectives=("ce", "conf"),
              batch_size=100, sanity=False, progress=False)
    r = adversarial(model, test, "linf:0.2", **kw)
    t = r["threats"]["linf:0.2"]
    assert t["at"] == {} and r["clean"]["tau"] == {}
    first, second = t["by_attack"]["ce/zero×1"], t["by_attack"]["conf/zero×1"]
    clean_wrong = sum(r["clean"]["wrong"])
    assert first["attacked"] == 100 - clean_wrong  # misclassified clean: decided before any attack
    assert second["attacked"] == first["attacked"] - first["added"] > 0
    assert first["added"] > 0
    off = adversarial(model, test, "linf:0.2", early_stop=False, **kw)["threats"]["linf:0.2"]
    assert off["adv_wrong"] == t["adv_wrong"]
    with_tau = adversarial(model, test, "linf:0.2", tprs=(0.99, 0.3), **{
        k: v for k, v in kw.items() if k != "tprs"})["threats"]["linf:0.2"]
    assert with_tau["by_attack"]["conf/zero×1"]["attacked"] > second["attacked"]


@pytest.mark.parametrize("attacks", ["pgd", "standard"])
def test_early_exit_on_and_off_give_the_same_verdicts_with_separated_taus(soft, attacks) -> None:
    """TPRs 0.99 and 0.3 have far apart τ: stopping at the smallest τ would leave examples
    below the largest τ, and RErr@τ(0.3) would drop (issue: early exit at the largest τ)."""
    model, test = soft
    kw = dict(n_test=100, steps=6, queries=20, targets=2, tprs=(0.99, 0.3), attacks=attacks,
              objectives=("ce",), batch_size=100, sanity=False, progress=False)
    on = adversarial(model, test, "linf:0.6", early_stop=True, **kw)
    off = adversarial(model, test, "linf:0.6", early_stop=False, **kw)
    a, b = on["threats"]["linf:0.6"], off["threats"]["linf:0.6"]
    tau = on["clean"]["tau"]
    assert tau["0.3"] > tau["0.99"] + 0.05
    assert a["adv_wrong"] == b["adv_wrong"]
    for k, t in tau.items():
        va = [w and c >= t for w, c in zip(a["adv_wrong"], a["adv_conf"])]
        vb = [w and c >= t for w, c in zip(b["adv_wrong"], b["adv_conf"])]
        assert va == vb, k
        assert a["at"][k]["rerr"] == b["at"][k]["rerr"] > 0, k


def test_quick_pgd_suite_and_other_threats_still_work(trained) -> None:
    model, test = trained
    res = adversarial(model, test, "linf:0.25,frames,patch:3,distal,corrupt", attacks="pgd", n_test=40,
                      steps=2, restarts=2, corruptions=["gaussian_noise"], batch_size=40,
                      sanity=False, progress=False)
    th = res["threats"]
    assert th["linf:0.25"]["attacks"] == ["ce/zero×1", "ce/norm×1", "conf/zero×1", "conf/norm×1"]
    assert th["frames"]["attacks"] == ["ce/zero×1", "ce/box×1", "conf/zero×1", "conf/box×1"]
    assert th["patch:3"]["attacks"] == ["ce/optimized-full×2", "conf/optimized-full×2"]
    assert set(th["distal"]["at"]) == {"0.99", "0.98"} and "mean_err" in th["corrupt"]
    assert res["config"]["queries"] == 100  # 50 × steps when steps is given


def test_queries_default_and_bad_values(trained) -> None:
    model, test = trained
    res = adversarial(model, test, "corrupt", n_test=10, corruptions=["blur"], progress=False,
                      sanity=False)
    assert res["config"]["queries"] == 5000 and res["config"]["apgd_steps"] == 100
    for kwargs, fragment in ((dict(attacks="fab"), "'fab'"), (dict(queries=0), "queries 0"),
                             (dict(targets=0), "targets 0")):
        with pytest.raises(UserError, match=fragment):
            adversarial(model, test, "linf", n_test=10, steps=1, progress=False, **kwargs)


def test_attack_command_prints_contributions_and_rejects_unknown_attacks(tmp_path, capsys) -> None:
    from robustlab.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--quiet",
                 "--out", str(run)]) == 0
    assert main(["attack", str(run), "--suite", "linf", "--n-test", "30", "--steps", "2",
                 "--queries", "10", "--targets", "2", "--quiet", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "linf: examples broken by each attack: apgd-ce +" in out and "square +" in out
    res = json.loads((run / "results" / "attack.json").read_text())
    assert res["config"]["attacks"] == list(STANDARD) and isinstance(res["flags"], list)
    assert main(["attack", str(run), "--attacks", "fab", "--quiet"]) == 2
    assert "unknown attack 'fab'" in capsys.readouterr().err
    assert main(["attack", str(run), "--suite", "linf", "--n-test", "30", "--steps", "2",
                 "--queries", "10", "--targets", "2", "--tprs", "none", "--quiet",
                 "--no-figures", "--name", "notau"]) == 0
    res = json.loads((run / "results" / "notau.json").read_text())
    assert res["config"]["tprs"] == [] and res["threats"]["linf"]["at"] == {}
    with pytest.raises(SystemExit) as e:
        main(["attack", str(run), "--tprs", "0.99,nan", "--quiet"])
    assert e.value.code == 2 and "TPR nan is out of range" in capsys.readouterr().err


def test_three_class_model_skips_targeted_dlr_with_a_note() -> None:
    # DLR-T needs 4 classes: a 3-class model still gets the rest of the standard suite
    import robustlab as rl

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(400, 3, 2, 2), torch.randint(0, 3, (400,))
    res = rl.evaluate.adversarial(model, (x, y), suite="linf:0.03", n_test=40, tprs=(0.99,),
                                  queries=20, steps=3, progress=False)
    info = res["threats"]["linf:0.03"]
    assert "apgd-t" not in info["attacks"] and {"apgd-ce", "apgd-conf", "square"} <= set(info["attacks"])
    assert any("apgd-t skipped" in n and "3" in n for n in info["notes"])
