"""Frames, distal inputs, corruptions, threat defaults, the evaluation suite and `robustlab attack`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab import data
from robustlab.attacks import CORRUPTIONS, corrupt, default_eps, distal, frame_mask, frames
from robustlab.attacks.threat import frame_width, patch_size
from robustlab.errors import UserError
from robustlab.evaluate import metrics as M
from robustlab.evaluate.adversarial import adversarial, parse_eps, parse_suite

torch.set_num_threads(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_cnn(hw: int = 12, classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * hw * hw, classes)).eval()


def test_threat_defaults_follow_the_spec() -> None:
    gray, color = (1, 28, 28), (3, 32, 32)
    assert [default_eps(n, gray) for n in ("linf", "l2", "l1", "l0")] == [0.1, 1.5, 10.0, 15.0]
    assert default_eps("linf", gray, "mnist") == 0.3
    assert default_eps("linf", gray, "mnist", unseen=True) == 0.4
    assert default_eps("l2", gray, unseen=True) == 3.0 and default_eps("l1", gray, unseen=True) == 18
    assert default_eps("linf", color) == pytest.approx(8 / 255)
    assert [default_eps(n, color) for n in ("l2", "l1", "l0")] == [0.5, 7.85, 10.0]
    # smaller images get proportionally smaller L2/L1/L0 balls, same L∞
    small = (1, 14, 14)
    assert default_eps("linf", small) == 0.1
    assert default_eps("l2", small) == pytest.approx(0.75)
    assert default_eps("l1", small) == pytest.approx(2.5)
    assert default_eps("l0", small) == 4.0  # ⌈15/4⌉
    assert frame_width(28) == 2 and frame_width(32) == 3
    assert patch_size((1, 28, 28)) == (7, 7) and patch_size((3, 32, 32)) == (8, 8)


def test_frames_change_only_the_border() -> None:
    m = frame_mask((1, 28, 28))
    assert m.sum() == 28 * 28 - 24 * 24
    model = small_cnn()
    x = torch.rand(10, 1, 12, 12, generator=gen(1))
    y = torch.randint(0, 4, (10,), generator=gen(2))
    res = frames(model, x, y, width=2, steps=5, generator=gen())
    inner = slice(2, 10)
    assert torch.equal(res.x_adv[:, :, inner, inner], x[:, :, inner, inner])
    assert (res.x_adv != x).any()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    loss_adv = F.cross_entropy(res.logits, y)
    assert loss_adv > F.cross_entropy(model(x), y)
    with pytest.raises(UserError, match="frame width 7"):
        frames(model, x, y, width=7)


def test_distal_inputs_raise_confidence_within_the_ball() -> None:
    model = small_cnn()
    res = distal(model, 16, (1, 12, 12), eps=0.3, steps=10, generator=gen(4))
    x0 = res.info["x0"]
    assert (res.x_adv - x0).abs().max() <= 0.3 + 1e-6
    assert res.y is None and res.success is None
    assert (res.conf >= F.softmax(model(x0), 1).amax(1) - 1e-6).all()
    assert res.conf.mean() > F.softmax(model(x0), 1).amax(1).mean()


def test_corruptions_are_seeded_bounded_and_graded() -> None:
    x = data.synthetic(8, 8, shape=(1, 28, 28))[1].x
    for name in CORRUPTIONS:
        a = corrupt(x, name, 3, generator=gen(5))
        b = corrupt(x, name, 3, generator=gen(5))
        assert torch.equal(a, b), name
        assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1, name
        assert not torch.equal(a, x), name
    # more severe Gaussian noise moves images further
    d = [(corrupt(x, "gaussian_noise", s, generator=gen(0)) - x).abs().mean() for s in (1, 3, 5)]
    assert d[0] < d[1] < d[2]
    with pytest.raises(UserError, match="unknown corruption 'fog'"):
        corrupt(x, "fog")
    with pytest.raises(UserError, match="severity 6"):
        corrupt(x, "blur", 6)


def test_suite_and_eps_parsing() -> None:
    items = parse_suite("linf, linf:0.2,patch:5,corrupt:5")
    assert [(i.key, i.threat, i.param) for i in items] == [
        ("linf", "linf", None), ("linf:0.2", "linf", 0.2), ("patch:5", "patch", 5.0),
        ("corrupt:5", "corrupt", 5.0)]
    assert parse_eps("linf=0.2,l2=3") == {"linf": 0.2, "l2": 3.0}
    for bad, fragment in (("linf,fog", "unknown suite item 'fog'"), ("linf:-0.1", "-0.1"),
                          ("patch:0", "patch side"), ("corrupt:9", "severity")):
        with pytest.raises(UserError, match=fragment):
            parse_suite(bad)
    with pytest.raises(UserError, match="-1"):
        parse_eps("linf=-1")
    with pytest.raises(UserError, match="unknown norm 'l5'"):
        parse_eps("l5=1")


def test_suite_metrics_are_consistent_with_the_protocol(trained) -> None:
    model, test = trained
    res = adversarial(model, test, "linf:0.25,l2:1.2,distal,corrupt", n_test=100, steps=10, attacks="pgd",
                      tprs=(0.99, 0.995), corruptions=["gaussian_noise", "rotate"],
                      batch_size=64, progress=False)
    # τ from the last 10% of the test set (30 images), RErr ≥ Err on the attacked 100
    hold = test.subset(slice(270, 300))
    with torch.no_grad():
        logits = model(hold.x)
    ok = logits.argmax(1) == hold.y
    conf = F.softmax(logits, 1).amax(1)
    assert res["clean"]["tau"]["0.99"] == pytest.approx(M.threshold_at_tpr(conf[ok], 0.99))
    assert res["data"]["holdout"] == [270, 300] and res["data"]["attacked"] == [0, 100]
    for key in ("linf:0.25", "l2:1.2"):
        t = res["threats"][key]
        assert t["rerr"] >= t["err"] == res["clean"]["err"]
        assert len(t["adv_conf"]) == 100
        assert 0 < t["rerr"] <= 1
        assert t["attacks"] == ["ce/zero×1", "conf/zero×1"]
    assert res["threats"]["linf:0.25"]["eps"] == 0.25
    assert set(res["threats"]["distal"]["at"]) == {"0.99", "0.995"}
    assert set(res["threats"]["corrupt"]["corruptions"]) == {"gaussian_noise/3", "rotate/3"}
    json.dumps(res)  # JSON-able as is


def test_suite_early_exit_on_and_off_gives_same_rerr(trained) -> None:
    model, test = trained
    kw = dict(n_test=150, steps=15, restarts=2, batch_size=50, seed=3, progress=False)
    on = adversarial(model, test, "linf:0.22,l2:1.4,frames", early_stop=True, **kw)
    off = adversarial(model, test, "linf:0.22,l2:1.4,frames", early_stop=False, **kw)
    for key in on["threats"]:
        a, b = on["threats"][key], off["threats"][key]
        assert a["rerr"] == b["rerr"], key
        for tpr in a["at"]:
            assert a["at"][tpr]["rerr"] == b["at"][tpr]["rerr"], key
            assert a["at"][tpr]["fpr"] == b["at"][tpr]["fpr"], key
    assert 0 < on["threats"]["linf:0.22"]["rerr"] < 1 and 0 < on["threats"]["l2:1.4"]["rerr"] < 1
    frames_on, frames_off = on["threats"]["frames"], off["threats"]["frames"]
    assert 0 < frames_on["at"]["0.99"]["rerr"] < 1
    # examples did exit early: their final confidences differ, the verdicts do not
    assert frames_on["adv_conf"] != frames_off["adv_conf"]


def test_suite_bad_input(trained) -> None:
    model, test = trained
    for kwargs, fragment in ((dict(restarts=0), "restarts 0"), (dict(suite="l3"), "'l3'"),
                             (dict(eps="linf=-0.5"), "-0.5"), (dict(suite="patch:9"), "9×9"),
                             (dict(objectives=("xent",)), "objective 'xent'")):
        with pytest.raises(UserError) as e:
            adversarial(model, test, **{"suite": "linf", "n_test": 10, "steps": 1, "progress": False,
                                        **kwargs})
        assert fragment in str(e.value) and "\n" not in str(e.value)


def test_attack_command_end_to_end(tmp_path, capsys) -> None:
    from robustlab.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--quiet",
                 "--out", str(run)]) == 0
    assert main(["attack", str(run), "--suite", "linf,patch,distal", "--n-test", "40",
                 "--steps", "2", "--tprs", "0.99,0.995", "--quiet"]) == 0
    res = json.loads((run / "results" / "attack.json").read_text())
    assert res["kind"] == "adversarial" and set(res["threats"]) == {"linf", "patch", "distal"}
    assert res["config"]["tprs"] == [0.99, 0.995]
    for f in ("attack_rerr.png", "attack_confidence.png", "attack_examples.png",
              res["examples_file"]):
        assert (run / "results" / f).stat().st_size > 0
    out = capsys.readouterr().out
    assert "RErr@99%" in out and "RErr@99.5%" in out
    # bad input: one line, exit status 2
    for args in (["--suite", "linf,l9"], ["--radii", "l2=-1"], ["--restarts", "0"],
                 ["--suite", "patch:99"], ["--steps", "-1"]):
        try:
            code = main(["attack", str(run), "--quiet", "--n-test", "20", *args])
        except SystemExit as e:  # argparse rejects malformed option values itself
            code = e.code
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error" in err
    assert math.isfinite(res["clean"]["err"])
