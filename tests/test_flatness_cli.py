"""`robustlab flatness` end to end on a tiny run, bad input, and the correlation study."""

import json

import pytest
import torch

from robustlab.cli import main
from robustlab.report.flatness_plots import correlation, plot_correlation

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mlp"
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1",
                 "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    return out


def test_flatness_command_writes_results_and_landscape(run_dir, capsys):
    rc = main(["flatness", str(run_dir), "--kind", "worst", "--xi", "0,0.01",
               "--ascent-steps", "2", "--n-test", "32", "--steps", "2", "--landscape", "1d", "--points", "5",
               "--direction", "adversarial", "--device", "cpu", "--quiet"])
    assert rc == 0
    res = json.loads((run_dir / "results" / "flatness-worst.json").read_text())
    assert res["flatness"][0] == 0.0 and res["xi"] == [0.0, 0.01]
    assert res["n"] == 32 and "gap" in res and res["versions"]["torch"]
    land = json.loads((run_dir / "results" / "landscape-1d-adversarial.json").read_text())
    assert len(land["robust_loss"]) == 5
    assert (run_dir / "results" / "landscape-1d-adversarial.png").stat().st_size > 0
    assert main(["flatness", str(run_dir), "--kind", "average", "--xi", "0.05", "--clean",
                 "--samples", "2", "--n-test", "32", "--device", "cpu", "--quiet"]) == 0
    res = json.loads((run_dir / "results" / "flatness-average-clean.json").read_text())
    assert res["variant"] == "clean" and len(res["details"][0]["perturbed_losses"]) == 2


@pytest.mark.parametrize("argv, needle", [
    (["--xi", "-0.1"], "--xi"),
    (["--params", "nope.weight"], "unknown parameter selection"),
    (["--kind", "sideways"], "--kind"),
])
def test_bad_input_is_one_line_exit_2(run_dir, capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        rc = main(["flatness", str(run_dir), "--device", "cpu", "--quiet", *argv])
        raise SystemExit(rc)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_missing_run_is_user_error(tmp_path, capsys):
    assert main(["flatness", str(tmp_path / "none"), "--device", "cpu"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def fake(label, flat, loss, gap):
    return {"flatness_kind": "average", "variant": "robust", "label": label, "loss": loss,
            "gap": gap, "details": [{"xi": 0.5, "flatness": flat}]}


def test_correlation_kendall_tau(tmp_path):
    results = [fake(f"r{i}", f, l, g) for i, (f, l, g) in
               enumerate([(0.1, 1.0, 0.2), (0.2, 1.1, 0.1), (0.3, 1.3, 0.4), (0.4, 1.2, 0.5)])]
    c = plot_correlation(results, tmp_path / "corr.png")
    # loss pairs: 5 concordant, 1 discordant → τ = 4/6; gap: 5 concordant, 1 discordant
    assert c["tau_loss"] == pytest.approx(4 / 6)
    assert c["tau_gap"] == pytest.approx(4 / 6)
    assert c["n"] == 4 and (tmp_path / "corr.png").stat().st_size > 0
    path = tmp_path / "r.json"
    path.write_text(json.dumps(fake("x", 0.5, 2.0, None)))
    c2 = correlation([*results, str(path)])
    assert c2["n"] == 5 and c2["tau_loss"] == pytest.approx(correlation(
        [*results, fake("x", 0.5, 2.0, None)])["tau_loss"])
    assert correlation(results, xi=0.25)["n"] == 0
