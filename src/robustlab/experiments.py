"""Experiments: YAML presets → a plan of steps (train runs, evaluations) → result files → tables.

`robustlab demo` and `robustlab reproduce` are thin layers over this module:

- `load_preset(name, scale)` reads `configs/<name>.yaml`, merges the chosen scale's overrides and
  checks the result (one `UserError` line on a bad key or value);
- `build_plan(preset, out)` turns it into `Step`s: one training run per entry of `runs`, then one
  step per evaluation of each run (clean, adversarial suites, bit errors, bit attacks, flatness,
  landscapes). Runs whose method, and evaluations whose module, is not in this build are skipped
  with a note;
- `Plan.execute()` runs the steps that are not done yet, showing the step, elapsed time and ETA.
  A step is done when its output exists *with the same settings*, so re-running resumes and a
  changed preset redoes only what it changes (interrupted training continues from its last epoch);
- `table(preset, out)` reads the result files back into rows × columns of named metrics
  (`robustlab.report.summary`), and `check_findings` evaluates the preset's findings (spec §9)
  on that table.

Preset format (all sections optional except `runs`)::

    name: bit-errors
    title: ...
    data: {name: default, subset: 10000, val_fraction: 0.0, options: {}}
    model: {name: convnet, width: 16}                  # robustlab.models.create kwargs
    train: {epochs: 5, lr: 0.05, batch_size: 128}      # TrainConfig fields (clip, quant, ...)
    evaluate: {clean: {n_test: 1000}, biterrors: {rates: [0.01], patterns: 5}}
    runs:
      normal: {label: Normal}
      randbet: {label: RandBET, method: randbet, options: {bit_error_rate: 0.01},
                train: {clip: 0.1, quant: rquant8}}
    table: {columns: ["Err", "RErr p=1%"]}
    findings: [{text: "...", checks: ["randbet[RErr p=1%] < normal[RErr p=1%]"]}]
    scales: {smoke: {...overrides...}, small: {}, full: {...}}

Per run: `method`, `options` (method fields), `train` and `model` (overrides), `evaluate`
(overrides; `null` drops an evaluation), `track` (robust overfitting tracking:
the `robustlab.tasks.tracking.Tracking` settings, e.g. `{n_test: 360, steps: 3}`). A run
is a `robustlab.tasks.train.TrainSpec`; an evaluation is the registered spec of its kind
(`robustlab.tasks`): its `evaluator` (the kind) defaults to its name (so `patch-fixed:
{evaluator: adversarial, ...}` works), `snapshot: best` evaluates the early-stopping weights,
and its other keys are the spec's fields (`preset_specs` gives the whole preset as specs).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch

from robustlab.errors import UserError
from robustlab.io import atomic_write_json, atomic_write_text, read_json

SCALES = ("smoke", "small", "full")
_TOP_KEYS = {"name", "title", "description", "paper", "data", "model", "train", "evaluate", "runs",
             "table", "findings", "scales", "default_scale", "budget"}
_RUN_KEYS = {"label", "method", "options", "train", "model", "evaluate", "track", "requires",
             "description"}


# ---------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------

def config_dirs() -> list[Path]:
    """Where presets are looked for: `$ROBUSTLAB_CONFIGS`, `./configs`, the source tree's `configs/`."""
    dirs = []
    if os.environ.get("ROBUSTLAB_CONFIGS"):
        dirs.append(Path(os.environ["ROBUSTLAB_CONFIGS"]))
    dirs.append(Path.cwd() / "configs")
    dirs.append(Path(__file__).resolve().parents[2] / "configs")
    seen, out = set(), []
    for d in dirs:
        if d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def preset_names() -> list[str]:
    names = set()
    for d in config_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def find_preset(name: str) -> Path:
    """A preset's YAML file: a path, or `<name>.yaml` in one of `config_dirs()`."""
    p = Path(name).expanduser()
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise UserError(f"preset file {p} does not exist")
        return p
    for d in config_dirs():
        if (d / f"{name}.yaml").is_file():
            return d / f"{name}.yaml"
    known = preset_names()
    raise UserError(f"unknown preset {name!r}; choose one of {', '.join(known) or '(none found)'} "
                    f"(searched {', '.join(str(d) for d in config_dirs())})")


def merge(base: Any, over: Any) -> Any:
    """Deep merge of YAML values: dicts merge key by key, `None` deletes a key, the rest replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = merge(out.get(k), v)
        return out
    return copy.deepcopy(over)


def load_preset(name: str | Path | dict[str, Any], scale: str | None = None,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a preset (name, YAML path or dict), apply `scales[scale]` and `overrides`, validate."""
    import yaml

    if isinstance(name, dict):
        raw, source = copy.deepcopy(name), "<dict>"
    else:
        path = find_preset(str(name))
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(f"{path} is not valid YAML ({first})") from None
        source = str(path)
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a preset must be a YAML mapping")
    bad = sorted(set(raw) - _TOP_KEYS)
    if bad:
        raise UserError(f"{source}: unknown preset key {bad[0]!r}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    scales = raw.pop("scales", None) or {}
    scale = scale or raw.get("default_scale") or ("small" if "small" in scales else None)
    if scale is not None:
        if scale not in scales:
            raise UserError(f"{source}: unknown scale {scale!r}; choose one of "
                            f"{', '.join(scales) or '(none defined)'}")
        raw = merge(raw, scales[scale] or {})
    if overrides:
        raw = merge(raw, overrides)
    raw["scale"] = scale
    raw["source"] = source
    raw.setdefault("name", Path(source).stem if source != "<dict>" else "experiment")
    _validate(raw, source)
    return raw


def _validate(p: dict[str, Any], source: str) -> None:
    runs = p.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise UserError(f"{source}: 'runs' must map run names to settings (at least one run)")
    from robustlab.runs import check_run_name

    for name, r in runs.items():
        check_run_name(name, f"{source}: run name")
        if not isinstance(r, dict):
            raise UserError(f"{source}: run {name!r} must be a mapping")
        bad = sorted(set(r) - _RUN_KEYS)
        if bad:
            raise UserError(f"{source}: run {name!r} has unknown key {bad[0]!r}; allowed: "
                            f"{', '.join(sorted(_RUN_KEYS))}")
    for name, e in (p.get("evaluate") or {}).items():
        if not isinstance(e, dict):
            raise UserError(f"{source}: evaluation {name!r} must be a mapping of settings")
        kind = _kind(name, e)
        if kind not in eval_kinds():
            raise UserError(f"{source}: evaluation {name!r} has unknown evaluator {kind!r}; choose "
                            f"one of {', '.join(eval_kinds())}")
    from robustlab.tasks.train import TrainSpec

    train_fields = TrainSpec.train_settings()
    for where, t in [("train", p.get("train") or {})] + [
            (f"run {n!r} train", r.get("train") or {}) for n, r in runs.items()]:
        bad = sorted(set(t) - train_fields)
        if bad:
            raise UserError(f"{source}: {where} has unknown setting {bad[0]!r}; allowed: "
                            f"{', '.join(sorted(train_fields))}")


def fingerprint(obj: Any) -> str:
    """A short stable hash of JSON-able settings."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# the plan: steps with progress, ETA and resume
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Step:
    """One unit of work: `run()` produces outputs; `done()` says they exist and are current."""

    key: str
    title: str
    run: Callable[[], Any]
    done: Callable[[], bool]
    cost: float = 1.0          # estimated work (forward-backward passes of one example)
    command: str = ""          # how to redo it by hand
    skip: str | None = None    # reason it cannot run in this build


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Plan:
    """Steps executed in order; `plan.json` in `out` records what ran, how long and how."""

    def __init__(self, out: str | Path, steps: list[Step], *, seconds_per_unit: float | None = None,
                 info: dict[str, Any] | None = None):
        self.out, self.steps = Path(out), steps
        self.seconds_per_unit = seconds_per_unit
        self.info = dict(info or {})

    def pending(self) -> list[Step]:
        return [s for s in self.steps if s.skip is None and not s.done()]

    STEP_OVERHEAD_S = 0.3  # opening a run, writing results: what per-example costs do not see

    def estimate(self, steps: list[Step] | None = None) -> float:
        """Estimated seconds for `steps` (default: the pending ones)."""
        steps = self.pending() if steps is None else steps
        if not self.seconds_per_unit:
            return 0.0
        return sum(s.cost for s in steps) * self.seconds_per_unit + self.STEP_OVERHEAD_S * len(steps)

    def _record(self) -> dict[str, Any]:
        path = self.out / "plan.json"
        try:
            return read_json(path) if path.is_file() else {}
        except (OSError, ValueError):
            return {}

    def execute(self, *, stream: TextIO | None = None, progress: bool = True) -> dict[str, Any]:
        """Run every pending step; returns the plan record (also written to `out/plan.json`)."""
        stream = stream or sys.stderr
        self.out.mkdir(parents=True, exist_ok=True)
        record = self._record()
        steps_rec: dict[str, Any] = record.get("steps", {})
        record.update(self.info)
        record.update(command=self.info.get("command") or _argv_command(), steps=steps_rec)
        pending = self.pending()
        todo_keys = {s.key for s in pending}
        for s in self.steps:
            entry = steps_rec.setdefault(s.key, {})
            entry.update(title=s.title, command=s.command)
            if s.skip is not None:
                entry.update(status="skipped", reason=s.skip)
            elif s.key not in todo_keys:
                entry["status"] = "done"
        over = self.STEP_OVERHEAD_S / self.seconds_per_unit if self.seconds_per_unit else 0.0
        total_units = sum(s.cost + over for s in pending)
        done_units, t_start = 0.0, time.perf_counter()

        def say(msg: str) -> None:
            if progress:
                stream.write(msg + "\n")
                stream.flush()

        skipped = [s for s in self.steps if s.skip is not None]
        reused = len(self.steps) - len(pending) - len(skipped)
        say(f"plan: {len(self.steps)} steps, {len(pending)} to run"
            + (f", {reused} reused" if reused else "")
            + (f", {len(skipped)} not available" if skipped else "")
            + (f", estimated {_clock(self.estimate(pending))}" if self.seconds_per_unit else ""))
        for s in skipped:
            say(f"  skipped: {s.title} ({s.skip})")
        atomic_write_json(self.out / "plan.json", record)
        for i, step in enumerate(pending):
            elapsed = time.perf_counter() - t_start
            remaining = total_units - done_units
            if done_units > 0 and elapsed > 0:
                rate = elapsed / done_units
                if self.seconds_per_unit:  # blend the prior with what was measured so far
                    w = min(1.0, done_units / max(total_units, 1e-9) * 3)
                    rate = w * rate + (1 - w) * self.seconds_per_unit
                eta = remaining * rate
            else:
                eta = remaining * (self.seconds_per_unit or 0.0)
            eta_txt = f", ETA {_clock(eta)}" if eta > 0 else ""
            say(f"[{i + 1}/{len(pending)}] {step.title}  (elapsed {_clock(elapsed)}{eta_txt})")
            t0 = time.perf_counter()
            step.run()
            dt = time.perf_counter() - t0
            done_units += step.cost + over
            steps_rec[step.key].update(status="done", seconds=round(dt, 2),
                                       finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
            atomic_write_json(self.out / "plan.json", record)
        total = time.perf_counter() - t_start
        record["last_execution_seconds"] = round(total, 2)
        atomic_write_json(self.out / "plan.json", record)
        say(f"plan finished in {_clock(total)}")
        return record


def _argv_command() -> str:
    """The command line of this process when it is the `robustlab` CLI, else ''."""
    name = Path(sys.argv[0]).name if sys.argv else ""
    if name == "robustlab" or (name == "__main__.py" and "robustlab" in sys.argv[0]):
        return " ".join(["robustlab", *sys.argv[1:]])
    return ""


# ---------------------------------------------------------------------------------------------
# data, runs and training steps
# ---------------------------------------------------------------------------------------------

class Workspace:
    """Shared state of one plan execution: the resolved data spec and the data, loaded once."""

    def __init__(self, preset: dict[str, Any], out: str | Path, *, device: str = "auto",
                 data_dir: str | None = None, progress: bool | None = None):
        self.preset, self.out = preset, Path(out)
        self.device, self.data_dir, self.progress = device, data_dir, progress
        self._data: tuple[Any, Any, Any] | None = None
        self.data_spec = self._resolve_data()

    def _resolve_data(self) -> dict[str, Any]:
        from robustlab import data, runs

        d = dict(self.preset.get("data") or {})
        name = str(d.pop("name", "default"))
        options = dict(d.pop("options", None) or {})
        subset = d.pop("subset", None)
        val_fraction = float(d.pop("val_fraction", 0.0) or 0.0)
        d.pop("test_subset", None)
        if d:
            raise UserError(f"unknown data setting {sorted(d)[0]!r}; allowed: name, subset, "
                            f"val_fraction, options")
        if name == "default":  # fashion-mnist when installed, else digits at 28×28
            train, _ = data.load_default(data_dir=self.data_dir)
            if "fallback" in train.source or train.name == "digits":
                name, options = "digits", {"size": int(train.shape[-1]), **options}
            else:
                name = train.name
        return runs.data_spec(name, data_dir=self.data_dir, subset=subset, val_fraction=val_fraction,
                              **options)

    def data(self) -> tuple[Any, Any, Any]:
        """(train, val or None, test) of the preset, loaded once (`robustlab.runs.load_data`)."""
        if self._data is None:
            from robustlab import runs

            self._data = runs.load_data(self.data_spec)
        return self._data

    def test_subset(self) -> Any:
        _, _, test = self.data()
        n = (self.preset.get("data") or {}).get("test_subset")
        return test if not n else test.subset(slice(0, int(n)))

    # -- runs ----------------------------------------------------------------------------
    def run_settings(self, name: str) -> dict[str, Any]:
        """Everything that determines a run's weights: data, model, method, training config."""
        r = self.preset["runs"][name]
        model = merge(self.preset.get("model") or {"name": "convnet"}, r.get("model") or {})
        train = merge(self.preset.get("train") or {}, r.get("train") or {})
        return {"data": self.data_spec, "model": model, "method": r.get("method", "normal"),
                "options": r.get("options") or {}, "train": train, "track": r.get("track")}

    def train_spec(self, name: str) -> Any:
        """The run's `TrainSpec` (a one-line error naming the run on a bad setting)."""
        from robustlab.tasks.train import TrainSpec

        try:
            return TrainSpec.from_preset(self.run_settings(name))
        except (UserError, TypeError) as e:
            raise UserError(f"run {name!r}: bad train setting ({e})") from None

    def track_spec(self, name: str) -> Any:
        """The run's robust tracking (`tasks.tracking.Tracking` from its `track:` settings), or
        None without one."""
        track = self.preset["runs"][name].get("track")
        if not track:
            return None
        from robustlab.tasks.tracking import Tracking

        return Tracking.from_settings(track, f"run {name!r}: track")

    def run_dir(self, name: str) -> Path:
        return self.out / name

    def run_label(self, name: str) -> str:
        return str(self.preset["runs"][name].get("label") or name)


def _training_done(out: Path, key: str, epochs: int) -> bool:
    from robustlab import checkpoint

    stamp = out / "plan_stamp.json"
    if not (out / checkpoint.META).is_file() or not stamp.is_file():
        return False
    try:
        s = read_json(stamp)
    except (OSError, ValueError):
        return False
    return s.get("key") == key and s.get("epochs_done") == epochs


def train_step(ws: Workspace, name: str) -> Step:
    """The step that trains run `name` (resuming an interrupted run with the same settings)."""
    from robustlab.train import discover

    settings = ws.run_settings(name)
    out = ws.run_dir(name)
    key = fingerprint(settings)
    label = ws.run_label(name)
    if settings["method"] not in discover():
        return Step(f"train/{name}", f"train {label}", lambda: None, lambda: False,
                    skip=f"method {settings['method']!r} is not in this build")
    spec = ws.train_spec(name)
    spec.check()  # settings that cannot give a finite run are refused before anything is written
    cost = spec.cost()
    track = ws.track_spec(name)
    if track is not None:
        cost += spec.epochs * track.cost(0)

    def run() -> None:
        _train(ws, name, settings, key)

    return Step(f"train/{name}", f"train {label} ({spec.method}, {spec.epochs} epochs)", run,
                lambda: _training_done(out, key, spec.epochs), cost=cost,
                command=spec.command_line(out))


def _train(ws: Workspace, name: str, settings: dict[str, Any], key: str) -> None:
    """Train run `name` with its `TrainSpec` into `out/name`: config.yaml, the run, a stamp
    recording the settings' key and the epochs done (what `Step.done` checks)."""
    import yaml

    from robustlab import checkpoint, runs

    out = ws.run_dir(name)
    spec = ws.train_spec(name)
    data = ws.data()
    with runs.run_lock(out):  # a second plan training the same run exits 2 naming this one
        runs.tidy(out)
        stamp = out / "plan_stamp.json"
        resume = False
        if checkpoint.has_state(out):
            try:
                resume = read_json(stamp).get("key") == key
            except (OSError, ValueError):
                resume = False
        if not resume and (out.exists() or out.is_symlink()):
            set_aside(ws.out, [name])  # never delete what an earlier invocation wrote
        out.mkdir(parents=True, exist_ok=True)
        hooks, select_best = [], None
        track = ws.track_spec(name)
        if track is not None:
            _, val, test = data
            hook, select_best = track.hook(val, test)
            hooks.append(hook)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(
            {"command": spec.command_line(out), "plan": ws.preset.get("name"), "run": name,
             **settings}, sort_keys=False))
        atomic_write_json(stamp, {"key": key, "epochs_done": None})
        history = spec.run(out, data=data, resume=resume, device=ws.device, progress=ws.progress,
                           meta={"data": settings["data"], "label": ws.run_label(name)},
                           epoch_hooks=hooks or None, select_best=select_best)
        atomic_write_json(stamp, {"key": key, "epochs_done": len(history)})


# ---------------------------------------------------------------------------------------------
# evaluations: each a registered spec (`robustlab.tasks`)
# ---------------------------------------------------------------------------------------------

def _progress(ws: Workspace) -> bool | None:
    return False if ws.progress is False else None


def eval_kinds() -> list[str]:
    """The evaluation kinds a preset may name (the task registry)."""
    from robustlab import tasks

    return sorted(tasks.load_all())


def _kind(name: str, s: dict[str, Any]) -> str:
    """An evaluation's kind (a registry key): its `evaluator` setting, else its name."""
    return str(s.get("evaluator") or name)


def _available(cls: Any) -> bool:
    try:
        return not cls.requires or importlib.util.find_spec(cls.requires) is not None
    except (ImportError, ValueError):
        return False


def _eval_done(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        return read_json(path).get("plan_key") == key
    except (OSError, ValueError):
        return False


def eval_settings(ws: Workspace, run: str) -> dict[str, dict[str, Any]]:
    """{result name: settings (with `evaluator`, the kind)} of the evaluations of `run`."""
    evals = merge(ws.preset.get("evaluate") or {}, ws.preset["runs"][run].get("evaluate") or {})
    out = {}
    for name, s in evals.items():
        s = dict(s or {})
        kind = s["evaluator"] = _kind(name, s)
        if kind not in eval_kinds():
            raise UserError(f"evaluation {name!r} has unknown evaluator {kind!r}; "
                            f"choose one of {', '.join(eval_kinds())}")
        out[name] = s
    return out


def eval_spec(name: str, settings: dict[str, Any]) -> tuple[Any, str]:
    """(the spec, the snapshot 'last' or 'best') of one evaluation's preset settings."""
    from robustlab import tasks

    s = dict(settings)
    kind = _kind(name, s)
    s.pop("evaluator", None)
    snapshot = s.pop("snapshot", "last")
    if snapshot not in ("last", "best"):
        raise UserError(f"evaluation {name!r}: snapshot {snapshot!r} must be last or best")
    return tasks.spec_class(kind).from_settings(s, f"evaluation {name!r}"), snapshot


def preset_specs(preset: dict[str, Any], out: str | Path = ".") -> dict[str, dict[str, Any]]:
    """A loaded preset as specs: {run: {"train": TrainSpec, "evaluate": {result name: (spec,
    snapshot)}}} (what `build_plan` turns into steps)."""
    ws = Workspace(preset, out)
    return {run: {"train": ws.train_spec(run),
                  "evaluate": {name: eval_spec(name, s) for name, s in eval_settings(ws, run).items()}}
            for run in preset["runs"]}


def eval_step(ws: Workspace, run: str, name: str, settings: dict[str, Any], train_key: str,
              skip: str | None = None) -> Step:
    spec, snapshot = eval_spec(name, settings)
    path = ws.run_dir(run) / "results" / f"{name}.json"
    test_subset = (ws.preset.get("data") or {}).get("test_subset")
    key = fingerprint({"kind": spec.kind, "settings": spec.settings(), "snapshot": snapshot,
                       "train": train_key, "test_subset": test_subset})
    if skip is None and not _available(spec):
        skip = f"{spec.requires} is not in this build"
    n_test = int(test_subset or 10000)

    def go() -> None:
        run_evaluation(ws, run, name, spec, snapshot, key)

    return Step(f"eval/{run}/{name}", f"{name} of {ws.run_label(run)}", go,
                lambda: _eval_done(path, key), cost=spec.cost(n_test),
                command=f"{spec.describe()}  # model: {ws.run_dir(run)}"
                + (" (best snapshot)" if snapshot == "best" else "")
                + (f", test: the first {n_test} test images" if test_subset else ""),
                skip=skip)


def run_evaluation(ws: Workspace, run: str, name: str, spec: Any, snapshot: str, key: str
                   ) -> dict[str, Any]:
    """Run one evaluation spec on the run's `snapshot`; write `results/<name>.json` (the spec's
    result, with the run's label, the snapshot, the plan key and the seconds it took)."""
    from robustlab import tasks
    from robustlab.io import write_result
    from robustlab.runs import open_run

    r = open_run(ws.run_dir(run), device=ws.device, with_data=False, best=snapshot == "best")
    train, val, _ = ws.data()
    r.train, r.val, r.test = train, val, ws.test_subset()
    t0 = time.perf_counter()
    res, _ = tasks.evaluate(spec, r, name=name, progress=_progress(ws), write=False)
    res = {k: v for k, v in res.items() if not isinstance(v, torch.Tensor) or v.numel() < 100_000}
    out = {**res, "label": ws.run_label(run), "snapshot": snapshot, "plan_key": key,
           "seconds": round(time.perf_counter() - t0, 2)}
    write_result(r.path, name, out)
    return out


# ---------------------------------------------------------------------------------------------
# building a plan
# ---------------------------------------------------------------------------------------------

def calibrate(ws: Workspace) -> float:
    """Seconds per unit of work (one forward-backward of one example) for the preset's model."""
    from robustlab import models

    train, _, _ = ws.data()
    m = dict(ws.preset.get("model") or {"name": "convnet"})
    arch = m.pop("name", "convnet")
    model = models.create(arch, dataset=train, **m)
    from robustlab.device import resolve_device

    dev = resolve_device(ws.device)
    model.to(dev).train()
    x, y = train.x[:128].to(dev), train.y[:128].to(dev)
    times = []
    for i in range(7):  # two warm-up passes, then the fastest of five (others may share the CPU)
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 1.8 * min(times) / len(y)  # + optimizer step, data and Python overhead


def build_plan(preset: dict[str, Any], out: str | Path, *, device: str = "auto",
               data_dir: str | None = None, progress: bool | None = None,
               calibrate_eta: bool = True) -> tuple[Plan, Workspace]:
    """Steps for every run of the preset and every evaluation of each run."""
    ws = Workspace(preset, out, device=device, data_dir=data_dir, progress=progress)
    steps: list[Step] = []
    for run in preset["runs"]:
        t = train_step(ws, run)
        steps.append(t)
        train_key = fingerprint(ws.run_settings(run))
        for name, s in eval_settings(ws, run).items():
            steps.append(eval_step(ws, run, name, s, train_key,
                                   skip="its model is not trained in this build" if t.skip else None))
    spu = calibrate(ws) if calibrate_eta else None
    info = {"preset": preset.get("name"), "scale": preset.get("scale"), "source": preset.get("source"),
            "title": preset.get("title"), "paper": preset.get("paper"), "data": ws.data_spec,
            "runs": {r: {"label": ws.run_label(r), "dir": r} for r in preset["runs"]},
            "preset_config": {k: v for k, v in preset.items() if k not in ("source",)}}
    return Plan(out, steps, seconds_per_unit=spu, info=info), ws


REPLACED = ".replaced"  # earlier outputs are moved here, never deleted


def set_aside(out: str | Path, names: list[str]) -> Path | None:
    """Move `out/NAME` (for each name that exists) into `out/.replaced/UTC-STAMP/NAME`; returns
    that folder (None when nothing was there). Nothing is ever deleted: an earlier invocation's
    runs are the user's to remove."""
    out = Path(out)
    present = [n for n in names if (out / n).exists() or (out / n).is_symlink()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = out / REPLACED / stamp
    i = 1
    while dest.exists():
        i += 1
        dest = out / REPLACED / f"{stamp}-{i}"
    dest.mkdir(parents=True)
    for n in present:
        os.replace(out / n, dest / n)  # same file system: an atomic rename, no copy
    return dest


def clean_outputs(preset: dict[str, Any], out: str | Path) -> Path | None:
    """`--fresh`: move what a plan for `preset` wrote in `out` (its run folders, plan.json,
    report.html, table.json) into `out/.replaced/STAMP/`; returns that folder."""
    from robustlab.runs import check_run_name

    names = [check_run_name(r) for r in preset["runs"]] + ["plan.json", "report.html", "table.json"]
    return set_aside(out, names)


# ---------------------------------------------------------------------------------------------
# tables and findings
# ---------------------------------------------------------------------------------------------

def table(preset: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """{"rows": [run names], "labels", "columns", "values": {run: {metric: value}}} from results."""
    from robustlab.report.summary import run_metrics

    out = Path(out)
    values = {run: run_metrics(out / run) for run in preset["runs"]}
    cols = list((preset.get("table") or {}).get("columns") or [])
    if not cols:
        seen: dict[str, None] = {}
        for v in values.values():
            for k in v:
                seen.setdefault(k, None)
        cols = list(seen)
    labels = {run: str(preset["runs"][run].get("label") or run) for run in preset["runs"]}
    return {"rows": list(preset["runs"]), "labels": labels, "columns": cols, "values": values}


class _Unmeasured(Exception):
    """A check refers to something that was not measured."""


# the only syntax a finding check may use (checked node by node before it is evaluated)
_SYNTAX = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.Add, ast.Sub, ast.Mult,
           ast.Div, ast.UnaryOp, ast.USub, ast.Compare, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq,
           ast.NotEq, ast.Call, ast.Name, ast.Load, ast.Constant)


def evaluate_check(check: str, values: dict[str, dict[str, float]]) -> bool | None:
    """Evaluate `row[metric] < row[metric] + 0.01`-style checks; None when a metric is missing.

    Allowed: references `run[metric name]`, numbers, + − × ÷, comparisons (chains too), `and`,
    `or`, `min(...)`, `max(...)`, `abs(...)`, and `kendall("metric a", "metric b")`: Kendall τ
    between two metrics over every run that has both (None with fewer than three such runs).
    Anything else is refused before evaluation (a whitelist of syntax nodes, no builtins).
    """
    import re

    refs: dict[str, float] = {}

    def sub(m: re.Match) -> str:
        row, metric = m.group(1), m.group(2).strip()
        if row not in values:
            raise UserError(f"finding check {check!r}: unknown run {row!r}")
        v = values[row].get(metric)
        refs[f"_v{len(refs)}"] = float("nan") if v is None else float(v)
        return f"_v{len(refs) - 1}"

    try:
        tree = ast.parse(re.sub(r"([A-Za-z_][\w-]*)\[([^\]]+)\]", sub, check), mode="eval")
    except SyntaxError:
        raise UserError(f"finding check {check!r} is not a valid expression") from None

    def kendall(a: str, b: str) -> float:
        pairs = [(v[a], v[b]) for v in values.values() if v.get(a) is not None
                 and v.get(b) is not None]
        if len(pairs) < 3:
            raise _Unmeasured
        from scipy.stats import kendalltau

        tau = float(kendalltau([p[0] for p in pairs], [p[1] for p in pairs])[0])
        if math.isnan(tau):
            raise _Unmeasured
        return tau

    funcs = {"min": min, "max": max, "abs": abs, "kendall": kendall}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    strings = {id(a) for n in calls if getattr(n.func, "id", "") == "kendall" for a in n.args}

    def allowed(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in refs or node.id in funcs
        if isinstance(node, ast.Constant):  # numbers; strings only as kendall's two metric names
            return type(node.value) in (int, float) or (isinstance(node.value, str)
                                                          and id(node) in strings)
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", "")
            return name in funcs and not node.keywords and (name != "kendall" or (
                len(node.args) == 2 and all(isinstance(getattr(a, "value", None), str) for a in node.args)))
        return isinstance(node, _SYNTAX)

    for node in ast.walk(tree):
        if not allowed(node):
            raise UserError(f"finding check {check!r}: unsupported expression {ast.dump(node)[:40]}")
    if any(math.isnan(v) for v in refs.values()):
        return None
    try:
        return bool(eval(compile(tree, "<check>", "eval"), {"__builtins__": {}}, {**refs, **funcs}))
    except _Unmeasured:
        return None


def check_findings(preset: dict[str, Any], tab: dict[str, Any]) -> list[dict[str, Any]]:
    """Per finding: its text, the checks and whether they hold (True/False, None = not measured)."""
    out = []
    for f in preset.get("findings") or []:
        checks = f.get("checks") or []
        results = [evaluate_check(c, tab["values"]) for c in checks]
        ok = None if any(r is None for r in results) or not results else all(results)
        out.append({"text": f.get("text", ""), "paper": f.get("paper", ""), "checks": checks,
                    "results": results, "ok": ok})
    return out


def format_value(v: Any, metric: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        lowered = metric.lower()
        if "auc" in lowered:  # a ROC AUC is not a rate: as measured, like the report
            return f"{v:.3f}"
        if "err" in lowered or "fpr" in lowered:
            return f"{100 * v:.1f}"
        return f"{v:.3g}"
    return str(v)


def format_table(tab: dict[str, Any]) -> str:
    """A plain-text table: rows = runs, columns = metrics (errors in %); columns that no run
    measured are left out."""
    cols = [c for c in tab["columns"] if any(tab["values"][r].get(c) is not None for r in tab["rows"])]
    header = ["model", *cols]
    rows = [[tab["labels"][r], *[format_value(tab["values"][r].get(c), c) for c in cols]]
            for r in tab["rows"]]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(h).ljust(w) if i == 0 else str(h).rjust(w)
                       for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                               for i, (x, w) in enumerate(zip(row, widths))))
    lines.append("(errors in %; 95 % intervals and every metric: robustlab table OUT)")
    return "\n".join(lines)


def format_findings(findings: list[dict[str, Any]]) -> str:
    lines = []
    for f in findings:
        mark = {True: "✓", False: "✗", None: "–"}[f["ok"]]
        lines.append(f"{mark} {f['text']}")
        for c, r in zip(f["checks"], f["results"]):
            lines.append(f"    {'holds' if r else 'fails' if r is False else 'not measured'}: {c}")
    return "\n".join(lines)


def write_table(preset: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Compute the table and findings and write `out/table.json`; returns both."""
    tab = table(preset, out)
    findings = check_findings(preset, tab)
    atomic_write_json(Path(out) / "table.json", {"preset": preset.get("name"),
                                                 "scale": preset.get("scale"), **tab,
                                                 "findings": findings})
    return {"table": tab, "findings": findings}


# ---------------------------------------------------------------------------------------------
# the whole job: plan, execute, table, report
# ---------------------------------------------------------------------------------------------

def run_preset(preset: dict[str, Any], out: str | Path, *, fresh: bool = False, device: str = "auto",
               data_dir: str | None = None, progress: bool | None = None, report: bool = True,
               stream: TextIO | None = None, command: str | None = None) -> dict[str, Any]:
    """Execute a loaded preset in `out` (resuming what is done unless `fresh`), then write
    `table.json` and, with `report`, `report.html`. Returns {plan, table, findings, report}.
    `command` is recorded as the command line that produced the results."""
    out = Path(out)
    if fresh:
        moved = clean_outputs(preset, out)
        if moved is not None:
            print(f"previous outputs moved to {moved} (delete it when no longer needed)",
                  file=stream or sys.stderr)
    plan, _ = build_plan(preset, out, device=device, data_dir=data_dir, progress=progress)
    if command:
        plan.info["command"] = command
    record = plan.execute(stream=stream, progress=progress is not False)
    res = write_table(preset, out)
    res["plan"] = record
    if report:
        from robustlab.report.html import write_report

        path, info = write_report(out, title=preset.get("title"))
        res["report"], res["report_info"] = path, info
    return res
