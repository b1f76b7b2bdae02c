"""The HTML report: self-contained, every capability's figures, the summary table, provenance, and
a real render in headless Chromium (skipped when no Chromium is installed)."""

import base64
import html
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
        "normal": {"label": "Normal", "track": {"n_test": 40, "steps": 1}},
        "at": {"label": "AT", "method": "at", "options": {"attack_steps": 1}},
        "randbet": {"label": "RandBET", "method": "randbet", "options": {"bit_error_rate": 0.01},
                    "train": {"quant": "rquant8", "clip": 0.5}},
    },
    "evaluate": {
        "clean": {},
        "adversarial": {"suite": "linf,l2,frames,patch,distal,corrupt", "n_test": 30, "steps": 2,
                        "patch_steps": 1, "corruptions": ["gaussian_noise"]},
        "patches": {"locations": ["fixed", "random", "optimized-full"], "n_test": 30, "steps": 1},
        "biterrors": {"rates": [0.01, 0.1], "patterns": 2, "n_test": 100},
        "bitattack": {"budgets": [4, 16], "steps": 1, "n_attack": 16, "methods": "attack,random",
                      "random_patterns": 1, "n_test": 100},
        "flatness": {"samples": 1, "n_test": 30, "steps": 1},
        "landscape": {"points": 3, "n_test": 30, "steps": 1},
    },
}
# figures: headline scatter, RErr bars + patch bars, one confidence grid, 3 + 3 example grids,
# bit errors, bit attack, flatness bars, flatness correlation, one landscape figure, training
N_FIGURES = 1 + 2 + 1 + 6 + 1 + 1 + 2 + 1 + 1


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
    for section in ("headline", "summary", "findings", "adversarial", "biterrors", "bitattack",
                    "flatness",
                    "training", "provenance"):
        if section != "findings":
            assert f'<section id="{section}">' in page


def test_summary_table_every_model_and_metric(workspace):
    out, path, _ = workspace
    page = path.read_text(encoding="utf-8")
    header = re.search(r'<table class="summary"><thead><tr>(.*?)</tr>', page).group(1)
    assert re.findall(r"<th>(.*?)</th>", header)[-3:] == ["Normal", "AT", "RandBET"]
    for metric in ("Err", "RErr linf", "RErr@99% linf", "FPR@99% distal", "Err@99% corrupt",
                   "RErr patch optimized-full", "Err q", "RErr p=1%", "RErr p=10%", "RErr 16 bits",
                   "RErr 16 bits (random)", "average flatness ξ=0.5", "robust loss gap",
                   "train Err", "best val RErr"):
        assert f'data-key="{metric}"' in page, metric
    # the clean error cell of every run is the result file's value, in %, with its interval
    row = re.search(r'<tr data-key="Err">(.*?)</tr>', page).group(1)
    cells = re.findall(r'<span class="v">([^<]*)</span><span class="iv">([^<]*)</span>', row)
    from robustlab.report.stats import wilson

    want = []
    for r in ("normal", "at", "randbet"):
        res = json.loads((out / r / "results" / "clean.json").read_text())
        lo, hi = wilson(round(res["err"] * res["n"]), res["n"])
        want.append((f"{100 * res['err']:.1f}", f"[{100 * lo:.1f}, {100 * hi:.1f}]"))
    assert cells == want
    # labels say what a number is: threat, radius, and on how many images
    eps = json.loads((out / "at" / "results" / "adversarial.json").read_text())["threats"]["linf"]["eps"]
    row = re.search(r'<tr[^>]*data-key="RErr@99% linf">(.*?)</tr>', page).group(1)
    assert f"RErr@99% L∞ ε={eps:.3g} (%)" in row and "images</td>" in row


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
    assert "Figures that could not be drawn" in page and 'data-key="RErr p=1%"' not in page


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
    assert re.search(r'<tr data-key="Err">.*?<span class="v">\d+\.\d</span>', page)
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


def test_sections_and_setting_lines_come_from_the_specs():
    from typing import Any, ClassVar

    from robustlab.tasks.spec import REGISTRY, EvalSpec, register

    assert [summary.group_of(k) for k in ("clean", "adversarial", "patches", "biterrors", "chip",
                                          "energy", "bitattack", "flatness", "landscape", "nope")] \
        == ["clean", "input attacks", "input attacks", "random bit errors", "random bit errors",
            "random bit errors", "adversarial bit errors", "flatness", "flatness", "other"]

    class Blur(EvalSpec):  # a new kind: its section, metrics and setting line from its class
        kind: ClassVar[str] = "blur-toy"
        group: ClassVar[str] = "input attacks"

        def metrics(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
            return {f"{self.prefix(name)}RErr blur": result["rerr"]}

        def setting_line(self, result: dict[str, Any]) -> str:
            return f"blur on n={result['n']}"

    register(Blur)
    try:
        blur = {"kind": "blur-toy", "schema": 1, "settings": {}, "rerr": 0.25, "n": 8}
        clean = {"kind": "clean", "schema": 1, "settings": {}, "err": 0.125, "n": 8}
        groups = summary.value_groups({"other-blur": blur, "blur-toy": blur, "clean": clean}, [])
        assert {g: list(m) for g, m in groups.items()} == {
            "clean": ["Err"], "input attacks": ["RErr blur", "other-blur/RErr blur"]}
        runs = [{"label": "a", "results": {"blur-toy": blur, "clean": clean}, "history": []}]
        assert summary.section_settings(runs) == {"input attacks": "blur on n=8",
                                                  "clean": "n=8 test images"}
    finally:
        REGISTRY.pop("blur-toy", None)


def test_figure_sections_come_from_the_specs(tmp_path):
    """A new kind's figures go to its `group`'s section: by default its per-result `figures()`,
    or its own cross-run `report_figures` (sorted by `order`); a new group gets its own section
    before 'other'; a kind whose figures fail leaves a note, not a broken report."""
    from pathlib import Path
    from typing import Any, ClassVar

    from robustlab.report import html as report_html
    from robustlab.tasks.spec import REGISTRY, EvalSpec, register

    class Blur(EvalSpec):  # default: each result's own figure files
        kind: ClassVar[str] = "blur-toy"
        title: ClassVar[str] = "blur"
        group: ClassVar[str] = "input attacks"

        def figures(self, result: dict[str, Any], folder: Path) -> list[Path]:
            (folder / "b.png").write_bytes(f"blur {result['n']}".encode())
            (folder / "b.txt").write_text("not a figure")
            return [folder / "b.png", folder / "b.txt"]

    class Rain(EvalSpec):  # one figure across the models, a later one first in the code
        kind: ClassVar[str] = "rain-toy"
        group: ClassVar[str] = "weather"

        @classmethod
        def report_figures(cls, items: list[tuple[str, dict[str, Any]]], name: str, figs: Any
                           ) -> list[dict[str, Any]]:
            return [figs.make(f"late ({name})", "c", lambda p: p.write_bytes(b"late"), order=2),
                    figs.make(f"rain ({name})", "c", lambda p: p.write_bytes(
                        ",".join(lab for lab, _ in items).encode()))]

    class Hail(Rain):
        kind: ClassVar[str] = "hail-toy"

        @classmethod
        def report_figures(cls, items: list[tuple[str, dict[str, Any]]], name: str, figs: Any
                           ) -> list[dict[str, Any]]:
            raise ValueError("no hail")

    for cls in (Blur, Rain, Hail):
        register(cls)
    try:
        res = {k: {"kind": k, "schema": 1, "settings": {}, "n": 8}
               for k in ("blur-toy", "rain-toy", "hail-toy", "unknown-toy")}
        runs = [{"label": lab, "results": res, "history": []} for lab in ("a", "b")]
        figs = report_html.Figures(tmp_path)
        got = report_html.sections(runs, figs)
        assert [(k, h, g, [(f["title"], f["png"]) for f in made]) for k, h, g, made in got] == [
            ("adversarial", "Input attacks", "input attacks",
             [("blur (blur-toy, a)", b"blur 8"), ("blur (blur-toy, b)", b"blur 8")]),
            ("weather", "Weather", "weather",
             [("rain (rain-toy)", b"a,b"), ("late (rain-toy)", b"late")])]
        assert figs.failures == ["hail-toy (hail-toy): ValueError: no hail"]
    finally:
        for k in ("blur-toy", "rain-toy", "hail-toy"):
            REGISTRY.pop(k, None)


def test_threat_labels_come_from_the_suite_threats(monkeypatch):
    """Each suite threat labels itself (`SuiteThreat.label`): a new threat needs no report edit."""
    from robustlab.evaluate.adversarial import SUITE_THREATS, SuiteThreat

    class Blur(SuiteThreat):
        name = "blur"

        def label(self, t: dict) -> str:
            return f"blur σ={t['sigma']}"

    monkeypatch.setitem(SUITE_THREATS, "blur", Blur())
    t = {"threat": "blur", "sigma": 2}
    assert [summary.threat_label(k, t) for k in ("blur", "blur-2", "b")] == [
        "blur σ=2", "blur σ=2", "b: blur σ=2"]
    assert summary.threat_label("linf", {"threat": "linf", "eps": 0.031372}) == "L∞ ε=0.0314"
    assert summary.threat_label("l2", {"threat": "l2"}) == "L2"
    assert summary.threat_label("p", {"threat": "patch", "size": [5, 5]}) == "p: patch 5×5"
    assert summary.threat_label("corrupt:3", {"threat": "corrupt", "corruptions": {
        "fog/3": 0.1, "snow/3": 0.2}}) == "corruptions (2 kinds)"
    assert summary.threat_label("odd", {"threat": "odd"}) == "odd"  # no such threat: its name


def test_png_size_rejects_non_png():
    with pytest.raises(ValueError):
        png_size(b"GIF89a" + b"\0" * 30)


def test_wilson_interval_hand_computed():
    from robustlab.report.stats import common_point, mean_interval, separated, wilson

    # z = 1.96: centre (k + z²/2)/(n + z²), half-width z·√(k(n−k)/n + z²/4)/(n + z²)
    assert wilson(0, 10, z=1.96) == pytest.approx((0.0, 1.9208 / 13.8416 * 2), abs=1e-9)
    lo, hi = wilson(5, 10, z=1.96)
    half = 1.96 * (2.5 + 0.9604) ** 0.5 / 13.8416
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = wilson(73, 200, z=1.96)  # 36.5 % of 200 attacked images
    assert (round(lo, 4), round(hi, 4)) == (0.3014, 0.4337)
    lo, hi = wilson(10, 10, z=1.96)  # the mirror image of 0 of 10
    assert hi == 1.0 and lo == pytest.approx(1 - 0.2775402, abs=1e-6)
    with pytest.raises(ValueError):
        wilson(3, 0)
    # t interval of a mean of 3 values: 2 ± t(0.975, 2)·1/√3 = 2 ± 4.302653·0.57735
    assert mean_interval([1.0, 2.0, 3.0]) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-5)
    assert mean_interval([1.0]) is None
    assert separated((0.1, 0.2), (0.25, 0.3)) and not separated((0.1, 0.26), (0.25, 0.3))
    assert common_point([(0.1, 0.3), (0.2, 0.4), (0.29, 0.5)])
    assert not common_point([(0.1, 0.3), (0.2, 0.4), (0.31, 0.5)])


def _hand_runs(root, models):
    """Runs with a clean result (err of n=200) and an L∞ suite result (rerr of n=200)."""
    for key, (label, ce, ae, extra) in models.items():
        d = root / key
        (d / "results").mkdir(parents=True)
        (d / "model.json").write_text(json.dumps({"architecture": "custom", "kwargs": {},
                                                  "label": label}))
        (d / "results" / "clean.json").write_text(json.dumps(
            {"evaluator": "clean", "err": ce / 200, "n": 200}))
        (d / "results" / "adversarial.json").write_text(json.dumps(
            {"evaluator": "adversarial", "config": {"n": 200, "steps": 7, "restarts": 1},
             "clean": {"err": ce / 200, "tau": {"0.99": 0.5}},
             "threats": {"linf": {"threat": "linf", "eps": 0.1, "n": 200, "rerr": ae / 200,
                                  "at": {}}}, **extra}))
    (root / "plan.json").write_text(json.dumps({"runs": {k: {} for k in models}}))


def test_best_mark_only_when_intervals_separate(tmp_path):
    from robustlab.report import rows
    from robustlab.report.html import build_report

    # AT 36.5 % vs AT-AWP 37.5 % on 200 images: no winner; 10 % vs 50 %: a winner
    _hand_runs(tmp_path, {"at": ("AT", 20, 73, {}), "awp": ("AT-AWP", 60, 75, {})})
    table = rows.build_table(summary.collect(tmp_path))
    assert table.row("RErr linf").best is None and table.row("Err").best == 0
    page, _ = build_report(tmp_path)
    linf = re.search(r'<tr[^>]*data-key="RErr linf">(.*?)</tr>', page).group(1)
    assert 'class="best"' not in linf and "36.5" in linf and "37.5" in linf
    err = re.search(r'<tr[^>]*data-key="Err">(.*?)</tr>', page).group(1)
    assert err.count('class="best"') == 1 and re.search(r'class="best"[^>]*><span class="v">10.0<', err)
    assert "RErr L∞ ε=0.1 (%)" in linf and ">200 images<" in linf


def test_headline_scatter_summary_and_flags_from_the_results(tmp_path):
    from robustlab.report import headline, rows
    from robustlab.report.html import build_report

    flag = {"name": "square_breaks_more", "message": "linf: Square misclassified 3 of 200",
            "numbers": {"threat": "linf", "examples": 3, "n": 200}}
    _hand_runs(tmp_path, {"normal": ("Normal", 10, 190, {"flags": []}),
                          "at": ("AT", 40, 60, {"flags": [flag]}),
                          "ccat": ("CCAT", 30, 120, {"flags": []})})
    table = rows.build_table(summary.collect(tmp_path))
    assert [r.key for r in headline.headline_rows(table)] == ["RErr linf"]
    # Pareto front of (clean, robust): Normal (5, 95), AT (20, 30), CCAT (15, 60) — all three
    assert headline.pareto([(0.05, 0.95), (0.2, 0.3), (0.15, 0.6)]) == [0, 1, 2]
    assert headline.pareto([(0.05, 0.95), (0.2, 0.3), (0.25, 0.6)]) == [0, 1]
    page, info = build_report(tmp_path)
    head = re.search(r'<section id="headline">(.*?)</section>', page, re.S).group(1)
    assert "Clean error vs robust error" in head and head.count("<img ") == 1
    # the sentence names the separated winner with its numbers and its clean-error cost
    assert ("Most robust to RErr L∞ ε=0.1: AT 30.0 % [24.1, 36.7] vs CCAT 60.0 % [53.1, 66.5], "
            "at +15.0 points clean error vs Normal.") in html.unescape(head)
    assert "AT: clean Err 20.0 % [15.0, 26.1] (+15.0 points above Normal). " \
           "Most robust (separated) to: RErr L∞ ε=0.1." in html.unescape(head)
    assert "square_breaks_more" in head and "Square misclassified 3 of 200" in head
    assert "1 sanity flag(s) raised" in head
    # a row where every model is at 100 % is greyed with its reason
    for key in ("normal", "at", "ccat"):
        p = tmp_path / key / "results" / "adversarial.json"
        r = json.loads(p.read_text())
        r["threats"]["distal"] = {"threat": "distal", "eps": 0.3, "n": 200,
                                  "at": {"0.99": {"tau": 0.5, "fpr": 1.0}}}
        p.write_text(json.dumps(r))
    page, _ = build_report(tmp_path)
    assert re.search(r'<tr class="flat" data-key="FPR@99% distal">.*?every model at 100 %', page)
    assert "<li>FPR@99% distal ε=0.3: every model at 100 %</li>" in page


def test_bit_attack_worst_case_envelope_and_headline():
    from robustlab.report import headline, rows
    from robustlab.report.stats import wilson

    res = {"evaluator": "bitattack", "budgets": [10, 40], "n_test": 100, "n_attack": 16,
           "config": {"steps": 5},
           "results": {"attack": {"budget": [10, 40], "rerr": [0.3, 0.5]},
                       "bfa": {"budget": [10, 40], "rerr": [0.4, 0.45]},
                       "worst": {"budget": [10, 40], "rerr": [0.4, 0.5], "found_by": ["bfa", "attack"],
                                 "rerr_env": [0.4, 0.5], "env_budget": [10, 40],
                                 "env_found_by": ["bfa", "attack"]}}}
    vals = summary.result_values("bitattack", res)
    assert vals["RErr 10 bits (worst)"].value == 0.4
    assert vals["RErr 10 bits (worst)"].setting.endswith("found by bfa")
    assert vals["RErr ≤40 bits (worst)"].label == "RErr ≤40 flipped bits, envelope of the worst case"
    assert vals["RErr 40 bits (bfa)"].interval == pytest.approx(wilson(45, 100))
    # the headline shows the worst case at the largest budget, not a single attack
    runs = [{"label": lab, "name": lab, "values": {"clean": {"Err": summary.Metric(0.1, 0.05, 0.15)},
                                                   "adversarial bit errors": vals}}
            for lab in ("A", "B")]
    table = rows.build_table(runs)
    assert [r.key for r in headline.headline_rows(table)] == ["RErr 40 bits (worst)"]


def test_intervals_of_each_metric_kind():
    from robustlab.report.stats import auc_interval, t_quantile, wilson

    # flatness: t interval over the random perturbations (loss increases 0.1, 0.2, 0.3)
    flat = {"flatness_kind": "average", "variant": "robust", "n": 30, "loss": 1.0,
            "details": [{"xi": 0.5, "flatness": 0.2, "loss": 1.0,
                         "perturbed_losses": [1.1, 1.2, 1.3]}]}
    m = summary.result_values("flatness", flat)["average flatness ξ=0.5"]
    half = t_quantile(2) * 0.1 / 3 ** 0.5
    assert (m.n, m.over, m.unit) == (3, "samples", "")
    assert m.interval == pytest.approx((0.2 - half, 0.2 + half))
    # RErr@τ: Wilson over the images that are not rejected, recounted from the confidences:
    # 10 images; 2 rejected on both sides (confidence < τ), 3 of the other 8 wrong
    conf = [0.9] * 8 + [0.1, 0.1]
    adv = {"evaluator": "adversarial", "config": {"n": 10},
           "clean": {"err": 0.0, "tau": {"0.99": 0.5}, "conf": conf, "wrong": [False] * 10},
           "threats": {"l2": {"threat": "l2", "eps": 1.5, "n": 10, "rerr": 0.5, "auc": 0.8,
                              "at": {"0.99": {"tau": 0.5, "rerr": 3 / 8, "fpr": 0.3}},
                              "adv_conf": conf, "adv_wrong": [True] * 3 + [False] * 5 + [True] * 2}}}
    vals = summary.result_values("adversarial", adv)
    at = vals["RErr@99% l2"]
    assert (at.n, at.interval) == (8, wilson(3, 8)) and at.label == "RErr@99% L2 ε=1.5"
    assert vals["RErr l2"].interval == wilson(5, 10)
    # ROC AUC: Hanley–McNeil with 10 correct clean images (positives), 5 successful attacks
    auc = vals["AUC l2"]
    assert (auc.better, auc.unit) == ("higher", "")
    assert auc.interval == auc_interval(0.8, 10, 5)
    q1, q2 = 0.8 / 1.2, 2 * 0.64 / 1.8
    se = ((0.16 + 9 * (q1 - 0.64) + 4 * (q2 - 0.64)) / 50) ** 0.5
    assert auc.interval == pytest.approx((0.8 - 1.959964 * se, min(1.0, 0.8 + 1.959964 * se)))
