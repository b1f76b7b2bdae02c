"""`robustlab import`: your own model (factory + weights) becomes a run every command uses,
from any working directory; pickled objects are refused without running them."""

import json
import shutil
import textwrap

import numpy as np
import pytest
import torch
from clihelp import one_line, run_cli
from safetensors.torch import save_file

from robustlab import checkpoint, models

FACTORY = textwrap.dedent("""
    from torch import nn

    def make_model(width=8, classes=4):
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                             nn.Flatten(), nn.Linear(width * 64, classes))
""")


def _make(width=8):
    ns: dict = {}
    exec(FACTORY, ns)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        m = ns["make_model"](width=width)
        for mod in m.modules():  # non-trivial BatchNorm statistics
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's folder: factory file, a .pt and a .safetensors state dict, an .npz dataset."""
    d = tmp_path_factory.mktemp("user")
    (d / "net.py").write_text(FACTORY)
    m = _make()
    torch.save(m.state_dict(), d / "w.pt")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, d / "w.safetensors")
    from robustlab.data import synthetic

    tr, te = synthetic(128, 64, shape=(1, 8, 8), num_classes=4, seed=0)
    np.savez(d / "d.npz", x=tr.x.numpy(), y=tr.y.numpy(), x_test=te.x.numpy(), y_test=te.y.numpy())
    return d


def _import(capsys, user, out, weights="w.pt", *extra):
    return run_cli(capsys, "import", "--factory", user / "net.py:make_model", "--kwargs",
                   '{"width": 8}', "--weights", user / weights, "--data", user / "d.npz",
                   "--out", out, *extra)


@pytest.mark.parametrize("weights", ["w.pt", "w.safetensors"])
def test_import_then_every_command_from_another_directory(user, tmp_path, capsys, monkeypatch,
                                                          weights):
    run = tmp_path / "runs" / "mine"
    code, out, err = _import(capsys, user, run, weights)
    assert code == 0, err
    meta = json.loads((run / "model.json").read_text())
    assert meta["factory"]["path"] == str(user / "net.py")
    assert meta["factory"]["sha256"] == checkpoint.file_sha256(user / "net.py")
    assert meta["factory"]["kwargs"] == {"width": 8}
    assert meta["data"]["name"] == str(user / "d.npz")
    loaded, _ = checkpoint.load(run)
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(loaded(x), _make()(x))  # the same model, weights and BN statistics
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for argv, result in [
        (["eval", run], "eval"),
        (["biterrors", run, "--rates", "0.01", "--patterns", "2", "--n-test", "20", "--quiet"],
         "biterrors"),
        (["flatness", run, "--samples", "1", "--n-test", "20", "--steps", "1", "--quiet",
          "--no-train"], "flatness-average"),
        (["bitattack", run, "--budgets", "2", "--steps", "2", "--n-attack", "20", "--n-test", "20",
          "--random-patterns", "1", "--quiet"], "bitattack"),
        (["attack", run, "--suite", "linf", "--attacks", "pgd", "--steps", "2", "--n-test", "20",
          "--quiet", "--no-figures"], "attack"),
    ]:
        code, out, err = run_cli(capsys, *argv)
        assert code == 0, (argv, err)
        assert (run / "results" / f"{result}.json").is_file(), argv
    ev = json.loads((run / "results" / "eval.json").read_text())
    with torch.no_grad():
        from robustlab.data import load

        _, test = load(str(user / "d.npz"))
        want = (_make()(test.x).argmax(1) != test.y).double().mean().item()
    assert ev["err"] == pytest.approx(want, abs=1e-12)


def test_normalization_inside_the_model(user, tmp_path, capsys):
    run = tmp_path / "norm"
    code, out, err = _import(capsys, user, run, "w.pt", "--mean", "0.5", "--std", "0.25")
    assert code == 0 and "normalization inside the model" in out
    loaded, meta = checkpoint.load(run)
    assert meta["normalization"] == {"mean": [0.5], "std": [0.25]}
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(loaded(x), _make()((x - 0.5) / 0.25), atol=1e-6)


def test_a_pickled_object_is_refused_without_running_it(user, tmp_path, capsys):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    torch.save({"w": Evil()}, tmp_path / "evil.pt")
    import pickle

    (tmp_path / "raw.pth").write_bytes(pickle.dumps({"w": Evil()}))
    for name in ("evil.pt", "raw.pth"):
        code, _, err = _import(capsys, user, tmp_path / "out", tmp_path / name)
        assert code == 2, err
        assert "holds pickled Python objects" in one_line(err) and "never unpickles" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_missing_or_changed_factory_is_one_line(user, tmp_path, capsys):
    u = tmp_path / "u"
    shutil.copytree(user, u)
    run = tmp_path / "r"
    assert _import(capsys, u, run)[0] == 0
    (u / "net.py").write_text(FACTORY + "\n# edited\n")
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and "changed since the model was saved" in one_line(err)
    (u / "net.py").unlink()
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and "does not exist" in one_line(err)
    assert not (run / "results").exists()


@pytest.mark.parametrize("change,message", [
    (["--factory", "net.py"], "must be FILE.py:FUNCTION"),
    (["--factory", "NOFILE.py:make_model"], "does not exist"),
    (["--factory", "FILE.py:nope"], "defines no function 'nope'"),
    (["--kwargs", "{width: 8}"], "is not valid JSON"),
    (["--kwargs", "[8]"], "must be a JSON object"),
    (["--kwargs", '{"width": 4}'], "do not fit the model"),
    (["--mean", "0.5"], "--mean and --std go together"),
    (["--mean", "0.5,0.5", "--std", "1,1"], "--mean has 2 numbers; the data has 1"),
    (["--std", "0", "--mean", "0"], "must be positive"),
    (["--weights", "w.txt"], "must be a .safetensors, .pt, .pth file"),
    (["--data", "digits"], "must output N×10 logits"),
])
def test_bad_import_input(user, tmp_path, capsys, change, message):
    args = {"--factory": f"{user / 'net.py'}:make_model", "--kwargs": '{"width": 8}',
            "--weights": str(user / "w.pt"), "--data": str(user / "d.npz"),
            "--out": str(tmp_path / "out")}
    extra = []
    for i in range(0, len(change), 2):
        k, v = change[i], change[i + 1]
        v = v.replace("NOFILE", str(tmp_path / "missing")).replace("FILE", str(user / "net"))
        if k == "--weights":
            (tmp_path / v).write_text("x")
            v = str(tmp_path / v)
        if k in args:
            args[k] = v
        else:
            extra += [k, v]
    argv = ["import", *[a for kv in args.items() for a in kv], *extra]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert message in one_line(err)
    assert not (tmp_path / "out").exists()


def test_python_save_with_a_factory(user, tmp_path):
    import sys

    sys.path.insert(0, str(user))
    try:
        import net  # the user's module

        m = _make()
        checkpoint.save(tmp_path / "py", models.Normalized(m, 0.1, 0.9), {"data": {"name": "x"}},
                        factory=net.make_model, factory_kwargs={"width": 8})
    finally:
        sys.path.remove(str(user))
    loaded, meta = checkpoint.load(tmp_path / "py")
    assert meta["factory"]["function"] == "make_model"
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(loaded(x), m((x - 0.1) / 0.9), atol=1e-6)


def test_fine_tuning_an_imported_run_keeps_it_loadable(user, tmp_path, capsys):
    import robustlab as rl

    run = tmp_path / "imp"
    assert _import(capsys, user, run, "w.pt", "--mean", "0.5", "--std", "0.25")[0] == 0
    model, meta = checkpoint.load(run)
    from robustlab import runs

    train, _, _ = runs.load_data(meta["data"])
    rl.train.fit(model, train, epochs=1, lr=0.01, batch_size=64, out=tmp_path / "tuned",
                 meta={"data": meta["data"]}, device="cpu", log=False, progress=False)
    tuned, tmeta = checkpoint.load(tmp_path / "tuned")
    assert tmeta["factory"] == meta["factory"] and tmeta["normalization"] == meta["normalization"]
    assert not torch.equal(tuned.model[0].weight, checkpoint.load(run)[0].model[0].weight)
    code, _, err = run_cli(capsys, "eval", tmp_path / "tuned")
    assert code == 0, err


def test_train_init_fine_tunes_an_imported_run_from_the_cli(user, tmp_path, capsys):
    run = tmp_path / "imp"
    assert _import(capsys, user, run, "w.pt", "--mean", "0.5", "--std", "0.25")[0] == 0
    before = checkpoint.load(run)[0].model[0].weight.clone()
    code, _, err = run_cli(capsys, "train", "--init", run, "--data", user / "d.npz", "--epochs", "1",
                           "--batch-size", "64", "--lr", "0.01", "--quiet", "--out", tmp_path / "ft")
    assert code == 0, err
    tuned, meta = checkpoint.load(tmp_path / "ft")
    assert meta["factory"]["function"] == "make_model" and "normalization" in meta
    assert not torch.equal(tuned.model[0].weight, before)  # trained from the imported weights
    # resuming with the same options is accepted; the run is complete after 1 epoch
    code, _, err = run_cli(capsys, "train", "--init", run, "--data", user / "d.npz", "--epochs", "2",
                           "--batch-size", "64", "--lr", "0.01", "--quiet", "--out", tmp_path / "ft",
                           "--resume")
    assert code == 0, err
    code, _, err = run_cli(capsys, "eval", tmp_path / "ft")
    assert code == 0, err
    # --model does not apply, and other data must fit the model
    code, _, err = run_cli(capsys, "train", "--init", run, "--model", "mlp", "--data", user / "d.npz",
                           "--out", tmp_path / "x")
    assert code == 2 and "--model" in one_line(err)
    code, _, err = run_cli(capsys, "train", "--init", run, "--data", "digits", "--out", tmp_path / "y")
    assert code == 2 and "--init" in one_line(err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
