"""Bit error evaluation: RErr against a brute-force recomputation, statistics, chips, CLI."""

import copy
import json

import pytest
import torch
from clihelp import run_cli

from robustlab import biterrors as be
from robustlab import data, models
from robustlab.cli import main
from robustlab.errors import UserError
from robustlab.evaluate.biterrors import (
    RATES_28,
    RATES_32,
    bit_errors,
    chip_errors,
    default_rates,
)
from robustlab.quant import NORMAL8, RQUANT8, Scheme
from robustlab.train import fit


@pytest.fixture(scope="module")
def trained():
    train, test = data.synthetic(256, 96, shape=(1, 6, 6), num_classes=4, seed=1)
    model = models.create("mlp", dataset=train, hidden=(12,), seed=0)
    fit(model, train, epochs=4, lr=0.01, batch_size=32, optimizer="adam", device="cpu",
        progress=False)  # about 15% test error: clean mistakes matter for RErr
    return model.eval(), test


def _brute_force_wrong(model, test, scheme, seed, rate):
    """Independent recomputation: per-bit uniforms from the hash, arithmetic bit flips, the
    dequantization formula, and a deep-copied model loaded with the perturbed weights."""
    params = dict(model.named_parameters())
    q = scheme.quantize({k: v.detach() for k, v in params.items()})
    m = scheme.bits
    offset = 0
    clean_sd, pert_sd = {}, {}
    for t, (name, w) in enumerate(params.items()):
        n = w.numel()
        codes = q.codes[offset:offset + n].to(torch.int64)
        counters = (torch.arange(offset, offset + n)[:, None] * 8 + torch.arange(m))
        flip = (be.hash_counters(seed, counters).double() / 2**32) < rate
        pert = codes.clone()
        for j in range(m):
            bit = (codes >> j) & 1
            pert = pert + flip[:, j].to(torch.int64) * (1 - 2 * bit) * (1 << j)
        for sd, c in ((clean_sd, codes), (pert_sd, pert)):
            if scheme.mode == "symmetric_signed":
                c = c ^ (1 << (m - 1))
            v = q.base[t] + c.double() * q.delta[t]
            sd[name] = torch.clamp(v, q.lo[t], q.hi[t]).float().view(w.shape)
        offset += n
    out = []
    for sd in (clean_sd, pert_sd):
        net = copy.deepcopy(model)
        net.load_state_dict(sd, strict=False)
        with torch.no_grad():
            out.append(net(test.x).argmax(1) != test.y)
    return out


@pytest.mark.parametrize("scheme", [RQUANT8, NORMAL8, Scheme(4)], ids=str)
def test_rerr_equals_brute_force(trained, scheme):
    model, test = trained
    rates = [0.005, 0.05, 0.2]
    res = bit_errors(model, test, quant=scheme, rates=rates, patterns=3, seed=100,
                     batch_size=40, progress=False)
    for k in range(3):
        for r, p in enumerate(rates):
            wrong_clean, wrong = _brute_force_wrong(model, test, scheme, 100 + k, p)
            assert res["clean_err"] == pytest.approx(wrong_clean.double().mean().item(), abs=1e-12)
            assert res["err"]["values"][k][r] == pytest.approx(wrong.double().mean().item(), abs=1e-6)
            assert res["rerr"]["values"][k][r] == pytest.approx(
                (wrong | wrong_clean).double().mean().item(), abs=1e-6)


def test_rerr_at_least_err_and_statistics(trained):
    model, test = trained
    res = bit_errors(model, test, rates=[0.0, 0.01, 0.1, 0.3], patterns=4, progress=False)
    vals = torch.tensor(res["rerr"]["values"], dtype=torch.float64)
    errs = torch.tensor(res["err"]["values"], dtype=torch.float64)
    assert bool((vals >= res["clean_err"] - 1e-7).all()) and bool((vals >= errs - 1e-7).all())
    # p = 0: no bit flips, so Err = RErr = clean Err for every pattern
    assert vals[:, 0].tolist() == pytest.approx([res["clean_err"]] * 4)
    assert errs[:, 0].tolist() == pytest.approx([res["clean_err"]] * 4)
    assert res["rerr"]["mean"] == pytest.approx(vals.mean(0).tolist())
    assert res["rerr"]["std"] == pytest.approx(vals.std(0, correction=1).tolist())
    assert res["rerr"]["min"] == pytest.approx(vals.min(0).values.tolist())
    assert res["rerr"]["max"] == pytest.approx(vals.max(0).values.tolist())
    assert res["seeds"] == [100, 103] and res["patterns"] == 4 and res["n_test"] == len(test)
    assert res["rerr"]["mean"][-1] > res["rerr"]["mean"][1]  # 30% bit errors hurt
    assert res["timing"]["weights"] == sum(p.numel() for p in model.parameters())
    one = bit_errors(model, test, rates=[0.1], patterns=1, progress=False)
    assert one["rerr"]["std"] == [0.0]


def test_evaluation_is_deterministic_and_leaves_model_untouched(trained):
    model, test = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    a = bit_errors(model, test, rates=[0.05], patterns=3, progress=False)
    assert model.training  # mode restored
    model.eval()
    b = bit_errors(model, test, rates=[0.05], patterns=3, progress=False, batch_size=7)
    assert a["rerr"]["values"] == b["rerr"]["values"] and a["err"]["values"] == b["err"]["values"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_default_rates_and_bad_input(trained):
    model, test = trained
    assert default_rates((1, 28, 28)) == RATES_28 and default_rates((3, 32, 32)) == RATES_32
    assert RATES_28[0] == 0.001 and RATES_28[-1] == 0.2 and RATES_32[-1] == 0.025
    for kwargs, msg in [(dict(patterns=0), "patterns"), (dict(rates=[1.5]), "bit error rate"),
                        (dict(rates=[-0.1]), "bit error rate"), (dict(rates=[]), "no bit error"),
                        (dict(seed=-1), "seed"), (dict(batch_size=0), "batch size")]:
        with pytest.raises(UserError, match=msg):
            bit_errors(model, test, **{"rates": [0.01], **kwargs})


def test_uniform_chip_equals_random_patterns(trained):
    model, test = trained
    p = 0.03
    chip = be.chip_map_from_dict({"rows": 5, "cols": 11, "flip_prob": p})
    c = chip_errors(model, test, chip, offsets=[0, 7], patterns=3, progress=False)
    r = bit_errors(model, test, rates=[p], patterns=3, progress=False)
    rerr = torch.tensor(c["rerr"]["values"], dtype=torch.float64)  # K × offsets
    for o in range(2):  # the layout offset does not matter on a uniform chip
        assert rerr[:, o].tolist() == [v[0] for v in r["rerr"]["values"]]
    assert c["clean_err"] == r["clean_err"]
    assert abs(c["bit_error_rate"]["mean"][0] - p) < 0.01
    with pytest.raises(UserError, match="offsets"):
        chip_errors(model, test, chip, offsets=[-1], patterns=1)


def test_chip_with_stuck_cells_on_example(trained):
    model, test = trained
    chip = be.load_chip_map(be.example("synthetic_chip_map.json"))
    res = chip_errors(model, test, chip, offsets=[0, 1000], patterns=2, progress=False)
    assert res["chip"]["name"] == "synthetic-chip-0.70V"
    assert min(min(v) for v in res["rerr"]["values"]) >= res["clean_err"] - 1e-7
    assert 0 < res["bit_error_rate"]["mean"][0] < 0.05


# ---- command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    paths = []
    for name, extra in (("plain", []), ("rq", ["--quant", "rquant8", "--clip", "0.1"])):
        code = main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--quiet",
                     "--device", "cpu", "--subset", "128", "--out", str(base / name), *extra])
        assert code == 0
        paths.append(base / name)
    return paths


def test_cli_biterrors_runs_and_plot(runs, tmp_path, capsys):
    plot = tmp_path / "all.png"
    code, out, err = run_cli(capsys, "biterrors", *runs, "--rates", "0.1%,0.01,10%", "--patterns",
                             "3", "--n-test", "100", "--plot", plot, "--quiet", "--device", "cpu")
    assert code == 0, err
    for run in runs:
        res = json.loads((run / "results" / "biterrors.json").read_text())
        assert res["rates"] == [0.001, 0.01, 0.1] and res["patterns"] == 3 and res["n_test"] == 100
        assert res["kind"] == "biterrors" and "versions" in res
        assert len(res["rerr"]["values"]) == 3 and all(len(v) == 3 for v in res["rerr"]["values"])
        assert (run / "results" / "biterrors.png").stat().st_size > 1000
    # the quantization-aware run is evaluated with its own scheme
    assert json.loads((runs[1] / "results" / "biterrors.json").read_text())["scheme"] == RQUANT8.to_dict()
    assert plot.stat().st_size > 1000 and "RErr" in out


def test_cli_biterrors_chip_and_export(runs, tmp_path, capsys):
    chip = be.example("synthetic_chip_map.json")
    npz = tmp_path / "codes.npz"
    code, out, err = run_cli(capsys, "biterrors", runs[0], "--rates", "0.01", "--patterns", "2",
                             "--chip", chip, "--offsets", "0,64", "--export", npz, "--n-test", "64",
                             "--quant", "rquant4", "--quiet", "--device", "cpu")
    assert code == 0, err
    res = json.loads((runs[0] / "results" / "biterrors_chip.json").read_text())
    assert res["offsets"] == [0, 64] and res["scheme"]["bits"] == 4
    from robustlab.quant import Quantized

    q = Quantized.load_npz(npz)
    assert q.scheme.bits == 4 and int(q.codes.max()) <= 15


@pytest.mark.parametrize("extra,message", [
    (["--rates", "1.5"], "bit error rate 1.5 is out of range"),
    (["--rates", "-0.1"], "out of range"),
    (["--rates", "abc"], "is not a number"),
    (["--rates", "200%"], "out of range"),
    (["--patterns", "0"], "--patterns: 0 is out of range"),
    (["--quant", "rquant9"], "bits 9 must be an integer in 2..8"),
    (["--quant", "rquant1"], "bits 1 must be"),
    (["--quant", "wat"], "unknown quantization scheme"),
    (["--offsets", "-3", "--chip", "x.json"], "out of range"),
    (["--chip", "nonexistent.json"], "not found"),
])
def test_cli_biterrors_bad_input(runs, capsys, extra, message):
    code, out, err = run_cli(capsys, "biterrors", runs[0], "--quiet", *extra)
    assert code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_biterrors_bad_chip_and_runs(runs, tmp_path, capsys):
    bad = tmp_path / "chip.json"
    bad.write_text(json.dumps({"rows": 2, "cols": 2, "flip_prob": 2.0}))
    for argv, message in [([runs[0], "--chip", bad], "flip_prob values must be in [0, 1]"),
                          ([tmp_path / "norun"], "does not exist"),
                          ([*runs, "--export", tmp_path / "x.npz"], "exactly one RUN")]:
        code, _, err = run_cli(capsys, "biterrors", *argv, "--quiet")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
