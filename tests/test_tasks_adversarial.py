"""Evaluation specs clean, adversarial, patches, epsilons, tracking: one set of defaults shared by
the CLI, the library functions and presets; results that carry their kind and settings."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

from robustlab.cli import build_parser, main
from robustlab.tasks.adversarial import Adversarial
from robustlab.tasks.clean import Clean
from robustlab.tasks.epsilons import Epsilons
from robustlab.tasks.patches import Patches
from robustlab.tasks.spec import REGISTRY, spec_class
from robustlab.tasks.tracking import Tracking


def _parse(argv: list[str]):
    return build_parser().parse_args(argv)


def _library_defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _same(a, b) -> bool:
    return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) \
        else a == b


# ---- one set of defaults ------------------------------------------------------------------------

@pytest.mark.parametrize("argv, cls", [(["eval", "RUN"], Clean), (["attack", "RUN"], Adversarial),
                                       (["epsilons"], Epsilons)])
def test_cli_defaults_are_the_spec_defaults(argv, cls) -> None:
    assert cls.from_args(_parse(argv)) == cls()


def test_spec_defaults_are_the_library_defaults() -> None:
    from robustlab.evaluate.adversarial import adversarial
    from robustlab.evaluate.clean import clean
    from robustlab.evaluate.epsilons import epsilons
    from robustlab.evaluate.patches import patches
    from robustlab.evaluate.robust_tracking import DEFAULT_SETTINGS, epoch_hook

    for spec, fn in ((Adversarial(), adversarial), (Patches(), patches)):
        lib = _library_defaults(fn)
        kw = spec.keywords()
        assert set(kw) <= set(lib) | {"suite"}, set(kw) - set(lib)
        for k, v in kw.items():
            assert _same(v, lib[k]), (type(spec).__name__, k, v, lib[k])
    assert Clean().batch_size == _library_defaults(clean)["batch_size"]
    lib = _library_defaults(epsilons)
    e = Epsilons()
    for f in ("n_test", "n_train", "seed", "quantiles", "bins", "radius_factors"):
        assert _same(getattr(e, f), lib[f]), f
    t = Tracking()
    assert (t.norm, t.steps) == (DEFAULT_SETTINGS["norm"], DEFAULT_SETTINGS["steps"])
    hook = _library_defaults(epoch_hook)
    assert (t.seed, t.batch_size) == (hook["seed"], hook["batch_size"])


def test_registered_and_found_by_kind() -> None:
    for cls in (Clean, Adversarial, Patches, Epsilons, Tracking):
        assert REGISTRY[cls.kind] is cls and spec_class(cls.kind) is cls


@pytest.mark.deprecated_spelling
def test_old_spellings_still_work_with_a_note(capsys) -> None:
    a = Adversarial.from_args(_parse(["attack", "RUN", "--tpr", "0.9", "--severity", "2,4",
                                      "--eps", "linf=0.2"]))
    assert a.tprs == [0.9] and a.severities == [2, 4] and a.radii == "linf=0.2"
    assert a.keywords()["eps"] == "linf=0.2"  # adversarial()'s keyword
    err = capsys.readouterr().err
    assert "--tpr is deprecated; use --tprs" in err and "--severity is deprecated" in err
    assert "--eps is deprecated; use --radii" in err  # --eps is one radius in every command
    a = Adversarial.from_args(_parse(["attack", "RUN", "--tprs", "0.95", "--severities", "5",
                                      "--no-backtrack", "--no-early-exit", "--no-sanity"]))
    assert (a.tprs, a.severities, a.backtrack, a.early_exit, a.sanity) == \
        ([0.95], [5], False, False, False)
    kw = a.keywords()
    assert kw["early_stop"] is False and kw["n_test"] == 1000 and "n" not in kw
    # presets name the number of test images `n`: accepted, with a note
    p = Patches.from_settings({"n": 40, "steps": 2})
    assert (p.n_test, p.steps, p.restarts) == (40, 2, 1)
    assert Tracking.from_settings({"n": 40, "steps": 1}).n_test == 40
    assert "'n' is deprecated" in capsys.readouterr().err


def test_bad_settings_are_one_line_errors() -> None:
    from robustlab.errors import UserError

    with pytest.raises(UserError, match="unknown setting 'stepz'"):
        Adversarial.from_settings({"stepz": 3})
    with pytest.raises(SystemExit):
        _parse(["attack", "RUN", "--severities", "9"])  # parse-time: 1..5
    with pytest.raises(UserError, match="momentum 1.0"):
        Adversarial(momentum=1.0).check()


# ---- costs (the plan's units; the same numbers as before the task layer) ----------------------

def test_costs_closed_form() -> None:
    # default suite, n = 1000: APGD-CE + 9 targets + conf (100 steps), FAB-T's 9 targets and
    # Square 5000 queries on linf and l2; APGD only on l1; PGD 40 steps × 2 objectives on
    # l0 and frames; patches 100 × 2 × 2.5; distal 40; corruptions 0.3 × 11
    linf = 1000 * 100 * (11 + 9) + 1000 * 5000 * 0.4
    assert Adversarial().cost(10000) == pytest.approx(
        2 * linf + 1000 * 100 * 11 + 2 * 1000 * 40 * 2 + 1000 * 100 * 2 * 2.5 + 1000 * 40
        + 0.3 * 1000 * 11)
    a = Adversarial(suite="linf,patch", attacks="pgd", n_test=40, steps=2, restarts=3)
    assert a.cost(30) == 30 * 2 * 3 * 2 + 30 * 2 * 3 * 2 * 2.5  # n capped by the test set
    assert Patches(n_test=40, steps=2).cost(10000) == 40 * 2 * (1 + 1 + 2.5)
    assert Clean().cost(500) == pytest.approx(150.0) and Clean(n_test=100).cost(500) == 30.0
    assert Tracking(n_test=360, steps=3).cost(10000) == 360 * 4


# ---- results carry kind, schema and the settings ----------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("tasks") / "run"
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--quiet",
                 "--out", str(run)]) == 0
    return run


def test_eval_result_carries_settings(run_dir, capsys) -> None:
    assert main(["eval", str(run_dir), "--n-test", "50", "--batch-size", "16"]) == 0
    res = json.loads((run_dir / "results" / "eval.json").read_text())
    assert (res["kind"], res["schema"], res["n"]) == ("clean", 1, 50)
    assert res["settings"] == {"n_test": 50, "batch_size": 16}
    assert res["snapshot"] == "last" and res["data"]["name"] == "synthetic"
    assert capsys.readouterr().out.startswith(f"clean test error {100 * res['err']:.2f}% on 50")


def test_attack_result_carries_settings(run_dir, capsys) -> None:
    assert main(["attack", str(run_dir), "--suite", "linf,corrupt", "--attacks", "pgd",
                 "--n-test", "24", "--steps", "2", "--tprs", "0.95", "--severities", "2",
                 "--corruptions", "gaussian_noise", "--seed", "5", "--name", "mine", "--quiet",
                 "--no-figures"]) == 0
    res = json.loads((run_dir / "results" / "mine.json").read_text())
    assert (res["kind"], res["schema"], res["seed"]) == ("adversarial", 1, 5)
    s = res["settings"]
    assert s == dataclasses.asdict(Adversarial(
        suite="linf,corrupt", attacks="pgd", n_test=24, steps=2, tprs=[0.95], severities=[2],
        corruptions=["gaussian_noise"], seed=5))
    # the settings are what ran
    assert res["config"]["n"] == 24 and res["config"]["tprs"] == [0.95]
    # and the report reads the result through the spec: same metrics as its own table
    from robustlab.report.summary import result_metrics

    m = result_metrics("mine", res)
    assert m["mine/Err (attacked split)"] == res["clean"]["err"]
    assert m["RErr mine/linf"] == res["threats"]["linf"]["rerr"]
    assert "RErr@95%" in capsys.readouterr().out


def test_epsilons_result_carries_settings(tmp_path) -> None:
    out = tmp_path / "eps"
    assert main(["epsilons", "--data", "synthetic", "--norms", "l2", "--n-test", "12",
                 "--n-train", "64", "--seed", "3", "--out", str(out), "--quiet",
                 "--no-figures"]) == 0
    res = json.loads((out / "results" / "epsilons.json").read_text())
    assert (res["kind"], res["schema"], res["seed"]) == ("epsilons", 1, 3)
    assert res["settings"]["norms"] == ["l2"] and res["settings"]["n_test"] == 12
    assert res["data"]["n_test"] == 12 and res["data"]["n_train"] == 64


def test_patches_and_tracking_specs_on_a_run(run_dir) -> None:
    from robustlab import tasks
    from robustlab.runs import open_run

    r = open_run(run_dir, device="cpu")
    res, path = tasks.evaluate(Patches(n_test=16, steps=1, locations=["fixed", "random"]), r)
    assert path.name == "patches.json" and res["kind"] == "patches"
    assert res["settings"]["n_test"] == 16 and res["n"] == 16
    assert set(res["locations"]) == {"fixed", "random"} and res["config"]["steps"] == 1
    from robustlab.report.summary import result_metrics

    m = result_metrics("patches", res)
    assert m["RErr patch fixed"] == res["locations"]["fixed"]["rerr"]
    assert m["Err (attacked split)"] == res["clean"]["err"]
    with pytest.raises(Exception, match="without robust tracking"):
        Tracking().run(r)


def test_tracking_hook_is_the_presets_old_hook() -> None:
    """A preset's `track: {n_test: 40, steps: 1}` attacks with the same PGD as the old
    `epoch_hook(split, {"steps": 1}, n=40)` and selects the best snapshot on val only."""
    from robustlab import data
    from robustlab.evaluate.robust_tracking import make_attack

    t = Tracking.from_settings({"n_test": 40, "steps": 1})
    shape = (1, 8, 8)
    assert make_attack(t.attack_settings(), shape)[0] == make_attack({"steps": 1}, shape)[0]
    assert make_attack(Tracking().attack_settings(), shape)[0] == make_attack(None, shape)[0]
    train, test = data.synthetic(32, 16)
    assert t.hook(train, test)[1] == "val_robust_err"
    assert t.hook(None, test)[1] is None
    assert Tracking(split="test").hook(train, test)[1] is None


def test_tracking_run_reads_best_vs_last(tmp_path) -> None:
    import types

    rows = [{"epoch": 1, "val_robust_err": 0.6}, {"epoch": 2, "val_robust_err": 0.4},
            {"epoch": 3, "val_robust_err": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = Tracking().run(types.SimpleNamespace(path=tmp_path))
    assert (res["best_epoch"], res["last_epoch"]) == (2, 3)
    assert res["overfitting"]["val_robust_err"] == pytest.approx(0.1)
    assert "best 40.00% at epoch 2, last 50.00% at epoch 3" in Tracking().table(res)
