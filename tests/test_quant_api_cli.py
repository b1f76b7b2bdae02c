"""One trained model, one answer: `rl.evaluate.*` on the model a quantization-aware `fit`
returns give exactly the numbers the CLI writes for the saved run (issue 14, the predictor core).

Before the predictor core, the Python API measured the float weights of such a model while the
CLI measured the dequantized ones; both now go through `rl.models.Predictor`."""

import json
import math

import pytest
import torch
from clihelp import run_cli

import robustlab as rl
from robustlab.quant import RQUANT4

SKIP = ("timing", "seconds", "time_s", "versions", "examples_path", "examples", "wall_s")


def _numbers(d, prefix=""):
    """Every number in a (JSON) result, by its path, timings left out."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            if not any(s in str(k) for s in SKIP):
                out.update(_numbers(v, f"{prefix}/{k}"))
    elif isinstance(d, (list, tuple)):
        for i, v in enumerate(d):
            out.update(_numbers(v, f"{prefix}/{i}"))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix] = d
    return out


def _same(py: dict, cli: dict) -> None:
    a = _numbers(json.loads(json.dumps(py, default=str)))
    b = _numbers({k: cli[k] for k in py if k in cli})
    assert a, "no numbers to compare"
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    bad = [k for k in a if not (a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])))]
    assert not bad, [(k, a[k], b[k]) for k in bad[:5]]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    run = tmp_path_factory.mktemp("qfit") / "run"
    train, test = rl.data.load("synthetic")
    model = rl.models.create("mlp", dataset=train, seed=0, hidden=(16,))
    rl.train.fit(model, train, quant=RQUANT4, epochs=2, batch_size=64, lr=0.1, device="cpu",
                 out=run, meta={"data": {"name": "synthetic"}}, log=False, progress=False)
    assert rl.models.quant_of(model) == RQUANT4
    return model, test, run


def _result(run, name):
    return json.loads((run / "results" / f"{name}.json").read_text())


def test_bit_errors_api_equals_cli(fitted, capsys):
    model, test, run = fitted
    code, _, err = run_cli(capsys, "biterrors", run, "--rates", "0.01,0.1", "--patterns", "2",
                           "--seed", "100", "--quiet", "--device", "cpu")
    assert code == 0, err
    py = rl.evaluate.bit_errors(model, test, rates=[0.01, 0.1], patterns=2, seed=100,
                                progress=False)
    assert py["scheme"]["bits"] == 4
    _same(py, _result(run, "biterrors"))


def test_flatness_api_equals_cli(fitted, capsys):
    model, test, run = fitted
    code, _, err = run_cli(capsys, "flatness", run, "--xi", "0.3", "--samples", "2", "--n-test",
                           "40", "--steps", "2", "--no-train", "--quiet", "--device", "cpu")
    assert code == 0, err
    py = rl.evaluate.flatness(model, test, xi=0.3, samples=2, n_test=40,
                              attack_settings={"steps": 2}, progress=False)
    _same(py, _result(run, "flatness-average"))
    assert py["loss"] != pytest.approx(float(torch.nn.functional.cross_entropy(
        model.eval()(test.x[:40]), test.y[:40]).detach()), abs=1e-7)  # not the float weights' clean loss


def test_adversarial_api_equals_cli(fitted, capsys):
    model, test, run = fitted
    code, _, err = run_cli(capsys, "attack", run, "--suite", "linf", "--n-test", "40",
                           "--attacks", "pgd", "--steps", "3", "--no-figures", "--quiet",
                           "--device", "cpu")
    assert code == 0, err
    cli = _result(run, "attack")
    py = rl.evaluate.adversarial(model, test, "linf", n_test=40, attacks="pgd", steps=3,
                                 dataset="synthetic", progress=False)
    _same(py, cli)


def test_bit_attack_api_equals_cli(fitted, capsys):
    model, test, run = fitted
    train, _ = rl.data.load("synthetic")
    code, _, err = run_cli(capsys, "bitattack", run, "--budgets", "0,5", "--methods",
                           "attack,bfa,random", "--steps", "2", "--restarts", "2", "--n-attack",
                           "32", "--random-patterns", "2", "--quiet", "--device", "cpu")
    assert code == 0, err
    py = rl.evaluate.bit_attack(model, test, budgets=[0, 5], method="attack,bfa,random", steps=2,
                                restarts=2, n_attack=32, random_patterns=2, attack_data=train,
                                progress=False)
    assert py["scheme"]["bits"] == 4
    _same(py, _result(run, "bitattack"))
