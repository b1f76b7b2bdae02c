"""Command line: the happy path on tiny data, and one-line exit-2 errors for bad input."""

import json

import pytest

from robustlab.cli import main


def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


TRAIN = ["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--quiet",
         "--device", "cpu"]


def test_train_eval_info(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, *TRAIN, "--out", run)
    assert code == 0, err
    assert {"model.safetensors", "model.json", "metrics.jsonl", "config.yaml"} <= {
        p.name for p in run.iterdir()}
    code, out, _ = run_cli(capsys, "eval", run)
    assert code == 0 and "clean test error" in out
    res = json.loads((run / "results" / "eval.json").read_text())
    assert len(res["confusion"]) == 4 and sum(map(sum, res["confusion"])) == res["n"]
    assert abs(res["err"] - (1 - sum(res["confusion"][k][k] for k in range(4)) / res["n"])) < 1e-12
    code, out, _ = run_cli(capsys, "info", run)
    assert code == 0 and "mlp" in out and "eval" in out
    # a second train into the same directory must not clobber it
    code, _, err = run_cli(capsys, *TRAIN, "--out", run)
    assert code == 2 and "already holds a run" in err


@pytest.mark.parametrize("extra,message", [
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--data", "nosuchdata"], "unknown dataset 'nosuchdata'"),
    (["--method", "magic"], "unknown method 'magic'"),
    (["--lr", "-1"], "--lr: -1 is out of range; it must be a finite number > 0"),
    (["--epochs", "two"], "'two' is not a number"),
    (["--batch-size", "0"], "--batch-size: 0 is out of range"),
    (["--clip", "0"], "--clip: 0 is out of range"),
    (["--resume"], "holds no interrupted run"),
])
def test_train_bad_input(tmp_path, capsys, extra, message):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, *TRAIN, "--out", run, *extra)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not run.exists()


def test_eval_and_info_bad_input(tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", tmp_path / "missing")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "info", tmp_path)
    assert code == 2 and "model.json is missing" in err
    run = tmp_path / "run"
    assert run_cli(capsys, *TRAIN, "--out", run)[0] == 0
    (run / "model.safetensors").write_bytes(b"\x00" * 20)
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and "corrupt" in err
    assert not (run / "results").exists()


def test_help_everywhere(capsys):
    from robustlab.cli import build_parser

    parser = build_parser()
    names = parser._subparsers._group_actions[0].choices
    assert {"train", "eval", "info"} <= set(names)
    for name in names:
        code, out, _ = run_cli(capsys, name, "--help")
        assert code == 0 and f"robustlab {name}" in out


def test_evaluation_commands_get_data_and_locks_centrally(capsys):
    from robustlab.cli import RUN_WRITERS, build_parser

    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    for name in ("eval", "attack", "biterrors", "bitattack", "flatness", "energy"):
        assert name in RUN_WRITERS
        assert "--data" in choices[name].format_help(), name
    assert "--data" not in choices["info"].format_help()
    code, _, err = run_cli(capsys, "eval", "nowhere", "--data", "synthetic")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
