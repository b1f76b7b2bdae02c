"""Quantization-aware training (spec §5): forward at the dequantized weights, the gradient there
applied to the float weights (straight-through estimator)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from robustlab.quant import RQUANT8, Scheme
from robustlab.train.trainer import TrainConfig, TrainContext


def test_training_forward_is_at_dequantized_weights_with_straight_through_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(10, 1, 3, 4, generator=g), torch.randint(0, 3, (10,), generator=g)
    for scheme in (RQUANT8, Scheme(4, per_tensor=False, mode="symmetric_signed", q_max=0.5)):
        model.zero_grad()
        ctx = TrainContext(model, TrainConfig(), torch.device("cpu"), 3, quant=scheme)
        loss = F.cross_entropy(ctx.forward(x), y)
        loss.backward()
        deq = {k: v.detach().clone().requires_grad_(True)
               for k, v in scheme.quantize_dequantize(dict(model.named_parameters())).items()}
        assert any(not torch.equal(deq[k], p) for k, p in model.named_parameters())
        ref = F.cross_entropy(functional_call(model, deq, (x,)), y)
        assert torch.allclose(loss, ref, atol=1e-6)  # the forward sees the quantized weights
        ref.backward()
        for k, p in model.named_parameters():  # the gradient there reaches the float weights
            assert p.grad is not None and torch.allclose(p.grad, deq[k].grad, atol=1e-6), k


def test_forward_without_quantize_is_at_exactly_the_given_weights() -> None:
    # bit error training evaluates already bit-flipped dequantized weights: quantizing them again
    # would move them (the flips change the tensor's range), so `quantize=False` skips it
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(5, 1, 3, 4, generator=torch.Generator().manual_seed(2))
    ctx = TrainContext(model, TrainConfig(), torch.device("cpu"), 3, quant=RQUANT8)
    params = {k: 3 * v.detach() for k, v in model.named_parameters()}
    params["1.weight"][0, 0] = 7.0  # off the quantization grid
    exact = functional_call(model, params, (x,))
    assert torch.equal(ctx.forward(x, params, quantize=False), exact)
    quantized = ctx.forward(x, params)
    assert torch.equal(quantized, functional_call(model, RQUANT8.fake_quantize(params), (x,)))
    assert not torch.allclose(quantized, exact)
