import json
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


def test_model_json_records_hashes_and_dtypes_of_every_weight_file(tmp_path):
    m = _saved(tmp_path)
    meta = checkpoint.read_meta(tmp_path)
    rec = meta["weights"]["model.safetensors"]
    assert rec["sha256"] == checkpoint.file_sha256(tmp_path / "model.safetensors")
    assert rec["dtypes"] == {k: str(v.dtype).removeprefix("torch.") for k, v in m.state_dict().items()}
    assert rec["dtypes"]["body.0.1.norm.num_batches_tracked"] == "int64"  # buffers, own dtype
    info = checkpoint.ModelInfo.from_json(meta)
    assert info.architecture == "lenet" and info.kwargs["num_classes"] == 10


@pytest.mark.parametrize("obj,message", [
    ([], "must hold a JSON object, not list"),
    ({"architecture": "lenet"}, "'kwargs' is missing"),
    ({"architecture": "lenet", "kwargs": {"in_shape": [1, 28], "num_classes": 10}},
     "'kwargs.in_shape' must be [C, H, W]"),
    ({"architecture": "mlp", "kwargs": {"in_shape": [1, 8, 8], "num_classes": 4}, "data": "digits"},
     "'data' must be an object"),
    ({"architecture": "mlp", "kwargs": {"in_shape": [1, 8, 8], "num_classes": 4},
      "data": {"name": "x", "subset": -1}}, "'data.subset' must be an integer ≥ 1"),
    ({"architecture": "custom", "kwargs": {}, "factory": {"path": "f.py"}}, "'factory.function'"),
    ({"architecture": "custom", "kwargs": {}, "normalization": {"mean": [0.5], "std": "x"}},
     "'normalization.std' must be a list of numbers"),
])
def test_model_info_names_the_bad_field(obj, message):
    with pytest.raises(UserError) as e:
        checkpoint.ModelInfo.from_json(obj, "run/model.json")
    assert message in str(e.value) and "run/model.json" in str(e.value)
    assert "\n" not in str(e.value)


def test_corrupt_trainer_state_is_one_line(tmp_path):
    from safetensors.torch import save_file

    m = models.create("mlp", in_shape=(1, 4, 4), num_classes=2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    checkpoint.save_state(tmp_path, 1, m, opt, [{"epoch": 1}], {})
    assert checkpoint.load_state(tmp_path, m, opt, torch.device("cpu"))[0] == 1
    tensors = {f"model.{k}": v for k, v in m.state_dict().items()}
    for state, message in [({"epoch": "one", "history": [], "optimizer": {}}, "epoch must be"),
                           ({"epoch": 1, "history": []}, "optimizer state is missing"),
                           ({"epoch": -5, "history": []}, "epoch must be an integer ≥ 0")]:
        save_file(tensors, tmp_path / checkpoint.STATE, metadata={"state": json.dumps(state)})
        with pytest.raises(UserError, match=message):
            checkpoint.load_state(tmp_path, m, opt, torch.device("cpu"))
    # momentum buffers of the wrong shape
    good = {"epoch": 1, "history": [], "method_state": {},
            "optimizer": {"param_groups": opt.state_dict()["param_groups"], "scalars": {}}}
    bad = dict(tensors, **{"optim.0.momentum_buffer": torch.zeros(3)})
    save_file(bad, tmp_path / checkpoint.STATE, metadata={"state": json.dumps(good)})
    with pytest.raises(UserError, match="optimizer state does not match"):
        checkpoint.load_state(tmp_path, m, opt, torch.device("cpu"))
