"""The weight-perturbation evaluation specs (biterrors, chip, energy, bitattack, flatness,
landscape): the command line and the spec share one set of defaults, results say what they are
(kind, schema, settings, seed), older preset keys and option spellings still work, and plans
cost what they did."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import robustlab
from robustlab.cli import build_parser, main
from robustlab.tasks.bitattack import BitAttack
from robustlab.tasks.biterrors import BitErrors
from robustlab.tasks.chip import Chip
from robustlab.tasks.energy import Energy
from robustlab.tasks.flatness import Flatness
from robustlab.tasks.landscape import Landscape
from robustlab.tasks.spec import REGISTRY, spec_of

torch.set_num_threads(1)
EXAMPLES = Path(robustlab.__file__).parent / "examples"


def _args(*argv: str):
    return build_parser().parse_args([str(a) for a in argv])


def _fields(spec) -> dict:
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


# ---- one set of defaults --------------------------------------------------------------------

@pytest.mark.parametrize("command, cls, extra", [
    ("biterrors", BitErrors, []), ("biterrors", Chip, []), ("bitattack", BitAttack, []),
    ("flatness", Flatness, []), ("energy", Energy, ["--curve", "c.csv"]),
])
def test_command_defaults_are_the_spec_defaults(command, cls, extra):
    spec = cls.from_args(_args(command, "RUN", *extra))
    want = _fields(cls())
    if cls is Energy:
        want["curve"] = "c.csv"
    assert _fields(spec) == want


def test_flatness_landscape_defaults_agree():
    from robustlab.commands.flatness import landscape_spec

    args = _args("flatness", "RUN", "--landscape", "1d")
    land = landscape_spec(Flatness.from_args(args), args)
    assert _fields(land) == {**_fields(Landscape()), "xi": 0.5}
    assert land.n_points() == 21 and Landscape(dims=2).n_points() == 11


def test_the_kinds_are_registered_and_found_from_results():
    for cls in (BitErrors, Chip, Energy, BitAttack, Flatness, Landscape):
        assert REGISTRY[cls.kind] is cls
        assert spec_of({"kind": cls.kind, "schema": 1}) is cls


def test_shared_terms_mean_one_thing():
    """`--steps` is the attack's iterations in every command; flatness's ascent is its own."""
    a = _args("flatness", "RUN", "--steps", "3", "--ascent-steps", "4", "--ascent-step-size", "0.1")
    s = Flatness.from_args(a)
    assert (s.steps, s.ascent_steps, s.ascent_step_size) == (3, 4, 0.1)
    b = BitAttack.from_args(_args("bitattack", "RUN", "--steps", "3", "--budgets", "1,2"))
    assert (b.steps, b.budgets) == (3, [1, 2])
    for cls, term in ((Flatness, "steps"), (BitAttack, "steps"), (BitErrors, "quant"),
                      (BitErrors, "seed"), (BitAttack, "budgets"), (Flatness, "params")):
        f = {f.name: f for f in dataclasses.fields(cls)}[term]
        assert f.metadata["term"] == term


@pytest.mark.deprecated_spelling
@pytest.mark.parametrize("command, old, new, field, value", [
    ("biterrors", ["--seed0", "7"], "--seed", "seed", 7),
    ("biterrors", ["--scheme", "rquant4"], "--quant", "quant", "rquant4"),
    ("bitattack", ["--budget", "4,8"], "--budgets", "budgets", [4, 8]),
    ("flatness", ["--attack-steps", "3"], "--steps", "steps", 3),
    ("flatness", ["--step-size", "0.25"], "--ascent-step-size", "ascent_step_size", 0.25),
])
def test_old_spellings_work_with_one_note(capsys, command, old, new, field, value):
    cls = {"biterrors": BitErrors, "bitattack": BitAttack, "flatness": Flatness}[command]
    spec = cls.from_args(_args(command, "RUN", *old))
    assert getattr(spec, field) == value
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"robustlab: note: {old[0]} is deprecated; use {new}"]


# ---- presets: older keys, the same costs ----------------------------------------------------

@pytest.mark.deprecated_spelling
def test_preset_keys_of_the_evaluation_functions_still_load(capsys):
    f = Flatness.from_settings({"kind": "worst", "xi": 0.5, "samples": 2, "n": 200, "gap": False,
                                "attack_settings": {"steps": 5}, "step_size": 0.1})
    assert (f.case, f.xi, f.samples, f.n_test, f.train, f.steps, f.ascent_step_size) == \
        ("worst", [0.5], 2, 200, False, 5, 0.1)
    b = BitErrors.from_settings({"rates": [0.02], "patterns": 1, "seed0": 7, "n": 2000,
                                 "scheme": "normal8"})
    assert (b.rates, b.patterns, b.seed, b.n_test, b.quant) == ([0.02], 1, 7, 2000, "normal8")
    a = BitAttack.from_settings({"budgets": [8, 32], "method": "attack,random", "n": 200})
    assert (a.budgets, a.methods, a.n_test) == ([8, 32], "attack,random", 200)
    land = Landscape.from_settings({"dims": 1, "points": 9, "xi": 0.5, "n": 200,
                                    "attack_settings": {"steps": 5}})
    assert (land.points, land.n_test, land.steps) == (9, 200, 5)
    # one note per old key, naming it
    named = [line.split(": ")[3].split(" is ")[0] for line in capsys.readouterr().err.splitlines()]
    assert named == ["'attack_settings'", "'kind'", "'n'", "'gap'", "'step_size'",  # flatness
                     "'seed0'", "'n'", "'scheme'", "'method'", "'n'",  # biterrors, bitattack
                     "'attack_settings'", "'n'"]  # landscape


# (spec, an older preset key with a value, the same setting under its field's name)
OLD_KEYS = [
    (Flatness, {"kind": "worst"}, {"case": "worst"}),
    (Flatness, {"n": 200}, {"n_test": 200}),
    (Flatness, {"gap": False}, {"train": False}),
    (Flatness, {"selection": "weights"}, {"params": "weights"}),
    (Flatness, {"step_size": 0.1}, {"ascent_step_size": 0.1}),
    (Flatness, {"attack_steps": 3}, {"steps": 3}),
    (Flatness, {"seed0": 4}, {"seed": 4}),
    (Flatness, {"attack_settings": {"norm": "l2", "eps": 0.5, "steps": 5}},
     {"norm": "l2", "eps": 0.5, "steps": 5}),
    (Landscape, {"n": 200}, {"n_test": 200}),
    (Landscape, {"selection": "weights"}, {"params": "weights"}),
    (Landscape, {"attack_settings": {"steps": 5}}, {"steps": 5}),
    (BitErrors, {"n": 2000}, {"n_test": 2000}),
    (BitErrors, {"scheme": "normal8"}, {"quant": "normal8"}),
    (BitErrors, {"seed0": 7}, {"seed": 7}),
    (Chip, {"chip_file": "chip.json"}, {"chip": "chip.json"}),
    (Chip, {"n": 50}, {"n_test": 50}),
    (Energy, {"curve_file": "curve.csv"}, {"curve": "curve.csv"}),
    (Energy, {"tolerance_pp": 2.0}, {"tolerance": 2.0}),
    (Energy, {"scheme": "rquant4"}, {"quant": "rquant4"}),
    (BitAttack, {"n": 200}, {"n_test": 200}),
    (BitAttack, {"scheme": "rquant4"}, {"quant": "rquant4"}),
    (BitAttack, {"method": "bfa"}, {"methods": "bfa"}),
    (BitAttack, {"selection": "weights"}, {"params": "weights"}),
    (BitAttack, {"budget": [4]}, {"budgets": [4]}),
]


@pytest.mark.deprecated_spelling
@pytest.mark.parametrize("cls, old, new", OLD_KEYS,
                         ids=[f"{c.kind}-{next(iter(o))}" for c, o, _ in OLD_KEYS])
def test_an_older_preset_key_is_its_field_with_one_note(capsys, cls, old, new):
    spec = cls.from_settings({**old, "batch_size": 64}, "evaluation 'e'")
    err = capsys.readouterr().err.splitlines()
    (key,) = old
    wanted = "'norm', 'eps', 'steps'" if key == "attack_settings" else repr(next(iter(new)))
    assert err == [f"robustlab: note: evaluation 'e': {key!r} is deprecated; use {wanted}"]
    assert spec == cls.from_settings({**new, "batch_size": 64},
                                     "evaluation 'e'")
    assert spec != cls()  # the value arrived
    assert capsys.readouterr().err == ""  # the field's own name: no note


@pytest.mark.deprecated_spelling
def test_a_setting_given_twice_or_unknown_is_one_line_error(capsys):
    from robustlab.errors import UserError

    with pytest.raises(UserError, match=r"^evaluation 'e': 'n_test' and 'n' are the same "
                                        r"setting; give only 'n_test'$"):
        BitErrors.from_settings({"n_test": 10, "n": 20}, "evaluation 'e'")
    with pytest.raises(UserError, match=r"^landscape settings: unknown setting 'kind'"):
        Landscape.from_settings({"kind": "worst"})  # a flatness key, not a landscape one
    with pytest.raises(UserError, match=r"attack_settings: unknown setting 'restarts'"):
        Flatness.from_settings({"attack_settings": {"restarts": 2}}, "flatness settings")
    capsys.readouterr()


def test_costs_are_the_plans_numbers():
    # closed forms of the plan's estimates (experiments.py before the task layer), demo settings
    n = 300
    assert BitErrors(rates=[0.01, 0.1], patterns=2, n_test=200).cost(n) == 0.5 * 200 * 2 * 2
    assert BitErrors().cost(n) == 0.5 * n * 50 * 10
    a = BitAttack(budgets=[8, 32], methods="attack,random", steps=1, n_attack=32,
                  random_patterns=1, n_test=200)
    assert a.cost(n) == 2 * (1 * 3 * 32 + 0.3 * 200) + 2 * 1 * 0.3 * 200
    bfa = BitAttack(budgets=[10, 40], methods="bfa", n_attack=64)
    assert bfa.cost(n) == 40 * 64 * 3 + 2 * 0.3 * n
    assert Flatness(xi=[0.5], samples=1, n_test=40, steps=1).cost(n) == 2 * 40 * 2 * (1 + 1)
    w = Flatness(case="worst", xi=[0.1, 0.2], ascent_steps=3, restarts=2, clean=True, n_test=40)
    assert w.cost(n) == pytest.approx(2 * 40 * 21 * (6 * 2 + 1) * 0.2)
    assert Landscape(points=3, n_test=40, steps=1).cost(n) == pytest.approx(40 * 3 * 2.3)


# ---- results say what they are ----------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "q"
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--quant",
                 "rquant8", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    return out


def _result(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "results" / f"{name}.json").read_text())


def test_results_carry_kind_schema_settings_and_seed(run_dir, capsys):
    common = ["--device", "cpu", "--quiet", "--n-test", "24"]
    assert main(["biterrors", str(run_dir), "--rates", "0.01,0.1", "--patterns", "2", "--seed",
                 "3", "--chip", str(EXAMPLES / "synthetic_chip_map.json"), *common]) == 0
    assert main(["energy", str(run_dir), "--curve", str(EXAMPLES / "synthetic_energy_curve.csv"),
                 "--patterns", "1", "--tolerance", "2", *common]) == 0
    assert main(["bitattack", str(run_dir), "--budgets", "1,2", "--methods", "attack,random",
                 "--steps", "1", "--n-attack", "16", "--random-patterns", "1", "--seed", "5",
                 *common]) == 0
    assert main(["flatness", str(run_dir), "--samples", "1", "--steps", "1", "--no-train",
                 "--landscape", "1d", "--points", "3", "--seed", "2", *common]) == 0
    out = capsys.readouterr().out
    want = {
        "biterrors": ("biterrors", {**_fields(BitErrors()), "rates": [0.01, 0.1], "patterns": 2,
                                    "seed": 3, "n_test": 24}, 3),
        "biterrors_chip": ("chip", {**_fields(Chip()), "chip": str(EXAMPLES /
                                                                   "synthetic_chip_map.json"),
                                    "patterns": 2, "seed": 3, "n_test": 24}, 3),
        "energy": ("energy", {**_fields(Energy()), "curve": str(EXAMPLES /
                                                                "synthetic_energy_curve.csv"),
                              "patterns": 1, "tolerance": 2.0, "n_test": 24}, 100),
        "bitattack": ("bitattack", {**_fields(BitAttack()), "budgets": [1, 2],
                                    "methods": "attack,random", "steps": 1, "n_attack": 16,
                                    "random_patterns": 1, "seed": 5, "n_test": 24}, 5),
        "flatness-average": ("flatness", {**_fields(Flatness()), "samples": 1, "steps": 1,
                                          "train": False, "seed": 2, "n_test": 24}, 2),
        "landscape-1d-random": ("landscape", {**_fields(Landscape()), "points": 3, "steps": 1,
                                              "seed": 2, "n_test": 24}, 2),
    }
    for name, (kind, settings, seed) in want.items():
        r = _result(run_dir, name)
        assert (r["kind"], r["schema"], r["seed"]) == (kind, 1, seed), name
        assert r["settings"] == settings, name
        assert r["data"]["name"] == "synthetic" and r["versions"]["torch"]
        # the recorded settings rebuild the spec that wrote the result
        assert REGISTRY[kind].from_settings(r["settings"]).settings() == r["settings"]
    assert _result(run_dir, "biterrors")["seeds"] == [3, 4]
    assert _result(run_dir, "flatness-average")["n"] == 24 and "gap" not in \
        _result(run_dir, "flatness-average")
    # the terminal tables are the specs' tables
    assert BitErrors().table(_result(run_dir, "biterrors")) in out
    assert BitAttack().table(_result(run_dir, "bitattack")) in out
    assert Energy().table(_result(run_dir, "energy")) in out
    assert Flatness().table(_result(run_dir, "flatness-average")) in out


def test_report_metrics_come_from_the_specs(run_dir):
    from robustlab.report.summary import result_metrics

    bits = result_metrics("biterrors", _result(run_dir, "biterrors"))
    r = _result(run_dir, "biterrors")
    assert bits == {"Err q": r["clean_err"], "RErr p=1%": r["rerr"]["mean"][0],
                    "RErr p=10%": r["rerr"]["mean"][1]}
    att = result_metrics("bitattack", _result(run_dir, "bitattack"))
    a = _result(run_dir, "bitattack")["results"]
    assert att == {"RErr 1 bits": a["attack"]["rerr"][0], "RErr 2 bits": a["attack"]["rerr"][1],
                   "RErr 1 bits (random)": a["random"]["rerr"][0],
                   "RErr 2 bits (random)": a["random"]["rerr"][1],
                   "RErr 1 bits (worst)": a["worst"]["rerr"][0],
                   "RErr 2 bits (worst)": a["worst"]["rerr"][1],
                   "RErr ≤1 bits (worst)": a["worst"]["rerr_env"][0],
                   "RErr ≤2 bits (worst)": a["worst"]["rerr_env"][1]}
    f = _result(run_dir, "flatness-average")
    assert result_metrics("flatness-best", f) == {
        "flatness-best/average flatness ξ=0.5": f["flatness"][0],
        "flatness-best/robust loss": f["loss"]}
    e = _result(run_dir, "energy")
    assert result_metrics("energy", e) == {"energy saved": e["energy_saved"]}
