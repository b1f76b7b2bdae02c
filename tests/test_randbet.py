"""Bit error training (RandBET / PattBET / AdvBET = one method, three pattern sources): the exact
averaged gradient, the clamp, the curriculum, the pattern sources, reproducibility, CLI."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from clihelp import run_cli
from torch.func import functional_call

from robustlab import biterrors as be
from robustlab import checkpoint, data, models
from robustlab.errors import UserError
from robustlab.quant import RQUANT8, Scheme
from robustlab.train import fit
from robustlab.train.biterror_methods import (
    AdvBET,
    BitErrorTraining,
    FixedPattern,
    PattBET,
    RandBET,
    curriculum_threshold,
)
from robustlab.train.methods import create, options
from robustlab.train.trainer import TrainConfig, TrainContext


def _setup(quant=RQUANT8, seed=0):
    model = models.create("mlp", in_shape=(1, 4, 4), num_classes=3, hidden=(8,), seed=seed)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    ctx = TrainContext(model, TrainConfig(seed=0), torch.device("cpu"), 3, quant=quant)
    return model, ctx, x, y


def _expected(model, scheme, x, y, seed, p, clamp):
    """Reference: clean STE gradient and the gradient at the bit-flipped dequantized weights."""
    w = {n: v.detach().clone().requires_grad_(True) for n, v in model.named_parameters()}
    loss = F.cross_entropy(functional_call(model, scheme.fake_quantize(w), (x,)), y)
    g_clean = torch.autograd.grad(loss, list(w.values()))
    q = scheme.quantize({n: v.detach() for n, v in w.items()})
    pert = {n: v.clone().requires_grad_(True)
            for n, v in q.dequantize(q.codes ^ be.mask(q, seed, p)).items()}
    loss_p = F.cross_entropy(functional_call(model, pert, (x,)), y)
    g_pert = torch.autograd.grad(loss_p, list(pert.values()))
    return g_clean, g_pert, [0.5 * (gc + gp.clamp(-clamp, clamp)) for gc, gp in zip(g_clean, g_pert)]


@pytest.mark.parametrize("scheme", [RQUANT8, Scheme(4)], ids=str)
def test_randbet_gradient_is_exact_average_with_clamp(scheme):
    model, ctx, x, y = _setup(scheme)
    x = x * 4  # the model clamps to [0, 1]: saturated inputs give large gradients
    method = RandBET(bit_error_rate=0.1, loss_threshold=math.inf)
    state = ctx.generator.get_state()
    loss, logits = method.backward(ctx, x, y)
    g = torch.Generator()
    g.set_state(state)
    seed = int(torch.randint(0, 2**62, (1,), generator=g))  # the pattern seed it must have drawn
    g_clean, g_pert, expected = _expected(model, scheme, x, y, seed, 0.1, 0.05)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p.grad, e, atol=1e-7, rtol=1e-5)
    # the check is sensitive: the clamp is active and the perturbed gradient differs from the clean
    assert any(bool((gp.abs() > 0.05).any()) for gp in g_pert)
    assert not all(torch.allclose(gc, gp) for gc, gp in zip(g_clean, g_pert))
    # the returned loss is the clean (quantized) loss
    params = {n: v.detach() for n, v in model.named_parameters()}
    clean = F.cross_entropy(functional_call(model, scheme.fake_quantize(params), (x,)), y)
    assert loss.item() == pytest.approx(clean.item(), rel=1e-6)
    assert method.state_dict() == {"active": True}


def test_gradients_accumulate_into_existing_grad():
    model, ctx, x, y = _setup()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    method = RandBET(bit_error_rate=0.0, loss_threshold=math.inf)
    method.backward(ctx, x, y)
    _, _, expected = _expected(model, RQUANT8, x, y, 0, 0.0, 0.05)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p.grad, 1 + e, atol=1e-6)


def test_curriculum_off_then_on():
    assert curriculum_threshold(10) == pytest.approx(1.75)
    assert curriculum_threshold(4) == pytest.approx(1.75 * math.log(4) / math.log(10))
    assert curriculum_threshold(10, 0.5) == 0.5
    model, ctx, x, y = _setup()
    off = RandBET(bit_error_rate=0.2, loss_threshold=1e-6)  # clean loss never below: clean only
    off.backward(ctx, x, y)
    g_clean, _, _ = _expected(model, RQUANT8, x, y, 0, 0.2, 0.05)
    for p, gc in zip(model.parameters(), g_clean):
        assert torch.allclose(p.grad, gc, atol=1e-7)
    assert off.state_dict() == {"active": False}
    model, ctx, x, y = _setup()
    on = RandBET(bit_error_rate=0.2, loss_threshold=100.0)  # switches on at the first batch
    state = ctx.generator.get_state()
    on.backward(ctx, x, y)
    g = torch.Generator()
    g.set_state(state)
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    _, _, expected = _expected(model, RQUANT8, x, y, seed, 0.2, 0.05)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p.grad, e, atol=1e-7, rtol=1e-5)
    assert on.state_dict() == {"active": True}
    again = RandBET(loss_threshold=1e-6)
    again.load_state_dict({"active": True})  # resumed runs keep bit errors on
    assert again.active


def test_fresh_patterns_from_generator_and_fixed_pattern():
    model, ctx, x, y = _setup()
    q = RQUANT8.quantize({n: v.detach() for n, v in model.named_parameters()})
    rb = RandBET(bit_error_rate=0.3)
    state = ctx.generator.get_state()
    m1, m2 = rb.patterns(ctx, q, x, y), rb.patterns(ctx, q, x, y)
    assert not torch.equal(m1, m2)  # a fresh pattern per batch
    g = torch.Generator()
    g.set_state(state)  # seeds drawn from the run's generator, one per batch
    for m in (m1, m2):
        assert torch.equal(m, be.mask(q, int(torch.randint(0, 2**62, (1,), generator=g)), 0.3))
    pb = PattBET(bit_error_rate=0.3, pattern_seed=7)
    state = ctx.generator.get_state()
    assert torch.equal(pb.patterns(ctx, q, x, y), be.mask(q, 7, 0.3))
    assert torch.equal(pb.patterns(ctx, q, x, y), pb.patterns(ctx, q, x, y))
    assert torch.equal(ctx.generator.get_state(), state)  # the fixed pattern draws nothing


def test_validation():
    for kwargs, msg in [(dict(bit_error_rate=1.5), "bit-error-rate 1.5 must be in"),
                        (dict(bit_error_rate=-0.01), "must be in"),
                        (dict(grad_clamp=0.0), "grad-clamp"),
                        (dict(loss_threshold=-2.0), "loss-threshold")]:
        with pytest.raises(UserError, match=msg):
            RandBET(**kwargs)
    with pytest.raises(UserError, match="seed"):
        PattBET(pattern_seed=-1)


def test_fit_with_randbet_is_reproducible_and_clipped():
    train, _ = data.synthetic(128, 8, shape=(1, 4, 4), num_classes=3, seed=0)
    weights = []
    for _ in range(2):
        model = models.create("mlp", dataset=train, hidden=(8,), seed=0)
        method = RandBET(bit_error_rate=0.05, loss_threshold=math.inf)
        fit(model, train, method=method, epochs=1, lr=0.05, batch_size=32, clip=0.1,
            quant=RQUANT8, device="cpu", progress=False)
        weights.append([p.detach().clone() for p in model.parameters()])
        assert all(float(p.detach().abs().max()) <= 0.1 + 1e-7 for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(*weights))


TRAIN = ["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--quiet",
         "--device", "cpu", "--subset", "128"]


def test_cli_randbet_and_pattbet(tmp_path, capsys):
    for method, extra in (("randbet", ["--bit-error-rate", "0.05", "--loss-threshold", "inf"]),
                          ("pattbet", ["--bit-error-rate", "0.05", "--pattern-seed", "3"])):
        run = tmp_path / method
        code, _, err = run_cli(capsys, *TRAIN, "--method", method, *extra, "--clip", "0.1",
                               "--quant", "rquant8", "--out", run)
        assert code == 0, err
        meta = json.loads((run / "model.json").read_text())
        assert meta["method"]["name"] == method and meta["method"]["bit_error_rate"] == 0.05
        assert meta["quant"] == RQUANT8.to_dict()
    state = checkpoint.read_state_info(tmp_path / "randbet")
    assert state["method_state"] == {"active": True}


@pytest.mark.parametrize("extra,message", [
    (["--bit-error-rate", "1.5"], "--bit-error-rate 1.5 must be in [0, 1]"),
    (["--bit-error-rate", "-0.1"], "must be in [0, 1]"),
    (["--clip", "0"], "--clip: 0 is out of range"),
    (["--clip", "-0.1"], "--clip: -0.1 is out of range"),
    (["--quant", "rquant9"], "bits 9 must be an integer in 2..8"),
    (["--quant", "normal1"], "bits 1 must be an integer in 2..8"),
    (["--grad-clamp", "0"], "--grad-clamp 0.0 must be > 0"),
])
def test_cli_bad_input(tmp_path, capsys, extra, message):
    code, _, err = run_cli(capsys, *TRAIN, "--method", "randbet", *extra, "--out", tmp_path / "r")
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_one_method_three_pattern_sources_same_options_as_before():
    """randbet, pattbet and advbet are bit error training with a random, fixed and adversarial
    source; their options (CLI flags, preset keys) and recorded configs are unchanged."""
    for cls in (RandBET, PattBET, AdvBET):
        assert issubclass(cls, BitErrorTraining) and cls.backward is BitErrorTraining.backward
        assert cls.needs_quant
    assert {o.name for o in options(RandBET)} == {"bit_error_rate", "grad_clamp", "loss_threshold"}
    assert {o.name for o in options(PattBET)} == {"bit_error_rate", "pattern_seed", "grad_clamp",
                                                  "loss_threshold"}
    assert {o.name for o in options(AdvBET)} == {"bit_budget", "bit_attack_steps",
                                                 "bit_attack_step_size", "bit_attack_params",
                                                 "grad_clamp", "loss_threshold"}
    assert create("pattbet", pattern_seed=4).config() == {
        "name": "pattbet", "bit_error_rate": 0.01, "pattern_seed": 4, "grad_clamp": 0.05,
        "loss_threshold": -1.0}
    with pytest.raises(UserError, match="grad-clamp"):  # the shared checks apply to every source
        AdvBET(grad_clamp=0.0)
    with pytest.raises(UserError, match="loss-threshold"):
        AdvBET(loss_threshold=-3.0)


def test_a_plugged_pattern_source_drives_the_same_training():
    """A new source is one mixin: with an all-zero mask the perturbed pass is at the clean
    dequantized weights, exactly the reference with p = 0; a fixed source mixed in by hand equals
    PattBET."""

    class NoErrors:
        def patterns(self, ctx, q, x, y):
            return torch.zeros_like(q.codes)

    @dataclasses.dataclass
    class NoErrorBET(NoErrors, BitErrorTraining):
        name = "no-error-bet"

    model, ctx, x, y = _setup()
    NoErrorBET(loss_threshold=math.inf).backward(ctx, x, y)
    _, _, expected = _expected(model, RQUANT8, x, y, 0, 0.0, 0.05)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p.grad, e, atol=1e-7, rtol=1e-5)

    @dataclasses.dataclass
    class MyPattBET(FixedPattern, BitErrorTraining):
        name = "my-pattbet"

    grads = []
    for method in (PattBET(bit_error_rate=0.2, pattern_seed=5, loss_threshold=math.inf),
                   MyPattBET(bit_error_rate=0.2, pattern_seed=5, loss_threshold=math.inf)):
        model, ctx, x, y = _setup()
        method.backward(ctx, x, y)
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    with pytest.raises(NotImplementedError, match="pattern source"):
        BitErrorTraining().backward(*_setup()[1:])
    import robustlab as rl

    assert rl.train.BitErrorTraining is BitErrorTraining and rl.train.FixedPattern is FixedPattern
