"""Adversarial bit errors: the threat model (budget, one bit per weight), projection, strength."""

import json

import pytest
import torch
import torch.nn.functional as F

from robustlab import models
from robustlab.cli import main
from robustlab.data import synthetic
from robustlab.errors import UserError
from robustlab.evaluate.bitattack import bit_attack as evaluate_bit_attack
from robustlab.quant import RQUANT8, Scheme
from robustlab.weights.bits import (
    bfa,
    bit_attack,
    msb,
    popcount,
    project_codes,
    random_flips,
)

torch.set_num_threads(1)

SCHEMES = [RQUANT8, Scheme(8, per_tensor=False, mode="symmetric_signed", rounding="trunc"),
           Scheme(4, mode="symmetric_unsigned"), Scheme(3, mode="asymmetric", rounding="trunc")]


@pytest.fixture(scope="module")
def trained():
    train, test = synthetic(512, 256, shape=(1, 8, 8), num_classes=4, seed=0)
    m = models.create("mlp", in_shape=(1, 8, 8), num_classes=4, hidden=(32, 32), seed=0)
    opt = torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        for idx in torch.randperm(512, generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(m(train.x[idx]), train.y[idx]).backward()
            opt.step()
    m.eval()
    return m, train, test


def quantize(m, scheme):
    return scheme.quantize({k: v.detach() for k, v in m.named_parameters()})


def check_threat_model(q, codes, budget, bits):
    diff = torch.bitwise_xor(codes, q.codes)
    per_weight = popcount(diff)
    assert int(per_weight.max()) <= 1
    assert int(per_weight.sum()) <= budget
    assert int((diff.long() >> bits).sum()) == 0  # only the m low bits ever flip
    return int(per_weight.sum())


def test_msb_and_popcount():
    x = torch.tensor([0, 1, 2, 3, 5, 8, 15, 128, 255])
    assert msb(x).tolist() == [0, 1, 2, 2, 4, 8, 8, 128, 128]
    assert popcount(x.to(torch.uint8)).tolist() == [0, 1, 1, 2, 2, 1, 4, 1, 8]


def test_projection_keeps_the_weights_that_moved_most_and_flips_their_msb():
    q = quantize(models.create("mlp", in_shape=(1, 2, 2), num_classes=2, hidden=(2,)), RQUANT8)
    c0 = torch.tensor([7, 8, 3, 0])
    u = torch.tensor([8.2, 7.0, 3.1, 5.0])
    allowed = torch.ones(4, dtype=torch.bool)
    out = project_codes(q, u, c0, allowed, 2)
    # targets 8, 7, 3, 5: differing bits 15, 15, 0, 5; largest moves: index 3 (5.0), 0 (1.2)
    assert out.tolist() == [7 ^ 8, 8, 3, 0 ^ 4]
    assert project_codes(q, u, c0, allowed, 0).tolist() == c0.tolist()
    assert project_codes(q, u, c0, torch.tensor([True, True, True, False]), 1).tolist() == \
        [15, 8, 3, 0]


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_attacks_respect_budget_and_one_bit_per_weight(trained, scheme):
    m, train, _ = trained
    q = quantize(m, scheme)
    x, y = train.x[:128], train.y[:128]
    for budget in (0, 1, 3, 17):
        r = bit_attack(m, q, x, y, budget=budget, steps=4, restarts=2, progress=False,
                       generator=torch.Generator().manual_seed(1))
        assert check_threat_model(q, r.codes, budget, scheme.bits) == r.flips
        rf = random_flips(q, budget, torch.Generator().manual_seed(budget))
        assert check_threat_model(q, rf, budget, scheme.bits) == budget
    res = bfa(m, q, x, y, budgets=[0, 2, 5], progress=False)
    prev = None
    for b in (0, 2, 5):
        assert check_threat_model(q, res[b].codes, b, scheme.bits) == res[b].flips == b
        flipped = torch.bitwise_xor(res[b].codes, q.codes)
        if prev is not None:  # progressive: earlier flips are kept
            assert torch.equal(torch.bitwise_and(flipped, prev), prev)
        prev = flipped


def test_selection_restricts_the_attacked_tensors(trained):
    m, train, _ = trained
    q = quantize(m, RQUANT8)
    name = q.names[0]
    r = bit_attack(m, q, train.x[:64], train.y[:64], budget=10, steps=3, selection=name,
                   progress=False)
    changed = {n for n, d in q.split(torch.bitwise_xor(r.codes, q.codes)).items() if d.any()}
    assert changed <= {name} and r.flips > 0
    with pytest.raises(UserError, match="unknown parameter selection"):
        bit_attack(m, q, train.x[:8], train.y[:8], budget=1, selection="nope")
    with pytest.raises(UserError, match="budget"):
        bit_attack(m, q, train.x[:8], train.y[:8], budget=-1)


def test_attacks_beat_random_flips(trained):
    m, train, test = trained
    res = evaluate_bit_attack(m, test, budgets=[5, 20], method="attack,bfa,random",
                              attack_data=train, n_attack=256, steps=10, random_patterns=10,
                              progress=False)
    r = res["results"]
    assert res["clean_err"] < 0.05
    for i in range(2):
        assert r["attack"]["rerr"][i] >= r["random"]["rerr_max"][i]
        assert r["bfa"]["rerr"][i] >= r["random"]["rerr_max"][i]
        assert r["attack"]["rerr"][i] > res["clean_err"] + 0.1
        assert r["attack"]["flips"][i] <= res["budgets"][i]


def test_targeted_attack_reaches_the_target(trained):
    m, train, test = trained
    res = evaluate_bit_attack(m, test, budgets=[0, 20], method="attack,random", target=2,
                              attack_data=train, n_attack=256, steps=10, progress=False)
    r = res["results"]
    assert r["attack"]["target_rate"][0] < 0.05
    assert r["attack"]["target_rate"][1] > r["random"]["target_rate_max"][1] + 0.2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mlp"
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1",
                 "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    return out


def test_bitattack_command(run_dir, capsys):
    assert main(["bitattack", str(run_dir), "--budget", "0,4,16", "--methods", "attack,bfa,random",
                 "--steps", "3", "--n-attack", "64", "--n-test", "64", "--device", "cpu",
                 "--quiet"]) == 0
    res = json.loads((run_dir / "results" / "bitattack.json").read_text())
    assert res["budgets"] == [0, 4, 16] and set(res["results"]) == {"attack", "bfa", "random"}
    assert res["results"]["attack"]["rerr"][0] == pytest.approx(res["clean_err"])
    assert all(f <= b for f, b in zip(res["results"]["bfa"]["flips"], res["budgets"]))
    assert (run_dir / "results" / "bitattack.png").stat().st_size > 0
    assert "budget" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["--budget", "10,-1"], "--budget"),
    (["--params", "nope"], "unknown parameter selection"),
    (["--methods", "magic"], "unknown bit attack method"),
    (["--target", "99"], "target"),
])
def test_bitattack_bad_input(run_dir, capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["bitattack", str(run_dir), "--device", "cpu", "--quiet",
                               "--n-test", "8", "--budget", "1", *argv]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
