"""Training attacks (spec §4): they run in eval mode, and CCAT's λ uses the attack's own norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.train.adversarial_methods import AT, CCAT, TRADES, PatchAT, soft_target
from robustlab.train.methods import soft_cross_entropy
from robustlab.train.trainer import TrainConfig, TrainContext

torch.set_num_threads(1)


class Recorder(nn.Module):
    """A BatchNorm MLP that records the mode (`training`) and input of every forward pass."""

    def __init__(self, d: int = 64, k: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                 nn.Linear(16, k))
        self.modes: list[bool] = []
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        self.inputs.append(x.detach())
        return self.net(x)


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("method", [
    AT(eps=0.2, attack_steps=3), AT(fraction=1.0, eps=0.2, attack_steps=2, attack_norm="l2"),
    CCAT(eps=0.2, attack_steps=3), TRADES(eps=0.2, attack_steps=3),
    PatchAT(patch_size=3, attack_steps=3),
], ids=["at", "madry-l2", "ccat", "trades", "patch-at"])
def test_training_attacks_run_in_eval_mode_and_only_the_training_pass_updates_bn(method) -> None:
    model = Recorder()
    model.train()
    ctx = TrainContext(model, TrainConfig(), torch.device("cpu"), 4)
    x, y = batch()
    bn = model.net[2]
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    loss, _ = method.loss(ctx, x, y)
    assert model.training  # the mode is restored
    # every attack forward is in eval mode; exactly one (the training pass) is not
    assert len(model.modes) >= 3 and sum(model.modes) == 1, model.modes
    assert int(bn.num_batches_tracked) == 1
    # running statistics: one momentum update with the statistics of the training pass's input,
    # nothing from the attack
    assert not torch.equal(bn.running_mean, mean0)
    with torch.no_grad():
        trained_on = model.net[1](model.net[0](model.inputs[model.modes.index(True)]))
    m = bn.momentum
    assert torch.allclose(bn.running_mean, (1 - m) * mean0 + m * trained_on.mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, (1 - m) * var0 + m * trained_on.var(0, unbiased=True),
                          atol=1e-6)
    loss.backward()


def test_training_attack_equals_the_attack_on_the_eval_mode_model() -> None:
    # AT's adversarial inputs are those of PGD on the model in eval mode, with the context's
    # generator; a train-mode attack (batch statistics) finds other inputs.
    from robustlab.attacks.pgd import pgd

    model = Recorder()
    x, y = batch(16)
    m = AT(fraction=1.0, eps=0.3, attack_steps=4)
    model.train()
    ctx = TrainContext(model, TrainConfig(), torch.device("cpu"), 4)
    x_adv = m.attack(ctx, x, y)
    model.eval()
    ref = pgd(model, x, y, norm="linf", eps=0.3, steps=4, step_size=None, objective="ce",
              init=m.attack_init, momentum=m.attack_momentum, backtrack=m.attack_backtrack,
              generator=TrainContext(model, TrainConfig(), torch.device("cpu"), 4).generator)
    assert torch.equal(x_adv, ref.x_adv)


def multi_entry_delta() -> torch.Tensor:
    """Two examples; example 0 has four entries ±0.03 (‖δ‖∞ 0.03, ‖δ‖₂ 0.06, ‖δ‖₁ 0.12, ‖δ‖₀ 4),
    example 1 entries 0.02, 0.04 (‖δ‖∞ 0.04, ‖δ‖₂ √0.002, ‖δ‖₁ 0.06, ‖δ‖₀ 2)."""
    d = torch.zeros(2, 1, 4, 4)
    d[0, 0, 0, :] = torch.tensor([0.03, -0.03, 0.03, -0.03])
    d[1, 0, 2, 1], d[1, 0, 3, 3] = 0.02, -0.04
    return d


@pytest.mark.parametrize("norm,eps,norms", [
    ("linf", 0.1, (0.03, 0.04)), ("l2", 0.1, (0.06, 0.002 ** 0.5)), ("l1", 0.3, (0.12, 0.06)),
    ("l0", 10.0, (4.0, 2.0)),
])
def test_ccat_lambda_uses_the_attack_norm(norm: str, eps: float, norms: tuple[float, float]) -> None:
    # λ = (1 − min(1, ‖δ‖/ε))^ρ with ‖·‖ the norm the attack used; target λ·onehot + (1−λ)/K
    y = torch.tensor([1, 3])
    rho, k = 2.0, 4
    t = soft_target(multi_entry_delta(), y, k, eps, rho, norm)
    for i, nrm in enumerate(norms):
        lam = (1 - min(1.0, nrm / eps)) ** rho
        expected = torch.full((k,), (1 - lam) / k, dtype=torch.float64)
        expected[y[i]] += lam
        assert torch.allclose(t[i].double(), expected, atol=1e-6), (norm, i)


class FixedCCAT(CCAT):
    """CCAT whose attack adds the known multi-entry perturbation (to check the loss exactly)."""

    def attack(self, ctx, x, y):
        return x + multi_entry_delta()[: x.shape[0]].reshape_as(x)


@pytest.mark.parametrize("norm,eps,lams", [
    ("l2", 0.1, ((1 - 0.6) ** 10, (1 - 0.002 ** 0.5 / 0.1) ** 10)),
    ("linf", 0.1, ((1 - 0.3) ** 10, (1 - 0.4) ** 10)),
])
def test_ccat_loss_with_an_l2_attack_uses_the_l2_norm(norm: str, eps: float, lams) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).train()
    ctx = TrainContext(model, TrainConfig(), torch.device("cpu"), 4)
    x = torch.full((4, 1, 4, 4), 0.5)
    y = torch.tensor([0, 2, 1, 3])
    m = FixedCCAT(fraction=0.5, eps=eps, rho=10.0, attack_norm=norm)
    loss, _ = m.loss(ctx, x, y)
    x_adv = x[2:] + multi_entry_delta()
    logits = model(torch.cat([x[:2], x_adv]))
    target = torch.stack([lam * F.one_hot(y[2 + i], 4).float() + (1 - lam) / 4
                          for i, lam in enumerate(lams)])
    expected = 0.5 * F.cross_entropy(logits[:2], y[:2]) + 0.5 * soft_cross_entropy(logits[2:], target)
    assert torch.allclose(loss, expected, atol=1e-6)


class FixedTRADES(TRADES):
    """TRADES whose 'attack' adds a known perturbation (to check the loss formula exactly)."""

    def prepare(self, ctx, x, y):
        d = torch.zeros_like(x)
        d[:, 0, 0, :] = 0.2
        return x, x + d, y


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_trades_loss_is_ce_plus_beta_kl_of_clean_to_adversarial(beta: float) -> None:
    # TRADES: CE(f(x), y) (with the run's label smoothing) + β·KL(p(x) ‖ p(x̃)), the KL being
    # Σ_k p_k(x)·(log p_k(x) − log p_k(x̃)) averaged over the batch; KL(p(x̃) ‖ p(x)) is a
    # different number for these logits
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).train()
    with torch.no_grad():
        model[1].weight.mul_(8)
    ctx = TrainContext(model, TrainConfig(label_smoothing=0.1), torch.device("cpu"), 4)
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    loss, logits = FixedTRADES(beta=beta, eps=0.2).loss(ctx, x, y)
    x_adv = x.clone()
    x_adv[:, 0, 0, :] += 0.2
    with torch.no_grad():
        lp_clean = F.log_softmax(model(x), 1).double()
        lp_adv = F.log_softmax(model(x_adv), 1).double()
    kl = (lp_clean.exp() * (lp_clean - lp_adv)).sum(1).mean()
    reverse = (lp_adv.exp() * (lp_adv - lp_clean)).sum(1).mean()
    assert abs(float(kl - reverse)) > 1e-3  # the test can tell the two directions apart
    expected = F.cross_entropy(model(x), y, label_smoothing=0.1).double() + beta * kl
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5, abs=1e-6)
    assert torch.allclose(logits, model(x), atol=1e-5)


def test_patch_at_attacks_the_last_fraction_with_training_settings() -> None:
    # spec §3/§4: patch AT patches a fraction of the batch with the training setting of the patch
    # attack (content step 0.1, the chosen location mode), loss (1−f)·CE + f·CE_patch
    from robustlab.attacks import Patch

    model = Recorder()
    ctx = TrainContext(model.train(), TrainConfig(), torch.device("cpu"), 4)
    x, y = batch(8)
    m = PatchAT(fraction=0.25, patch_size=3, attack_steps=4, location="random", patch_stride=1)
    setting = Patch(size=3, steps=4, step_size=0.1, location="random", stride=1)
    assert m.input_attack() == setting
    # the patched part is that attack (one interface: model, x, y, generator) on the last two
    # examples, in eval mode, with the context's randomness (computed first: the training pass
    # updates the BatchNorm statistics)
    ref = setting(model.eval(), x[6:], y[6:],
                  generator=TrainContext(model, TrainConfig(), torch.device("cpu"), 4).generator)
    model.train()
    loss, logits = m.loss(ctx, x, y)
    trained_on = model.inputs[model.modes.index(True)]
    assert torch.equal(trained_on[:6], x[:6]) and torch.equal(trained_on[6:], ref.x_adv)
    assert not torch.equal(trained_on[6:], x[6:])
    expected = 0.75 * F.cross_entropy(logits[:6], y[:6]) + 0.25 * F.cross_entropy(logits[6:], y[6:])
    assert torch.allclose(loss, expected, atol=1e-6)


def test_at_and_trades_use_the_attack_interface_with_their_settings() -> None:
    # every training attack is an attack object of robustlab.attacks, called as
    # attack(model, x, y, *, generator) -> AttackResult
    from robustlab.attacks import PGD
    from robustlab.train.adversarial_methods import kl_objective

    assert AT(eps=0.2, attack_steps=3, attack_norm="l2").input_attack() == PGD(
        norm="l2", eps=0.2, steps=3, init="cube")
    assert CCAT(attack_steps=3).input_attack() == PGD(
        steps=3, objective="conf", init="norm", momentum=0.9, backtrack=True)
    assert TRADES(attack_steps=2).input_attack() == PGD(steps=2, objective=kl_objective,
                                                        init="tiny")
