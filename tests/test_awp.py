"""AWP (around any loss-based method) and AdvBET training methods."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from robustlab import models
from robustlab.attacks.patches import patch_attack
from robustlab.cli import main
from robustlab.data import synthetic
from robustlab.errors import UserError
from robustlab.quant import RQUANT8
from robustlab.train import fit
from robustlab.train.adversarial_methods import AT, TRADES, PatchAT
from robustlab.train.biterror_methods import AdvBET, RandBET
from robustlab.train.methods import create, options
from robustlab.train.trainer import TrainConfig, TrainContext
from robustlab.train.weight_methods import AWP
from robustlab.weights import select

torch.set_num_threads(1)


def setup(seed=0):
    train, _ = synthetic(32, 8, shape=(1, 6, 6), num_classes=3, seed=seed)
    m = models.create("convnet", in_shape=(1, 6, 6), num_classes=3, width=4, hidden=8,
                      norm="none", seed=seed)
    return m, train.x, train.y


def ctx_for(m, state=None):
    ctx = TrainContext(m, TrainConfig(seed=0), torch.device("cpu"), 3)
    if state is not None:
        ctx.generator.set_state(state)
    return ctx


@pytest.mark.parametrize("base", ["at", "trades"])
def test_awp_gradient_is_the_base_gradient_at_w_plus_nu(base):
    m, x, y = setup()
    m.train()
    gamma = 0.01
    ctx = ctx_for(m)
    state = ctx.generator.get_state()
    awp = AWP(awp_base=base, awp_gamma=gamma, attack_steps=3)
    awp.backward(ctx, x, y)
    got = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)

    # the same computation by hand: inputs at w, ν from the base loss, gradient at w + ν
    ref = (AT(fraction=0.5, attack_steps=3) if base == "at" else TRADES(attack_steps=3))
    params = dict(m.named_parameters())
    loss_w, _ = ref.loss(ctx_for(m, state), x, y)
    names = select(m, "weights")
    grads = torch.autograd.grad(loss_w, [params[n] for n in names])
    nu = {n: gamma * params[n].detach().norm() * g / g.norm() for n, g in zip(names, grads)}
    if base == "at":
        n_adv = 16
        x_adv = ref.attack(ctx_for(m, state), x[16:], y[16:])
        inp = torch.cat([x[:16], x_adv])
    else:
        from robustlab.attacks.pgd import pgd
        from robustlab.train.adversarial_methods import kl_objective

        c = ctx_for(m, state)
        with c.eval_mode():
            with torch.no_grad():
                p_clean = F.softmax(m(x), 1)
            x_adv = pgd(m, x, p_clean, eps=0.1, steps=3, objective=kl_objective, init="tiny",
                        generator=c.generator).x_adv
        inp = torch.cat([x, x_adv])
    pert = {**params, **{n: params[n] + nu[n] for n in names}}
    logits = functional_call(m, pert, (inp,))
    if base == "at":
        loss = 0.5 * F.cross_entropy(logits[16:], y[16:]) + 0.5 * F.cross_entropy(logits[:16], y[:16])
        assert n_adv == 16
    else:
        clean, adv = logits[:32], logits[32:]
        loss = F.cross_entropy(clean, y) + 6.0 * F.kl_div(
            F.log_softmax(adv, 1), F.log_softmax(clean, 1), reduction="batchmean", log_target=True)
    loss.backward()
    for n, p in m.named_parameters():
        assert torch.allclose(got[n], p.grad, rtol=1e-4, atol=1e-6), n
    # ν really moved the weights: the gradient differs from the plain base gradient
    m.zero_grad(set_to_none=True)
    create(base, attack_steps=3).backward(ctx_for(m, state), x, y)
    assert any(not torch.allclose(got[n], p.grad, atol=1e-6) for n, p in m.named_parameters())


def _grads(m):
    g = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)
    return g


def test_awp_wraps_patch_at_exactly():
    """AWP over PatchAT: patches computed once at w, the PatchAT loss's gradient at w + ν."""
    m, x, y = setup()
    m.train()
    gamma = 0.01
    state = ctx_for(m).generator.get_state()
    awp = AWP.over(PatchAT(patch_size=2, attack_steps=2), awp_gamma=gamma)
    awp.backward(ctx_for(m, state), x, y)
    got = _grads(m)
    assert awp.config()["base"]["patch_size"] == 2 and awp.config()["awp_base"] == "patch-at"

    c = ctx_for(m, state)  # by hand, with the same randomness
    with c.eval_mode():
        x_adv = patch_attack(m, x[16:], y[16:], size=2, steps=2, step_size=0.1,
                             location="optimized-full", stride=2, generator=c.generator).x_adv
    inp = torch.cat([x[:16], x_adv])
    params = dict(m.named_parameters())

    def loss_at(p):
        logits = functional_call(m, p, (inp,))
        return 0.5 * F.cross_entropy(logits[16:], y[16:]) + 0.5 * F.cross_entropy(logits[:16], y[:16])

    names = select(m, "weights")
    grads = torch.autograd.grad(loss_at(params), [params[n] for n in names])
    nu = {n: gamma * params[n].detach().norm() * g / g.norm() for n, g in zip(names, grads)}
    loss_at({**params, **{n: params[n] + nu[n] for n in names}}).backward()
    for n, p in m.named_parameters():
        assert torch.allclose(got[n], p.grad, rtol=1e-4, atol=1e-6), n
    m.zero_grad(set_to_none=True)
    PatchAT(patch_size=2, attack_steps=2).backward(ctx_for(m, state), x, y)  # ν matters
    assert any(not torch.allclose(got[n], p.grad, atol=1e-6) for n, p in m.named_parameters())
    m.zero_grad(set_to_none=True)

    # by name (the CLI's way) equals wrapping the same configured base
    AWP(awp_base="patch-at", awp_gamma=gamma, attack_steps=2).backward(ctx_for(m, state), x, y)
    by_name = _grads(m)
    AWP.over(PatchAT(attack_steps=2), awp_gamma=gamma).backward(ctx_for(m, state), x, y)
    assert all(torch.equal(by_name[n], g) for n, g in _grads(m).items())
    with pytest.raises(UserError, match="cannot wrap"):
        AWP.over(RandBET())


def test_awp_perturbation_is_relative_and_weights_only():
    m, x, y = setup()
    ctx = ctx_for(m)
    awp = AWP(awp_gamma=0.01, attack_steps=2)
    loss, _ = awp.loss(ctx, x, y)
    nu = awp.perturbation(ctx, loss)
    params = dict(m.named_parameters())
    assert set(nu) == set(select(m, "weights")) and all(params[n].ndim >= 2 for n in nu)
    for n, v in nu.items():
        assert torch.allclose(v.norm(), 0.01 * params[n].norm(), rtol=1e-5)


def test_awp_options_and_training():
    for bad in ("randbet", "advbet", "awp", "bogus"):  # not loss-based, or unknown
        with pytest.raises(UserError, match="awp-base"):
            AWP(awp_base=bad)
    with pytest.raises(UserError, match="awp-gamma"):
        AWP(awp_gamma=-1)
    m, x, y = setup()
    train, _ = synthetic(64, 8, shape=(1, 6, 6), num_classes=3, seed=0)
    hist = fit(m, train, method=AWP(awp_base="trades", attack_steps=2, awp_warmup=1), epochs=2,
               lr=0.05, batch_size=32, progress=False, device="cpu")
    assert len(hist) == 2 and all(torch.isfinite(torch.tensor(h["train_loss"])) for h in hist)


def test_advbet_uses_adversarial_bit_errors(monkeypatch):
    m, x, y = setup()
    ctx = ctx_for(m)
    adv = AdvBET(bit_budget=7, bit_attack_steps=2, loss_threshold=float("inf"))
    seen = []
    orig = adv.patterns

    def spy(c, q, xb, yb):
        assert xb is x and yb is y  # the batch reaches the pattern source as arguments
        mask = orig(c, q, xb, yb)
        seen.append((q, mask))
        return mask

    monkeypatch.setattr(adv, "patterns", spy)
    loss, logits = adv.backward(ctx, x, y)
    assert torch.isfinite(loss) and logits.shape == (32, 3)
    (q, mask), = seen
    bits = torch.zeros_like(mask, dtype=torch.int64)
    for j in range(8):
        bits += (mask.long() >> j) & 1
    assert int(bits.max()) <= 1 and 0 < int(bits.sum()) <= 7
    # the adversarial pattern hurts the batch more than the clean quantized weights
    with torch.no_grad():
        clean = F.cross_entropy(functional_call(m, q.dequantize(), (x,)), y)
        hit = F.cross_entropy(functional_call(m, q.dequantize(q.codes ^ mask), (x,)), y)
    assert hit > clean
    assert all(p.grad is not None for p in m.parameters())


def test_advbet_trains_quantized_and_cli_lists_methods(tmp_path, capsys):
    train, _ = synthetic(64, 8, shape=(1, 6, 6), num_classes=3, seed=0)
    m, _, _ = setup()
    hist = fit(m, train, method=AdvBET(bit_budget=4, bit_attack_steps=1,
                                       loss_threshold=float("inf")),
               quant=RQUANT8, epochs=1, lr=0.05, batch_size=32, progress=False, device="cpu")
    assert len(hist) == 1
    out = tmp_path / "awp"
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--method",
                 "awp", "--awp-gamma", "0.01", "--attack-steps", "1", "--device", "cpu",
                 "--out", str(out), "--quiet"]) == 0
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--method",
                 "at", "--awp-gamma", "0.01", "--device", "cpu", "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2
    assert "does not apply" in capsys.readouterr().err


def test_awp_takes_its_bases_options_without_copying_them(monkeypatch):
    """AWP declares only awp_*; every other option is the base's own (also a new base's)."""
    import dataclasses

    from robustlab.train.methods import METHODS, Method

    assert [f.name for f in dataclasses.fields(AWP)] == ["awp_base", "awp_gamma", "awp_warmup"]
    names = {o.name for o in options(AWP)}
    assert {"awp_gamma", "beta", "fraction", "rho", "patch_size", "attack_momentum"} <= names
    awp = create("awp", awp_base="trades", beta=3.0, attack_steps=2)
    assert isinstance(awp.base, TRADES) and awp.base.beta == 3.0 and awp.base.attack_steps == 2
    assert awp.config() == {"name": "awp", "awp_base": "trades", "awp_gamma": 0.005,
                            "awp_warmup": 0, "base": TRADES(beta=3.0, attack_steps=2).config()}
    assert AWP().base == AT()  # the default base with its own defaults
    assert AWP(awp_base="trades", beta=3.0) == AWP(base=TRADES(beta=3.0))
    assert AWP(awp_base="trades", beta=3.0) != AWP(awp_base="trades")  # the base's options count
    assert create("awp", awp_base="ccat", attack_momentum=0.5).base.attack_momentum == 0.5
    with pytest.raises(UserError, match="--beta does not apply to awp-base 'at'"):
        AWP(beta=3.0)
    with pytest.raises(UserError, match="disagrees"):
        AWP(awp_base="trades", base=AT())
    with pytest.raises(UserError, match="base's options"):
        AWP(base=AT(), attack_steps=2)

    @dataclasses.dataclass
    class Scaled(Method):  # a new loss-based method: AWP wraps it with its option
        name = "scaled-test"
        scale: float = 1.0

        def loss_on(self, ctx, batch, params=None):
            loss, logits = super().loss_on(ctx, batch, params)
            return self.scale * loss, logits

    monkeypatch.setitem(METHODS, "scaled-test", Scaled)
    assert "scale" in {o.name for o in options(AWP)}
    awp = create("awp", awp_base="scaled-test", scale=2.0, awp_gamma=0.01)
    m, x, y = setup()
    state = ctx_for(m).generator.get_state()
    awp.backward(ctx_for(m, state), x, y)
    got = _grads(m)
    AWP.over(Scaled(scale=1.0), awp_gamma=0.01).backward(ctx_for(m, state), x, y)
    ref = _grads(m)
    # ν is normalized (the same for any scale), so the gradient at w + ν scales exactly
    for n in got:
        assert torch.allclose(got[n], 2.0 * ref[n], rtol=1e-5, atol=1e-7), n


def test_awp_over_patch_at_from_the_cli(tmp_path, capsys):
    out = tmp_path / "awp-patch"
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--method",
                 "awp", "--awp-base", "patch-at", "--patch-size", "3", "--attack-steps", "1",
                 "--subset", "64", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    import json

    meta = json.loads((out / "model.json").read_text())
    assert meta["method"]["awp_base"] == "patch-at" and meta["method"]["base"]["patch_size"] == 3
    capsys.readouterr()
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--method",
                 "awp", "--beta", "3", "--device", "cpu", "--out", str(tmp_path / "y"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--beta does not apply to awp-base 'at'" in err and len(err.strip().splitlines()) == 1
