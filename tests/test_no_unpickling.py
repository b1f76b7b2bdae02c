"""Nothing unpickles user files (CONTRIBUTING, spec: safetensors + JSON only): every loader refuses
a pickle or torch.save file with a one-line UserError and never runs the code inside it."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustlab import checkpoint
from robustlab.errors import UserError
from robustlab.quant import Quantized


class _Trap:
    """Unpickling this creates the file `marker`: proof that a loader ran the pickle's code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickles(marker: Path) -> dict[str, bytes]:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), "trap": _Trap(marker)}, buf)
    return {"pickle": pickle.dumps({"w": _Trap(marker)}, protocol=4), "torch.save": buf.getvalue()}


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_weight_and_state_readers_refuse_pickles(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "code-ran"
    blob = _pickles(marker)[kind]
    f = tmp_path / "w.safetensors"
    f.write_bytes(blob)
    with pytest.raises(UserError, match="pickle") as e:
        checkpoint.read_weights(f)
    assert "\n" not in str(e.value)
    # a resume point that is a pickle
    run = tmp_path / "run"
    run.mkdir()
    (run / checkpoint.STATE).write_bytes(blob)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match="pickle"):
        checkpoint.load_state(run, model, opt, torch.device("cpu"))
    with pytest.raises(UserError, match="pickle"):
        checkpoint.read_state_info(run)
    assert not marker.exists()


def test_quantized_export_reader_refuses_pickled_arrays(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    f = tmp_path / "q.npz"
    np.savez(f, meta=np.array([_Trap(marker)], dtype=object))
    with pytest.raises(UserError):
        Quantized.load_npz(f)
    assert not marker.exists()
