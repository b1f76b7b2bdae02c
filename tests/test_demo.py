"""`robustlab demo` and the plan runner: progress with ETA, resume, --fresh, exact resume of
interrupted training, and runs whose method is not in the build."""

import dataclasses
import io
import json
import re
from typing import ClassVar

import pytest
import torch
import yaml

from robustlab import experiments as ex
from robustlab.cli import main
from robustlab.train.methods import METHODS, Method

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


TINY = {
    "name": "tiny",
    "title": "tiny demo",
    "data": {"name": "synthetic", "options": {"n_train": 256, "n_test": 200}},
    "model": {"name": "mlp", "hidden": [16]},
    "train": {"epochs": 2, "lr": 0.1, "batch_size": 64},
    "runs": {"normal": {"label": "Normal"},
             "clip": {"label": "Quantized+Clip", "train": {"quant": "rquant8", "clip": 0.5}}},
    "evaluate": {"clean": {}, "biterrors": {"rates": [0.01, 0.05], "patterns": 2}},
}


def write(path, preset):
    path.write_text(yaml.safe_dump(preset, sort_keys=False))
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_preset_smoke_end_to_end(tmp_path, capsys):
    """The real demo preset (smoke scale, on the synthetic data): every run, every capability,
    a report; a second call reuses everything."""
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--scale", "smoke", "--data", "synthetic",
                                "--out", out, "--device", "cpu")
    assert code == 0, err
    preset = ex.load_preset("demo", "smoke")
    for run in preset["runs"].values():
        assert run["label"] in stdout
    assert "[1/" in err and "ETA" in err and "plan finished" in err
    plan = json.loads((out / "plan.json").read_text())
    assert plan["command"].startswith("robustlab demo --scale smoke")
    statuses = {k: s["status"] for k, s in plan["steps"].items()}
    assert set(statuses.values()) == {"done"}, statuses
    kinds = {"clean", "adversarial", "biterrors", "bitattack", "flatness", "landscape"}
    for k in kinds:
        assert any(key.endswith("/" + k) for key in statuses), k
    html = (out / "report.html").read_text()
    for section in ("Input attacks", "Random bit errors", "Adversarial bit errors", "Flatness",
                    "Training", "Commands &amp; versions"):
        assert section in html
    mtime = (out / "normal" / "model.safetensors").stat().st_mtime_ns
    code, _, err = run_cli(capsys, "demo", "--scale", "smoke", "--data", "synthetic", "--out", out,
                           "--device", "cpu", "--no-report")
    assert code == 0 and "0 to run" in err and "reused" in err
    assert (out / "normal" / "model.safetensors").stat().st_mtime_ns == mtime


def test_resume_redoes_only_changed_steps_and_fresh_starts_over(tmp_path, capsys):
    cfg = write(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")
    code, _, err = run_cli(capsys, "demo", "--config", cfg, "--out", out, "--device", "cpu")
    assert code == 0 and "6 steps, 6 to run" in err
    weights = (out / "clip" / "model.safetensors").read_bytes()
    # a changed evaluation setting redoes that evaluation only
    changed = json.loads(json.dumps(TINY))
    changed["evaluate"]["biterrors"]["patterns"] = 3
    write(cfg, changed)
    code, _, err = run_cli(capsys, "demo", "--config", cfg, "--out", out, "--device", "cpu")
    assert code == 0 and "6 steps, 2 to run, 4 reused" in err
    assert "biterrors of Normal" in err and "train Normal" not in err
    assert json.loads((out / "clip" / "results" / "biterrors.json").read_text())["patterns"] == 3
    assert (out / "clip" / "model.safetensors").read_bytes() == weights
    # a changed training setting retrains that run (and re-evaluates it), not the other one
    changed["runs"]["clip"]["train"]["clip"] = 0.25
    write(cfg, changed)
    code, _, err = run_cli(capsys, "demo", "--config", cfg, "--out", out, "--device", "cpu")
    assert code == 0 and "6 steps, 3 to run" in err and "train Quantized+Clip" in err
    from safetensors.torch import load_file

    assert max(t.abs().max().item() for t in load_file(out / "clip" / "model.safetensors").values()) <= 0.25
    # --fresh starts over, and leaves files it does not own alone
    code, _, err = run_cli(capsys, "demo", "--config", cfg, "--out", out, "--device", "cpu", "--fresh")
    assert code == 0 and "6 steps, 6 to run" in err
    assert (out / "keep.txt").read_text() == "not ours"


_CRASH = {"armed": False}


@dataclasses.dataclass
class CrashOnce(Method):
    """Plain training that raises at the start of epoch 2 while armed (an interrupted run)."""

    name: ClassVar[str] = "test-crash-once"

    def backward(self, ctx, x, y):
        if ctx.epoch == 1 and _CRASH["armed"]:
            raise RuntimeError("simulated interruption")
        return super().backward(ctx, x, y)


def test_interrupted_training_resumes_to_identical_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setitem(METHODS, CrashOnce.name, CrashOnce)
    preset = json.loads(json.dumps(TINY))
    preset["train"]["epochs"] = 3
    preset["runs"] = {"a": {"method": CrashOnce.name}}
    preset["evaluate"] = {"clean": {}}
    p = ex.load_preset(preset)
    _CRASH["armed"] = True
    with pytest.raises(RuntimeError, match="simulated interruption"):
        ex.run_preset(p, tmp_path / "x", device="cpu", progress=False, report=False)
    from robustlab.checkpoint import read_state_info

    assert read_state_info(tmp_path / "x" / "a")["epoch"] == 1
    _CRASH["armed"] = False
    stream = io.StringIO()
    ex.run_preset(p, tmp_path / "x", device="cpu", progress=False, report=False, stream=stream)
    ex.run_preset(p, tmp_path / "y", device="cpu", progress=False, report=False)
    a = load_file(tmp_path / "x" / "a" / "model.safetensors")
    b = load_file(tmp_path / "y" / "a" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    hist = [json.loads(line) for line in (tmp_path / "x" / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3]


def test_runs_of_methods_not_in_the_build_are_skipped_with_a_note(tmp_path, capsys):
    preset = json.loads(json.dumps(TINY))
    preset["runs"]["future"] = {"label": "Future method", "method": "not-yet-written"}
    cfg = write(tmp_path / "p.yaml", preset)
    code, stdout, err = run_cli(capsys, "demo", "--config", cfg, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0
    assert "skipped: train Future method (method 'not-yet-written' is not in this build)" in err
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    skipped = [s for s in plan["steps"].values() if s["status"] == "skipped"]
    assert len(skipped) == 3  # training and its two evaluations
    assert "Not available in this build" in (tmp_path / "o" / "report.html").read_text()
    assert not (tmp_path / "o" / "future").exists()


def test_plan_eta_uses_costs_and_measured_rate():
    done = {"n": 0}
    steps = [ex.Step(f"s{i}", f"step {i}", lambda: done.__setitem__("n", done["n"] + 1),
                     lambda: False, cost=c) for i, c in enumerate([10.0, 30.0])]
    plan = ex.Plan("/tmp/robustlab-test-plan-eta", steps, seconds_per_unit=2.0)
    assert plan.estimate() == 80.0 + 2 * ex.Plan.STEP_OVERHEAD_S
    stream = io.StringIO()
    rec = plan.execute(stream=stream)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "plan: 2 steps, 2 to run, estimated 1:21"
    first_step = re.fullmatch(r"\[1/2\] step 0  \(elapsed \d+:\d\d, ETA (\d+:\d\d)\)", lines[1])
    assert first_step, lines[1]  # the ETA before any step ran is the cost-based estimate
    assert first_step.group(1) == "1:21"
    assert done["n"] == 2 and rec["steps"]["s1"]["status"] == "done"


def test_demo_bad_input_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "demo", "--config", tmp_path / "missing.yaml")
    assert code == 2 and err.strip().endswith("does not exist") and len(err.strip().splitlines()) == 1
    cfg = write(tmp_path / "bad.yaml", {**TINY, "runs": {"a": {"method": "at", "options": {"epz": 1}}}})
    code, _, err = run_cli(capsys, "demo", "--config", cfg, "--out", tmp_path / "o")
    assert code == 2 and "takes no option 'epz'" in err
