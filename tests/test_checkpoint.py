import pickle

import pytest
import torch

from robustlab import checkpoint, models
from robustlab.errors import UserError


def _saved(tmp_path):
    m = models.create("lenet", in_shape=(1, 28, 28), num_classes=10, norm="bn", seed=1)
    checkpoint.save(tmp_path, m, {"data": {"name": "x"}, "seed": 1})
    return m


def test_round_trip_rebuilds_model_without_knowing_its_class(tmp_path):
    m = _saved(tmp_path)
    m2, meta = checkpoint.load(tmp_path)
    assert meta["architecture"] == "lenet" and meta["kwargs"]["norm"] == "bn"
    assert {"torch", "robustlab"} <= set(meta["versions"])
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(m.eval()(x), m2(x))


def test_pickle_files_are_refused(tmp_path):
    _saved(tmp_path)
    torch.save({"a": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(UserError, match="pickle"):
        checkpoint.load(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UserError, match="pickle"):
        checkpoint.load(tmp_path)


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    _saved(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage that is not safetensors")
    with pytest.raises(UserError, match="corrupt"):
        checkpoint.load(tmp_path)
    other = models.create("lenet", in_shape=(1, 28, 28), num_classes=5)
    checkpoint.save_weights(tmp_path / "model.safetensors", other)
    with pytest.raises(UserError, match="does not match"):
        checkpoint.load(tmp_path)


def test_missing_run_and_missing_meta(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load(tmp_path / "nope")
    with pytest.raises(UserError, match="model.json is missing"):
        checkpoint.load(tmp_path)


def test_custom_model_needs_an_instance(tmp_path):
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    checkpoint.save(tmp_path, m)
    with pytest.raises(UserError, match="custom model"):
        checkpoint.load(tmp_path)
    fresh = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    loaded, _ = checkpoint.load(tmp_path, model=fresh)
    assert torch.equal(loaded[1].weight, m[1].weight)
