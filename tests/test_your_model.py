"""Your model, your data (issue 12): normalization, bounds, norm layers under clipping, any data
source, eval mode, discoverability, and quantization-aware models measured like their runs."""

from __future__ import annotations

import math

import pytest
import torch
from fitting import fit_full_batch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustlab as rl
from robustlab import sources
from robustlab.errors import UserError
from robustlab.quant import RQUANT4, RQUANT8

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class OnTheFly(torch.utils.data.Dataset):
    """Examples computed in __getitem__ (no `.x` tensor anywhere), counting every access."""

    def __init__(self, n: int, shape=(1, 4, 4), classes: int = 3):
        self.n, self.shape, self.k, self.count = n, shape, classes, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.count += 1
        y = int(i) % self.k
        g = torch.Generator().manual_seed(1000 + int(i))
        x = (0.6 * torch.rand(*self.shape, generator=g) + 0.2 * (y - 1)).clamp(0, 1)
        return x, y

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(self[i] for i in range(self.n)))
        self.count = 0
        return torch.stack(xs), torch.tensor(ys)


def _linear(seed: int = 0, d: int = 16, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k))


def _trained_linear(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    m = _linear()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    fit_full_batch(m, x, y, opt, 100)
    return m


# --- 1. normalization inside the model, bounds ------------------------------------------------

def test_normalized_equals_model_on_standardized_inputs():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    wrapped = rl.models.Normalized(net, MEAN, STD)
    x = torch.rand(6, 3, 4, 4)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(wrapped(x), net((x - mean) / std), atol=1e-6)
    assert [n for n, _ in wrapped.named_parameters()] == ["model.1.weight", "model.1.bias"]
    assert {n for n, _ in wrapped.named_buffers()} == {"mean", "std"}  # never quantized
    with pytest.raises(UserError, match="std must be positive"):
        rl.models.Normalized(net, MEAN, (0.2, 0.0, 0.3))
    with pytest.raises(UserError, match="mean has 3 numbers but std has 2"):
        rl.models.Normalized(net, MEAN, (0.2, 0.3))


def test_standardized_inputs_are_refused_with_the_range_found():
    x = torch.rand(8, 3, 4, 4)
    y = torch.arange(8) % 3
    xn = (x - 0.5) / 0.2  # in [-2.5, 2.5]
    lo, hi = float(xn.min()), float(xn.max())
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    for fn in (lambda d: rl.evaluate.clean(net, d),
               lambda d: rl.evaluate.bit_errors(net, d, rates=[0.01], patterns=1),
               lambda d: rl.evaluate.flatness(net, d, clean=True, samples=1),
               lambda d: rl.evaluate.adversarial(net, d, suite="linf", attacks="pgd", n_test=4)):
        with pytest.raises(UserError) as e:
            fn((xn, y))
        msg = str(e.value)
        assert "\n" not in msg and f"[{lo:.3g}, {hi:.3g}]" in msg and "[0, 1]" in msg
    # the same model, normalization inside: accepted, and the same predictions
    r = rl.evaluate.clean(rl.models.Normalized(net, 0.5, 0.2), (x, y))
    assert r["err"] == float((net(xn).argmax(1) != y).double().mean())
    # explicit bounds accept the standardized data (and give the same numbers)
    assert rl.evaluate.clean(net, (xn, y), bounds=(-3, 3))["err"] == r["err"]


# --- 2. norm layers under clipping -------------------------------------------------------------

def test_clip_treats_every_norm_scale_like_one_plus_gamma():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4),
                        nn.InstanceNorm2d(4, affine=True), nn.Flatten(), nn.LayerNorm(4 * 2 * 2),
                        nn.Linear(16, 2))
    builtin = rl.models.Norm2d(4, "bn")
    with torch.no_grad():
        for p in [*net.parameters(), *builtin.parameters()]:
            p.copy_(torch.linspace(-2, 2, p.numel()).view_as(p))
    assert rl.models.norm_scale_names(net) == ["1.weight", "2.weight", "3.weight", "5.weight"]
    assert rl.models.norm_scale_names(builtin) == []  # its weight already is γ of 1 + γ
    rl.models.clip_(net, 0.1)
    rl.models.clip_(builtin, 0.1)
    for i in (1, 2, 3, 5):  # scales: [1 − 0.1, 1 + 0.1]; shifts: [−0.1, 0.1]
        w, b = net[i].weight.detach(), net[i].bias.detach()
        assert float(w.min()) == pytest.approx(0.9) and float(w.max()) == pytest.approx(1.1)
        assert float(b.min()) == pytest.approx(-0.1) and float(b.max()) == pytest.approx(0.1)
    for p in (net[0].weight, net[6].weight, builtin.weight):  # everything else: [−0.1, 0.1]
        p = p.detach()
        assert float(p.min()) == pytest.approx(-0.1) and float(p.max()) == pytest.approx(0.1)


class _Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class TinyResNet(nn.Module):
    def __init__(self, c: int = 32, k: int = 10):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.block, self.head = _Block(c), nn.Linear(c, k)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.bn(self.stem(x)))).mean((2, 3)))


def test_custom_resnet_with_batchnorm_trains_with_clipping_and_quantization():
    train, _ = rl.data.synthetic(512, 8, shape=(3, 8, 8), num_classes=10, seed=0)
    torch.manual_seed(0)
    model = TinyResNet()
    hist = rl.train.fit(model, train, quant=RQUANT8, clip=0.1, epochs=3, lr=0.2, batch_size=32,
                        log=False, progress=False, device="cpu")
    assert hist[-1]["train_loss"] < 1.0 < math.log(10)  # the capped version stays at ≈ ln 10
    scales = torch.cat([model.get_submodule(n.rsplit(".", 1)[0]).weight.detach()
                        for n in rl.models.norm_scale_names(model)])
    assert len(scales) == 3 * 32
    assert float(scales.min()) >= 0.9 - 1e-6 and float(scales.max()) <= 1.1 + 1e-6
    others = [p for n, p in model.named_parameters() if n not in rl.models.norm_scale_names(model)]
    assert max(float(p.detach().abs().max()) for p in others) <= 0.1 + 1e-6


# --- 3. data as users hold it ------------------------------------------------------------------

def test_streamed_loader_gives_the_same_bit_errors_and_flatness_as_tensors():
    ds = OnTheFly(60)
    x, y = ds.tensors()
    model = _trained_linear(x, y)
    kw = dict(rates=[0.01, 0.05], patterns=3, batch_size=16)
    mem = rl.evaluate.bit_errors(model, (x, y), **kw)
    loader = DataLoader(ds, batch_size=7)  # a loader batch size unrelated to the evaluator's
    streamed = rl.evaluate.bit_errors(model, loader, **kw)
    assert not hasattr(ds, "x")
    for key in ("float_err", "clean_err", "err", "rerr", "n_test"):
        assert streamed[key] == mem[key]
    assert 0 < mem["clean_err"] < 0.5 and mem["rerr"]["max"][1] > mem["clean_err"]
    assert ds.count >= 60 * 3 * 2  # read again for every pattern and rate, never held
    # robust flatness (PGD inside) on the first 30 examples: read only those
    ds.count = 0
    fk = dict(xi=[0.0, 0.3], samples=2, n_test=30, batch_size=8, attack_settings={"steps": 3})
    a = rl.evaluate.flatness(model, (x, y), **fk)
    b = rl.evaluate.flatness(model, DataLoader(ds, batch_size=5), **fk)
    assert a["flatness"] == b["flatness"] and a["robust_err"] == b["robust_err"] and b["n"] == 30
    assert ds.count > 30 and ds.count % 30 <= 1  # whole passes over the first 30 (+ a shape peek)


def test_streamed_loader_gives_the_same_attack_results_as_tensors():
    ds = OnTheFly(60)
    x, y = ds.tensors()
    model = _trained_linear(x, y)
    kw = dict(suite="linf", n_test=20, attacks="pgd", steps=5, batch_size=8, sanity=False)
    a = rl.evaluate.adversarial(model, (x, y), **kw)
    b = rl.evaluate.adversarial(model, DataLoader(ds, batch_size=7), **kw)
    assert ds.count < 60  # the attacked rows and the held-out rows only
    assert a["clean"]["wrong"] == b["clean"]["wrong"] and a["clean"]["tau"] == b["clean"]["tau"]
    assert _no_times(a["threats"]) == _no_times(b["threats"])
    assert a["threats"]["linf"]["rerr"] > a["clean"]["err"]  # the attack did something


def _no_times(d):
    if isinstance(d, dict):
        return {k: _no_times(v) for k, v in d.items() if k != "time_s"}
    return d


def test_any_data_source_gives_the_same_clean_numbers():
    ds = OnTheFly(25)
    x, y = ds.tensors()
    model = _trained_linear(x, y)
    ref = rl.evaluate.clean(model, (x, y))
    for data in (rl.data.Dataset("d", x, y, 3), TensorDataset(x, y), ds,
                 DataLoader(TensorDataset(x, y), batch_size=4), DataLoader(ds, batch_size=9),
                 (x.numpy(), y.numpy())):
        r = rl.evaluate.clean(model, data, batch_size=10)
        assert (r["err"], r["confusion"], r["n"]) == (ref["err"], ref["confusion"], 25)
        assert r["loss"] == pytest.approx(ref["loss"], abs=1e-6)


def test_fit_on_a_dataloader_equals_fit_on_tensors():
    x, y = OnTheFly(40).tensors()
    out = []
    for data in ((x, y), DataLoader(TensorDataset(x, y), batch_size=3)):
        m = _linear(1)
        rl.train.fit(m, data, epochs=2, batch_size=8, lr=0.1, log=False, progress=False,
                     device="cpu")
        out.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(out[0], out[1])  # the same seeded order, batch for batch


@pytest.mark.parametrize("data, match", [
    ((torch.rand(4, 4, 4), torch.zeros(4, dtype=torch.long)), r"shape \(4, 4, 4\); expected N×C×H×W"),
    ((torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4)), "dtype uint8; give floats"),
    ((torch.rand(4, 1, 2, 2), torch.zeros(4)), "dtype float32; give integer class indices"),
    ((torch.rand(4, 1, 2, 2), torch.zeros(5, dtype=torch.long)), r"shape \(5,\); expected \(4,\)"),
    ((torch.rand(4, 1, 2, 2),), "tuple of 1 items"),
    ("digits.npz", "cannot use str as data"),
    (DataLoader([{"img": torch.rand(1, 2, 2), "label": 0}] * 3, batch_size=2),
     r"yields a dict with keys \['img', 'label'\]"),
    (DataLoader([(object(), 0)] * 3, batch_size=2), "yields examples holding .*ToTensor"),
])
def test_bad_data_is_one_line(data, match):
    model = _linear(d=4)
    with pytest.raises(UserError, match=match) as e:
        rl.evaluate.clean(model, data)
    assert "\n" not in str(e.value)


# --- 4. eval mode, buffers ---------------------------------------------------------------------

def test_evaluators_leave_modes_and_buffers_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 3))
    ds = OnTheFly(24)
    x, y = ds.tensors()
    with torch.no_grad():
        model(x)  # non-trivial running statistics
    model.train()
    model[4].eval()  # a caller's mixed modes must come back as they were
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    r1 = rl.evaluate.clean(model, (x, y))
    r2 = rl.evaluate.clean(model, (x, y))
    assert r1 == r2  # eval mode: dropout off, running statistics used
    rl.evaluate.bit_errors(model, DataLoader(ds, batch_size=8), rates=[0.01], patterns=2)
    rl.evaluate.flatness(model, (x, y), xi=0.2, samples=2, attack_settings={"steps": 2})
    rl.evaluate.landscape(model, (x, y), points=3, attack_settings={"steps": 2})
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_clean_follows_the_models_device():
    x, y = OnTheFly(10).tensors()
    model = _linear().cuda()
    assert rl.evaluate.clean(model, (x, y))["n"] == 10  # CPU data, GPU model: no device error


# --- 5. discoverability ------------------------------------------------------------------------

def test_dir_lists_submodules_and_public_functions_have_examples():
    assert {"attacks", "data", "models", "train", "evaluate", "quant", "checkpoint", "sources",
            "weights", "biterrors", "report"} <= set(dir(rl))
    for fn in (rl.evaluate.clean, rl.evaluate.bit_errors, rl.evaluate.flatness,
               rl.evaluate.landscape, rl.models.Normalized, rl.models.clip_,
               rl.models.norm_scale_names, sources.as_data, sources.check_bounds):
        assert "Example" in (fn.__doc__ or ""), fn.__qualname__


# --- 7. a quantization-aware model is measured like its run ------------------------------------

def test_fitted_quantized_model_matches_its_saved_run(tmp_path):
    from robustlab.runs import Run, quant_from_meta

    train_ds = OnTheFly(48)
    x, y = train_ds.tensors()
    test = rl.data.Dataset("t", *OnTheFly(30).tensors(), 3)
    model = _linear(2)
    rl.train.fit(model, (x, y), quant=RQUANT4, epochs=2, batch_size=8, lr=0.2, log=False,
                 progress=False, device="cpu", out=tmp_path / "run")
    assert rl.models.quant_of(model) == RQUANT4
    # the saved run as the CLI opens it (runs.open_run; a custom model is filled in from Python)
    loaded, meta = rl.checkpoint.load(tmp_path / "run", model=_linear(99))
    run = Run(tmp_path / "run", loaded, meta, quant_from_meta(meta), torch.device("cpu"))
    assert run.quant == RQUANT4 and rl.models.quant_of(loaded) == RQUANT4  # load attaches it
    py, cli = rl.evaluate.clean(model, test), rl.evaluate.clean(run.predictor(), test)
    assert py == cli == rl.evaluate.clean(loaded, test)  # the loaded model: same numbers too
    with torch.no_grad():
        float_loss = float(nn.functional.cross_entropy(model(test.x), test.y))
    assert py["loss"] != pytest.approx(float_loss, abs=1e-6)  # 4-bit weights, not the floats
    kw = dict(rates=[0.01, 0.1], patterns=3)
    b_py = rl.evaluate.bit_errors(model, test, **kw)
    b_cli = rl.evaluate.bit_errors(run.model, test, quant=run.quant, **kw)
    for key in ("scheme", "clean_err", "float_err", "err", "rerr"):
        assert b_py[key] == b_cli[key]
    assert b_py["scheme"]["bits"] == 4
