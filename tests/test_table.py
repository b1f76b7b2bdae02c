"""`robustlab table`: the report's summary rows in the terminal, the same numbers in every format
(text, Markdown, CSV, JSON) as in the HTML report, metric selection, and odd inputs (one run,
partial results, a custom model's run). Runs are written by hand (no training), so every number
below is known exactly."""

import csv
import io
import json
import re

import pytest

from robustlab.cli import main
from robustlab.report import rows, summary
from robustlab.report.html import build_report
from robustlab.report.stats import wilson

N = 200
# model: (clean errors, L∞ robust errors, bit error RErr per pattern at p=1%)
MODELS = {"normal": ("Normal", 10, 190, [0.30, 0.34, 0.32, 0.36, 0.28]),
          "at": ("AT", 40, 73, [0.50, 0.52, 0.49, 0.55, 0.51]),
          "awp": ("AT-AWP", 42, 75, [0.50, 0.50, 0.50, 0.50, 0.50])}


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def adversarial(clean_wrong: int, adv_wrong: int, flags=None) -> dict:
    cw = [i < clean_wrong for i in range(N)]
    aw = [i < adv_wrong for i in range(N)]
    r = {"evaluator": "adversarial",
         "config": {"n": N, "holdout": 100, "steps": 7, "restarts": 1},
         "clean": {"err": clean_wrong / N, "tau": {"0.99": 0.5}, "conf": [0.9] * N, "wrong": cw},
         "threats": {"linf": {"threat": "linf", "eps": 0.1, "n": N, "rerr": adv_wrong / N,
                              "attacks": ["apgd-ce", "square"],
                              "at": {"0.99": {"tau": 0.5, "rerr": adv_wrong / N,
                                              "fpr": (adv_wrong - clean_wrong) / N}},
                              "adv_conf": [0.9] * N, "adv_wrong": aw,
                              "by_attack": {"apgd-ce": {"added": adv_wrong - clean_wrong},
                                            "square": {"added": 0}}},
                     "distal": {"threat": "distal", "eps": 0.3, "n": N,
                                "at": {"0.99": {"tau": 0.5, "fpr": 1.0}}}}}
    if flags is not None:
        r["flags"] = flags
    return r


def biterrors(values: list[float]) -> dict:
    import statistics

    return {"evaluator": "biterrors", "rates": [0.01], "patterns": len(values), "n_test": N,
            "clean_err": 0.1, "scheme": {"bits": 8},
            "rerr": {"mean": [sum(values) / len(values)], "std": [statistics.stdev(values)],
                     "min": [min(values)], "max": [max(values)], "values": [[v] for v in values]}}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    flags = {"at": [{"name": "square_breaks_more", "message": "linf: Square misclassified 3 of "
                     "200 examples that every gradient attack left correct",
                     "numbers": {"threat": "linf", "examples": 3, "n": 200}}]}
    for key, (label, ce, ae, bits) in MODELS.items():
        d = root / key
        _write(d / "model.json", {"architecture": "mlp", "label": label,
                                  "kwargs": {"in_shape": [1, 8, 8], "num_classes": 4}})
        _write(d / "results" / "clean.json", {"evaluator": "clean", "err": ce / N, "n": N})
        _write(d / "results" / "adversarial.json", adversarial(ce, ae, flags.get(key, [])))
        _write(d / "results" / "biterrors.json", biterrors(bits))
    _write(root / "plan.json", {"runs": {k: {} for k in MODELS}})
    return root


def _table(runs_dir, *extra, capsys):
    assert main(["table", str(runs_dir), *map(str, extra)]) == 0
    return capsys.readouterr().out


def test_rows_values_intervals_and_marks(runs_dir):
    t = rows.build_table(summary.collect(runs_dir))
    assert t.models == ["Normal", "AT", "AT-AWP"]  # the preset's order, not the folders'
    err = t.row("Err")
    assert [c.value for c in err.cells] == [10 / N, 40 / N, 42 / N]
    assert (err.cells[1].lo, err.cells[1].hi) == wilson(40, N)
    assert err.n == "200 images" and err.best == 0  # Normal's interval is clear of AT's
    linf = t.row("RErr linf")
    assert linf.label == "RErr L∞ ε=0.1" and "apgd-ce + square" in linf.setting
    # AT 36.5 % vs AT-AWP 37.5 % on 200 images: overlapping intervals, so no best mark, and
    # Normal (95 %) is worst, so no model is marked at all
    assert linf.best is None and linf.note == ""
    assert t.row("AUC linf") is None
    distal = t.row("FPR@99% distal")
    assert distal.note == "every model at 100 %" and distal.best is None
    bits = t.row("RErr p=1%")
    assert bits.n == "5 patterns" and bits.best == 0
    assert bits.cells[2].interval == wilson(100, N)  # no spread over patterns: Wilson over images


def test_every_format_shows_the_reports_numbers(runs_dir, capsys):
    page, _ = build_report(runs_dir)
    html_cells = {}
    for key, body in re.findall(r'<tr[^>]*data-key="([^"]+)">(.*?)</tr>', page):
        cells = re.findall(r'<td[^>]*data-model="(\d)"><span class="v">([^<]*)</span>'
                           r'(?:<span class="iv">([^<]*)</span>)?</td>', body)
        html_cells[key] = [(v, iv) for _, v, iv in cells]
    assert html_cells["Err"][0] == ("5.0", "[2.7, 9.0]")  # 10/200, Wilson by hand: 2.76–9.04 %
    data = json.loads(_table(runs_dir, "--format", "json", capsys=capsys))
    assert data["models"] == ["Normal", "AT", "AT-AWP"]
    assert {r["key"] for r in data["rows"]} == set(html_cells)
    for r in data["rows"]:
        assert [(v["text"], v["interval"]) for v in r["values"].values()] == html_cells[r["key"]]
    text = _table(runs_dir, capsys=capsys)
    md = _table(runs_dir, "--format", "md", capsys=capsys)
    lines_csv = list(csv.reader(io.StringIO(_table(runs_dir, "--format", "csv", capsys=capsys))))
    head = lines_csv[0]
    by_key = {line[1]: line for line in lines_csv[1:]}
    for r in data["rows"]:
        text_line = next(line for line in text.splitlines() if line[2:].startswith(r["label"] + " "))
        md_line = next(line for line in md.splitlines() if r["label"] in line)
        line = by_key[r["key"]]
        for m, (v, iv) in zip(data["models"], html_cells[r["key"]]):
            assert f"{v} {iv}".strip() in text_line
            assert v in md_line and iv in md_line
            j = head.index(m)
            lo, hi = (iv[1:-1].split(", ") if iv else ("", ""))
            assert line[j:j + 3] == [v, lo, hi]
        best = r["best"]
        assert (line[-2] == best) if best else line[-2] == ""
    assert "RErr L∞ ε=0.1" in text and "200 images" in text
    assert "**5.0** [2.7, 9.0]" in md  # Normal's clean error, the separated best, in bold


def test_metric_selection_and_errors(runs_dir, capsys):
    out = _table(runs_dir, "--metrics", "RErr p=*,Err", "--format", "csv", capsys=capsys)
    assert [line.split(",")[1] for line in out.strip().splitlines()[1:]] == ["RErr p=1%", "Err"]
    assert main(["table", str(runs_dir), "--metrics", "RErr l7"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'RErr l7'" in err and len(err.splitlines()) == 1
    assert main(["table", str(runs_dir / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_one_run_partial_results_and_a_custom_model(runs_dir, tmp_path, capsys):
    # one run of the folder, given directly: values without best marks or "cannot discriminate"
    out = _table(runs_dir / "at", "--format", "json", capsys=capsys)
    data = json.loads(out)
    assert data["models"] == ["AT"] and all(r["best"] is None and r["note"] == ""
                                            for r in data["rows"])
    # a custom model's run with only a clean result, next to a preset folder
    own = tmp_path / "mine"
    _write(own / "model.json", {"architecture": "custom", "kwargs": {}, "class": "Sequential"})
    _write(own / "results" / "eval.json", {"err": 0.25, "n": 40, "confusion": [[1]]})
    (own / "results" / "broken.json").write_text("{not json")
    text = _table(own, runs_dir, capsys=capsys)
    header = text.splitlines()[0]
    assert header.split()[-4:] == ["mine", "Normal", "AT", "AT-AWP"]
    line = next(line for line in text.splitlines() if line[2:].startswith("RErr L∞"))
    assert line.split()[-10:-7] == ["–", "95.0", "[91.0,"]  # the custom run has no attack result
    assert "25.0 [14.2, 40.2]" in text
    empty = tmp_path / "empty_run"
    _write(empty / "model.json", {"architecture": "custom", "kwargs": {}})
    assert main(["table", str(empty)]) == 2
    assert "hold no results yet" in capsys.readouterr().err
