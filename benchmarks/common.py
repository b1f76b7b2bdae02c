"""Pieces the benchmark scripts share (run them as `python benchmarks/NAME.py`)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from robustlab import data, models
from robustlab.checkpoint import read_weights
from robustlab.io import atomic_write_json, read_json

STRENGTH_CACHE = "/tmp/robustlab_attack_strength"  # where attack_strength.py keeps its models


def cached_model(key: str, cache: str, train: data.Dataset) -> torch.nn.Module:
    """The LeNet `key` (normal, at, ccat) that `attack_strength.py` trained and cached, frozen
    and in eval mode (exit with one line when it is missing)."""
    path = Path(cache) / f"{key}.safetensors"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run benchmarks/attack_strength.py --models {key} first")
    model = models.create("lenet", dataset=train, seed=0)
    model.load_state_dict(read_weights(path))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def choose(csv: str, allowed: tuple[str, ...] | dict, what: str) -> list[str]:
    """The comma-separated names in `csv`, each one of `allowed` (else exit with one line)."""
    names = [n.strip() for n in csv.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise SystemExit(f"unknown {what} {bad[0]!r}; choose from {', '.join(allowed)}")
    return names


def bench_data(smoke: bool, subset: int, n_test: int) -> tuple[data.Dataset, data.Dataset]:
    """Fashion-MNIST (digits at 28×28 when missing), or a tiny synthetic problem for `--smoke`;
    the first `subset` training and `n_test` test images (0 = all)."""
    if smoke:
        train, test = data.synthetic(512, 256, shape=(1, 8, 8), num_classes=4, seed=0)
    else:
        train, test = data.load_default("fashion-mnist")
    if subset:
        train = train.subset(slice(0, subset))
    if n_test:
        test = test.subset(slice(0, n_test))
    return train, test


# ---- benchmarks built on a preset (ccat, patches, flatness) ---------------------------------

BENCH_CACHE = "/tmp/robustlab_bench"  # where those benchmarks keep their trained runs
SMOKE_DATA = {"name": "synthetic", "options": {"n_train": 512, "n_test": 300,
                                               "shape": [1, 28, 28], "num_classes": 10}}


def add_preset_options(ap: argparse.ArgumentParser, name: str) -> None:
    """The options every preset benchmark takes: the preset's scale and runs, overrides of its
    data, model and epochs, the device, the run cache, the output file."""
    ap.add_argument("--scale", default=None, help="preset scale: smoke, small or full "
                    f"(default: the preset's; see configs/{name}.yaml)")
    ap.add_argument("--smoke", action="store_true",
                    help="the smoke scale on a tiny synthetic problem (seconds)")
    ap.add_argument("--runs", default=None, help="comma list of the preset's runs (default: all)")
    ap.add_argument("--data", default=None, help="dataset (default: the preset's)")
    ap.add_argument("--model", default=None, help="architecture (default: the preset's model)")
    ap.add_argument("--epochs", type=int, default=None, help="(default: the preset's)")
    ap.add_argument("--subset", type=int, default=None, help="training images (0 = all)")
    ap.add_argument("--train-steps", "--attack-steps", type=int, default=None,
                    help="attack iterations of training (and robust tracking)")
    ap.add_argument("--bf16", action="store_true", help="train (and attack) in bfloat16")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache", default=BENCH_CACHE, help="folder of the trained runs: a run with "
                    "the same settings is reused")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default=f"benchmarks/results/{name}.json")


def add_attack_options(ap: argparse.ArgumentParser) -> None:
    """--n-test, --steps, --restarts of a benchmark's attack evaluation (default: the preset's)."""
    ap.add_argument("--n-test", type=int, default=None, help="attacked test images")
    ap.add_argument("--steps", type=int, default=None, help="evaluation attack iterations")
    ap.add_argument("--restarts", type=int, default=None, help="evaluation attack restarts")


def bench_preset(name: str, a: argparse.Namespace) -> dict[str, Any]:
    """Preset `name` at `--scale` (smoke on synthetic data with `--smoke`), edited by the
    options of `add_preset_options` (`--train-steps` replaces every run's training attack
    steps and its robust tracking's)."""
    from robustlab import experiments

    p = experiments.load_preset(name, scale="smoke" if a.smoke else a.scale)
    if a.runs:
        keep = choose(a.runs.replace("-", "_"), p["runs"], "run")
        p["runs"] = {k: p["runs"][k] for k in keep}
    if a.smoke:
        p["data"] = {**p["data"], **SMOKE_DATA}
    if a.data:
        p["data"]["name"] = a.data
    if a.subset is not None:
        p["data"]["subset"] = a.subset or None
    if a.model and a.model != p["model"]["name"]:
        p["model"] = {"name": a.model}  # the preset's width/norm belong to its own model
    p["train"].update({k: v for k, v in (("epochs", a.epochs), ("bf16", a.bf16),
                                         ("channels_last", a.channels_last)) if v})
    for r in p["runs"].values() if a.train_steps else ():
        if "attack_steps" in (r.get("options") or {}):
            r["options"]["attack_steps"] = a.train_steps
        if r.get("track"):
            r["track"]["steps"] = a.train_steps
    return p


def bench_workspace(preset: dict[str, Any], a: argparse.Namespace, **extra: Any) -> Any:
    """The preset's `experiments.Workspace` in `--cache`/<preset>-<hash of the settings and
    `extra`>: the same settings find the same trained runs."""
    from robustlab import experiments

    key = experiments.fingerprint({"preset": preset, **extra})[:12]
    return experiments.Workspace(preset, Path(a.cache) / f"{preset['name']}-{key}",
                                 device=a.device, progress=False if a.quiet else None)


def bench_run(ws: Any, name: str, hooks: list[Any] = ()) -> tuple[Any, float]:
    """(run `name` of the workspace's preset, opened with `robustlab.runs.open_run` on the
    preset's data, training seconds): trained with its `TrainSpec` (and robust tracking, plus
    epoch `hooks`) unless a finished run is there already."""
    from robustlab import checkpoint, runs

    out = ws.run_dir(name)
    stamp = out / "bench_stamp.json"
    if not stamp.is_file():
        train, val, test = ws.data()
        hooks, best = list(hooks), None
        track = ws.track_spec(name)
        if track is not None:
            hook, best = track.hook(val, test)
            hooks.insert(0, hook)
        t0 = time.perf_counter()
        ws.train_spec(name).run(out, data=ws.data(), resume=checkpoint.has_state(out),
                                device=ws.device, progress=ws.progress,
                                meta={"label": ws.run_label(name)}, epoch_hooks=hooks or None,
                                select_best=best)
        atomic_write_json(stamp, {"train_s": round(time.perf_counter() - t0, 1)})
    r = runs.open_run(out, device=ws.device, with_data=False)
    r.train, r.val, _ = ws.data()
    r.test = ws.test_subset()
    return r, float(read_json(stamp)["train_s"])


def preset_eval(ws: Any, run: str, name: str, **overrides: Any) -> Any:
    """The preset's evaluation `name` of `run` as its registered spec (`robustlab.tasks`), the
    fields in `overrides` that are not None replaced."""
    from robustlab import experiments

    spec, _ = experiments.eval_spec(name, experiments.eval_settings(ws, run)[name])
    return dataclasses.replace(spec, **{k: v for k, v in overrides.items() if v is not None})


def timed_eval(spec: Any, run: Any, **kw: Any) -> tuple[dict[str, Any], float]:
    """(`spec` run on `run` as a result with its kind and settings, seconds it took); `kw` go
    to `spec.run`."""
    from robustlab import tasks

    t0 = time.perf_counter()
    body = spec.run(run, **kw)
    return tasks.make_result(spec, run, body), round(time.perf_counter() - t0, 1)


# ---- the bit error benchmarks (biterrors, bitattack): the bit-errors preset's runs ---------------

def add_run_overrides(ap: argparse.ArgumentParser) -> None:
    """Options that change the preset's training (each defaults to the preset's value)."""
    ap.add_argument("--lr", type=float, default=None, help="learning rate")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch size")
    ap.add_argument("--seed", type=int, default=None, help="training seed")
    ap.add_argument("--clip", type=float, default=None, help="w_max of the runs that clip")
    ap.add_argument("--randbet-p", type=float, default=None,
                    help="bit error rate of RandBET/PattBET training")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default; 1 on a busy shared machine)")


def override_runs(p: dict[str, Any], a: argparse.Namespace, **run_values: Any) -> dict[str, Any]:
    """Apply `add_run_overrides`' options to the loaded preset `p`: --lr, --batch-size, --seed
    to its `train`; --clip, --randbet-p (and `run_values`, setting → value, None = keep) to
    every run whose `train` or `options` holds that setting (a label naming the old value is
    changed to the new one)."""
    if a.threads:
        torch.set_num_threads(a.threads)
    p["train"].update({k: v for k, v in (("lr", a.lr), ("batch_size", a.batch_size),
                                         ("seed", a.seed)) if v is not None})
    values = {"clip": a.clip, "bit_error_rate": a.randbet_p, **run_values}
    for r in p["runs"].values():
        for key, new in values.items():
            for section in (r.get("train") or {}, r.get("options") or {}):
                if new is None or key not in section:
                    continue
                old, section[key] = section[key], new
                if isinstance(old, float) and "label" in r:
                    for text in (lambda v: f" {100 * v:g}%", lambda v: f" {v:g}"):
                        if text(old) in r["label"]:
                            r["label"] = r["label"].replace(text(old), text(new))
                            break
    return p


# ---- attack-vs-peer benchmarks (square_vs_peers, apgd_vs_peers): rates and times per run -------

def tally(n: int, **keys: Any) -> dict[str, Any]:
    """An empty record of one (library, attack, …) over seeds: `keys` plus per-seed rates, the
    union of misclassified examples over seeds, and summed wall and process CPU seconds."""
    return {**keys, "rates": [], "time_s": 0.0, "cpu_s": 0.0,
            "union": torch.zeros(n, dtype=torch.bool)}


def timed_run(record: dict[str, Any], run: Any) -> tuple[float, float]:
    """Run `run()` (→ a bool tensor of misclassified examples) into `record`; (wall, CPU) s."""
    t0, c0 = time.perf_counter(), time.process_time()
    wrong = run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    record["time_s"] += wall
    record["cpu_s"] += cpu
    record["rates"].append(float(wrong.float().mean()))
    record["union"] |= wrong
    return wall, cpu


def tally_table(records: list[dict[str, Any]], columns: dict[str, int]) -> list[dict[str, Any]]:
    """Print one line per record (the `columns` keys at their widths, then per-seed rates, mean,
    union, wall and CPU s, in %) and return the records as JSON rows."""
    print(" ".join(f"{k:<{w}}" for k, w in columns.items()) + f" {'per seed':<20} {'mean':>6} "
          f"{'union':>6} {'time s':>7} {'cpu s':>7}")
    rows = []
    for r in records:
        mean = sum(r["rates"]) / len(r["rates"])
        union = float(r["union"].float().mean())
        per = " ".join(f"{100 * v:.1f}" for v in r["rates"])
        print(" ".join(f"{r[k]:<{w}}" for k, w in columns.items()) + f" {per:<20} "
              f"{100 * mean:6.1f} {100 * union:6.1f} {r['time_s']:7.1f} {r['cpu_s']:7.1f}")
        rows.append({**{k: r[k] for k in columns}, "rates": r["rates"], "mean": mean,
                     "union": union, "time_s": round(r["time_s"], 1), "cpu_s": round(r["cpu_s"], 1)})
    return rows


def misclassified(model: torch.nn.Module, x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor,
                  norm: str, eps: float, who: str) -> torch.Tensor:
    """Whether the model misclassifies each adversarial input, after checking that every one is
    within the `norm` ball of radius `eps` (L∞ or L2) around `x` and in the box [0, 1]."""
    d = (adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-4) + 1e-5, (who, float(size.max()))
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1, who
    with torch.no_grad():
        return model(adv).argmax(1) != y


def add_peer_options(ap: argparse.ArgumentParser, name: str, libraries: str, *, n: int,
                     seeds: str, batch_size: int) -> None:
    """The options an attack-vs-peer benchmark shares: model, norms, libraries, images, seeds,
    batch, threads, training subset, model cache and output file."""
    ap.add_argument("--model", default="at", choices=("normal", "at", "ccat"))
    ap.add_argument("--norms", default="linf,l2")
    ap.add_argument("--libraries", default=libraries)
    ap.add_argument("--n", type=int, default=n, help="first n test images")
    ap.add_argument("--seeds", default=seeds)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--subset", type=int, default=20000)
    ap.add_argument("--cache", default=STRENGTH_CACHE)
    ap.add_argument("--out", default=f"benchmarks/results/{name}.json")


def peer_setup(a: argparse.Namespace, norms: tuple[str, ...], libraries: tuple[str, ...]
               ) -> tuple[list[str], list[str], list[int], torch.nn.Module, torch.Tensor,
                          torch.Tensor]:
    """After `add_peer_options`: (norms, libraries, seeds, the cached model, its first --n test
    images and labels), with --threads set."""
    torch.set_num_threads(a.threads)
    train, test = bench_data(False, a.subset, 0)
    return (choose(a.norms, norms, "norm"), choose(a.libraries, libraries, "library"),
            [int(s) for s in a.seeds.split(",")], cached_model(a.model, a.cache, train),
            test.x[:a.n].float(), test.y[:a.n].long())


def batched_wrong(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int,
                  norm: str, eps: float, who: str, attack: Any) -> torch.Tensor:
    """`attack(xb, yb) -> adversarial xb` over batches of x; per example misclassified (the
    adversarial inputs checked by `misclassified`)."""
    out = []
    for i in range(0, x.shape[0], batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        out.append(misclassified(model, xb, attack(xb, yb), yb, norm, eps, who))
    return torch.cat(out)
