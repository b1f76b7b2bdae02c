"""Run directories are never lost, deleted or half-written: safe preset names, run locks,
schema-checked model.json, weight integrity, output-path errors as one line, no leftovers,
and runs that travel (absolute data paths, --data-dir, --data)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from clihelp import one_line, run_cli
from safetensors.torch import load_file, save_file

from robustlab import checkpoint, io, runs
from robustlab.cli import main
from robustlab.errors import UserError

TRAIN = ["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--quiet",
         "--device", "cpu"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One run trained for one epoch on synthetic data, shared (copy it before changing it)."""
    run = tmp_path_factory.mktemp("shared") / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    return run


@pytest.fixture
def run(tiny_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---- 1. preset run names cannot reach outside --out -----------------------------------------

@pytest.mark.parametrize("name", ["../victim", "ABS", "a/b", "..", ".hidden", ""])
def test_traversal_preset_names_delete_nothing(tmp_path, capsys, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    name = str(victim) if name == "ABS" else name
    preset = {"data": {"name": "synthetic"}, "model": {"name": "mlp"}, "train": {"epochs": 1},
              "runs": {name: {"method": "normal"}}}
    cfg = tmp_path / "preset.yaml"
    cfg.write_text(json.dumps(preset))  # JSON is YAML
    out = tmp_path / "out"
    before = tree(tmp_path)
    for argv in (["demo", "--config", cfg, "--out", out, "--fresh", "--device", "cpu"],
                 ["reproduce", cfg, "--out", out, "--device", "cpu"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, err
        assert "is not allowed" in one_line(err)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert tree(tmp_path) == before and not out.exists()


def test_run_names_and_set_aside(tmp_path):
    for bad in ("../x", "/abs", "a/b", "..", ".", ".x", "", 3):
        with pytest.raises(UserError, match="not allowed"):
            runs.check_run_name(bad)
    assert runs.check_run_name("clip-0.1_v2") == "clip-0.1_v2"
    from robustlab.experiments import clean_outputs

    (tmp_path / "normal").mkdir()
    (tmp_path / "normal" / "model.json").write_text("{}")
    (tmp_path / "plan.json").write_text("{}")
    (tmp_path / "keep.txt").write_text("not ours")
    moved = clean_outputs({"runs": {"normal": {}, "other": {}}}, tmp_path)  # --fresh
    assert moved.parent == tmp_path / ".replaced"
    assert (moved / "normal" / "model.json").read_text() == "{}"  # moved, not deleted
    assert (moved / "plan.json").is_file() and (tmp_path / "keep.txt").is_file()
    assert not (tmp_path / "normal").exists()
    from robustlab.report.summary import find_runs

    assert find_runs(tmp_path) == []  # set-aside runs stay out of reports


# ---- 2. run locks ---------------------------------------------------------------------------

def test_two_concurrent_trainings_one_exits_2_the_other_run_intact(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "robustlab", *TRAIN[:5], "--epochs", "2", "--quiet",
           "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    results = [(p.returncode, *p.communicate(timeout=300)) for p in procs]
    results = [(p.returncode, o, e) for p, (_, o, e) in zip(procs, results)]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    assert ("in use by pid" in loser[2] or "already holds a run" in loser[2]), loser
    assert len(loser[2].strip().splitlines()) == 1
    model, meta = checkpoint.load(out)  # the winner's run: complete and verified
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert meta["train_config"]["epochs"] == 2
    assert not list(tmp_path.glob(".*.lock")) and not list(out.glob(".*tmp"))


def test_held_lock_is_named_and_a_stale_one_taken_over(run, tmp_path, capsys):
    with runs.run_lock(run, "eval"):
        code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and f"in use by pid {os.getpid()}" in one_line(err)
    with runs.run_lock(run):  # the training lock: evaluations wait for training to end
        code, _, err = run_cli(capsys, "eval", run)
        assert code == 2 and "is being trained by pid" in one_line(err)
        code, _, err = run_cli(capsys, *TRAIN, "--out", run, "--resume", "--epochs", "2")
        assert code == 2 and "in use by pid" in one_line(err)
    # a lock file left by a killed process: taken over, then removed
    stale = json.dumps({"pid": dead_pid(), "host": io.hostname(), "started": 0, "command": "x"})
    runs.lock_path(run, "eval").write_text(stale)
    runs.lock_path(run, "train").write_text(stale)
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 0, err
    assert not runs.lock_path(run, "eval").exists()
    lk = runs.RunLock(run).acquire()
    assert lk.took_over is not None and "pid" in lk.took_over
    lk.release()
    assert not runs.lock_path(run, "train").exists()


# ---- 3. model.json and result files against a schema ----------------------------------------

BAD_META = [
    ([], "must hold a JSON object, not list"),
    (None, "not null"),
    ("MERGE", {"data": "digits"}, "'data' must be an object"),
    ("DROP", "kwargs", "'kwargs' is missing"),
    ("MERGE", {"kwargs": {"in_shape": [1, 8, 8], "num_classes": "ten"}},
     "'kwargs.num_classes' must be an integer"),
    ("MERGE", {"architecture": 5}, "'architecture' must be"),
    ("MERGE", {"quant": "rquant8"}, "'quant' must be an object"),
    ("MERGE", {"weights": {"model.safetensors": {"sha256": 1}}}, "'weights.model.safetensors'"),
]


@pytest.mark.parametrize("case", BAD_META, ids=range(len(BAD_META)))
@pytest.mark.parametrize("command", ["eval", "info", "report", "biterrors", "flatness"])
def test_malformed_model_json_is_one_line(run, capsys, case, command):
    meta = json.loads((run / "model.json").read_text())
    if case[0] == "MERGE":
        meta.update(case[1])
    elif case[0] == "DROP":
        del meta[case[1]]
    else:
        meta = case[0]
    (run / "model.json").write_text(json.dumps(meta))
    code, _, err = run_cli(capsys, command, run)
    assert code == 2, err
    assert case[-1] in one_line(err) and "model.json" in err
    assert not (run / "results").exists() and not (run / "report.html").exists()


def test_result_files_are_checked(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="must hold a JSON object"):
        io.read_result(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"kind": 3}')
    with pytest.raises(UserError, match="'kind' must be a string"):
        io.read_result(tmp_path / "b.json")
    (tmp_path / "c.json").write_text('{"kind": "eval", "err": 0.5}')
    assert io.read_result(tmp_path / "c.json")["err"] == 0.5


# ---- 5. integrity ----------------------------------------------------------------------------

def test_byte_flipped_weights_are_refused(run, capsys):
    data = bytearray((run / "model.safetensors").read_bytes())
    data[-100] ^= 0x01  # one bit of one weight: still a valid safetensors file
    (run / "model.safetensors").write_bytes(bytes(data))
    load_file(run / "model.safetensors")  # parses fine; only the hash can tell
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and "does not match the SHA-256" in one_line(err)
    assert not (run / "results").exists()


def _rewrite(run, change):
    """Rewrite the weights with `change` applied and record the new hash (a consistent file)."""
    state = load_file(run / "model.safetensors")
    change(state)
    save_file(state, run / "model.safetensors")
    meta = json.loads((run / "model.json").read_text())
    meta["weights"]["model.safetensors"]["sha256"] = checkpoint.file_sha256(run / "model.safetensors")
    (run / "model.json").write_text(json.dumps(meta))


def test_nan_and_wrong_dtype_weights_are_refused(run, capsys):
    name = next(iter(load_file(run / "model.safetensors")))
    _rewrite(run, lambda s: s[name].view(-1).__setitem__(0, float("nan")))
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and f"tensor {name} holds NaN" in one_line(err)
    _rewrite(run, lambda s: s.__setitem__(name, torch.zeros_like(s[name], dtype=torch.int8)))
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and "is int8, but float32 is recorded" in one_line(err)


def test_runs_without_hashes_still_load(run, capsys):
    meta = json.loads((run / "model.json").read_text())
    del meta["weights"]  # a run written before hashes were recorded
    (run / "model.json").write_text(json.dumps(meta))
    code, out, err = run_cli(capsys, "eval", run)
    assert code == 0, err
    assert "no SHA-256 recorded" in run_cli(capsys, "info", run)[1]


# ---- 4. output paths: one line, exit 2, before any work -------------------------------------

def test_output_path_problems_are_one_line(run, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    adir = tmp_path / "adir"
    adir.mkdir()
    cases = [
        ([*TRAIN, "--out", afile], "is an existing file"),
        ([*TRAIN, "--out", afile / "run"], "is a file, not a folder"),
        ([*TRAIN, "--out", ""], "empty"),
        (["report", run, "--out", adir], "is an existing folder"),
        (["biterrors", run, "--plot", adir, "--patterns", "1"], "is an existing folder"),
        (["biterrors", run, "--export", afile / "x.npz", "--patterns", "1"], "is a file"),
        (["epsilons", "--data", "synthetic", "--out", afile], "is an existing file"),
        (["demo", "--out", afile], "is an existing file"),
        (["reproduce", "bit-errors", "--out", afile], "is an existing file"),
        (["import", "--factory", "f.py:g", "--weights", "w.pt", "--data", "synthetic",
          "--out", afile], "is an existing file"),
    ]
    before = tree(tmp_path)
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert message in one_line(err), (argv, err)
    assert tree(tmp_path) == before
    (run / "results").write_text("not a folder")  # results/ a file
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and "results" in one_line(err)


def test_os_errors_during_a_command_are_one_line(run, capsys, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(run / "results" / "eval.json"))

    monkeypatch.setattr(io, "write_result", refuse)
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2
    assert one_line(err) == (f"robustlab eval: error: cannot use {run / 'results' / 'eval.json'}: "
                             "permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_run_is_refused_up_front(run, capsys):
    os.chmod(run, 0o555)
    try:
        code, _, err = run_cli(capsys, "eval", run)
    finally:
        os.chmod(run, 0o755)
    assert code == 2 and "not writable" in one_line(err)


# ---- 6. no leftovers --------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["eval", "info"])
def test_temp_files_of_killed_writes_are_removed(run, capsys, command):
    (run / "results").mkdir()
    leftovers = [run / f".model.safetensors.h{io.hostname()}.p{dead_pid()}.abc123.tmp",
                 run / ".model.json.q1w2e3.tmp",  # the name older versions used
                 run / "results" / f".eval.json.h{io.hostname()}.p{dead_pid()}.zz.tmp"]
    for p in leftovers:
        p.write_bytes(b"half written")
    alive = run / f".metrics.jsonl.h{io.hostname()}.p{os.getpid()}.live.tmp"
    alive.write_bytes(b"being written by a live process")
    code, _, err = run_cli(capsys, command, run)
    assert code == 0, err
    assert not any(p.exists() for p in leftovers)
    assert alive.exists()  # a live writer's file is left alone


def test_a_real_kill_during_a_write_leaves_nothing_after_the_next_command(run, capsys):
    code = ("import os, sys\nfrom robustlab.io import atomic_write\n"
            "def write(tmp):\n    open(tmp, 'wb').write(b'x' * 1000)\n    os._exit(9)\n"
            f"atomic_write({str(run / 'model.json')!r}, write)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-c", code], env=env, check=False)
    assert list(run.glob(".model.json.*.tmp"))  # the killed write left its temp file
    assert run_cli(capsys, "info", run)[0] == 0
    assert not list(run.glob(".*.tmp"))
    checkpoint.load(run)  # and model.json was never touched


def test_atomic_writes_fsync_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    io.atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert any(s.endswith(".tmp") for s in synced)  # the data, before the rename
    assert str(tmp_path) in synced  # the folder, after it
    assert not list(tmp_path.glob(".*.tmp"))


def test_unfinished_first_epoch_says_how_to_resume(tmp_path, capsys):
    d = tmp_path / "r"
    d.mkdir()
    (d / "config.yaml").write_text("epochs: 1\n")
    code, _, err = run_cli(capsys, "eval", d)
    assert code == 2 and "never finished its first epoch" in one_line(err) and "--resume" in err


# ---- 9. runs that travel ------------------------------------------------------------------------

def _npz(path, seed=0, shape=(1, 8, 8), classes=4):
    from robustlab.data import synthetic

    tr, te = synthetic(64, 32, shape=shape, num_classes=classes, seed=seed)
    np.savez(path, x=tr.x.numpy(), y=tr.y.numpy(), x_test=te.x.numpy(), y_test=te.y.numpy())


def test_runs_travel_and_evaluate_other_data(tmp_path, capsys, monkeypatch):
    work, elsewhere, moved = tmp_path / "work", tmp_path / "elsewhere", tmp_path / "moved"
    for d in (work, elsewhere, moved):
        d.mkdir()
    _npz(work / "d.npz")
    monkeypatch.chdir(work)
    code, _, err = run_cli(capsys, *TRAIN[:2], "d.npz", *TRAIN[3:], "--out", "runs/r")
    assert code == 0, err
    run = (work / "runs" / "r").resolve()
    assert json.loads((run / "model.json").read_text())["data"]["name"] == str(work / "d.npz")
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(capsys, "eval", run)
    assert code == 0, err
    first = json.loads((run / "results" / "eval.json").read_text())["err"]
    shutil.move(work / "d.npz", moved / "d.npz")  # the data moved
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and "is not found (looked in" in one_line(err)
    code, _, err = run_cli(capsys, "eval", run, "--data-dir", moved)
    assert code == 0 and json.loads((run / "results" / "eval.json").read_text())["err"] == first
    monkeypatch.setenv("ROBUSTLAB_DATA", str(moved))
    assert run_cli(capsys, "eval", run)[0] == 0
    code, _, err = run_cli(capsys, "eval", run, "--data-dir", tmp_path / "nonexistent")
    assert code == 2 and "is not an existing folder" in one_line(err)
    # --data: other data of the same shape; the result records which
    _npz(elsewhere / "other.npz", seed=5)
    code, _, err = run_cli(capsys, "eval", run, "--data", "other.npz")
    assert code == 0, err
    res = json.loads((run / "results" / "eval.json").read_text())
    assert res["data"]["name"] == str(elsewhere / "other.npz")
    assert res["trained_on"]["name"] == str(work / "d.npz")
    _npz(elsewhere / "wide.npz", shape=(1, 6, 6))
    code, _, err = run_cli(capsys, "eval", run, "--data", "wide.npz")
    assert code == 2 and "shape (1, 6, 6)" in one_line(err)
    code, _, err = run_cli(capsys, "biterrors", run, "--data", "digits", "--patterns", "1")
    assert code == 2 and "--data digits has 10 classes but the model" in one_line(err)
    assert "outputs 4 scores" in err


def test_result_json_is_written_last_and_not_at_all_when_the_command_fails(run, capsys,
                                                                          monkeypatch):
    argv = ["biterrors", run, "--rates", "0.01", "--patterns", "1", "--n-test", "20", "--quiet"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    js, png = run / "results" / "biterrors.json", run / "results" / "biterrors.png"
    assert js.stat().st_mtime_ns >= png.stat().st_mtime_ns  # the JSON marks it complete
    old = js.read_bytes()
    from robustlab.report import biterrors_plot

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device", str(png))

    monkeypatch.setattr(biterrors_plot, "plot_rerr_vs_rate", disk_full)
    code, _, err = run_cli(capsys, *argv, "--seed", "7")
    assert code == 2 and "no space left on device" in one_line(err)
    assert js.read_bytes() == old  # the previous result stands; no new JSON beside old figures
    assert not list((run / "results").glob(".*.tmp"))


def test_info_refuses_a_malformed_result_file(run, capsys):
    (run / "results").mkdir()
    (run / "results" / "attack.json").write_text("[1, 2, 3]")
    code, _, err = run_cli(capsys, "info", run)
    assert code == 2 and "attack.json must hold a JSON object, not list" in one_line(err)


def test_read_only_file_system_is_refused_up_front(run, capsys, monkeypatch):
    real = os.statvfs

    class ReadOnly:
        def __init__(self, st):
            self.st = st

        def __getattr__(self, k):
            return os.ST_RDONLY | self.st.f_flag if k == "f_flag" else getattr(self.st, k)

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly(real(p)))
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and "is not writable" in one_line(err) and "read-only" in err
    code, _, err = run_cli(capsys, *TRAIN, "--out", run.parent / "new")
    assert code == 2 and "is not writable" in one_line(err)
    assert not (run / "results").exists() and not (run.parent / "new").exists()


def test_remove_created_only_removes_the_folder_this_invocation_made(tmp_path):
    from robustlab.io import create_dir, remove_created

    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("x")
    assert create_dir(user) is None  # existed already: never ours
    remove_created(user, create_dir(user))
    assert (user / "keep.txt").is_file()
    mine = tmp_path / "a" / "mine"
    token = create_dir(mine)
    assert token is not None
    (mine / "w.bin").write_bytes(b"1")
    remove_created(mine, token)
    assert not mine.exists()
    # a folder put in its place (same path, another folder) is left alone
    token = create_dir(mine)
    mine.rename(tmp_path / "moved")
    mine.mkdir()
    (mine / "other.txt").write_text("y")
    remove_created(mine, token)
    assert (mine / "other.txt").is_file() and (tmp_path / "moved").is_dir()


def test_remove_created_keeps_what_it_did_not_write(tmp_path):
    """Inside a folder this invocation made: a file moved in from elsewhere (older than the
    folder) stays with the folders holding it; a link is removed, never followed."""
    import os

    from robustlab.io import create_dir, remove_created

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.txt").write_text("t")
    old = tmp_path / "old.txt"
    old.write_text("o")
    os.utime(old, ns=(10**9, 10**9))  # written long before
    mine = tmp_path / "mine"
    token = create_dir(mine)
    (mine / "sub").mkdir()
    (mine / "sub" / "new.bin").write_bytes(b"1")
    (mine / "deep").mkdir()
    old.rename(mine / "deep" / "old.txt")
    (mine / "link").symlink_to(outside, target_is_directory=True)
    (mine / "filelink").symlink_to(outside / "target.txt")
    remove_created(mine, token)
    assert (mine / "deep" / "old.txt").read_text() == "o"  # not ours: kept, with its folder
    assert not (mine / "sub").exists() and not (mine / "link").exists()
    assert not (mine / "filelink").exists()
    assert (outside / "target.txt").read_text() == "t"  # links never followed
