"""The HTML report: self-contained, every capability's figures, the summary table, provenance, and
a real render in headless Chromium (skipped when no Chromium is installed)."""

import base64
import json
import re

import pytest
import torch

from robustlab import experiments as ex
from robustlab.cli import main
from robustlab.report import summary
from robustlab.report.browser import find_browser, render
from robustlab.report.html import png_size, write_report

EVERYTHING = {
    "name": "everything",
    "title": "every capability",
    "data": {"name": "synthetic", "options": {"n_train": 384, "n_test": 300}, "val_fraction": 0.2},
    "model": {"name": "convnet", "width": 4, "hidden": 16},
    "train": {"epochs": 2, "lr": 0.05, "batch_size": 32},
    "runs": {
        "normal": {"label": "Normal", "track": {"n": 40, "steps": 1}},
        "at": {"label": "AT", "method": "at", "options": {"attack_steps": 1}},
        "randbet": {"label": "RandBET", "method": "randbet", "options": {"bit_error_rate": 0.01},
                    "train": {"quant": "rquant8", "clip": 0.5}},
    },
    "evaluate": {
        "clean": {},
        "adversarial": {"suite": "linf,l2,frames,patch,distal,corrupt", "n": 30, "steps": 2,
                        "patch_steps": 1, "corruptions": ["gaussian_noise"]},
        "patches": {"locations": ["fixed", "random", "optimized-full"], "n": 30, "steps": 1},
        "biterrors": {"rates": [0.01, 0.1], "patterns": 2, "n": 100},
        "bitattack": {"budgets": [4, 16], "steps": 1, "n_attack": 16, "method": "attack,random",
                      "random_patterns": 1, "n": 100},
        "flatness": {"samples": 1, "n": 30, "attack_settings": {"steps": 1}},
        "landscape": {"points": 3, "n": 30, "attack_settings": {"steps": 1}},
    },
}
# figures: RErr bars + patch bars, 3 confidence histograms, 3 + 3 example grids, bit errors,
# bit attack, flatness bars, flatness correlation, 3 landscapes, training curves
N_FIGURES = 2 + 3 + 6 + 1 + 1 + 2 + 3 + 1


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("report")
        preset = ex.load_preset(EVERYTHING)
        ex.run_preset(preset, out, device="cpu", progress=False, report=False,
                      command="robustlab demo --config everything.yaml")
        path, info = write_report(out)
    finally:
        torch.set_num_threads(n)
    return out, path, info


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)]


def test_report_is_self_contained_with_every_figure(workspace):
    out, path, info = workspace
    page = path.read_text(encoding="utf-8")
    assert info == {"runs": 3, "figures": N_FIGURES, "failures": []}
    imgs = _images(page)
    assert len(imgs) == page.count("<img ") == N_FIGURES
    for data in imgs:
        w, h = png_size(data)
        assert w > 100 and h > 100
    # nothing to fetch: no external URLs, no linked resources, and a policy that forbids them
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<link" not in page and "default-src 'none'" in page
    for section in ("summary", "findings", "adversarial", "biterrors", "bitattack", "flatness",
                    "training", "provenance"):
        if section != "findings":
            assert f'<section id="{section}">' in page


def test_summary_table_every_model_and_metric(workspace):
    out, path, _ = workspace
    page = path.read_text(encoding="utf-8")
    header = re.search(r'<table class="summary"><thead><tr>(.*?)</tr>', page).group(1)
    assert re.findall(r"<th>(.*?)</th>", header) == ["Normal", "AT", "RandBET"]
    for metric in ("Err", "RErr linf", "RErr@99% linf", "FPR@99% distal", "Err@99% corrupt",
                   "RErr patch optimized-full", "Err q", "RErr p=1%", "RErr p=10%", "RErr 16 bits",
                   "RErr 16 bits (random)", "average flatness ξ=0.5", "robust loss gap",
                   "train Err", "best val RErr"):
        assert f'<td class="name">{metric}</td>' in page, metric
    # the clean error cell of every run is the result file's value, in %
    row = re.search(r'<td class="name">Err</td>(.*?)</tr>', page).group(1)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    want = [f"{100 * json.loads((out / r / 'results' / 'clean.json').read_text())['err']:.1f}"
            for r in ("normal", "at", "randbet")]
    assert cells == want


def test_provenance_commands_and_versions(workspace):
    out, path, _ = workspace
    page = path.read_text(encoding="utf-8")
    assert "robustlab demo --config everything.yaml" in page
    assert "robustlab train --data synthetic" in page and "--method randbet" in page
    assert "robustlab.evaluate.biterrors.bit_errors(model, test" in page
    assert f"<td>{torch.__version__}</td>" in page


def test_renders_in_headless_chromium(workspace, tmp_path):
    if find_browser() is None:
        pytest.skip("Chromium is not installed (Debian package `chromium`); cannot render the report")
    out, path, _ = workspace
    shot = tmp_path / "shot.png"
    r = render(path, screenshot=shot, height=2000)
    assert r["ready"], r
    assert r["images"] == N_FIGURES and len(r["sizes"]) == N_FIGURES
    assert all(w > 0 and h > 0 for w, h in r["sizes"])
    assert r["errors"] == [] and r["console"] == []
    assert png_size(shot.read_bytes()) == (1400, 2000)


def test_broken_results_do_not_break_the_report(workspace, tmp_path):
    import shutil

    out, _, _ = workspace
    copy = tmp_path / "copy"
    shutil.copytree(out / "normal", copy / "normal")
    (copy / "normal" / "results" / "biterrors.json").write_text(json.dumps(
        {"rates": [0.01], "rerr": "not a dict", "patterns": 1}))
    (copy / "normal" / "results" / "garbage.json").write_text("{not json")
    path, info = write_report(copy)
    assert info["runs"] == 1 and len(info["failures"]) == 1
    assert "RErr vs bit error rate" in info["failures"][0]
    page = path.read_text(encoding="utf-8")
    assert "Figures that could not be drawn" in page and "RErr p=1%" not in page


def test_report_cli_on_runs_made_by_other_commands(tmp_path, capsys):
    run = tmp_path / "runs" / "a"
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "2", "--quiet",
                 "--device", "cpu", "--out", str(run)]) == 0
    assert main(["eval", str(run)]) == 0
    capsys.readouterr()
    target = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "runs"), "--out", str(target), "--title", "T"]) == 0
    assert f"report of 1 run(s) with 1 figure(s) written to {target}" in capsys.readouterr().out
    page = target.read_text(encoding="utf-8")
    assert "<title>T</title>" in page and "Training curves" in page
    assert "a/config.yaml" in page and "model: mlp" in page  # the run's own settings are shown
    assert re.search(r'<td class="name">Err</td><td>\d+\.\d</td>', page)
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no runs under" in err and len(err.splitlines()) == 1
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_result_metrics_exact():
    bit = {"rates": [0.01, 0.1], "rerr": {"mean": [0.2, 0.5]}, "clean_err": 0.1, "patterns": 5}
    assert summary.result_metrics("biterrors", bit) == {"Err q": 0.1, "RErr p=1%": 0.2, "RErr p=10%": 0.5}
    assert summary.result_metrics("own", bit) == {"own/Err q": 0.1, "own/RErr p=1%": 0.2,
                                                  "own/RErr p=10%": 0.5}
    adv = {"clean": {"err": 0.1, "tau": {"0.99": 0.9, "0.98": 0.8}},
           "threats": {"linf": {"threat": "linf", "rerr": 0.6, "auc": 0.7,
                                "at": {"0.99": {"rerr": 0.3, "fpr": 0.2}, "0.98": {"rerr": 0.4, "fpr": 0.3}}},
                       "distal": {"threat": "distal", "at": {"0.99": {"fpr": 0.05}}},
                       "corrupt": {"threat": "corrupt", "mean_err": 0.25, "at": {"0.99": {"err": 0.15}}}}}
    assert summary.result_metrics("adversarial", adv) == {
        "RErr linf": 0.6, "RErr@99% linf": 0.3, "FPR@99% linf": 0.2, "AUC linf": 0.7,
        "FPR@99% distal": 0.05, "Err corrupt": 0.25, "Err@99% corrupt": 0.15,
        "Err (attacked split)": 0.1}
    att = {"budgets": [10, 20], "results": {"attack": {"budget": [10, 20], "rerr": [0.3, 0.9]},
                                            "random": {"budget": [10, 20], "rerr": [0.1, 0.1]}}}
    assert summary.result_metrics("bitattack", att) == {
        "RErr 10 bits": 0.3, "RErr 20 bits": 0.9, "RErr 10 bits (random)": 0.1, "RErr 20 bits (random)": 0.1}
    flat = {"flatness_kind": "worst", "variant": "robust", "loss": 1.5, "gap": 0.25,
            "details": [{"xi": 0.003, "flatness": 0.7}]}
    assert summary.result_metrics("flatness-best", flat) == {
        "flatness-best/worst flatness ξ=0.003": 0.7, "flatness-best/robust loss": 1.5,
        "flatness-best/robust loss gap": 0.25}
    assert summary.result_metrics("eval", {"err": 0.125, "confusion": [[1]]}) == {"Err": 0.125}
    assert summary.history_metrics([{"epoch": 1, "train_err": 0.5, "val_robust_err": 0.4},
                                    {"epoch": 2, "train_err": 0.3, "val_robust_err": 0.45}]) == {
        "train Err": 0.3, "best val RErr": 0.4, "last val RErr": 0.45}
    assert summary.rate_label(0.005) == "0.5%" and summary.rate_label(0.0001) == "0.01%"


def test_png_size_rejects_non_png():
    with pytest.raises(ValueError):
        png_size(b"GIF89a" + b"\0" * 30)
