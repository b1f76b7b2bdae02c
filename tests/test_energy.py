"""Voltage → (bit error rate, energy) curves, the lowest safe voltage, and `robustlab energy`."""

import json

import pytest
from clihelp import run_cli

from robustlab import biterrors as be
from robustlab import data, models
from robustlab.cli import main
from robustlab.errors import UserError
from robustlab.evaluate.biterrors import bit_errors, energy
from robustlab.train import fit


def _curve(tmp_path, text, name="curve.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_example_curve():
    c = be.load_curve(be.example("synthetic_energy_curve.csv"))
    assert c.voltage[0] == 1.0 and c.voltage[-1] == 0.6
    assert c.voltage == sorted(c.voltage, reverse=True)
    assert c.bit_error_rate[0] == 0.0 and c.bit_error_rate == sorted(c.bit_error_rate)
    assert c.relative_energy(4) == pytest.approx(0.64)
    assert "SYNTHETIC" in c.description


def test_curve_sorted_extra_columns_and_comments(tmp_path):
    c = be.load_curve(_curve(tmp_path, "# mine\nenergy,voltage,note,bit_error_rate\n"
                                       "0.5,0.7,x,0.01\n2.0,1.0,y,0\n\n1.0,0.8,z,0.001\n"))
    assert c.voltage == [1.0, 0.8, 0.7] and c.bit_error_rate == [0.0, 0.001, 0.01]
    assert c.energy == [2.0, 1.0, 0.5] and c.relative_energy(2) == 0.25
    assert c.description == "mine"


def test_safe_voltage_closed_form():
    c = be.EnergyCurve([1.0, 0.9, 0.8, 0.7], [0.0, 0.001, 0.01, 0.02], [1.0, 0.8, 0.6, 0.5])
    # 0.7 V would pass on its own, but 0.8 V fails: the safe range ends at 0.9 V
    v = be.safe_voltage(c, [0.10, 0.105, 0.2, 0.105], clean_err=0.10, tolerance=0.01)
    assert v["safe"] == [True, True, False, True]
    assert v["voltage"] == 0.9 and v["bit_error_rate"] == 0.001
    assert v["energy_saved"] == pytest.approx(0.2) and v["relative_energy"] == pytest.approx(0.8)
    # exactly at the tolerance is still safe
    assert be.safe_voltage(c, [0.1, 0.11, 0.11, 0.11], 0.10, 0.01)["voltage"] == 0.7
    none = be.safe_voltage(c, [0.2, 0.2, 0.2, 0.2], 0.1, 0.01)
    assert none["voltage"] is None and none["energy_saved"] == 0.0
    with pytest.raises(UserError, match="tolerance"):
        be.safe_voltage(c, [0.1] * 4, 0.1, -0.01)


@pytest.mark.parametrize("text,message", [
    ("", "header must name columns"),
    ("volts,ber,e\n1,0,1\n", "header must name columns"),
    ("voltage,bit_error_rate,energy\n", "no data rows"),
    ("voltage,bit_error_rate,energy\n1.0,0,1\n0.9,1.5,0.8\n", "bit_error_rate 1.5 in row 3"),
    ("voltage,bit_error_rate,energy\n1.0,0,1\n0.9,-0.1,0.8\n", "must be in [0, 1]"),
    ("voltage,bit_error_rate,energy\n1.0,0,0\n", "energy 0.0 in row 2 must be > 0"),
    ("voltage,bit_error_rate,energy\n-1.0,0,1\n", "voltage -1.0 in row 2 must be > 0"),
    ("voltage,bit_error_rate,energy\n1.0,0,1\n1.0,0.1,0.5\n", "distinct"),
    ("voltage,bit_error_rate,energy\n1.0,zero,1\n", "is not three numbers"),
    ("voltage,bit_error_rate,energy\n1.0,0\n", "is not three numbers"),
])
def test_malformed_curves(tmp_path, text, message):
    with pytest.raises(UserError, match=None) as e:
        be.load_curve(_curve(tmp_path, text))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_curve(tmp_path):
    with pytest.raises(UserError, match="not found"):
        be.load_curve(tmp_path / "none.csv")


@pytest.fixture(scope="module")
def trained():
    train, test = data.synthetic(256, 80, shape=(1, 6, 6), num_classes=4, seed=2)
    model = models.create("mlp", dataset=train, hidden=(12,), seed=0)
    fit(model, train, epochs=5, lr=0.1, batch_size=32, device="cpu", progress=False)
    return model.eval(), test


def test_energy_matches_bit_error_sweep(trained):
    model, test = trained
    curve = be.EnergyCurve([1.0, 0.9, 0.8, 0.7], [0.0, 0.001, 0.05, 0.3], [1.0, 0.8, 0.6, 0.5])
    res = energy(model, test, curve, tolerance=0.02, patterns=3)
    sweep = bit_errors(model, test, rates=curve.bit_error_rate, patterns=3, progress=False)
    assert [r["rerr_mean"] for r in res["voltages"]] == sweep["rerr"]["mean"]
    expect = be.safe_voltage(curve, sweep["rerr"]["mean"], sweep["clean_err"], 0.02)
    assert res["lowest_safe_voltage"] == expect["voltage"]
    assert res["energy_saved"] == expect["energy_saved"]
    assert res["voltages"][0]["rerr_mean"] == pytest.approx(res["clean_err"])  # p = 0
    loose = energy(model, test, curve, tolerance=1.0, patterns=2)
    assert loose["lowest_safe_voltage"] == 0.7 and loose["energy_saved"] == pytest.approx(0.5)
    with pytest.raises(UserError, match="tolerance"):
        energy(model, test, curve, tolerance=-1.0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("energy") / "run"
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--quiet",
                 "--device", "cpu", "--subset", "128", "--out", str(run)]) == 0
    return run


def test_cli_energy(run_dir, capsys):
    code, out, err = run_cli(capsys, "energy", run_dir, "--curve",
                             be.example("synthetic_energy_curve.csv"), "--tolerance", "1.0",
                             "--patterns", "2", "--n-test", "64", "--quiet", "--device", "cpu")
    assert code == 0, err
    res = json.loads((run_dir / "results" / "energy.json").read_text())
    assert res["kind"] == "energy" and res["tolerance"] == pytest.approx(0.01)
    assert res["tolerance_pp"] == 1.0 and len(res["voltages"]) == 9 and res["n_test"] == 64
    safe = [row["safe"] for row in res["voltages"]]
    if res["lowest_safe_voltage"] is not None:
        i = [row["voltage"] for row in res["voltages"]].index(res["lowest_safe_voltage"])
        assert all(safe[: i + 1]) and (i + 1 == len(safe) or not safe[i + 1])
        assert res["energy_saved"] == pytest.approx(1 - res["voltages"][i]["relative_energy"])
    assert (run_dir / "results" / "energy.png").stat().st_size > 1000
    assert "lowest safe voltage" in out or "no safe voltage" in out


def test_cli_energy_bad_input(run_dir, tmp_path, capsys):
    bad = _curve(tmp_path, "voltage,bit_error_rate,energy\n1.0,2.0,1\n")
    example = be.example("synthetic_energy_curve.csv")
    for argv, message in [
        (["--curve", bad], "bit_error_rate 2.0 in row 2 must be in [0, 1]"),
        (["--curve", tmp_path / "none.csv"], "not found"),
        (["--curve", example, "--tolerance", "-1"], "--tolerance: -1 is out of range"),
        (["--curve", example, "--patterns", "0"], "--patterns: 0 is out of range"),
        (["--curve", example, "--quant", "normal12"], "bits 12 must be an integer in 2..8"),
        ([], "the following arguments are required: --curve"),
    ]:
        code, _, err = run_cli(capsys, "energy", run_dir, "--quiet", *argv)
        assert code == 2, (argv, err)
        assert message in err and len(err.strip().splitlines()) == 1
