"""Distributed training and sharded evaluation with 2 gloo processes on the CPU (loopback only).

Workers are functions of this module run in fresh processes with the environment `torchrun`
would give them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); results come back
through files.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustlab import checkpoint, data, distributed, models
from robustlab.train import fit

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
PY = sys.executable
TIMEOUT = 120


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
               OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]))
    return env


def _launch(argvs: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Start one process per argv as ranks 0..N-1 of a fresh process group; wait for all."""
    port = _free_port()
    procs = [subprocess.Popen(argv, cwd=cwd, env=_env(r, len(argvs), port), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r, argv in enumerate(argvs)]
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, p in enumerate(done):  # the commands these tests run speak the current vocabulary
        assert "is deprecated; use" not in p.stderr, f"rank {r}: {p.stderr[-3000:]}"
    return done


def _spawn(worker: str, world: int, tmp: Path, check: bool = True, **kwargs
           ) -> list[subprocess.CompletedProcess]:
    """Run `worker(**kwargs)` of this module on `world` ranks."""
    code = (f"import sys, json; sys.path[:0] = [{str(TESTS)!r}, {str(SRC)!r}]; import torch; "
            f"torch.set_num_threads(1); import test_distributed as t; "
            f"t.{worker}(**json.loads(sys.argv[1]))")
    res = _launch([[PY, "-c", code, json.dumps(kwargs)]] * world, tmp)
    if check:
        for r, p in enumerate(res):
            assert p.returncode == 0, f"rank {r} failed:\n{p.stderr[-3000:]}"
    return res


# ---- helpers without a process group ---------------------------------------------------------

def test_shards_partition_every_range():
    for n in (0, 1, 5, 193):
        for w in (1, 2, 3, 8):
            parts = [distributed.shard(n, r, w) for r in range(w)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            assert n == 0 or len(parts[0]) >= 1  # rank 0, the writer, always has the first item


def test_single_process_helpers_are_identities():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    t = torch.arange(5.0)
    assert distributed.gather(t, 5) is t and distributed.all_reduce_sum(t) is t
    assert distributed.sharded_map(lambda v: v * v, [1, 2, 3]) == [1, 4, 9]
    assert distributed.init("cpu") == torch.device("cpu") and not distributed.is_initialized()


def test_derived_seeds_are_stable_and_distinct():
    seeds = {distributed.derive_seed(s, e, r) for s in range(3) for e in range(5) for r in range(4)}
    assert len(seeds) == 60 and all(0 <= s < 2**63 for s in seeds)
    assert distributed.derive_seed(1, 2, 3) == distributed.derive_seed(1, 2, 3)
    assert distributed.derive_seed(1, 2, 3) != distributed.derive_seed(1, 3, 2)


# ---- one 2-rank session runs every distributed job; the tests check what it left -------------

def _linear() -> torch.nn.Linear:
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -1.0, 0.25], [1.5, 0.0, -0.5]]))
        lin.bias.copy_(torch.tensor([-0.25, 0.75]))
    return lin


N_TRAIN = 193  # with batch 64 the last global batch holds one example: rank 1 gets none
KILL_EXIT = 3


def _problem():
    train, _ = data.synthetic(N_TRAIN, 8, shape=(1, 8, 8), num_classes=4, seed=3)
    return train, models.create("mlp", dataset=train, hidden=(32,), seed=1)


def _fit(out: Path, tag: str, run: Path | None = None, method: str = "normal",
         kill_at: int | None = None, resume: bool = False) -> list[dict]:
    from robustlab.train import methods

    train, model = _problem()
    opts = {"loss_threshold": 1.2} if method == "randbet" else {}

    def kill(ctx):
        if ctx.epoch == kill_at:
            os._exit(KILL_EXIT)  # like SIGKILL: no cleanup, no goodbye to the other rank
        return {}

    hist = fit(model, train, method=methods.create(method, **opts), epochs=3, batch_size=64, lr=0.1,
               out=run, resume=resume, device="cpu", progress=False, log=False, epoch_hooks=[kill])
    r = distributed.rank()
    torch.save(model.state_dict(), out / f"{tag}-weights{r}.pt")  # test-owned files
    (out / f"{tag}-hist{r}.json").write_text(json.dumps(hist))
    return hist


def _collectives(out: Path) -> None:
    r = distributed.rank()
    n = 7  # uneven shards: 4 and 3 items
    local = distributed.shard(torch.arange(n * 2, dtype=torch.float64).view(n, 2) / 3)
    tree = distributed.gather_tree({"v": local, "odd": (local[:, 0] * 3).long() % 2 == 1,
                                    "i": [torch.arange(n)[slice(*distributed.shard_bounds(n))]]}, n)
    # gradient of a per-example mean loss over a global batch, from the two local means
    lin = _linear()
    unused = torch.nn.Parameter(torch.ones(2))
    x = torch.arange(15.0).view(5, 3) / 10
    mine = distributed.shard(x)
    lin(mine).pow(2).sum(1).mean().backward()
    distributed.reduce_gradients([lin.weight, lin.bias, unused], len(mine) / len(x))
    res = {"world": distributed.world_size(), "v": tree["v"].tolist(), "odd": tree["odd"].tolist(),
           "i": tree["i"][0].tolist(), "objs": distributed.all_gather_object([f"r{r}"] * (r + 1)),
           "map": distributed.sharded_map(lambda k: k * 10 + r, list(range(5))),
           "gw": lin.weight.grad.tolist(), "gb": lin.bias.grad.tolist(), "unused": unused.grad is None}
    (out / f"collectives{r}.json").write_text(json.dumps(res))


CLI_RUN = "cli-run"
EVALS = {  # command: (options, result files)
    "biterrors": (["--rates", "0.01,0.05", "--patterns", "5"], ["biterrors"]),
    # 50 attacked images in batches of 16: 2 batches on rank 0, 2 (the last one short) on rank 1
    "attack": (["--suite", "linf,l2,frames,patch,distal,corrupt", "--n-test", "50", "--batch-size",
                "16", "--steps", "4", "--patch-steps", "3", "--restarts", "2", "--corruptions",
                "gaussian_noise", "--no-figures"], ["attack"]),
    "bitattack": (["--budgets", "0,3,12", "--methods", "attack,bfa,random", "--steps", "3",
                   "--restarts", "2", "--random-patterns", "3", "--n-attack", "64", "--n-test", "100"],
                  ["bitattack"]),
    "flatness": (["--kind", "average", "--xi", "0.1,0.3", "--samples", "5", "--n-test", "40",
                  "--steps", "3", "--no-train", "--batch-size", "16", "--landscape", "1d",
                  "--points", "5"], ["flatness-average", "landscape-1d-random"]),
}


def _untimed(obj):
    """A result without the fields that time it (they differ between any two runs)."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in ("timing", "time_s")}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _evaluate(run: Path, name: str) -> dict | None:
    """Run an evaluation command on `run`; returns its results without timings (on rank 0)."""
    from robustlab import cli

    options, files = EVALS[name]
    assert cli.main([name, str(run), "--quiet", "--device", "cpu", *options]) == 0
    if not distributed.is_main():
        return None
    return {f: _untimed(json.loads((run / "results" / f"{f}.json").read_text())) for f in files}


def _cli(out: Path) -> None:
    """`robustlab train` and the sharded evaluation commands, as under torchrun."""
    from robustlab import cli

    run = out / CLI_RUN
    assert cli.main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "2", "--batch-size",
                     "50", "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    for name in EVALS:
        res = _evaluate(run, name)
        if distributed.is_main():
            (out / f"{name}-2ranks.json").write_text(json.dumps(res))
    distributed.barrier()


def _w_session(out: str) -> None:
    """Everything the 2-rank tests need, in one process group (process start-up is the slow part)."""
    out_ = Path(out)
    distributed.init("cpu")
    _collectives(out_)
    _fit(out_, "normal")
    _cli(out_)
    _fit(out_, "a", run=out_ / "a", method="randbet")
    _fit(out_, "b", run=out_ / "b", method="randbet", kill_at=1)  # never returns


def _w_resume(out: str) -> None:
    out_ = Path(out)
    (out_ / "b-state-before-resume.json").write_text(json.dumps(checkpoint.read_state_info(out_ / "b")))
    _fit(out_, "b", run=out_ / "b", method="randbet", resume=True)


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    res = _spawn("_w_session", 2, out, check=False, out=str(out))
    for r, p in enumerate(res):
        assert p.returncode == KILL_EXIT, "\n".join(f"rank {i}: {q.stderr[-3000:]}"
                                                     for i, q in enumerate(res))
        (out / f"session{r}.out").write_text(p.stdout)
    _spawn("_w_resume", 2, out, out=str(out))
    return out




def test_gather_and_gradient_reduction_are_exact(session):
    r0, r1 = (json.loads((session / f"collectives{r}.json").read_text()) for r in (0, 1))
    full = torch.arange(14, dtype=torch.float64).view(7, 2) / 3
    for res in (r0, r1):
        assert res["world"] == 2
        assert res["v"] == full.tolist()  # bit-identical, original order
        assert res["odd"] == [bool(v % 2) for v in range(0, 14, 2)]
        assert res["i"] == list(range(7))
        assert res["objs"] == [["r0"], ["r1", "r1"]]
        assert res["map"] == [0, 11, 20, 31, 40]  # round robin: items 0,2,4 on rank 0, 1,3 on rank 1
        assert res["unused"]
    ref = _linear()
    ref(torch.arange(15.0).view(5, 3) / 10).pow(2).sum(1).mean().backward()
    assert r0["gw"] == r1["gw"] and r0["gb"] == r1["gb"]  # replicas stay identical
    torch.testing.assert_close(torch.tensor(r0["gw"]), ref.weight.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.tensor(r0["gb"]), ref.bias.grad, rtol=1e-6, atol=1e-7)


def test_two_process_training_follows_the_single_process_loss_curve(session):
    train, model = _problem()
    ref = fit(model, train, epochs=3, batch_size=64, lr=0.1, device="cpu", progress=False, log=False)
    hists = [json.loads((session / f"normal-hist{r}.json").read_text()) for r in (0, 1)]
    weights = [torch.load(session / f"normal-weights{r}.pt") for r in (0, 1)]
    assert hists[0] == [dict(h, time_s=h0["time_s"]) for h, h0 in zip(hists[1], hists[0])]
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k  # replicas never drift apart
    for h, h_ref in zip(hists[0], ref):
        assert h["train_err"] == h_ref["train_err"]
        assert h["train_loss"] == pytest.approx(h_ref["train_loss"], rel=1e-5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(weights[0][k], v, rtol=1e-4, atol=1e-5)
    assert ref[-1]["train_loss"] < ref[0]["train_loss"] - 0.1  # it did learn something


def test_killed_and_resumed_two_process_run_ends_with_the_same_weights(session):
    a, b = session / "a", session / "b"
    assert json.loads((session / "b-state-before-resume.json").read_text())["epoch"] == 1
    ma, meta_a = checkpoint.load(a)
    mb, meta_b = checkpoint.load(b)
    for (ka, va), (kb, vb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert meta_a["world_size"] == meta_b["world_size"] == 2
    state = checkpoint.read_state_info(a)
    assert state["method_state"]["distributed"]["world_size"] == 2
    assert [json.loads(line)["epoch"] for line in (b / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    hist_a = json.loads((session / "a-hist0.json").read_text())
    hist_b = json.loads((session / "b-hist0.json").read_text())
    assert [h["train_loss"] for h in hist_a] == [h["train_loss"] for h in hist_b]
    # ranks draw different bit error patterns, reproducibly: same weights on both ranks anyway
    wa = [torch.load(session / f"a-weights{r}.pt") for r in (0, 1)]
    assert all(torch.equal(wa[0][k], wa[1][k]) for k in wa[0])


def test_train_command_writes_one_run_from_rank_0(session):
    outs = [(session / f"session{r}.out").read_text() for r in (0, 1)]
    assert "run written to" in outs[0] and "run written to" not in outs[1]
    assert "epoch 2/2" in outs[0] and "epoch" not in outs[1]
    _, meta = checkpoint.load(session / CLI_RUN)
    assert meta["world_size"] == 2 and meta["data"]["name"] == "synthetic"
    assert len((session / CLI_RUN / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("name", list(EVALS))
def test_sharded_evaluation_equals_single_process(session, one_thread, name):
    two = json.loads((session / f"{name}-2ranks.json").read_text())
    one = _evaluate(session / CLI_RUN, name)
    assert two == one
    if name == "attack":  # the attacks did something, on both ranks' batches
        for key in ("linf", "patch"):
            adv, clean = two["attack"]["threats"][key]["adv_conf"], two["attack"]["clean"]["conf"]
            assert len(adv) == 50 and adv[:32] != clean[:32] and adv[32:] != clean[32:]
    if name == "flatness":  # 5 distinct perturbed models per ξ, 5 landscape points
        for d in two["flatness-average"]["details"]:
            assert len(set(d["perturbed_losses"])) == 5
        assert len(set(two["landscape-1d-random"]["robust_loss"])) == 5


@pytest.mark.slow  # the launcher itself; the session above already runs `train` as torchrun would
def test_torchrun_trains_with_two_processes(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    env = dict(_env(0, 1, 0), PYTHONUNBUFFERED="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k)
    p = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                        "--master-port", str(_free_port()), "-m", "robustlab", "train", "--data",
                        "synthetic", "--model", "mlp", "--epochs", "1", "--out", "run", "--quiet",
                        "--device", "cpu"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("run written to run") == 1  # rank 0 only
    _, meta = checkpoint.load(tmp_path / "run")
    assert meta["world_size"] == 2
