"""Nearest other-class distances (chunked) and `robustlab epsilons`."""

from __future__ import annotations

import json

import pytest
import torch

from robustlab import data
from robustlab.attacks.pgd import lp_norm
from robustlab.errors import UserError
from robustlab.evaluate.epsilons import epsilons, nearest_other_class, pairwise, perturbation_examples

torch.set_num_threads(1)


def brute(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    d = (a.flatten(1)[:, None, :] - b.flatten(1)[None, :, :]).double()
    if norm == "linf":
        return d.abs().amax(-1)
    if norm == "l2":
        return d.pow(2).sum(-1).sqrt()
    if norm == "l1":
        return d.abs().sum(-1)
    return (d != 0).sum(-1).double()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1", "l0"])
def test_chunked_nearest_other_class_equals_brute_force(norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    # quantized like real images, so that L0 sees exact equal entries
    train_x = (torch.rand(23, 1, 4, 4, generator=g) * 4).round() / 4
    test_x = (torch.rand(11, 1, 4, 4, generator=g) * 4).round() / 4
    train_y = torch.randint(0, 3, (23,), generator=g)
    test_y = torch.randint(0, 3, (11,), generator=g)
    full = brute(test_x, train_x, norm)
    assert torch.allclose(pairwise(test_x.double(), train_x.double(), norm), full)
    full[test_y[:, None] == train_y[None, :]] = float("inf")
    dist, idx = nearest_other_class(test_x, test_y, train_x, train_y, norm, chunk_test=4,
                                    chunk_train=5)
    assert torch.allclose(dist, full.min(1).values)
    assert (train_y[idx] != test_y).all()
    assert torch.allclose(full.gather(1, idx[:, None]).squeeze(1), dist)


def test_epsilons_statistics(tmp_path) -> None:
    train, test = data.synthetic(60, 40, shape=(1, 6, 6), num_classes=3, seed=1)
    res = epsilons(train, test, ["linf", "l2"], n_test=30, quantiles=(0.1, 0.5), bins=7,
                   examples_path=tmp_path / "ex.safetensors")
    assert res["data"] == {"name": "synthetic", "n_test": 30, "n_train": 60, "shape": [1, 6, 6]}
    for norm in ("linf", "l2"):
        v = res["norms"][norm]
        dist = torch.tensor(v["distances"], dtype=torch.float64)
        ref, _ = nearest_other_class(test.x[:30], test.y[:30], train.x, train.y, norm)
        assert torch.allclose(dist, ref, atol=1e-6)
        assert v["quantiles"]["0.1"] == pytest.approx(float(torch.quantile(ref, 0.1)))
        assert v["min"] == pytest.approx(float(ref.min()))
        assert sum(v["histogram"]["counts"]) == 30 and len(v["histogram"]["edges"]) == 8
        assert v["frac_within_default_eps"] == pytest.approx(
            float((ref <= v["default_eps"]).double().mean()))
    assert res["radii"]["linf"] == pytest.approx([0.05, 0.1, 0.2, 0.4])
    assert (tmp_path / res["examples_file"]).is_file()
    json.dumps(res)


@pytest.mark.parametrize("norm,radii", [("linf", [0.05, 0.2]), ("l2", [0.3, 1.0]),
                                        ("l1", [1.0, 3.0]), ("l0", [2.0, 5.0])])
def test_perturbation_examples_respect_radii(norm: str, radii: list[float]) -> None:
    x = torch.full((1, 1, 6, 6), 0.5)
    target = torch.zeros(1, 1, 6, 6)
    target[..., :3, :] = 1.0
    y = torch.zeros(1, dtype=torch.long)
    ex = perturbation_examples(x, y, target, norm, radii, generator=torch.Generator().manual_seed(0))
    for kind in ("random", "adversarial"):
        d = lp_norm(ex[kind] - x, norm)
        assert (d <= torch.tensor(radii) * (1 + 1e-5) + 1e-6).all(), kind
    # the non-model "adversarial" image moves towards the target, more with a larger radius
    to_target = (ex["adversarial"] - target).flatten(1).abs().sum(1)
    assert to_target[1] < to_target[0] < (x - target).abs().sum()
    if norm in ("linf", "l2", "l1"):  # random images sit on the sphere (the box is far)
        assert torch.allclose(lp_norm(ex["random"] - x, norm), torch.tensor(radii), rtol=1e-5)


def test_epsilons_bad_input() -> None:
    train, test = data.synthetic(20, 10, shape=(1, 4, 4), num_classes=2)
    with pytest.raises(UserError, match="unknown norm 'l4'"):
        epsilons(train, test, ["l4"])
    one = train.subset(train.y == train.y[0])
    with pytest.raises(UserError, match="single class"):
        epsilons(one, test, ["l2"])


def test_epsilons_command(tmp_path, capsys) -> None:
    from robustlab.cli import main

    out = tmp_path / "eps"
    assert main(["epsilons", "--data", "synthetic", "--norms", "linf,l0", "--n-test", "20",
                 "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results" / "epsilons.json").read_text())
    assert res["kind"] == "epsilons" and set(res["norms"]) == {"linf", "l0"}
    for f in ("epsilons_hist.png", "epsilons_examples.png"):
        assert (out / "results" / f).stat().st_size > 0
    assert "linf" in capsys.readouterr().out
    assert main(["epsilons", "--data", "synthetic", "--norms", "linf,l7", "--out", str(out)]) == 2
    assert "unknown norm 'l7'" in capsys.readouterr().err
