"""The predictor core (`rl.models.Predictor`): a model, its weights and its quantization; `sweep`
is the one loop every evaluator runs. Also the one tensor-selection vocabulary and `popcount`."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustlab as rl
from robustlab.errors import UserError
from robustlab.models import Batches, Predictor
from robustlab.quant import RQUANT4, popcount, quantize_model
from robustlab.weights import select


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32, 3)).eval()


def _data(n: int = 10):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % 3


def test_sweep_counts_loss_and_logits_exactly():
    net, (x, y) = _net(), _data()
    s = Predictor(net).sweep(Batches((x, y), 4), loss=True, keep_logits=True)
    with torch.no_grad():
        logits = net(x)
    assert torch.equal(s.logits, logits) and s.n == 10
    assert torch.equal(s.wrong, logits.argmax(1) != y)
    ref = sum(F.cross_entropy(logits[i:i + 4], y[i:i + 4], reduction="sum").double()
              for i in (0, 4, 8))
    assert float(s.loss) == float(ref)


def test_sweep_robust_error_is_wrong_clean_or_attacked():
    net, (x, y) = _net(), _data()
    flip = torch.zeros(10, dtype=torch.bool)
    flip[:3] = True  # the "attack" replaces three inputs by their negatives

    def adversary(pred, xb, yb):
        return torch.where(flip[:len(xb)].view(-1, 1, 1, 1), 1 - xb, xb)

    s = Predictor(net).sweep([(x, y)], adversary=adversary, loss=True)
    with torch.no_grad():
        clean_wrong = net(x).argmax(1) != y
        adv_wrong = net(adversary(None, x, y)).argmax(1) != y
    assert torch.equal(s.clean_wrong, clean_wrong) and torch.equal(s.wrong, adv_wrong)
    assert torch.equal(s.robust_wrong, clean_wrong | adv_wrong)
    assert s.clean_loss is not None and s.loss is not None


def test_quantized_model_is_measured_at_its_dequantized_weights():
    net = _net()
    setattr(net, rl.models.QUANT_ATTR, RQUANT4)
    x, _ = _data()
    p = Predictor(net)
    with torch.no_grad():
        deq = RQUANT4.fake_quantize({n: w for n, w in net.named_parameters()})
        assert torch.equal(p(x), torch.func.functional_call(net, deq, (x,)))
        assert not torch.equal(p(x), net(x))
    assert rl.models.with_quant(net).quant == RQUANT4
    # at(): the given weights are taken as they are, the others stay dequantized
    w = {"4.weight": torch.zeros(3, 32)}
    at = p.at(w)
    assert torch.equal(at.params()["4.weight"], w["4.weight"])
    assert torch.equal(at.params()["0.weight"], p.params()["0.weight"])


def test_empty_data_is_one_user_error():
    with pytest.raises(UserError, match="'tiny' is empty"):
        Predictor(_net()).sweep([], name="tiny")


def test_one_selection_vocabulary_for_balls_and_bit_attacks():
    net = _net()
    q = quantize_model(net)
    layers = ["0.weight", "0.bias", "4.weight", "4.bias"]
    assert select(net) == select(net, "all") == select(net, "default") == layers  # the ball
    assert select(net, "weights") == ["0.weight", "4.weight"]
    assert select(net, "all", among=q.names) == q.names  # bit attacks: every stored tensor
    assert "1.weight" in q.names and select(net, "default", among=q.names) == layers
    assert select(net, "1.weight", among=q.names) == ["1.weight"]
    with pytest.raises(UserError, match="unknown parameter selection '1.weight'"):
        select(net, "1.weight")  # a norm-layer scale is never in a relative ball


def test_popcount_is_one_function():
    from robustlab.weights import bits

    assert bits.popcount is popcount
    x = torch.arange(256, dtype=torch.int64).to(torch.uint8)
    assert popcount(x).tolist() == [bin(i).count("1") for i in range(256)]


def test_sweep_verdicts_are_float32_inside_an_outer_autocast():
    net, (x, y) = _net(), _data()
    ref = Predictor(net).sweep([(x, y)], keep_logits=True).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = Predictor(net).sweep([(x, y)], keep_logits=True)
    assert s.logits.dtype == torch.float32 and torch.equal(s.logits, ref)
