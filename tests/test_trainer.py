import math

import pytest
import torch

from robustlab import checkpoint, data, models
from robustlab.errors import UserError
from robustlab.train import Method, TrainConfig, fit


def _model(ds, seed=0, **kw):
    return models.create("convnet", dataset=ds, width=4, hidden=16, seed=seed, **kw)


def test_resumed_run_ends_with_the_same_weights(tmp_path, tiny):
    train, _ = tiny
    fit(_model(train), train, epochs=3, batch_size=32, out=tmp_path / "a", progress=False)

    class Stop(Exception):
        pass

    def interrupt(ctx):
        if ctx.epoch == 1:
            raise Stop
        return {}

    with pytest.raises(Stop):
        fit(_model(train), train, epochs=3, batch_size=32, out=tmp_path / "b", progress=False,
            epoch_hooks=[interrupt])
    # the interrupted run left the resume point of epoch 1 (and only its history) on disk
    assert checkpoint.has_state(tmp_path / "b")
    info = checkpoint.read_state_info(tmp_path / "b")
    assert info["epoch"] == 1 and [h["epoch"] for h in info["history"]] == [1]
    hist = fit(_model(train, seed=99), train, epochs=3, batch_size=32, out=tmp_path / "b",
               resume=True, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    a, _ = checkpoint.load(tmp_path / "a")
    b, _ = checkpoint.load(tmp_path / "b")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_training_on_digits_reaches_low_error():
    train, test = data.digits()
    m = models.create("mlp", dataset=train, hidden=(128,), seed=0)
    fit(m, train, epochs=8, lr=0.1, batch_size=64, progress=False)
    m.eval()
    with torch.no_grad():
        err = (m(test.x).argmax(1) != test.y).float().mean().item()
    assert err <= 0.06, err


def test_weight_decay_is_applied():
    # One SGD step with zero gradient: w ← w − lr·wd·w exactly.
    class NoGrad(Method):
        def backward(self, ctx, x, y):
            logits = ctx.forward(x)
            (0 * logits.sum()).backward()
            return torch.zeros(()), logits.detach()

    train, _ = data.synthetic(8, 8)
    m = models.create("mlp", dataset=train, hidden=(4,), seed=0)
    w0 = {k: v.clone() for k, v in m.named_parameters()}
    fit(m, train, method=NoGrad(), epochs=1, batch_size=8, lr=0.1, momentum=0.0, weight_decay=0.01,
        schedule="constant", progress=False)
    for k, v in m.named_parameters():
        assert torch.allclose(v, w0[k] * (1 - 0.1 * 0.01), atol=1e-7), k


def test_clipping_bounds_every_parameter(tiny):
    train, _ = tiny
    m = _model(train)
    fit(m, train, epochs=1, batch_size=32, lr=0.5, clip=0.02, progress=False)
    assert max(p.abs().max().item() for p in m.parameters()) <= 0.02 + 1e-9


@pytest.mark.parametrize("schedule,t,expected", [
    ("constant", 3.0, 0.1), ("cosine", 5.0, 0.05), ("step", 4.0, 0.1 * 0.1 ** 2),
    ("exponential", 2.0, 0.1 * 0.1 ** 2), ("multistep", 7.6, 0.1 * 0.1 ** 2),
    ("multistep", 4.9, 0.1)])
def test_schedules(schedule, t, expected):
    c = TrainConfig(epochs=10, lr=0.1, schedule=schedule, step_size=2, gamma=0.1)
    assert math.isclose(c.lr_at(t), expected, rel_tol=1e-9)


@pytest.mark.parametrize("field,value", [("epochs", 0), ("lr", -1.0), ("batch_size", 0),
                                         ("label_smoothing", 1.0), ("clip", 0.0),
                                         ("optimizer", "rmsprop"), ("schedule", "linear")])
def test_bad_config_is_a_user_error(field, value):
    with pytest.raises(UserError, match=field.replace("_", "-") if field not in
                       ("optimizer", "schedule") else f"unknown {field}"):
        TrainConfig(**{field: value}).validate()


def test_adam_and_label_smoothing_and_speed_modes_run(tiny):
    train, test = tiny
    m = _model(train)
    h = fit(m, train, val=test, epochs=2, optimizer="adam", lr=0.01, label_smoothing=0.1,
            channels_last=True, bf16=True, progress=False)
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert {"val_loss", "val_err", "train_err", "lr", "time_s"} <= set(h[-1])


def test_train_modules_import_only_downward_and_in_no_cycle():
    """methods.py (the Method base and registry) imports no other module of robustlab.train; the
    method modules never import the trainer; nothing in train/ imports a layer above it."""
    import ast
    from pathlib import Path

    import robustlab.train as pkg

    root = Path(pkg.__file__).parent
    above = ("robustlab.commands", "robustlab.tasks", "robustlab.evaluate", "robustlab.report",
             "robustlab.experiments", "robustlab.cli")
    deps = {}
    for f in sorted(root.glob("*.py")):
        mods = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                mods.add(node.module)
                mods |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                mods |= {a.name for a in node.names}
        assert not [m for m in mods if m.startswith(above)], f.name
        deps[f.stem] = {m.split(".")[2] for m in mods
                        if m.startswith("robustlab.train.") and (root / f"{m.split('.')[2]}.py").exists()}
    assert deps["methods"] == set()
    assert deps["trainer"] == {"methods"}
    for name in ("adversarial_methods", "biterror_methods", "weight_methods"):
        assert deps[name] == {"methods"}, (name, deps[name])


def test_public_helpers_optimizer_and_config_dict(tiny):
    from robustlab.train.trainer import make_optimizer

    train, _ = tiny
    m = _model(train)
    opt = make_optimizer(m, TrainConfig(optimizer="adam", lr=0.01, weight_decay=0.0))
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 0.01
    opt = make_optimizer(m, TrainConfig(momentum=0.5, nesterov=True))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["nesterov"]
    d = TrainConfig(milestones=(0.3,)).to_dict()
    assert d["milestones"] == [0.3] and d["lr"] == TrainConfig().lr
    fit(m, train, epochs=1, batch_size=64, out=None, progress=False, log=False)
