"""Reproduction presets: loading and merging, finding checks, and the smoke scale of every preset."""

import json
import math

import pytest

from robustlab import experiments as ex
from robustlab.cli import main
from robustlab.errors import UserError

PRESETS = ["bit-errors", "ccat", "patches", "flatness"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


def test_every_preset_loads_at_every_scale():
    assert set(PRESETS + ["demo"]) <= set(ex.preset_names())
    for name in PRESETS + ["demo"]:
        for scale in ex.SCALES:
            p = ex.load_preset(name, scale)
            assert p["scale"] == scale and p["runs"]
            ws_cols = (p.get("table") or {}).get("columns") or []
            assert all(isinstance(c, str) for c in ws_cols)
            for f in p.get("findings") or []:
                assert f["text"] and f["checks"]
    # the scales really differ where they should
    smoke, full = ex.load_preset("ccat", "smoke"), ex.load_preset("ccat", "full")
    assert smoke["data"]["subset"] == 512 and "subset" not in full["data"]
    assert smoke["runs"]["at"]["options"]["attack_steps"] == 2
    assert full["runs"]["at"]["options"]["attack_steps"] == 40
    assert smoke["runs"]["at"]["options"]["fraction"] == 0.5  # merged, not replaced


def test_merge_replaces_merges_and_deletes():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2, "c": {"z": 3}}
    over = {"a": {"y": [3], "w": 4}, "b": None, "c": 5}
    assert ex.merge(base, over) == {"a": {"x": 1, "y": [3], "w": 4}, "c": 5}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 2, "c": {"z": 3}}  # inputs untouched


def test_bad_presets_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        ex.load_preset("nope")
    with pytest.raises(UserError, match="unknown scale 'huge'"):
        ex.load_preset("ccat", "huge")
    with pytest.raises(UserError, match="unknown preset key 'rnus'"):
        ex.load_preset({"rnus": {}})
    with pytest.raises(UserError, match="run 'a' has unknown key 'metod'"):
        ex.load_preset({"runs": {"a": {"metod": "at"}}})
    with pytest.raises(UserError, match="unknown evaluator 'attak'"):
        ex.load_preset({"runs": {"a": {}}, "evaluate": {"x": {"evaluator": "attak"}}})
    with pytest.raises(UserError, match="unknown setting 'epoch'"):
        ex.load_preset({"runs": {"a": {}}, "train": {"epoch": 3}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        ex.load_preset(str(bad))


def test_finding_checks_exact():
    v = {"a": {"x": 0.1, "y": 0.2}, "b": {"x": 0.2, "y": 0.4}, "c": {"x": 0.3, "y": 0.8},
         "d": {"x": 0.4}}
    assert ex.evaluate_check("a[x] < b[x]", v) is True
    assert ex.evaluate_check("b[x] < a[x] + 0.05", v) is False
    assert ex.evaluate_check("b[x] < a[x] + 0.15", v) is True
    assert ex.evaluate_check("c[y] >= max(a[y], b[y]) and -a[x] < 0", v) is True
    assert ex.evaluate_check("2 * a[y] == b[y]", v) is True
    assert ex.evaluate_check("d[y] < 1", v) is None  # not measured
    assert ex.evaluate_check('kendall("x", "y") > 0.99', v) is True  # 3 concordant runs with y
    assert ex.evaluate_check('kendall("x", "z") > 0', v) is None
    with pytest.raises(UserError, match="unknown run 'e'"):
        ex.evaluate_check("e[x] < 1", v)
    with pytest.raises(UserError, match="unsupported expression"):
        ex.evaluate_check("__import__('os')", v)
    with pytest.raises(UserError, match="not a valid expression"):
        ex.evaluate_check("a[x] <", v)
    findings = ex.check_findings({"findings": [
        {"text": "t1", "checks": ["a[x] < b[x]", "b[x] < c[x]"]},
        {"text": "t2", "checks": ["a[x] < b[x]", "c[x] < b[x]"]},
        {"text": "t3", "checks": ["a[x] < d[y]"]}]}, {"values": v})
    assert [f["ok"] for f in findings] == [True, False, None]
    text = ex.format_findings(findings)
    assert text.splitlines()[0] == "✓ t1" and "✗ t2" in text and "– t3" in text


def test_format_table_percent_and_missing():
    tab = {"rows": ["a", "b"], "labels": {"a": "A", "b": "Bee"}, "columns": ["Err", "loss", "none"],
           "values": {"a": {"Err": 0.1234, "loss": 2.0}, "b": {"loss": 1.23456}}}
    lines = ex.format_table(tab).splitlines()
    assert lines[0].split() == ["model", "Err", "loss"]  # the unmeasured column is left out
    assert lines[2].split() == ["A", "12.3", "2"]
    assert lines[3].split() == ["Bee", "–", "1.23"]


@pytest.mark.parametrize("name", PRESETS)
def test_smoke_scale_of_every_preset(name, tmp_path):
    """The smoke scale runs end to end and fills its table; findings get ✓/✗/– each."""
    preset = ex.load_preset(name, "smoke")
    res = ex.run_preset(preset, tmp_path, device="cpu", progress=False, report=False)
    tab = res["table"]
    assert tab["rows"] == list(preset["runs"])
    for col in preset["table"]["columns"]:
        got = [tab["values"][r].get(col) for r in tab["rows"]]
        assert any(v is not None for v in got), f"{name}: column {col!r} was not measured"
        for v in got:
            assert v is None or math.isfinite(v)
            if v is not None and ("Err" in col or "FPR" in col):
                assert 0.0 <= v <= 1.0
    assert len(res["findings"]) == len(preset["findings"])
    for f in res["findings"]:
        assert f["ok"] in (True, False, None) and len(f["results"]) == len(f["checks"])
    saved = json.loads((tmp_path / "table.json").read_text())
    assert saved["scale"] == "smoke" and saved["columns"] == tab["columns"]
    # every run directory is a real run: it can be reopened and evaluated again
    for r in preset["runs"]:
        assert (tmp_path / r / "model.json").is_file() and (tmp_path / r / "results" / "clean.json").is_file()


def test_reproduce_cli_prints_table_and_findings(tmp_path, capsys):
    out = tmp_path / "ccat"
    code = main(["reproduce", "ccat", "--scale", "smoke", "--out", str(out), "--quiet",
                 "--device", "cpu"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "paper: Stutz, Hein, Schiele" in stdout
    assert "RErr@99% linf:0.2" in stdout and "CCAT ρ=10" in stdout
    marks = [line[0] for line in stdout.splitlines() if line[:1] in ("✓", "✗", "–")]
    assert len(marks) == 4
    assert (out / "report.html").is_file()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["command"].startswith("robustlab reproduce ccat --scale smoke")
    code = main(["reproduce", "nope", "--scale", "smoke"])
    assert code == 2 and "unknown preset 'nope'" in capsys.readouterr().err
