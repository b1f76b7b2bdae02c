"""Run directories as objects: the data a run was trained on, its model, its quantization.

Every evaluation command opens a run with `open_run(RUN)` so that it evaluates exactly the model
the run trained (at its dequantized weights when the run is quantized) on the same test split,
or on other data of the same shape (`data=`).

Writers of a run directory hold a lock (`run_lock`): training (and `import`) holds
`PARENT/.RUN.lock` for the whole run; an evaluation command holds `RUN/.lock-RESULT` while it
runs. A second writer exits at once naming the holder; a lock left by a dead process is taken
over. Opening a run also removes temporary files left by killed writes.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab import checkpoint, data
from robustlab.device import resolve_device
from robustlab.errors import UserError
from robustlab.io import check_output_dir, clean_temp_files, hostname, pid_alive
from robustlab.models import Predictor

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

VAL_SPLIT_SEED = 0  # fixed, so every run of a dataset holds out the same validation examples
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_run_name(name: Any, where: str = "run name") -> str:
    """A run name from a preset: one plain relative folder name (letters, digits, `._+-`, not
    starting with a dot), never a path. Anything else is a `UserError`."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise UserError(f"{where} {name!r} is not allowed: use a plain folder name of letters, "
                        "digits, '.', '_', '+', '-' (no '/', no '..', not absolute)")
    return name


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def _is_path(name: str) -> bool:
    return name.endswith(".npz") or os.sep in name or "/" in name or Path(name).expanduser().is_dir()


def data_spec(name: str, *, data_dir: str | None = None, subset: int | None = None,
              val_fraction: float = 0.0, **options: Any) -> dict[str, Any]:
    """How a run's data is made: `options` go to the loader (e.g. digits' `size=28`). A dataset
    given as a path (`.npz` file, folder) and `data_dir` are stored absolute, so the run can be
    evaluated from any working directory."""
    if _is_path(str(name)) and data.canonical(str(name)) not in data.LOADERS:
        name = str(Path(name).expanduser().absolute())
    if data_dir:
        data_dir = str(Path(data_dir).expanduser().absolute())
    return {"name": name, "data_dir": data_dir, "subset": subset, "val_fraction": val_fraction,
            "options": options}


def _data_roots(data_dir: str | None, spec: dict[str, Any]) -> list[Path]:
    env = [r for r in os.environ.get("ROBUSTLAB_DATA", "").split(os.pathsep) if r]
    roots = [data_dir, *env, spec.get("data_dir")]
    return [Path(r).expanduser() for r in roots if r]


def resolve_data_name(spec: dict[str, Any], data_dir: str | None = None) -> str:
    """The dataset name or path to load: a recorded path that has moved is looked up by its file
    name in `data_dir`, `$ROBUSTLAB_DATA` and the recorded data_dir."""
    name = str(spec["name"])
    if not _is_path(name) or data.canonical(name) in data.LOADERS:
        return name
    p = Path(name).expanduser()
    if p.exists():
        return str(p)
    tried = [str(p)]
    for root in _data_roots(data_dir, spec):
        cand = root / p.name
        if cand.exists():
            return str(cand)
        tried.append(str(cand))
    raise UserError(f"dataset {name} of this run is not found (looked in {', '.join(tried)}); "
                    "pass --data-dir FOLDER holding it, set $ROBUSTLAB_DATA, or --data PATH")


def load_data(spec: dict[str, Any], data_dir: str | None = None
              ) -> tuple[data.Dataset, data.Dataset | None, data.Dataset]:
    """(train, val or None, test) as described by a run's `data` entry."""
    if data_dir is not None:
        if not str(data_dir).strip():
            raise UserError("--data-dir is empty; give the folder holding the dataset files")
        if not Path(data_dir).expanduser().is_dir():
            raise UserError(f"--data-dir {data_dir} is not an existing folder")
    kwargs = dict(spec.get("options") or {})
    if data_dir or spec.get("data_dir"):
        d = data_dir or spec.get("data_dir")
        if data_dir or Path(str(d)).is_dir():  # a recorded folder that moved: use the default search
            kwargs["data_dir"] = d
    train, test = data.load(resolve_data_name(spec, data_dir), **kwargs)
    if spec.get("subset"):
        train = train.subset(slice(0, int(spec["subset"])))
    val = None
    if spec.get("val_fraction"):
        train, val = data.split(train, float(spec["val_fraction"]), seed=VAL_SPLIT_SEED)
    return train, val, test


def quant_from_meta(meta: dict[str, Any]) -> Any:
    if not meta.get("quant"):
        return None
    from robustlab import quant

    try:
        return quant.Scheme.from_dict(meta["quant"])
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"model.json: 'quant' is not a valid quantization scheme ({e})") from None


# ---------------------------------------------------------------------------------------------
# locks
# ---------------------------------------------------------------------------------------------

def lock_path(run: str | Path, label: str = "train") -> Path:
    """Where the lock of `label` lives: training beside the run folder (it may not exist yet),
    an evaluation inside it."""
    run = Path(run).absolute()
    if label == "train":
        if not run.name:
            raise UserError(f"{run} cannot be a run directory")
        return run.parent / f".{run.name}.lock"
    return run / f".lock-{re.sub(r'[^A-Za-z0-9._-]', '_', label)}"


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info["started"])))
        return (f"pid {info['pid']} on {info['host']} since {started}"
                + (f" ({info['command']})" if info.get("command") else ""))
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _holder_dead(path: Path) -> bool:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
        return info.get("host") == hostname() and not pid_alive(int(info["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


class RunLock:
    """An exclusive lock on a run (or one of its results): `flock` on a file that records
    pid, host, start time and command. Released (and the file removed) by `release()`; the
    kernel releases it when the process dies, so a stale file is simply taken over."""

    def __init__(self, run: str | Path, label: str = "train", command: str | None = None):
        self.run, self.label = Path(run), label
        self.path = lock_path(run, label)
        self.command = command if command is not None else " ".join(
            ["robustlab", *sys.argv[1:2]]) if sys.argv else None
        self.fd: int | None = None
        self.took_over: str | None = None  # the stale holder we replaced, if any
        self._made: list[Path] = []

    def acquire(self) -> RunLock:
        p = self.path.parent
        while not p.exists() and p != p.parent:  # folders made for the lock go when it goes
            self._made.insert(0, p)
            p = p.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                elif os.fstat(fd).st_size and not _holder_dead(self.path):
                    raise BlockingIOError
            except BlockingIOError:
                os.close(fd)
                what = "run directory" if self.label == "train" else f"result {self.label!r} of"
                raise UserError(f"{what} {self.run} is in use by {_holder_text(self.path)}; wait "
                                "for it to finish or stop it") from None
            except OSError:  # no flock on this file system: fall back to the recorded pid
                if os.fstat(fd).st_size and not _holder_dead(self.path):
                    os.close(fd)
                    raise UserError(f"{self.run} is in use by {_holder_text(self.path)}") from None
            try:  # the file we locked must still be the one at the path (a releaser unlinks it)
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            break
        if os.fstat(fd).st_size:
            self.took_over = _holder_text(self.path)
        info = {"pid": os.getpid(), "host": hostname(), "started": time.time(),
                "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)  # closing releases the flock
        self.fd = None
        for d in reversed(self._made):
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty: the command wrote nothing there

    def __enter__(self) -> RunLock:
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def run_lock(run: str | Path, label: str = "train", *, enabled: bool = True,
             command: str | None = None) -> contextlib.AbstractContextManager[Any]:
    """`with run_lock(out):` — hold the run's writer lock (label `train`) or a result's lock for
    the block; a second holder exits with a `UserError` naming the first. `enabled=False` (e.g.
    on non-zero ranks under torchrun) gives a no-op."""
    return RunLock(run, label, command) if enabled else contextlib.nullcontext()


def is_training(run: str | Path) -> str | None:
    """The holder of the run's training lock when a live process holds it, else None."""
    path = lock_path(run, "train")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if fcntl is None:
            return None if _holder_dead(path) else _holder_text(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(path)
        except OSError:
            return None if _holder_dead(path) else _holder_text(path)
        return None
    finally:
        os.close(fd)


def _any_lock_held(run: Path) -> bool:
    """Whether another process holds a lock of `run` (this process writes only temp files
    whose names carry its pid, so its own locks do not count)."""
    if lock_path(run, "train") not in _HELD and is_training(run):
        return True
    for p in run.glob(".lock-*"):
        lk = RunLock(run, p.name[len(".lock-"):])
        if lk.path in _HELD:
            continue
        try:
            lk.acquire()
        except UserError:
            return True
        lk.release()
    return False


def tidy(run: str | Path) -> list[Path]:
    """Remove temporary files left in a run by killed writes (run folder and results/)."""
    run = Path(run)
    removed = []
    for folder in (run, run / "results"):
        if folder.is_dir():
            removed += clean_temp_files(folder, owner_alive=lambda: _any_lock_held(run))
    return removed


# ---- locks held for the rest of a CLI command -------------------------------------------------

_HELD: dict[Path, RunLock] = {}
_CONTEXT: dict[str, Any] = {}


@contextlib.contextmanager
def command_context(command: str, *, lock: str | None = None, data: str | None = None
                    ) -> Iterator[None]:
    """Set by the CLI around one command: runs opened inside it are locked under `lock` (the
    result the command writes) until the command ends, and evaluated on `data` when given."""
    _CONTEXT.clear()
    _CONTEXT.update(command=command, lock=lock, data=data)
    try:
        yield
    finally:
        _CONTEXT.clear()
        release_all()


def hold(run: str | Path, label: str) -> RunLock:
    """Take `label`'s lock on `run` until `release_all()` (re-entrant within the process)."""
    lk = RunLock(run, label)
    if lk.path not in _HELD:
        _HELD[lk.path] = lk.acquire()
    return _HELD[lk.path]


def release_all() -> None:
    while _HELD:
        _HELD.popitem()[1].release()


atexit.register(release_all)


def claim(run: str | Path) -> None:
    """Hold `run`'s writer lock until the command ends (on rank 0 only, also before the process
    group exists), then remove temporary files of killed writes. Call it before checking what
    the run folder holds: a second `train`/`import` of the same folder exits 2 naming the first."""
    if os.environ.get("RANK", "0") not in ("", "0"):
        return
    hold(run, "train")
    tidy(run)


# ---------------------------------------------------------------------------------------------
# opening a run
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    path: Path
    model: nn.Module
    meta: dict[str, Any]
    quant: Any
    device: torch.device
    train: data.Dataset | None = None
    val: data.Dataset | None = None
    test: data.Dataset | None = None

    def params(self) -> dict[str, torch.Tensor]:
        """The weights the run's model really computes with (dequantized when quantized)."""
        p = {k: v.detach() for k, v in self.model.named_parameters()}
        return self.quant.fake_quantize(p) if self.quant is not None else p

    def predictor(self) -> Predictor:
        """The run's model at `params()` (taken as given), in eval mode: what attacks and metrics
        call (`models.Predictor`)."""
        params = self.params()
        self.model.eval()
        return Predictor(self.model, params, quant=False)


def _check_same_shape(r: Run, source: str) -> None:
    """The data must fit the model: same image shape, same number of classes."""
    test = r.test
    if test is None or len(test) == 0:
        raise UserError(f"{source} has no test images")
    shape = (r.meta.get("kwargs") or {}).get("in_shape")
    if shape is not None and list(test.shape) != list(shape):
        raise UserError(f"{source} has images of shape {tuple(test.shape)} but the model of "
                        f"{r.path} takes {tuple(shape)}")
    try:
        with torch.no_grad():
            out = r.model.eval()(test.x[:2].to(r.device))
    except RuntimeError as e:
        raise UserError(f"the model of {r.path} cannot run on {source} "
                        f"({str(e).strip().splitlines()[0]})") from None
    if out.ndim != 2 or out.shape[1] != test.num_classes:
        raise UserError(f"{source} has {test.num_classes} classes but the model of {r.path} "
                        f"outputs {out.shape[1] if out.ndim == 2 else tuple(out.shape[1:])} "
                        "scores per image")


def open_run(run: str | Path, *, device: str | torch.device = "auto", with_data: bool = True,
             data_dir: str | None = None, best: bool = False, data: str | None = None) -> Run:
    """Load a run's model (checked: schema, SHA-256, dtypes, finite values) and its data.

    `data` evaluates on another dataset (name or path) of the same shape instead of the run's
    own. Inside a CLI command (`command_context`) the run is locked for the command's result and
    the command's `--data` applies; temporary files of killed writes are removed."""
    from robustlab import distributed

    path = Path(run)
    checkpoint.read_meta(path)  # a clear error before anything else
    main = distributed.is_main()
    label = _CONTEXT.get("lock")
    if label and main:
        holder = is_training(path)
        if holder:
            raise UserError(f"{path} is being trained by {holder}; evaluate it when training ends")
        check_output_dir(path / "results", "results folder")
        hold(path, label)
    if main:
        tidy(path)
    if data is None:
        data = _CONTEXT.get("data")
    dev = resolve_device(device)
    model, meta = checkpoint.load(path, device=dev, best=best)
    r = Run(path, model, meta, quant_from_meta(meta), dev)
    if with_data:
        if data is not None:
            spec = data_spec(data, data_dir=data_dir)
            r.train, r.val, r.test = load_data(spec, data_dir)
            _check_same_shape(r, f"--data {data}")
            r.meta = {**meta, "data": spec, "trained_on": meta.get("data")}
        else:
            if not meta.get("data"):
                raise UserError(f"{run} does not record its dataset; pass --data")
            r.train, r.val, r.test = load_data(meta["data"], data_dir)
    return r
