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
from robustlab.evaluate.bitattack import envelope, worst_case
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


def test_gain_projection_takes_the_largest_move_towards_u_and_ranks_by_gain():
    q = quantize(models.create("mlp", in_shape=(1, 2, 2), num_classes=2, hidden=(2,)), RQUANT8)
    c0 = torch.tensor([7, 200, 255, 128, 64])
    u = torch.tensor([9.0, 190.0, 256.0, 127.0, 64.0])
    allowed = torch.ones(5, dtype=torch.bool)
    # moves: up → set the highest 0 bit (7 → 135, +128), down → clear the highest 1 bit
    # (200 → 72, −128), 255 cannot go up, 128 down → 0 (−128), 64 did not move.
    # gains |u − c0|·|move|: 2·128, 10·128, -, 1·128, -
    assert project_codes(q, u, c0, allowed, 5, "gain").tolist() == [135, 72, 255, 0, 64]
    assert project_codes(q, u, c0, allowed, 2, "gain").tolist() == [135, 72, 255, 128, 64]
    assert project_codes(q, u, c0, allowed, 1, "gain").tolist() == [7, 72, 255, 128, 64]
    with pytest.raises(UserError, match="projection"):
        project_codes(q, u, c0, allowed, 1, "nope")


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_attacks_respect_budget_and_one_bit_per_weight(trained, scheme):
    m, train, _ = trained
    q = quantize(m, scheme)
    x, y = train.x[:128], train.y[:128]
    for budget in (0, 1, 3, 17):
        for projection in ("gain", "round"):
            r = bit_attack(m, q, x, y, budget=budget, steps=4, restarts=4, progress=False,
                           projection=projection, generator=torch.Generator().manual_seed(1))
            assert check_threat_model(q, r.codes, budget, scheme.bits) == r.flips
        # started from the flips of a smaller budget (budget growing from them)
        small = bit_attack(m, q, x, y, budget=budget // 2, steps=2, progress=False)
        r = bit_attack(m, q, x, y, budget=budget, steps=3, restarts=3, init=small.codes,
                       progress=False)
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


def test_warm_start_is_never_lost_and_must_be_feasible(trained):
    m, train, _ = trained
    q = quantize(m, RQUANT8)
    x, y = train.x[:128], train.y[:128]
    small = bit_attack(m, q, x, y, budget=6, steps=5, restarts=2, progress=False)
    for steps in (0, 1, 4):  # best iterate: at least as many successes as its start
        r = bit_attack(m, q, x, y, budget=12, steps=steps, init=small.codes, progress=False)
        assert r.hits >= small.hits
        assert r.hits > small.hits or r.loss >= small.loss - 1e-6
    with pytest.raises(UserError, match="init"):
        bit_attack(m, q, x, y, budget=3, init=small.codes, progress=False)  # 6 flips > 3
    two = q.codes.clone()
    two[0] ^= 3  # two bits of one weight
    with pytest.raises(UserError, match="init"):
        bit_attack(m, q, x, y, budget=6, init=two, progress=False)


def test_envelope_is_the_running_max_over_smaller_budgets():
    assert envelope([10, 20, 40], [0.3, 0.2, 0.5]) == ([0.3, 0.3, 0.5], [0, 0, 2])
    # any order, duplicates: b′ ≤ b counts, ties go to the smallest budget
    assert envelope([40, 10, 20, 10], [0.1, 0.4, 0.4, 0.2]) == ([0.4, 0.4, 0.4, 0.4],
                                                               [1, 1, 1, 1])
    g = torch.Generator().manual_seed(0)
    budgets = torch.randint(0, 50, (30,), generator=g).tolist()
    values = torch.rand(30, generator=g).tolist()
    env, at = envelope(budgets, values)
    order = sorted(range(30), key=lambda i: budgets[i])
    assert all(env[i] <= env[j] for i, j in zip(order, order[1:]))  # non-decreasing
    for i in range(30):
        assert env[i] == max(v for b, v in zip(budgets, values) if b <= budgets[i])
        assert budgets[at[i]] <= budgets[i] and values[at[i]] == env[i]


def test_worst_case_per_budget_and_attribution():
    res = {"attack": {"rerr": [0.3, 0.5, 0.4, 0.1], "err": [0.2, 0.4, 0.3, 0.0],
                      "flips": [10, 20, 39, 70]},
           "bfa": {"rerr": [0.4, 0.5, 0.2, 0.1], "err": [0.3, 0.4, 0.1, 0.0],
                   "flips": [10, 20, 40, 80]},
           "random": {"rerr": [0.9, 0.9, 0.9, 0.9]}}  # not an attack of the worst case
    w = worst_case([10, 20, 40, 80], res)
    assert w["rerr"] == [0.4, 0.5, 0.4, 0.1]
    assert w["found_by"] == ["bfa", "attack+bfa", "attack", "attack+bfa"]
    assert w["err"] == [0.3, 0.4, 0.3, 0.0] and w["flips"] == [10, 20, 39, 70]
    assert w["rerr_env"] == [0.4, 0.5, 0.5, 0.5]
    assert w["env_budget"] == [10, 20, 20, 20]
    assert w["env_found_by"] == ["bfa", "attack+bfa", "attack+bfa", "attack+bfa"]
    only = worst_case([10, 20], {"bfa": {"rerr": [0.2, 0.1]}})
    assert only["found_by"] == ["bfa", "bfa"] and only["rerr_env"] == [0.2, 0.2]
    with pytest.raises(ValueError):
        worst_case([10], {"random": {"rerr": [0.5]}})


def test_reported_worst_case_and_envelope(trained):
    m, train, test = trained
    budgets = [12, 0, 3, 6]  # any order
    res = evaluate_bit_attack(m, test, budgets=budgets, method="attack,bfa,random",
                              attack_data=train, n_attack=128, steps=4, random_patterns=2,
                              progress=False)
    r = res["results"]
    w = r["worst"]
    assert w["budget"] == budgets
    order = sorted(range(4), key=lambda i: budgets[i])
    for i, b in enumerate(budgets):
        a, f = r["attack"]["rerr"][i], r["bfa"]["rerr"][i]
        assert w["rerr"][i] == max(a, f) and w["rerr"][i] >= a and w["rerr"][i] >= f
        assert w["found_by"][i] == "+".join(n for n, v in (("attack", a), ("bfa", f))
                                            if v == max(a, f))
        want = max(w["rerr"][j] for j in range(4) if budgets[j] <= b)
        assert w["rerr_env"][i] == want >= w["rerr"][i]
        assert w["env_budget"][i] <= b and w["flips"][i] <= b
        for name in ("attack", "bfa"):
            assert r[name]["flips"][i] <= b
            assert r[name]["rerr_env"][i] == max(r[name]["rerr"][j] for j in range(4)
                                                 if budgets[j] <= b)
    assert all(w["rerr_env"][i] <= w["rerr_env"][j] for i, j in zip(order, order[1:]))
    assert w["rerr"][1] == pytest.approx(res["clean_err"])  # budget 0: the clean model
    assert "worst" not in evaluate_bit_attack(m, test, budgets=[2], method="random",
                                              random_patterns=1, progress=False)["results"]


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
    assert main(["bitattack", str(run_dir), "--budgets", "0,4,16", "--methods", "attack,bfa,random",
                 "--steps", "3", "--n-attack", "64", "--n-test", "64", "--device", "cpu",
                 "--quiet"]) == 0
    res = json.loads((run_dir / "results" / "bitattack.json").read_text())
    assert res["budgets"] == [0, 4, 16]
    assert set(res["results"]) == {"attack", "bfa", "random", "worst"}
    w = res["results"]["worst"]
    assert w["rerr"] == [max(a, b) for a, b in zip(res["results"]["attack"]["rerr"],
                                                   res["results"]["bfa"]["rerr"])]
    assert w["rerr_env"] == [max(w["rerr"][:i + 1]) for i in range(3)]
    assert res["results"]["attack"]["rerr"][0] == pytest.approx(res["clean_err"])
    assert all(f <= b for f, b in zip(res["results"]["bfa"]["flips"], res["budgets"]))
    assert (run_dir / "results" / "bitattack.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "budget" in out and "found by" in out and "envelope" in out


@pytest.mark.parametrize("argv, needle", [
    (["--budgets", "10,-1"], "--budgets"),
    (["--params", "nope"], "unknown parameter selection"),
    (["--methods", "magic"], "unknown bit attack method"),
    (["--target", "99"], "target"),
])
def test_bitattack_bad_input(run_dir, capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["bitattack", str(run_dir), "--device", "cpu", "--quiet",
                               "--n-test", "8", "--budgets", "1", *argv]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
