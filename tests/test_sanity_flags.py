"""Sanity flags of the attack suite (spec §3a): each fires on a model built to trigger it and
stays silent on a normal trained model; flags are warnings in the result, never errors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.commands.attack import flag_lines
from robustlab.evaluate.adversarial import adversarial, model_flags, result_flags

KW = dict(n_test=40, steps=5, queries=100, targets=2, batch_size=40, progress=False)


class Randomized(nn.Module):
    """Drops hidden units at random in every forward pass, also in eval mode (seeded)."""

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        self.model = model
        self.g = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.model[2](self.model[1](self.model[0](x)))
        keep = torch.rand(h.shape, generator=self.g) < 0.5
        return self.model[3](h * keep * 2)


class Quantized(nn.Module):
    """Rounds its input to 5 levels first: the input gradient is exactly zero (masked)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 4) / 4)


class Band(nn.Module):
    """Memorizes the test images: wrong only at L∞ distance in (0.05, 0.2] from the nearest one,
    so a small radius breaks every example and a large one none (piecewise constant)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, k: int) -> None:
        super().__init__()
        self.register_buffer("x", x.flatten(1))
        self.register_buffer("y", y)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, i = (x.flatten(1)[:, None, :] - self.x[None]).abs().amax(2).min(1)
        lab = self.y[i]
        pred = torch.where((d > 0.05) & (d <= 0.2), (lab + 1) % self.k, lab)
        return 5 * F.one_hot(pred, self.k).float() + 0 * x.flatten(1).sum(1, keepdim=True)


def names(flags: list[dict]) -> set[str]:
    return {f["name"] for f in flags}


def test_silent_on_a_normal_model(trained) -> None:
    model, test = trained
    res = adversarial(model, test, "linf:0.05,linf:0.25,l2:1.2", **KW)
    assert res["flags"] == []
    assert flag_lines(res) == []


def test_nondeterministic_model(trained) -> None:
    model, test = trained
    flags = model_flags(Randomized(model).eval(), test.x[:50], test.y[:50])
    assert "nondeterministic" in names(flags)
    f = next(f for f in flags if f["name"] == "nondeterministic")
    assert f["numbers"]["max_abs_diff"] > 0 and f["numbers"]["n"] == 50
    assert "nondeterministic" not in names(model_flags(model, test.x[:50], test.y[:50]))


def test_probability_outputs(trained) -> None:
    model, test = trained
    soft = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    flags = model_flags(soft, test.x[:50], test.y[:50])
    assert "probabilities" in names(flags)
    assert next(f for f in flags if f["name"] == "probabilities")["numbers"]["fraction_of_rows"] == 1.0
    assert "probabilities" not in names(model_flags(model, test.x[:50], test.y[:50]))


def test_masked_gradients_zero_gradients_unbounded_and_square(trained) -> None:
    model, test = trained
    res = adversarial(Quantized(model).eval(), test, "linf:0.25", **{**KW, "queries": 300})
    flags = {f["name"]: f for f in res["flags"]}
    assert flags["zero_gradients"]["numbers"]["zero_entries"] == 1.0
    assert flags["unbounded"]["numbers"]["rerr"] < 0.95
    sq = flags["square_breaks_more"]["numbers"]
    assert sq["examples"] == res["threats"]["linf:0.25"]["masked"] >= 1
    assert res["threats"]["linf:0.25"]["by_attack"]["square"]["added"] >= sq["examples"]
    lines = flag_lines(res)  # printed as warnings by `robustlab attack`
    assert len(lines) == len(res["flags"]) and all(line.startswith("warning: ") for line in lines)


def test_rerr_decreasing_with_the_radius(trained) -> None:
    _, test = trained
    band = Band(test.x, test.y, test.num_classes).eval()
    res = adversarial(band, test, "linf:0.1,linf:0.4", **KW)
    r_small, r_large = res["threats"]["linf:0.1"]["rerr"], res["threats"]["linf:0.4"]["rerr"]
    assert r_small > r_large
    flag = next(f for f in res["flags"] if f["name"] == "rerr_not_monotone")
    assert flag["numbers"] == {"norm": "linf", "eps_small": 0.1, "rerr_small": r_small,
                               "eps_large": 0.4, "rerr_large": r_large}


def test_result_flags_on_scored_threats() -> None:
    th = {"linf": {"threat": "linf", "eps": 0.1, "rerr": 0.5, "masked": 0, "adv_wrong": [0] * 10},
          "linf:0.2": {"threat": "linf", "eps": 0.2, "rerr": 0.5, "masked": 0, "adv_wrong": [0] * 10},
          "l2": {"threat": "l2", "eps": 1.5, "rerr": 0.4, "masked": 0, "adv_wrong": [0] * 10}}
    assert result_flags(th) == []  # equal RErr is non-decreasing; one radius per norm is fine
    th["linf:0.2"]["rerr"] = 0.49
    th["l2"]["masked"] = 1
    assert names(result_flags(th)) == {"rerr_not_monotone", "square_breaks_more"}
