"""Issue 11: a table of bad inputs through the real CLI, every command.

Each row must end with exit status 2, exactly one line on stderr that names the bad value (a
regular expression, matched case-insensitively), no traceback, and no file created, changed or
deleted: every row runs in its own folder (its working directory, with a private copy of one tiny
shared run), which is snapshotted before and after.

Rows marked `sub=True` (files, paths, locks, resource guards, one or more per command) run in a
real `python -m robustlab` subprocess, in parallel; the others call `robustlab.cli.main` in this
process (capturing stdout/stderr, catching any exception as a traceback) while the subprocesses
run, which keeps the whole table within the suite's time budget.

`python tests/test_bad_inputs.py` prints the tally per command (clean exits, tracebacks, silent
accepts, files left, other) for whatever `robustlab` is importable (e.g. with
PYTHONPATH=/path/to/other/src).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

PY = sys.executable
WORKERS = 3
SUB_TIMEOUT = 120  # a row that hangs (e.g. allocating a huge model) counts as a failure

TRAIN = ["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--quiet",
         "--device", "cpu"]
BIG = str(2**64)  # one beyond the largest 64-bit seed


# ---------------------------------------------------------------------------------------------
# bad files (in the shared, read-only `files` folder) and run mutations (on a row's copy)
# ---------------------------------------------------------------------------------------------

def make_files(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = lambda n, h=8: rng.integers(0, 256, (n, 1, h, h), dtype=np.uint8)  # noqa: E731
    np.savez(d / "empty.npz", x=np.zeros((0, 1, 8, 8), np.uint8), y=np.zeros(0, np.int64))
    np.savez(d / "noarrays.npz")
    np.savez(d / "one.npz", x=img(1), y=np.array([0]))
    np.savez(d / "zerohw.npz", x=np.zeros((20, 1, 0, 0), np.uint8), y=np.arange(20) % 2)
    np.savez(d / "nc0.npz", x=img(20), y=np.arange(20) % 2, num_classes=np.array(0))
    np.savez(d / "ncbad.npz", x=img(20), y=np.arange(20) % 2, num_classes=np.array([2, 3]))
    np.savez(d / "biglabels.npz", x=img(5), y=np.array([0, 1, 2, 3, 10**9]))
    np.savez(d / "neglabels.npz", x=img(10), y=np.array([0, 1, -1, 0, 1, 0, 1, 0, 1, 0]))
    np.savez(d / "nanimg.npz", x=np.full((10, 1, 8, 8), np.nan, np.float32), y=np.arange(10) % 2)
    np.savez(d / "shape2d.npz", x=np.zeros((10, 64), np.uint8), y=np.arange(10) % 2)
    np.savez(d / "mismatch.npz", x=img(10), y=np.arange(7) % 2)
    np.savez(d / "floatlabels.npz", x=img(10), y=np.linspace(0, 1, 10))
    np.savez(d / "notest.npz", x=img(10), y=np.arange(10) % 2, x_test=img(0),
             y_test=np.zeros(0, np.int64))
    np.savez(d / "onlyxtest.npz", x=img(10), y=np.arange(10) % 2, x_test=img(3))
    np.savez(d / "tinyimg.npz", x=img(20, 2), y=np.arange(20) % 2)
    np.save(d / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with open(d / "objects.npz", "wb") as f:  # an npz holding an object (pickled) array
        np.savez(f, x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    (d / "garbage.npz").write_bytes(b"this is not a zip file at all")
    (d / "text.txt").write_text("just a file\n")
    (d / "folder").mkdir(exist_ok=True)
    (d / "latin1.yaml").write_bytes("name: caf\xe9\nruns: {a: {}}\n".encode("latin-1"))
    (d / "bad.yaml").write_text("runs: [unclosed\n")
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "norun.yaml").write_text("name: x\nruns: {}\n")
    (d / "unknownkey.yaml").write_text("name: x\nbogus: 1\nruns: {a: {}}\n")
    (d / "badscale.yaml").write_text("name: x\nruns: {a: {}}\nscales: {small: {}}\n")
    (d / "badtrain.yaml").write_text("name: x\nruns: {a: {train: {lr: .inf}}}\n"
                                     "data: {name: synthetic}\nmodel: {name: mlp}\n"
                                     "train: {epochs: 1}\nevaluate: {}\n")
    import robustlab

    shutil.copy(Path(robustlab.__file__).parent / "examples" / "synthetic_energy_curve.csv",
                d / "curve_ok.csv")
    (d / "curve_bad.csv").write_text("voltage,bit_error_rate,energy\n1.0,abc,1.0\n")
    (d / "curve_nan.csv").write_text("voltage,bit_error_rate,energy\n1.0,nan,1.0\n0.9,0.01,0.8\n")
    (d / "chip_bad.json").write_text('{"name": "x"}\n')
    (d / "chip_garbage.json").write_text("{not json\n")
    (d / "latin1.csv").write_bytes("voltage,bit_error_rate,energy\n1,0,\xe9\n".encode("latin-1"))


def traversal_preset(row: Path, name: str) -> Path:
    """A preset whose one run is named `name` (e.g. ../victim); tiny if it were ever trained."""
    p = row / "preset.yaml"
    p.write_text(json.dumps({"name": "trav", "data": {"name": "synthetic"},
                             "model": {"name": "mlp"}, "train": {"epochs": 1},
                             "evaluate": {}, "runs": {name: {}}}))
    return p


def _victim(row: Path) -> None:
    (row / "victim").mkdir()
    (row / "victim" / "precious.txt").write_text("do not delete\n")


def set_meta(obj: Any) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        (run / "model.json").write_text(json.dumps(obj))
    return mutate


def edit_meta(fn: Callable[[dict], Any]) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        meta = json.loads((run / "model.json").read_text())
        fn(meta)
        (run / "model.json").write_text(json.dumps(meta))
    return mutate


def _setitem(path: list[str], value: Any) -> Callable[[dict], None]:
    def fn(d: dict) -> None:
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return fn


def _delitem(key: str) -> Callable[[dict], None]:
    return lambda d: d.pop(key, None)


def _resign(run: Path, name: str = "model.safetensors") -> None:
    """Record the new SHA-256 of a weight file where model.json keeps one (so that the check
    under test is the content check, not the integrity check)."""
    meta = json.loads((run / "model.json").read_text())
    rec = (meta.get("weights") or {}).get(name)
    if isinstance(rec, dict) and "sha256" in rec:
        rec["sha256"] = hashlib.sha256((run / name).read_bytes()).hexdigest()
        (run / "model.json").write_text(json.dumps(meta))


def rewrite_weights(fn: Callable[[dict], dict], resign: bool = True) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        from safetensors.torch import load_file, save_file

        t = load_file(str(run / "model.safetensors"))
        save_file(fn(t), str(run / "model.safetensors"))
        if resign:
            _resign(run)
    return mutate


def _nan_first(t: dict) -> dict:
    k = sorted(t)[0]
    t[k] = t[k].clone().fill_(float("nan"))
    return t


def _int8(t: dict) -> dict:
    return {k: v.to(__import__("torch").int8) for k, v in t.items()}


def flip_bytes(run: Path) -> None:
    p = run / "model.safetensors"
    b = bytearray(p.read_bytes())
    for i in range(len(b) - 200, len(b)):
        b[i] ^= 0xFF
    p.write_bytes(bytes(b))


def edit_state(fn: Callable[[dict, dict], None]) -> Callable[[Path], None]:
    """Change a run's trainer_state.safetensors: fn(info JSON, tensors) edits in place."""
    def mutate(run: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import save_file

        path = run / "trainer_state.safetensors"
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        info = json.loads(meta["state"])
        fn(info, tensors)
        save_file(tensors, str(path), metadata={"state": json.dumps(info)})
    return mutate


def _state_set(key: str, value: Any) -> Callable[[dict, dict], None]:
    def fn(info: dict, tensors: dict) -> None:
        info[key] = value
    return fn


def _state_no_optimizer(info: dict, tensors: dict) -> None:
    info.pop("optimizer", None)
    for k in [k for k in tensors if k.startswith("optim.")]:
        del tensors[k]


def _state_wrong_shape(info: dict, tensors: dict) -> None:
    import torch

    k = sorted(k for k in tensors if k.startswith("optim."))[0]
    tensors[k] = torch.zeros(3)


def only_config(run: Path) -> None:
    for p in run.iterdir():
        if p.name != "config.yaml":
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def results_file(run: Path) -> None:
    if (run / "results").is_dir():
        shutil.rmtree(run / "results")
    (run / "results").write_text("a file where the results folder goes\n")


def combine(*fns: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        for fn in fns:
            fn(run)
    return mutate


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

@dataclass
class Row:
    id: str
    args: list[str]
    expect: str                                  # regex the stderr line must match
    mutate: Callable[[Path], None] | None = None  # applied to the row's copy of the run
    setup: Callable[[Path], None] | None = None   # applied to the row's folder
    sub: bool = False                             # real subprocess (else cli.main in-process)
    xfail: str | None = None

    @property
    def command(self) -> str:
        return self.args[0]


def R(id: str, args: list[str], expect: str, **kw: Any) -> Row:  # noqa: N802
    return Row(id, args, expect, **kw)


T = TRAIN + ["--out", "{row}/new"]
RES = TRAIN + ["--out", "{run}", "--resume", "--epochs", "2"]
F = "{files}"


def D(name: str) -> list[str]:  # noqa: N802
    """`train` on the bad data file `name` (from the shared files folder) into the row's folder."""
    return ["train", "--data", F + "/" + name] + T[3:]


ROWS: list[Row] = [
    # ---- train: option values that cannot give a finite run ------------------------------------------
    R("train-lr-inf", T + ["--lr", "inf"], r"\binf\b", sub=True),
    R("train-lr-1e308", T + ["--lr", "1e308"], r"1e\+?308"),
    R("train-lr-nan", T + ["--lr", "nan"], r"nan"),
    R("train-lr-neg", T + ["--lr", "-1"], r"-1"),
    R("train-wd-inf", T + ["--weight-decay", "inf"], r"inf"),
    R("train-wd-nan", T + ["--weight-decay", "nan"], r"nan"),
    R("train-gamma-inf", T + ["--gamma", "inf"], r"inf"),
    R("train-gamma-overflow", T + ["--schedule", "exponential", "--gamma", "1e300",
                                   "--epochs", "3"], r"1e\+?300|gamma"),
    R("train-beta-inf", T + ["--method", "trades", "--beta", "inf"], r"inf"),
    R("train-beta-nan", T + ["--method", "trades", "--beta", "nan"], r"nan"),
    R("train-seed-2^64", T + ["--seed", BIG], BIG),
    R("train-seed-neg", T + ["--seed", "-5"], r"-5"),
    R("train-seed-float", T + ["--seed", "1.5"], r"1\.5"),
    R("train-momentum-1", T + ["--momentum", "1"], r"\b1\b"),
    R("train-momentum-nan", T + ["--momentum", "nan"], r"nan"),
    R("train-ls-nan", T + ["--label-smoothing", "nan"], r"nan"),
    R("train-clip-nan", T + ["--clip", "nan"], r"nan"),
    R("train-epochs-0", T + ["--epochs", "0"], r"\b0\b"),
    R("train-epochs-word", T + ["--epochs", "two"], r"two"),
    R("train-batch-0", T + ["--batch-size", "0"], r"\b0\b"),
    R("train-lr-step-0", T + ["--lr-step", "0"], r"\b0\b"),
    R("train-optimizer", T + ["--optimizer", "lbfgs"], r"lbfgs"),
    R("train-schedule", T + ["--schedule", "warp"], r"warp"),
    R("train-method", T + ["--method", "magic"], r"magic"),
    R("train-foreign-option", T + ["--beta", "1"], r"beta"),
    R("train-model", T[:] + ["--model", "vgg"], r"vgg"),
    R("train-norm", T + ["--norm-layer", "ln"], r"\bln\b"),
    R("train-quant-qmax-nan", T + ["--quant", "rquant8,q_max=nan"], r"nan"),
    R("train-quant-qmax-inf", T + ["--quant", "rquant8,q_max=inf"], r"inf"),
    R("train-quant-qmax-neg", T + ["--quant", "rquant8,q_max=-1"], r"-1"),
    R("train-quant-bits", T + ["--quant", "rquant9"], r"\b9\b"),
    R("train-quant-name", T + ["--quant", "float8"], r"float8"),
    R("train-quant-key", T + ["--quant", "rquant8,colour=red"], r"colour"),
    R("train-val-1", T + ["--val-fraction", "1"], r"\b1\b"),
    # ---- train: degenerate data ----------------------------------------------------------------------
    R("train-val-0.9999", T + ["--val-fraction", "0.9999"], r"0\.9999"),
    R("train-subset1-val0.5", T + ["--subset", "1", "--val-fraction", "0.5"], r"0\.5"),
    R("train-subset-0", T + ["--subset", "0"], r"\b0\b"),
    R("train-npz-empty", D("empty.npz"), r"empty\.npz"),
    R("train-npz-noarrays", D("noarrays.npz"), r"noarrays\.npz"),
    R("train-npz-one", D("one.npz"), r"one\.npz"),
    R("train-npz-0x0", D("zerohw.npz"), r"0×0|0x0|zerohw"),
    R("train-npz-nc0", D("nc0.npz"), r"\b0\b.*class|class.*\b0\b"),
    R("train-npz-ncbad", D("ncbad.npz"), r"num_classes"),
    R("train-npz-biglabels", D("biglabels.npz"), r"1000000000|999999999",
      sub=True),
    R("train-npz-neglabels", D("neglabels.npz"), r"-1"),
    R("train-npz-nan", D("nanimg.npz"), r"finite|nan"),
    R("train-npz-2d", D("shape2d.npz"), r"\(10, 64\)"),
    R("train-npz-mismatch", D("mismatch.npz"), r"\b10\b|\b7\b"),
    R("train-npz-floatlabels", D("floatlabels.npz"), r"float|integer"),
    R("train-npz-notest", D("notest.npz"), r"\b0\b"),
    R("train-npz-onlyxtest", D("onlyxtest.npz"), r"y_test"),
    R("train-npz-objects", D("objects.npz"), r"objects\.npz"),
    R("train-npz-garbage", D("garbage.npz"), r"garbage\.npz", sub=True),
    R("train-npz-missing", D("nothere.npz"), r"nothere\.npz"),
    R("train-npz-tiny-convnet", D("tinyimg.npz") + ["--model", "convnet"], r"2×2|1×2×2"),
    R("train-data-unknown", D("nosuchdata")[:2] + ["nosuchdata"] + T[3:], r"nosuchdata"),
    R("train-data-dir-missing", T + ["--data-dir", "/nonexistent/h4b"], r"/nonexistent/h4b",
      sub=True),
    R("train-data-dir-file", T + ["--data-dir", F + "/text.txt"], r"text\.txt"),
    R("train-data-dir-empty", T + ["--data-dir", ""], r"data-dir"),
    R("train-width-1e5", T[:-2] + ["--model", "convnet", "--width", "100000", "--out", "{row}/new"],
      r"100000", sub=True),
    R("train-width-0", T + ["--width", "0"], r"\b0\b"),
    # ---- train: output paths -------------------------------------------------------------------------
    R("train-out-empty", TRAIN + ["--out", ""], r"--out|''", sub=True),
    R("train-out-file", TRAIN + ["--out", F + "/text.txt"], r"text\.txt", sub=True),
    R("train-out-under-file", TRAIN + ["--out", F + "/text.txt/run"], r"text\.txt", sub=True),
    R("train-out-existing-run", TRAIN + ["--out", "{run}"], r"already holds a run", sub=True),
    # ---- train --resume ------------------------------------------------------------------------------
    R("resume-seed-lr", TRAIN + ["--out", "{run}", "--resume", "--seed", "7", "--lr", "0.3"],
      r"--seed 7.*--lr 0\.3|--lr 0\.3.*--seed 7", sub=True),
    R("resume-model", RES + ["--model", "lenet"], r"lenet"),
    R("resume-method", RES + ["--method", "trades"], r"trades"),
    R("resume-data", RES[:2] + ["digits"] + RES[3:], r"digits"),
    R("resume-subset", RES + ["--subset", "100"], r"100"),
    R("resume-quant", RES + ["--quant", "rquant4"], r"quant"),
    R("resume-complete", TRAIN + ["--out", "{run}", "--resume"], r"complete|already"),
    R("resume-nothing", T + ["--resume"], r"new"),
    R("resume-epoch-word", RES, r"'one'|\bone\b", mutate=edit_state(_state_set("epoch", "one"))),
    R("resume-epoch-99", RES, r"\b99\b", mutate=edit_state(_state_set("epoch", 99))),
    R("resume-epoch-neg", RES, r"-5", mutate=edit_state(_state_set("epoch", -5))),
    R("resume-epoch-bool", RES, r"true", mutate=edit_state(_state_set("epoch", True))),
    R("resume-history-bad", RES, r"history", mutate=edit_state(_state_set("history", "x"))),
    R("resume-no-optimizer", RES, r"optimizer", mutate=edit_state(_state_no_optimizer)),
    R("resume-optimizer-shape", RES, r"shape|\(3,\)", mutate=edit_state(_state_wrong_shape)),
    R("resume-state-garbage", RES, r"trainer_state",
      mutate=lambda r: (r / "trainer_state.safetensors").write_bytes(b"\x10" * 64), sub=True),
    R("resume-config-garbage", RES, r"config\.yaml",
      mutate=lambda r: (r / "config.yaml").write_bytes(b"\xff\xfe: [\n")),
    # ---- eval ----------------------------------------------------------------------------------------
    R("eval-missing", ["eval", "{row}/nothere"], r"nothere", sub=True),
    R("eval-file", ["eval", F + "/text.txt"], r"text\.txt"),
    R("eval-not-run", ["eval", F + "/folder"], r"folder"),
    R("eval-meta-list", ["eval", "{run}"], r"model\.json", mutate=set_meta([]), sub=True),
    R("eval-meta-null", ["eval", "{run}"], r"model\.json", mutate=set_meta(None)),
    R("eval-meta-notjson", ["eval", "{run}"], r"model\.json",
      mutate=lambda r: (r / "model.json").write_text("{not json")),
    R("eval-meta-latin1", ["eval", "{run}"], r"model\.json",
      mutate=lambda r: (r / "model.json").write_bytes(b'{"a": "\xe9"}')),
    R("eval-meta-data-str", ["eval", "{run}"], r"data", mutate=edit_meta(_setitem(["data"], "digits"))),
    R("eval-meta-no-kwargs", ["eval", "{run}"], r"kwargs", mutate=edit_meta(_delitem("kwargs"))),
    R("eval-meta-classes-str", ["eval", "{run}"], r"ten",
      mutate=edit_meta(_setitem(["kwargs", "num_classes"], "ten"))),
    R("eval-meta-arch", ["eval", "{run}"], r"vgg", mutate=edit_meta(_setitem(["architecture"], "vgg"))),
    R("eval-meta-huge-classes", ["eval", "{run}"], r"1000000000",
      mutate=edit_meta(_setitem(["kwargs", "num_classes"], 10**9)), sub=True),
    R("eval-weights-nan", ["eval", "{run}"], r"finite|nan", mutate=rewrite_weights(_nan_first)),
    R("eval-weights-int8", ["eval", "{run}"], r"int8|dtype", mutate=rewrite_weights(_int8)),
    R("eval-weights-flipped", ["eval", "{run}"], r"sha-?256|corrupt", mutate=flip_bytes, sub=True),
    R("eval-weights-missing", ["eval", "{run}"], r"model\.safetensors",
      mutate=lambda r: (r / "model.safetensors").unlink()),
    R("eval-weights-pickle", ["eval", "{run}"], r"pickle",
      mutate=lambda r: (r / "model.safetensors").write_bytes(b"\x80\x04\x95" + b"\0" * 40)),
    R("eval-results-file", ["eval", "{run}"], r"results", mutate=results_file, sub=True),
    R("eval-batch-0", ["eval", "{run}", "--batch-size", "0"], r"\b0\b"),
    R("eval-data-dir-missing", ["eval", "{run}", "--data-dir", "/nonexistent/h4b"],
      r"/nonexistent/h4b"),
    R("eval-device", ["eval", "{run}", "--device", "tpu"], r"tpu"),
    R("eval-only-config", ["eval", "{run}"], r"first epoch|model\.json", mutate=only_config),
    # ---- info ----------------------------------------------------------------------------------------
    R("info-missing", ["info", "{row}/nothere"], r"nothere", sub=True),
    R("info-file", ["info", F + "/text.txt"], r"text\.txt"),
    R("info-meta-list", ["info", "{run}"], r"model\.json", mutate=set_meta([])),
    R("info-meta-null", ["info", "{run}"], r"model\.json", mutate=set_meta(None)),
    R("info-meta-notjson", ["info", "{run}"], r"model\.json",
      mutate=lambda r: (r / "model.json").write_text("[1, 2")),
    R("info-meta-data-str", ["info", "{run}"], r"data", mutate=edit_meta(_setitem(["data"], "digits"))),
    R("info-only-config", ["info", "{run}"], r"first epoch|model\.json", mutate=only_config),
    # ---- data ----------------------------------------------------------------------------------------
    R("data-empty-npz", ["data", F + "/empty.npz"], r"empty\.npz", sub=True),
    R("data-noarrays", ["data", F + "/noarrays.npz"], r"noarrays\.npz"),
    R("data-garbage", ["data", F + "/garbage.npz"], r"garbage\.npz"),
    R("data-one", ["data", F + "/one.npz"], r"one\.npz"),
    R("data-0x0", ["data", F + "/zerohw.npz"], r"0×0|0x0|zerohw"),
    R("data-nc0", ["data", F + "/nc0.npz"], r"nc0\.npz"),
    R("data-biglabels", ["data", F + "/biglabels.npz"], r"1000000000|999999999", sub=True),
    R("data-unknown", ["data", "nosuchdata"], r"nosuchdata"),
    R("data-missing-npz", ["data", F + "/nothere.npz"], r"nothere\.npz"),
    R("data-data-dir-missing", ["data", "--data-dir", "/nonexistent/h4b", "mnist"],
      r"/nonexistent/h4b", sub=True),
    R("data-download-noname", ["data", "--download"], r"--download"),
    R("data-download-unknown", ["data", "--download", "digits"], r"digits"),
    R("data-empty-folder", ["data", F + "/folder"], r"folder"),
    # ---- attack --------------------------------------------------------------------------------------
    R("attack-missing", ["attack", "{row}/nothere"], r"nothere", sub=True),
    R("attack-suite", ["attack", "{run}", "--suite", "linf,warp"], r"warp"),
    R("attack-radii-inf", ["attack", "{run}", "--radii", "linf=inf"], r"inf"),
    R("attack-radii-nan", ["attack", "{run}", "--radii", "l2=nan"], r"nan"),
    R("attack-radii-neg", ["attack", "{run}", "--radii", "linf=-0.1"], r"-0\.1"),
    R("attack-radii-syntax", ["attack", "{run}", "--radii", "linf"], r"linf"),
    R("attack-holdout-1", ["attack", "{run}", "--holdout", "1"], r"\b1\b"),
    R("attack-tprs-0", ["attack", "{run}", "--tprs", "0"], r"\b0\b"),
    R("attack-momentum-nan", ["attack", "{run}", "--momentum", "nan"], r"nan"),
    R("attack-momentum-1", ["attack", "{run}", "--momentum", "1"], r"\b1\b"),
    R("attack-severities-9", ["attack", "{run}", "--severities", "9"], r"\b9\b"),
    R("attack-name-traversal", ["attack", "{run}", "--name", "../x"], r"\.\./x"),
    R("attack-seed-2^64", ["attack", "{run}", "--seed", BIG, "--n-test", "8", "--suite", "linf",
                           "--steps", "1", "--no-figures", "--quiet"], BIG),
    R("attack-n-test-0", ["attack", "{run}", "--n-test", "0"], r"\b0\b"),
    R("attack-objective", ["attack", "{run}", "--objectives", "hinge"], r"hinge"),
    R("attack-corruption", ["attack", "{run}", "--suite", "corrupt", "--corruptions", "smog"],
      r"smog"),
    R("attack-meta-null", ["attack", "{run}"], r"model\.json", mutate=set_meta(None)),
    R("attack-weights-nan", ["attack", "{run}"], r"finite|nan", mutate=rewrite_weights(_nan_first)),
    R("attack-results-file", ["attack", "{run}", "--suite", "linf", "--n-test", "8", "--steps", "1",
                              "--quiet"], r"results", mutate=results_file, sub=True),
    # ---- epsilons ------------------------------------------------------------------------------------
    R("epsilons-norm", ["epsilons", "--data", "synthetic", "--norms", "l3"], r"l3"),
    R("epsilons-data", ["epsilons", "--data", "nosuchdata"], r"nosuchdata"),
    R("epsilons-empty-npz", ["epsilons", "--data", F + "/empty.npz"], r"empty\.npz"),
    R("epsilons-0x0", ["epsilons", "--data", F + "/zerohw.npz"], r"0×0|0x0|zerohw"),
    R("epsilons-out-file", ["epsilons", "--data", "synthetic", "--n-test", "4", "--n-train", "16",
                            "--no-figures", "--quiet", "--norms", "linf", "--out",
                            F + "/text.txt"], r"text\.txt", sub=True),
    R("epsilons-out-empty", ["epsilons", "--data", "synthetic", "--out", ""], r"--out|''"),
    R("epsilons-run-missing", ["epsilons", "--data", "synthetic", "--run", "{row}/nothere"],
      r"nothere"),
    R("epsilons-n-test-0", ["epsilons", "--data", "synthetic", "--n-test", "0"], r"\b0\b"),
    R("epsilons-seed-2^64", ["epsilons", "--data", "synthetic", "--seed", BIG], BIG),
    R("epsilons-data-dir", ["epsilons", "--data", "synthetic", "--data-dir", "/nonexistent/h4b"],
      r"/nonexistent/h4b"),
    # ---- biterrors -----------------------------------------------------------------------------------
    R("biterrors-missing", ["biterrors", "{row}/nothere"], r"nothere", sub=True),
    R("biterrors-rate-2", ["biterrors", "{run}", "--rates", "2"], r"\b2\b"),
    R("biterrors-rate-nan", ["biterrors", "{run}", "--rates", "nan"], r"nan"),
    R("biterrors-rate-pct", ["biterrors", "{run}", "--rates", "200%"], r"200%"),
    R("biterrors-qmax-nan", ["biterrors", "{run}", "--quant", "rquant8,q_max=nan"], r"nan"),
    R("biterrors-qmax-inf", ["biterrors", "{run}", "--quant", "normal8,q_max=inf"], r"inf"),
    R("biterrors-qmax-neg", ["biterrors", "{run}", "--quant", "bits=8,q_max=-1"], r"-1"),
    R("biterrors-bits", ["biterrors", "{run}", "--quant", "bits=1"], r"\b1\b"),
    R("biterrors-mode", ["biterrors", "{run}", "--quant", "rquant8,mode=log"], r"log"),
    R("biterrors-rounding", ["biterrors", "{run}", "--quant", "rquant8,rounding=up"], r"\bup\b"),
    R("biterrors-patterns-0", ["biterrors", "{run}", "--patterns", "0"], r"\b0\b"),
    R("biterrors-seed0-2^64", ["biterrors", "{run}", "--seed", BIG, "--patterns", "1"], BIG),
    R("biterrors-chip-missing", ["biterrors", "{run}", "--chip", "{row}/chip.json"], r"chip\.json"),
    R("biterrors-chip-bad", ["biterrors", "{run}", "--chip", F + "/chip_bad.json"], r"chip_bad"),
    R("biterrors-chip-garbage", ["biterrors", "{run}", "--chip", F + "/chip_garbage.json"],
      r"chip_garbage"),
    R("biterrors-export-two", ["biterrors", "{run}", "{run}", "--export", "{row}/q.npz"], r"export"),
    R("biterrors-export-under-file", ["biterrors", "{run}", "--patterns", "1", "--rates", "0.01",
                                      "--quiet", "--export", F + "/text.txt/x.npz"], r"text\.txt",
      sub=True),
    R("biterrors-plot-dir", ["biterrors", "{run}", "--patterns", "1", "--rates", "0.01", "--quiet",
                             "--plot", F + "/folder"], r"folder", sub=True),
    R("biterrors-meta-null", ["biterrors", "{run}"], r"model\.json", mutate=set_meta(None)),
    R("biterrors-offsets-neg", ["biterrors", "{run}", "--offsets", "-1"], r"-1"),
    # ---- energy --------------------------------------------------------------------------------------
    R("energy-missing", ["energy", "{row}/nothere", "--curve", F + "/curve_bad.csv"],
      r"nothere|curve_bad", sub=True),
    R("energy-curve-missing", ["energy", "{run}", "--curve", "{row}/curve.csv"], r"curve\.csv"),
    R("energy-curve-bad", ["energy", "{run}", "--curve", F + "/curve_bad.csv"], r"curve_bad|abc"),
    R("energy-curve-nan", ["energy", "{run}", "--curve", F + "/curve_nan.csv"], r"nan"),
    R("energy-curve-latin1", ["energy", "{run}", "--curve", F + "/latin1.csv"], r"latin1\.csv"),
    R("energy-curve-dir", ["energy", "{run}", "--curve", F + "/folder"], r"folder"),
    R("energy-tolerance-nan", ["energy", "{run}", "--curve", F + "/curve_bad.csv",
                               "--tolerance", "nan"], r"nan"),
    R("energy-qmax-nan", ["energy", "{run}", "--curve", F + "/curve_ok.csv", "--quant",
                          "rquant8,q_max=nan"], r"nan"),
    R("energy-patterns-0", ["energy", "{run}", "--curve", F + "/curve_bad.csv", "--patterns", "0"],
      r"\b0\b"),
    R("energy-meta-list", ["energy", "{run}", "--curve", F + "/curve_bad.csv"],
      r"model\.json|curve_bad", mutate=set_meta([])),
    # ---- bitattack -----------------------------------------------------------------------------------
    R("bitattack-missing", ["bitattack", "{row}/nothere"], r"nothere", sub=True),
    R("bitattack-budget-neg", ["bitattack", "{run}", "--budgets", "-1"], r"-1"),
    R("bitattack-methods", ["bitattack", "{run}", "--methods", "attack,smash"], r"smash"),
    R("bitattack-target", ["bitattack", "{run}", "--target", "99"], r"\b99\b"),
    R("bitattack-quant-qmax-nan", ["bitattack", "{run}", "--quant", "normal8,q_max=nan"], r"nan"),
    R("bitattack-step-inf", ["bitattack", "{run}", "--step-size", "inf", "--budgets", "1",
                             "--n-attack", "8", "--steps", "1", "--quiet"], r"inf"),
    R("bitattack-step-nan", ["bitattack", "{run}", "--step-size", "nan"], r"nan"),
    R("bitattack-params", ["bitattack", "{run}", "--params", "nosuch.weight"], r"nosuch\.weight"),
    R("bitattack-seed-2^64", ["bitattack", "{run}", "--seed", BIG, "--budgets", "1", "--n-attack",
                              "8", "--steps", "1", "--methods", "random", "--quiet"], BIG),
    R("bitattack-meta-null", ["bitattack", "{run}"], r"model\.json", mutate=set_meta(None)),
    # ---- flatness ------------------------------------------------------------------------------------
    R("flatness-missing", ["flatness", "{row}/nothere"], r"nothere", sub=True),
    R("flatness-xi-1e308", ["flatness", "{run}", "--xi", "1e308", "--n-test", "8", "--samples", "1",
                            "--steps", "1", "--no-train", "--quiet"], r"1e\+?308", sub=True),
    R("flatness-xi-inf", ["flatness", "{run}", "--xi", "inf"], r"inf"),
    R("flatness-xi-nan", ["flatness", "{run}", "--xi", "nan"], r"nan"),
    R("flatness-eps-inf", ["flatness", "{run}", "--eps", "inf"], r"inf"),
    R("flatness-extent-inf", ["flatness", "{run}", "--landscape", "1d", "--extent", "inf"], r"inf"),
    R("flatness-step-inf", ["flatness", "{run}", "--kind", "worst", "--ascent-step-size", "inf"], r"inf"),
    R("flatness-kind", ["flatness", "{run}", "--kind", "typical"], r"typical"),
    R("flatness-params", ["flatness", "{run}", "--params", "nosuch.weight"], r"nosuch\.weight"),
    R("flatness-seed-2^64", ["flatness", "{run}", "--seed", BIG], BIG),
    R("flatness-meta-null", ["flatness", "{run}"], r"model\.json", mutate=set_meta(None)),
    # ---- report --------------------------------------------------------------------------------------
    R("report-missing", ["report", "{row}/nothere"], r"nothere", sub=True),
    R("report-file", ["report", F + "/text.txt"], r"text\.txt"),
    R("report-out-dir", ["report", "{run}", "--out", F + "/folder"], r"folder", sub=True),
    R("report-out-under-file", ["report", "{run}", "--out", F + "/text.txt/r.html"], r"text\.txt"),
    R("report-meta-list", ["report", "{run}"], r"model\.json", mutate=set_meta([])),
    # ---- demo ----------------------------------------------------------------------------------------
    R("demo-config-missing", ["demo", "--config", "{row}/p.yaml", "--out", "{row}/out"], r"p\.yaml"),
    R("demo-config-latin1", ["demo", "--config", F + "/latin1.yaml", "--out", "{row}/out"],
      r"latin1\.yaml", sub=True),
    R("demo-config-bad-yaml", ["demo", "--config", F + "/bad.yaml", "--out", "{row}/out"],
      r"bad\.yaml"),
    R("demo-config-list", ["demo", "--config", F + "/list.yaml", "--out", "{row}/out"], r"list\.yaml"),
    R("demo-config-no-runs", ["demo", "--config", F + "/norun.yaml", "--out", "{row}/out"], r"runs"),
    R("demo-config-unknown-key", ["demo", "--config", F + "/unknownkey.yaml", "--out", "{row}/out"],
      r"bogus"),
    R("demo-scale", ["demo", "--scale", "huge"], r"huge"),
    R("demo-out-file", ["demo", "--config", F + "/badtrain.yaml", "--out", F + "/text.txt"],
      r"text\.txt|inf", sub=True),
    R("demo-out-empty", ["demo", "--out", ""], r"--out|''", sub=True),
    R("demo-traversal", ["demo", "--config", "{row}/preset.yaml", "--out", "{row}/out", "--fresh",
                         "--quiet", "--no-report"], r"\.\./victim",
      setup=lambda row: (_victim(row), traversal_preset(row, "../victim")), sub=True),
    R("demo-absolute-run", ["demo", "--config", "{row}/preset.yaml", "--out", "{row}/out", "--fresh",
                            "--quiet", "--no-report"], r"victim",
      setup=lambda row: (_victim(row), traversal_preset(row, str(row / "victim")))),
    R("demo-train-lr-inf", ["demo", "--config", F + "/badtrain.yaml", "--out", "{row}/out", "--quiet",
                            "--no-report"], r"inf"),
    # ---- reproduce -----------------------------------------------------------------------------------
    R("reproduce-unknown", ["reproduce", "nosuchpaper"], r"nosuchpaper"),
    R("reproduce-latin1", ["reproduce", F + "/latin1.yaml", "--out", "{row}/out"], r"latin1\.yaml",
      sub=True),
    R("reproduce-bad-yaml", ["reproduce", F + "/bad.yaml", "--out", "{row}/out"], r"bad\.yaml"),
    R("reproduce-missing-file", ["reproduce", "{row}/p.yaml", "--out", "{row}/out"], r"p\.yaml"),
    R("reproduce-scale", ["reproduce", "bit-errors", "--scale", "tiny"], r"tiny"),
    R("reproduce-badscale", ["reproduce", F + "/badscale.yaml", "--scale", "full"], r"full"),
    R("reproduce-out-file", ["reproduce", F + "/badtrain.yaml", "--out", F + "/text.txt"],
      r"text\.txt|inf", sub=True),
    R("reproduce-out-empty", ["reproduce", "bit-errors", "--out", ""], r"--out|''", sub=True),
    R("reproduce-traversal", ["reproduce", "{row}/preset.yaml", "--out", "{row}/out"],
      r"\.\./victim", setup=lambda row: (_victim(row), traversal_preset(row, "../victim")),
      sub=True),
    R("reproduce-data-dir-missing", ["reproduce", F + "/badtrain.yaml", "--data-dir",
                                     "/nonexistent/h4b", "--out", "{row}/out"],
      r"/nonexistent/h4b|inf"),
    # ---- import and table (newer commands) -----------------------------------------------------------
    R("import-factory-missing", ["import", "--factory", "{row}/f.py:make", "--weights",
                                 F + "/text.txt", "--data", "synthetic", "--out", "{row}/imp"],
      r"f\.py|text\.txt", sub=True),
    R("import-weights-missing", ["import", "--factory", F + "/text.txt:make", "--weights",
                                 "{row}/w.safetensors", "--data", "synthetic", "--out", "{row}/imp"],
      r"w\.safetensors|text\.txt"),
    R("import-kwargs-json", ["import", "--factory", "{row}/f.py:make", "--kwargs", "{bad",
                             "--weights", "{row}/w.safetensors", "--data", "synthetic", "--out",
                             "{row}/imp"], r"\{bad|kwargs|f\.py"),
    R("import-mean-nan", ["import", "--factory", "{row}/f.py:make", "--weights", "{row}/w.pt",
                          "--data", "synthetic", "--out", "{row}/imp", "--mean", "nan"], r"nan"),
    R("import-out-existing-run", ["import", "--factory", "{row}/f.py:make", "--weights", "{row}/w.pt",
                                  "--data", "synthetic", "--out", "{run}"],
      r"f\.py|already|w\.pt"),
    R("table-missing", ["table", "{row}/nothere"], r"nothere", sub=True),
    R("table-file", ["table", F + "/text.txt"], r"text\.txt"),
    R("table-no-runs", ["table", F + "/folder"], r"folder"),
    R("table-format", ["table", "{run}", "--format", "xml"], r"xml"),
]


# ---------------------------------------------------------------------------------------------
# running a row
# ---------------------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, Any]:
    """Every file (content hash, mode) and folder under `root`."""
    out: dict[str, Any] = {}
    for dirpath, _dirs, filenames in os.walk(root):
        d = Path(dirpath)
        out[str(d.relative_to(root)) + "/"] = "dir"
        for f in filenames:
            p = d / f
            try:
                st = p.lstat()
                digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "special"
            except OSError:
                digest, st = "unreadable", None
            out[str(p.relative_to(root))] = (digest, st.st_mode if st else None)
    return out


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return sorted([f"+{k}" for k in after.keys() - before.keys()]
                  + [f"-{k}" for k in before.keys() - after.keys()]
                  + [f"~{k}" for k in before.keys() & after.keys() if before[k] != after[k]])


@dataclass
class Outcome:
    code: Any
    stdout: str
    stderr: str
    changes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    def verdict(self, expect: str) -> str:
        """clean | traceback | accepted | files | other:<why>."""
        if "Traceback" in self.stderr or self.code == "exception":
            return "traceback"
        if self.code == 0:
            return "accepted"
        if self.changes:
            return "files"
        if self.code != 2:
            return f"other:exit {self.code}"
        if len(self.lines) != 1:
            return f"other:{len(self.lines)} stderr lines"
        if not re.search(expect, self.lines[0], re.IGNORECASE):
            return "other:message does not name the value"
        return "clean"


class World:
    """The shared fixture: a tiny trained run, the bad files, a home folder; one folder per row."""

    def __init__(self, base: Path):
        self.base = base
        self.files = base / "files"
        self.home = base / "home"
        self.run = base / "run"
        self.rows = base / "rows"
        make_files(self.files)
        self.home.mkdir(exist_ok=True)
        self.rows.mkdir(exist_ok=True)
        out = in_process(TRAIN + ["--out", str(self.run)], base)
        assert out.code == 0 and (self.run / "model.json").is_file(), out.stderr
        self.shared_before = {"files": snapshot(self.files), "run": snapshot(self.run),
                              "home": snapshot(self.home)}

    def prepare(self, row: Row) -> tuple[Path, list[str]]:
        d = self.rows / row.id
        d.mkdir()
        if any("{run}" in a for a in row.args):
            shutil.copytree(self.run, d / "run")
            if row.mutate is not None:
                row.mutate(d / "run")
        if row.setup is not None:
            row.setup(d)
        args = [a.replace("{run}", str(d / "run")).replace("{row}", str(d))
                .replace("{files}", str(self.files)) for a in row.args]
        return d, args

    def shared_changes(self) -> list[str]:
        now = {"files": snapshot(self.files), "run": snapshot(self.run), "home": snapshot(self.home)}
        return [f"{k}:{c}" for k in now for c in diff(self.shared_before[k], now[k])]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ROBUSTLAB_DATA", "ROBUSTLAB_CONFIGS")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    src = str(Path(__file__).resolve().parents[1] / "src")
    if not env.get("PYTHONPATH"):
        env["PYTHONPATH"] = src
    return env


def in_subprocess(args: list[str], cwd: Path, home: Path) -> Outcome:
    t0 = time.perf_counter()
    try:
        p = subprocess.run([PY, "-m", "robustlab", *args], cwd=cwd, env=_env(home),
                           capture_output=True, text=True, timeout=SUB_TIMEOUT)
        code, so, se = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        code, so, se = "timeout", str(e.stdout or ""), str(e.stderr or "") + "\n(timed out)"
    return Outcome(code, so, se, seconds=time.perf_counter() - t0)


def in_process(args: list[str], cwd: Path) -> Outcome:
    from robustlab.cli import main

    t0 = time.perf_counter()
    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code: Any = main(args)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 - any escape is a traceback for the user
                code = "exception"
                err.write(traceback.format_exc())
    finally:
        os.chdir(old)
        with contextlib.suppress(Exception):
            from robustlab import runs

            if hasattr(runs, "release_all"):
                runs.release_all()
    return Outcome(code, out.getvalue(), err.getvalue(), seconds=time.perf_counter() - t0)


def run_table(base: Path, rows: list[Row], *, all_sub: bool = False) -> tuple[World, dict[str, Outcome]]:
    """Run every row (subprocess rows in parallel, the rest in this process meanwhile)."""
    world = World(base)
    prepared = {r.id: world.prepare(r) for r in rows}
    before = {r.id: snapshot(prepared[r.id][0]) for r in rows}
    results: dict[str, Outcome] = {}
    subs = [r for r in rows if r.sub or all_sub]
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {r.id: pool.submit(in_subprocess, prepared[r.id][1], prepared[r.id][0], world.home)
                   for r in subs}
        for r in rows:
            if not (r.sub or all_sub):
                results[r.id] = in_process(prepared[r.id][1], prepared[r.id][0])
        for rid, fut in futures.items():
            results[rid] = fut.result()
    for r in rows:
        results[r.id].changes = diff(before[r.id], snapshot(prepared[r.id][0]))
    return world, results


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def table(tmp_path_factory):
    t0 = time.perf_counter()
    world, results = run_table(tmp_path_factory.mktemp("bad_inputs"), ROWS)
    return {"world": world, "results": results, "seconds": time.perf_counter() - t0}


def test_table_size_and_coverage():
    assert len(ROWS) >= 150
    assert len({r.id for r in ROWS}) == len(ROWS)
    commands = {r.command for r in ROWS}
    assert {"train", "eval", "info", "data", "attack", "epsilons", "biterrors", "energy",
            "bitattack", "flatness", "report", "demo", "reproduce", "import", "table"} <= commands
    assert sum(r.sub for r in ROWS) >= 40


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=[pytest.mark.xfail(
    strict=True, reason=r.xfail)] if r.xfail else []) for r in ROWS])
def test_bad_input(table, row):
    o = table["results"][row.id]
    v = o.verdict(row.expect)
    assert v == "clean", (f"{row.id} ({'subprocess' if row.sub else 'in-process'}): {v}; exit "
                          f"{o.code}; stderr: {o.stderr.strip()[-800:]!r}; changes {o.changes}")


def test_shared_fixture_untouched(table):
    assert table["world"].shared_changes() == []


# ---------------------------------------------------------------------------------------------
# training that cannot stay finite; resume
# ---------------------------------------------------------------------------------------------

def _finite_weights(run: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t).all()) for t in load_file(str(run / "model.safetensors"))
               .values() if t.is_floating_point())


def test_lr_inf_exits_2_and_writes_no_weights(tmp_path):
    o = in_process(TRAIN + ["--lr", "inf", "--out", str(tmp_path / "r")], tmp_path)
    assert o.code == 2 and len(o.lines) == 1 and "inf" in o.lines[0]
    assert not (tmp_path / "r").exists()


def test_divergence_mid_training_keeps_the_last_good_checkpoint(tmp_path):
    """A step schedule that multiplies a sane lr by 1e20 after epoch 1: epoch 2 diverges."""
    run = tmp_path / "r"
    o = in_process(TRAIN[:-5] + ["--epochs", "2", "--schedule", "step", "--lr-step", "1",
                                 "--gamma", "1e20", "--quiet", "--device", "cpu", "--out",
                                 str(run)], tmp_path)
    assert o.code == 2 and len(o.lines) == 1, o.stderr
    assert re.search(r"diverged.*epoch 2, step \d+ of \d+.*epoch 1", o.lines[0]), o.lines[0]
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1]
    assert "NaN" not in (run / "metrics.jsonl").read_text()
    assert _finite_weights(run)
    from robustlab import checkpoint

    assert checkpoint.read_state_info(run)["epoch"] == 1


def test_divergence_in_the_first_epoch_leaves_nothing(tmp_path):
    o = in_process(TRAIN + ["--lr", "1e30", "--out", str(tmp_path / "r")], tmp_path)
    assert o.code == 2 and "diverged" in o.lines[-1] and "epoch 1, step" in o.lines[-1]
    assert not (tmp_path / "r").exists()


def test_resume_of_a_run_interrupted_in_epoch_1(tmp_path):
    """Ctrl-C in epoch 1 leaves only config.yaml: --resume trains it from the start."""
    run = tmp_path / "r"
    assert in_process(TRAIN + ["--out", str(run)], tmp_path).code == 0
    only_config(run)
    o = in_process(TRAIN + ["--out", str(run), "--resume"], tmp_path)
    assert o.code == 0, o.stderr
    assert (run / "model.json").is_file() and _finite_weights(run)
    o = in_process(TRAIN + ["--out", str(run), "--resume", "--lr", "0.2"], tmp_path)  # still checked
    assert o.code == 2 and "--lr 0.2" in o.lines[0]


def test_resume_extends_epochs_and_keeps_the_recorded_options(tmp_path):
    run = tmp_path / "r"
    assert in_process(TRAIN + ["--out", str(run), "--seed", "3"], tmp_path).code == 0
    before = (run / "config.yaml").read_text()
    o = in_process(TRAIN + ["--out", str(run), "--resume", "--seed", "3", "--epochs", "2",
                            "--device", "cpu"], tmp_path)
    assert o.code == 0, o.stderr
    after = (run / "config.yaml").read_text()
    assert before.replace("epochs: 1", "epochs: 2") == after
    meta = json.loads((run / "model.json").read_text())
    assert meta["train_config"]["epochs"] == 2 and meta["seed"] == 3
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


# ---------------------------------------------------------------------------------------------
# tally: python tests/test_bad_inputs.py [--all-sub]
# ---------------------------------------------------------------------------------------------

def tally(results: dict[str, Outcome], rows: list[Row]) -> str:
    cols = ["tried", "clean", "traceback", "accepted", "files", "other"]
    per: dict[str, dict[str, int]] = {}
    for r in rows:
        v = results[r.id].verdict(r.expect)
        c = per.setdefault(r.command, dict.fromkeys(cols, 0))
        c["tried"] += 1
        c[v.split(":")[0]] += 1
    total = {k: sum(c[k] for c in per.values()) for k in cols}
    lines = [f"{'command':<10}" + "".join(f"{k:>10}" for k in cols)]
    for cmd, c in per.items():
        lines.append(f"{cmd:<10}" + "".join(f"{c[k]:>10}" for k in cols))
    lines.append(f"{'total':<10}" + "".join(f"{total[k]:>10}" for k in cols))
    return "\n".join(lines)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        world, results = run_table(Path(tmp), ROWS, all_sub="--all-sub" in sys.argv)
        print(tally(results, ROWS))
        print(f"{len(ROWS)} rows in {time.perf_counter() - t0:.1f} s; shared fixture changes: "
              f"{world.shared_changes()}")
        if "-v" in sys.argv:
            slow = sorted(ROWS, key=lambda r: -results[r.id].seconds)[:12]
            print("slowest: " + ", ".join(f"{r.id}{' (sub)' if r.sub else ''} "
                                          f"{results[r.id].seconds:.1f}s" for r in slow))
            for r in ROWS:
                o = results[r.id]
                v = o.verdict(r.expect)
                if v != "clean":
                    print(f"{r.id:<32} {v:<28} exit {o.code} {o.lines[-1][:150] if o.lines else ''!r}"
                          f" {o.changes[:3]}")
