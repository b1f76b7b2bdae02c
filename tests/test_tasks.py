"""The task layer from the outside: a new evaluation kind is one spec class (it appears in the
CLI, in presets, in `robustlab table`/`info` and in the report without touching another file);
every command speaks one option vocabulary; old spellings still work with a one-line note;
`TrainSpec` is shared by `robustlab train` and the presets."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from clihelp import run_cli

from robustlab import experiments as ex
from robustlab import tasks
from robustlab.cli import build_parser
from robustlab.tasks.spec import REGISTRY, EvalSpec, option
from robustlab.tasks.train import TrainSpec
from robustlab.tasks.vocabulary import VOCABULARY

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--quiet",
         "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@dataclasses.dataclass
class Toy(EvalSpec):
    """A toy evaluation: the share of the first N test images whose label is `label`, times
    `scale` (exact: the test labels are known)."""

    kind: ClassVar[str] = "toy"
    title: ClassVar[str] = "share of test images of one class"

    n_test: int | None = option("n_test")
    seed: int = option("seed")
    label: int = option(help="the class counted", type=int, default=0)
    scale: float = option(help="multiplies the share", type=float, default=1.0)

    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None
            ) -> dict[str, Any]:
        n = min(self.n_test or len(run.test), len(run.test))
        share = float((run.test.y[:n] == self.label).double().mean()) * self.scale
        return {"n": n, "share": share}

    def cost(self, n_test: int) -> float:
        return 0.01 * min(self.n_test or n_test, n_test)

    def metrics(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        return {f"toy share {self.label}": result["share"]}

    def setting_line(self, result: dict[str, Any]) -> str:
        return f"n={result['n']}, label {self.label}"

    def table(self, result: dict[str, Any]) -> str:
        return f"toy share {100 * result['share']:.2f}% of {result['n']} images"


@pytest.fixture
def toy():
    tasks.load_all()
    REGISTRY["toy"] = Toy
    yield Toy
    REGISTRY.pop("toy", None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("tasks") / "run"
    from robustlab.cli import main

    assert main(TRAIN + ["--out", str(run)]) == 0
    return run


def _expected_share(run: Path, n: int, label: int = 0) -> float:
    from robustlab.runs import open_run

    r = open_run(run, device="cpu")
    return float((r.test.y[:n] == label).double().mean())


def test_a_toy_kind_is_a_command_and_shows_in_table_info_and_report(toy, run_dir, capsys):
    code, out, err = run_cli(capsys, "toy", run_dir, "--n-test", "50", "--label", "1",
                             "--scale", "2")
    assert code == 0, err
    share = 2 * _expected_share(run_dir, 50, 1)
    assert f"toy share {100 * share:.2f}% of 50 images" in out
    res = json.loads((run_dir / "results" / "toy.json").read_text())
    assert res["kind"] == "toy" and res["schema"] == tasks.spec.SCHEMA
    assert res["settings"] == {"n_test": 50, "seed": 0, "label": 1, "scale": 2.0}
    assert res["share"] == share and res["data"]["name"] == "synthetic" and "versions" in res
    # the table and the report read it through the registry
    code, out, err = run_cli(capsys, "table", run_dir, "--format", "json")
    assert code == 0, err
    assert "toy share 1" in out
    from robustlab.report.summary import run_metrics

    assert run_metrics(run_dir)["toy share 1"] == share
    from robustlab.report.summary import collect, result_setting, section_settings

    assert result_setting("toy", res) == "n=50, label 1"  # the spec built from its settings
    assert "n=50, label 1" in section_settings(collect(run_dir)).values()
    code, out, _ = run_cli(capsys, "info", run_dir)
    assert code == 0 and f"toy ({Toy.title})" in out
    # without the spec registered the file still loads (its kind is not guessed from keys)
    REGISTRY.pop("toy")
    assert "toy share 1" not in run_metrics(run_dir)
    assert run_cli(capsys, "info", run_dir)[0] == 0


def test_register_makes_a_spec_a_dataclass_once():
    from robustlab.tasks.spec import register

    class Plain(EvalSpec):  # no @dataclasses.dataclass: `register` applies it
        kind: ClassVar[str] = "plain-toy"
        n_test: int | None = option("n_test", 7)

    had_toy = "toy" in REGISTRY
    try:
        assert register(Plain) is Plain and REGISTRY["plain-toy"] is Plain
        (f,) = dataclasses.fields(Plain)
        assert (f.name, f.default, f.metadata["term"]) == ("n_test", 7, "n_test")
        assert Plain(n_test=3).settings() == {"n_test": 3} and Plain().n_test == 7
        # a dataclass already (Toy) is not made one again: its fields keep their metadata
        assert register(Toy) is Toy
        assert [f.metadata["term"] for f in dataclasses.fields(Toy)][:2] == ["n_test", "seed"]
    finally:
        REGISTRY.pop("plain-toy", None)
        if not had_toy:
            REGISTRY.pop("toy", None)


def test_generic_command_validates_its_options_in_one_line(toy, run_dir, capsys):
    code, _, err = run_cli(capsys, "toy", run_dir, "--n-test", "0")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--n-test" in err
    assert not (run_dir / "results" / "toy-bad.json").exists()
    code, _, err = run_cli(capsys, "toy", run_dir / "nothere")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_a_toy_kind_in_a_preset(toy, tmp_path):
    preset = ex.load_preset({
        "name": "toy", "data": {"name": "synthetic", "options": {"n_train": 128, "n_test": 60}},
        "model": {"name": "mlp", "hidden": [8]}, "train": {"epochs": 1, "batch_size": 64},
        "runs": {"a": {"label": "A"}},
        "evaluate": {"toy": {"n_test": 40}, "toy-3": {"evaluator": "toy", "label": 3}},
        "table": {"columns": ["toy share 0", "toy share 3"]}})
    res = ex.run_preset(preset, tmp_path, device="cpu", progress=False, report=True)
    a = tmp_path / "a"
    got = json.loads((a / "results" / "toy.json").read_text())
    assert got["kind"] == "toy" and got["settings"]["n_test"] == 40 and "evaluator" not in got
    assert got["share"] == _expected_share(a, 40)
    third = json.loads((a / "results" / "toy-3.json").read_text())
    assert third["kind"] == "toy" and third["share"] == _expected_share(a, 60, 3)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["steps"]["eval/a/toy"]["command"].startswith("Toy(n_test=40")
    assert res["table"]["values"]["a"] == {"toy share 0": got["share"],
                                           "toy share 3": third["share"],
                                           **{k: v for k, v in res["table"]["values"]["a"].items()
                                              if not k.startswith("toy")}}
    assert "toy share 3" in Path(res["report"]).read_text()
    # a changed toy setting redoes that evaluation only
    preset["evaluate"]["toy"]["n_test"] = 30
    plan2, _ = ex.build_plan(preset, tmp_path, device="cpu", calibrate_eta=False)
    assert [s.key for s in plan2.pending()] == ["eval/a/toy"]


# ---- one vocabulary ----------------------------------------------------------------------------

def _type_name(t: Any) -> str | None:
    return None if t is None else getattr(t, "__name__", repr(t))


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _term_options() -> list[tuple[str, str, argparse.Action, str]]:
    """(command, flag, action, term) for every option of every command spelled like a term."""
    out = []
    for cmd, p in _subparsers(build_parser()).items():
        for act in p._actions:
            for flag in act.option_strings:
                term = flag[2:].replace("-", "_")
                if flag.startswith("--") and term in VOCABULARY:
                    out.append((cmd, flag, act, term))
    return out


def _violations() -> list[str]:
    bad = []
    for cmd, flag, act, term in _term_options():
        t = VOCABULARY[term]
        if act.help == argparse.SUPPRESS:  # an old spelling of another option: checked below
            continue
        if getattr(act, "term", None) != term:
            bad.append(f"{cmd} {flag}: not declared as the vocabulary term {term!r} "
                       f"(option({term!r}) in its spec)")
        if act.dest != term:
            bad.append(f"{cmd} {flag}: stored as {act.dest!r}, not {term!r}")
        if t.type is not None and _type_name(act.type) != _type_name(t.type):
            bad.append(f"{cmd} {flag}: type {_type_name(act.type)} is not the term's "
                       f"{_type_name(t.type)}")
        if t.choices and tuple(act.choices or ()) != tuple(t.choices):
            bad.append(f"{cmd} {flag}: choices {act.choices} are not {t.choices}")
    return bad


def test_every_command_speaks_the_vocabulary():
    """Every option spelled like a shared term stands for that term: it is declared through the
    vocabulary (`option("<term>")`: the term's meaning, a spec may only change the default),
    parses with the term's type and is stored under the term's name."""
    found = _term_options()
    assert {cmd for cmd, *_ in found} >= {"train", "eval"}
    assert _violations() == []


def test_the_vocabulary_check_catches_a_stray_meaning(toy):
    """A hand-written `--steps` meaning something else is caught (the check is not vacuous)."""
    parser = build_parser()
    p = _subparsers(parser)["toy"]
    p.add_argument("--restarts", type=int, help="ascent restarts on ν")
    import test_tasks

    old = test_tasks.build_parser
    test_tasks.build_parser = lambda: parser
    try:
        assert any(v.startswith("toy --restarts") for v in _violations())
    finally:
        test_tasks.build_parser = old


def test_spec_fields_named_like_terms_declare_them():
    """In every registered spec (and TrainSpec) a field named like a term is that term."""
    import dataclasses as dc

    for cls in [*tasks.load_all().values(), TrainSpec]:
        for f in dc.fields(cls):
            if f.name in VOCABULARY and f.metadata.get("cli", True):
                assert f.metadata.get("term") == f.name, f"{cls.__name__}.{f.name}"


def test_docs_table_is_the_vocabulary():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    body = text.split("<!-- vocabulary:start -->\n", 1)[1].split("<!-- vocabulary:end -->", 1)[0]
    from robustlab.tasks.vocabulary import markdown

    assert body == markdown()
    for term in VOCABULARY.values():
        for old in term.aliases:
            assert f"`{old}`" in text


# ---- old spellings -----------------------------------------------------------------------------

@pytest.mark.deprecated_spelling
def test_old_train_spellings_work_with_one_note(tmp_path, capsys):
    code, _, err = run_cli(capsys, *TRAIN, "--norm", "none", "--step-size", "3", "--seed0", "5",
                           "--schedule", "step", "--out", tmp_path / "r")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "is deprecated" in line]
    assert notes == ["robustlab: note: --norm is deprecated; use --norm-layer",
                     "robustlab: note: --step-size is deprecated; use --lr-step",
                     "robustlab: note: --seed0 is deprecated; use --seed"]
    meta = json.loads((tmp_path / "r" / "model.json").read_text())
    assert meta["train_config"]["step_size"] == 3 and meta["seed"] == 5
    assert meta["kwargs"]["norm"] == "none"


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_presets_use_only_current_setting_keys(config, capsys, tmp_path):
    import yaml

    scales = list(yaml.safe_load(config.read_text(encoding="utf-8")).get("scales") or {})
    assert scales
    for scale in scales:  # every run's TrainSpec and tracking, every evaluation's spec
        preset = ex.load_preset(config, scale)
        preset["data"]["name"] = "synthetic"  # the keys are the point, not the data
        specs = ex.preset_specs(preset, tmp_path)
        ws = ex.Workspace(preset, tmp_path)
        tracks = [ws.track_spec(run) for run in preset["runs"]]
        assert specs and len(tracks) == len(specs)
    assert capsys.readouterr().err == ""  # no deprecation note: only the current keys


@pytest.mark.deprecated_spelling
def test_an_old_train_setting_key_works_with_one_note(capsys):
    base = {"data": {"name": "synthetic"}, "model": {"name": "mlp"}}
    old = TrainSpec.from_preset({**base, "train": {"step_size": 3}})
    assert capsys.readouterr().err == ("robustlab: note: train setting 'step_size' is "
                                       "deprecated; use 'lr_step'\n")
    assert old == TrainSpec.from_preset({**base, "train": {"lr_step": 3}}) and old.lr_step == 3
    assert capsys.readouterr().err == ""
    from robustlab.errors import UserError

    with pytest.raises(UserError, match="'step_size' and 'lr_step' are the same setting"):
        TrainSpec.from_preset({**base, "train": {"step_size": 3, "lr_step": 2}})


@pytest.mark.deprecated_spelling
def test_old_spelling_in_a_generic_command(toy, run_dir, capsys):
    code, _, err = run_cli(capsys, "toy", run_dir, "--seed0", "4", "--n-test", "10")
    assert code == 0 and err.strip() == "robustlab: note: --seed0 is deprecated; use --seed"
    assert json.loads((run_dir / "results" / "toy.json").read_text())["settings"]["seed"] == 4


# ---- TrainSpec ---------------------------------------------------------------------------------

def test_train_spec_defaults_are_training_defaults():
    from robustlab.train import TrainConfig

    c, s = TrainConfig(), TrainSpec()
    assert s.config() == c and s.lr_step == c.step_size and s.batch_size == c.batch_size
    flags = {a.dest: a for a in _subparsers(build_parser())["train"]._actions
             if a.help != argparse.SUPPRESS}
    for f in dataclasses.fields(TrainSpec):
        if f.metadata.get("cli", True):
            assert f.name in flags, f.name
            assert flags[f.name].default == getattr(s, f.name), f.name


def test_train_spec_of_a_preset_run_and_its_command_line(tmp_path, capsys):
    raw = {"data": {"name": "synthetic", "options": {"n_train": 128, "n_test": 40}},
           "model": {"name": "mlp", "hidden": [8]},
           "train": {"epochs": 1, "batch_size": 64, "seed": 3},
           "runs": {"q": {"method": "randbet", "options": {"bit_error_rate": 0.01},
                          "train": {"clip": 0.1, "lr_step": 2}}}}
    preset = ex.load_preset(raw)
    ws = ex.Workspace(preset, tmp_path)
    spec = ws.train_spec("q")
    assert (spec.method, spec.options, spec.clip, spec.lr_step, spec.seed) == (
        "randbet", {"bit_error_rate": 0.01}, 0.1, 2, 3)
    assert spec.quantized() and spec.model_options == {"hidden": [8]}
    line = spec.command_line(tmp_path / "q")
    assert "--method randbet --bit-error-rate 0.01" in line and "--lr-step 2" in line
    assert "model option hidden=[8]" in line
    # the preset trains what the command line trains (the same weights)
    ex.run_preset(preset, tmp_path / "p", device="cpu", progress=False, report=False)
    argv = line.split("  #")[0].split()[2:]
    argv[argv.index("--out") + 1] = str(tmp_path / "cli")
    # the model option has no flag: the same model needs hidden=[8]; train the spec directly
    spec2 = TrainSpec.from_args(*_parse_train(argv + ["--device", "cpu", "--quiet"]))
    spec2 = dataclasses.replace(spec2, model_options={"hidden": [8]},
                                data_options={"n_train": 128, "n_test": 40})
    spec2.run(tmp_path / "cli", device="cpu", progress=False)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "p" / "q" / "model.safetensors")
    b = load_file(tmp_path / "cli" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _parse_train(argv: list[str]) -> tuple[argparse.Namespace, dict[str, set[str]]]:
    args = build_parser().parse_args(["train", *argv])
    return args, args._method_options


def test_bad_train_settings_name_the_run(tmp_path):
    from robustlab.errors import UserError

    preset = ex.load_preset({"data": {"name": "synthetic"}, "runs": {"a": {"train": {"lr": -1}}}})
    with pytest.raises(UserError, match="lr"):
        ex.build_plan(preset, tmp_path, device="cpu", calibrate_eta=False)
