"""Run directories: `model.safetensors` + `model.json`, and the trainer state for `--resume`.

Nothing here unpickles: weights and optimizer tensors are safetensors, everything else JSON.
`model.json` is checked against a schema on load (`ModelInfo`); it records the SHA-256 and the
dtypes of every weight file, and loading refuses a file that does not match them or holds
non-finite values. Runs written before hashes were recorded load without the hash check (their
dtypes and values are still checked). Models that are not built in are rebuilt from a recorded
factory (`save(..., factory="file.py:make_model")`, `robustlab import`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from robustlab import models
from robustlab.errors import UserError
from robustlab.io import atomic_write, atomic_write_json, dumps, read_json, versions

WEIGHTS, META = "model.safetensors", "model.json"
BEST = "model_best.safetensors"
STATE = "trainer_state.safetensors"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol ≥ 2; torch.save zip archives


def _cpu_tensors(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in d.items()}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------
# model.json schema
# ---------------------------------------------------------------------------------------------

def _bad(source: str, field: str, want: str, got: Any) -> UserError:
    shown = json.dumps(got) if not isinstance(got, (dict, list)) or len(json.dumps(got)) < 60 \
        else type(got).__name__
    return UserError(f"{source}: {field!r} must be {want}, not {shown}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


@dataclasses.dataclass
class ModelInfo:
    """The checked content of a run's `model.json` (`raw` keeps every field, also unknown ones)."""

    architecture: str
    kwargs: dict[str, Any]
    data: dict[str, Any] | None
    quant: dict[str, Any] | None
    factory: dict[str, Any] | None
    normalization: dict[str, Any] | None
    weights: dict[str, dict[str, Any]]
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, obj: Any, source: str = META) -> ModelInfo:
        """Validate a parsed `model.json`; every problem is one line naming the field."""
        if not isinstance(obj, dict):
            got = "null" if obj is None else type(obj).__name__
            raise UserError(f"{source} must hold a JSON object, not {got}")
        arch = obj.get("architecture")
        if not isinstance(arch, str) or not arch:
            raise _bad(source, "architecture", f"a model name ({', '.join(models.names())}) or "
                       "'custom'", arch)
        if "kwargs" not in obj:
            raise UserError(f"{source}: 'kwargs' is missing (the model's constructor arguments)")
        kwargs = obj["kwargs"]
        if not isinstance(kwargs, dict):
            raise _bad(source, "kwargs", "an object", kwargs)
        if arch in models.REGISTRY:
            shape = kwargs.get("in_shape")
            if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) and s >= 1
                                                                        for s in shape)):
                raise _bad(source, "kwargs.in_shape", "[C, H, W] of positive integers", shape)
            nc = kwargs.get("num_classes")
            if not (_is_int(nc) and nc >= 1):
                raise _bad(source, "kwargs.num_classes", "an integer ≥ 1", nc)
        data = obj.get("data")
        if data is not None:
            if not isinstance(data, dict):
                raise _bad(source, "data", "an object with 'name' (how the data is loaded)", data)
            if not isinstance(data.get("name"), str) or not data["name"]:
                raise _bad(source, "data.name", "a dataset name or path", data.get("name"))
            for k in ("data_dir",):
                if data.get(k) is not None and not isinstance(data[k], str):
                    raise _bad(source, f"data.{k}", "a string or null", data[k])
            sub = data.get("subset")
            if sub is not None and not (_is_int(sub) and sub >= 1):
                raise _bad(source, "data.subset", "an integer ≥ 1 or null", sub)
            vf = data.get("val_fraction")
            if vf is not None and not (_is_num(vf) and 0 <= vf < 1):
                raise _bad(source, "data.val_fraction", "a number in [0, 1)", vf)
            if data.get("options") is not None and not isinstance(data["options"], dict):
                raise _bad(source, "data.options", "an object or null", data["options"])
        quant = obj.get("quant")
        if quant is not None and not isinstance(quant, dict):
            raise _bad(source, "quant", "an object or null", quant)
        factory = obj.get("factory")
        if factory is not None:
            if not isinstance(factory, dict):
                raise _bad(source, "factory", "an object", factory)
            for k in ("path", "function", "sha256"):
                if not isinstance(factory.get(k), str) or not factory[k]:
                    raise _bad(source, f"factory.{k}", "a string", factory.get(k))
            if not isinstance(factory.get("kwargs", {}), dict):
                raise _bad(source, "factory.kwargs", "an object", factory.get("kwargs"))
        norm = obj.get("normalization")
        if norm is not None:
            if not isinstance(norm, dict):
                raise _bad(source, "normalization", "an object with mean and std", norm)
            for k in ("mean", "std"):
                v = norm.get(k)
                if not (isinstance(v, list) and v and all(_is_num(x) for x in v)):
                    raise _bad(source, f"normalization.{k}", "a list of numbers", v)
        weights = obj.get("weights") or {}
        if not isinstance(weights, dict):
            raise _bad(source, "weights", "an object", weights)
        for fname, w in weights.items():
            if not isinstance(w, dict) or not isinstance(w.get("sha256"), str):
                raise _bad(source, f"weights.{fname}", "an object with a 'sha256' string", w)
            if not isinstance(w.get("dtypes", {}), dict):
                raise _bad(source, f"weights.{fname}.dtypes", "an object", w.get("dtypes"))
        for k, want in (("seed", "an integer or null"), ("parameters", "an integer")):
            v = obj.get(k)
            if v is not None and not _is_int(v):
                raise _bad(source, k, want, v)
        return cls(arch, kwargs, data, quant, factory, norm, weights, obj)


# ---------------------------------------------------------------------------------------------
# factories: how a model that is not built in is rebuilt
# ---------------------------------------------------------------------------------------------

def parse_factory(ref: str) -> tuple[Path, str]:
    """`path/to/file.py:function` → (absolute path, function name)."""
    path, sep, fn = str(ref).rpartition(":")
    if not sep or not path or not fn.isidentifier():
        raise UserError(f"factory {ref!r} must be FILE.py:FUNCTION, e.g. models/net.py:make_model")
    p = Path(path).expanduser().absolute()
    if p.suffix != ".py":
        raise UserError(f"factory file {path} must be a .py file")
    if not p.is_file():
        raise UserError(f"factory file {p} does not exist")
    return p, fn


def import_factory(path: str | Path, function: str) -> Callable[..., nn.Module]:
    """Import `function` from the Python file `path` (runs that file: it is the user's code)."""
    path = Path(path)
    name = f"robustlab_factory_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"factory file {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: report its error in one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"factory file {path} failed to import: {type(e).__name__}: {first}") from None
    finally:
        if sys.path and sys.path[0] == str(path.parent):
            sys.path.pop(0)
    fn = getattr(module, function, None)
    if not callable(fn):
        raise UserError(f"factory file {path} defines no function {function!r}")
    return fn


def call_factory(fn: Callable[..., Any], kwargs: dict[str, Any], where: str) -> nn.Module:
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = fn(**kwargs)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"factory {where} failed: {type(e).__name__}: {first}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"factory {where} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def factory_record(factory: str | Callable[..., Any], kwargs: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """What `model.json` records about a factory: absolute file, function, SHA-256, kwargs."""
    if callable(factory):
        src = inspect.getsourcefile(factory)
        if src is None or factory.__name__ != factory.__qualname__:
            raise UserError("factory must be a module-level function defined in a .py file")
        path, fn = Path(src).absolute(), factory.__name__
    else:
        path, fn = parse_factory(factory)
    kwargs = dict(kwargs or {})
    try:
        json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise UserError(f"factory kwargs must be plain JSON values ({e})") from None
    return {"path": str(path), "function": fn, "sha256": file_sha256(path), "kwargs": kwargs}


def build_from_factory(rec: dict[str, Any], run: str | Path = "") -> nn.Module:
    """Rebuild a model from `model.json`'s factory record, refusing a missing or changed file."""
    path = Path(rec["path"])
    if not path.is_file():
        raise UserError(f"{run}: factory file {path} recorded in model.json does not exist; "
                        "restore it or import the model again")
    if file_sha256(path) != rec["sha256"]:
        raise UserError(f"{run}: factory file {path} changed since the model was saved (SHA-256 "
                        "differs); restore it or import the model again")
    fn = import_factory(path, rec["function"])
    return call_factory(fn, dict(rec.get("kwargs") or {}), f"{path}:{rec['function']}")


# ---------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------

def save_weights(path: str | Path, model: nn.Module) -> Path:
    tensors = _cpu_tensors(model.state_dict())
    return atomic_write(path, lambda tmp: save_file(tensors, tmp))


def _weights_record(run: Path, model: nn.Module) -> dict[str, dict[str, Any]]:
    dtypes = {k: _dtype_name(v.dtype) for k, v in model.state_dict().items()}
    rec = {}
    for name in (WEIGHTS, BEST):
        if (run / name).is_file():
            rec[name] = {"sha256": file_sha256(run / name), "dtypes": dtypes}
    return rec


def save(run: str | Path, model: nn.Module, meta: dict[str, Any] | None = None, *,
         factory: str | Callable[..., Any] | None = None,
         factory_kwargs: dict[str, Any] | None = None) -> Path:
    """Write the weights and `model.json` (architecture, kwargs, SHA-256 and dtypes of the weight
    files, versions, plus `meta`).

    Built-in models (and `models.Normalized` around one) are rebuilt by name. Any other model
    needs `factory`: a module-level function (or "file.py:function") that builds it from
    `factory_kwargs`; its file's path and SHA-256 are recorded so every command can load the run.
    A model loaded from such a run keeps its factory, so fine-tuning it (`train.fit(model, …,
    out=NEW)`) writes a run every command can load too.

    Example:
        >>> import robustlab as rl, tempfile
        >>> m = rl.models.create("mlp", in_shape=(1, 8, 8), num_classes=4)
        >>> run = rl.checkpoint.save(tempfile.mkdtemp(), m)
        >>> rl.checkpoint.load(run)[1]["architecture"]
        'mlp'
    """
    run = Path(run)
    inner, norm = model, None
    if isinstance(model, models.Normalized):
        inner = model.model
        norm = {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}
    spec = getattr(inner, "robustlab_spec", None)
    info: dict[str, Any] = {"architecture": spec["name"] if spec else "custom",
                            "kwargs": spec["kwargs"] if spec else {},
                            "class": type(inner).__name__,
                            "parameters": models.count_parameters(model), **(meta or {})}
    if norm is not None:
        info["normalization"] = norm
    if factory is not None:
        info["factory"] = factory_record(factory, factory_kwargs)
    elif isinstance(getattr(inner, "robustlab_factory", None), dict):
        info["factory"] = inner.robustlab_factory  # a model loaded from a factory run
    save_weights(run / WEIGHTS, model)
    info["weights"] = _weights_record(run, model)
    info["versions"] = versions()
    atomic_write_json(run / META, info)
    return run


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------

def _check_not_pickle(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(9)
    safetensors_header = len(head) == 9 and head[8:9] == b"{"  # u64 header length, then JSON
    if not safetensors_header and any(head.startswith(m) for m in _PICKLE_MAGIC):
        raise UserError(f"{path} is a pickle/torch.save file; robustlab only loads safetensors "
                        "checkpoints (pickles can run arbitrary code)")


def read_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file {path} does not exist")
    _check_not_pickle(path)
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} is corrupt or not a safetensors file ({e})") from None


def check_tensors(path: str | Path, state: dict[str, torch.Tensor],
                  expected: dict[str, str] | None) -> None:
    """Every tensor of the expected dtype (when known) and finite."""
    for k, v in state.items():
        want = (expected or {}).get(k)
        if want is not None and _dtype_name(v.dtype) != want:
            raise UserError(f"{path}: tensor {k} is {_dtype_name(v.dtype)}, but {want} is recorded")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise UserError(f"{path}: tensor {k} holds NaN or infinite values; refusing to load it")


def read_meta(run: str | Path) -> dict[str, Any]:
    """A run's `model.json`, checked against the schema (`ModelInfo`); returns it as a dict."""
    return read_info(run).raw


def read_info(run: str | Path) -> ModelInfo:
    run = Path(run)
    if not run.is_dir():
        if run.is_file() and run.suffix in (".pt", ".pth", ".pkl", ".ckpt"):
            _check_not_pickle(run)
        if run.is_file():
            raise UserError(f"{run} is a file, not a run directory")
        raise UserError(f"run directory {run} does not exist")
    if not (run / META).is_file():
        if (run / "config.yaml").is_file() and not (run / STATE).is_file():
            raise UserError(f"{run} holds a training run that never finished its first epoch "
                            f"(no model yet); restart it with `robustlab train --resume --out {run}`")
        raise UserError(f"{run} is not a robustlab run: {META} is missing")
    try:
        obj = read_json(run / META)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{run / META} is not valid JSON ({e})") from None
    return ModelInfo.from_json(obj, str(run / META))


def _build(run: Path, info: ModelInfo) -> nn.Module:
    if info.factory is not None:
        model = build_from_factory(info.factory, run)
        model.robustlab_factory = dict(info.factory)  # saving it again (fine-tuning) keeps it
    elif info.architecture in models.REGISTRY:
        kwargs = dict(info.kwargs)
        kwargs["in_shape"] = tuple(kwargs["in_shape"])
        try:
            model = models.create(info.architecture, **kwargs)
        except (TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"{run / META}: kwargs do not build a {info.architecture} "
                            f"({str(e).splitlines()[0]})") from None
    elif info.architecture != "custom":
        raise UserError(f"{run / META}: unknown architecture {info.architecture!r}; built-in "
                        f"ones are {', '.join(sorted(models.REGISTRY))}, or 'custom' with a factory")
    else:
        raise UserError(f"{run} holds a custom model ({info.raw.get('class')}) without a recorded "
                        "factory: import it with `robustlab import --factory FILE.py:FUNCTION` "
                        "(or, in Python, pass model= to checkpoint.load)")
    if info.normalization is not None:
        model = models.Normalized(model, info.normalization["mean"], info.normalization["std"])
    return model


def load(run: str | Path, *, model: nn.Module | None = None, device: str | torch.device = "cpu",
         best: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a run (or fill the given `model`) and load its weights, refusing a
    weight file whose SHA-256 or dtypes differ from those recorded, or that is not finite."""
    run = Path(run)
    info = read_info(run)
    if model is None:
        model = _build(run, info)
    fname = BEST if best else WEIGHTS
    path = run / fname
    if not path.is_file():
        raise UserError(f"checkpoint file {path} does not exist"
                        + (" (the run kept no best snapshot)" if best else ""))
    _check_not_pickle(path)
    rec = info.weights.get(fname)
    if rec is not None and file_sha256(path) != rec["sha256"]:
        hint = (f"; if training was interrupted, `robustlab train --resume --out {run}` "
                "rewrites both" if (run / STATE).is_file() else "")
        raise UserError(f"{path} does not match the SHA-256 recorded in {META}: the file was "
                        f"changed or corrupted; refusing to load it{hint}")
    state = read_weights(path, device)
    expected = (rec or {}).get("dtypes") or {k: _dtype_name(v.dtype)
                                             for k, v in model.state_dict().items()}
    check_tensors(path, state, expected)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"checkpoint {run} does not match its architecture: "
                        f"{first[1].strip() if len(first) > 1 else first[0]}") from None
    if info.quant:  # a quantized run: rl.evaluate.* measure the weights it computes with
        from robustlab import quant

        try:
            setattr(model, models.QUANT_ATTR, quant.Scheme.from_dict(info.quant))
        except (TypeError, ValueError, KeyError) as e:
            raise UserError(f"{run / META}: 'quant' is not a valid quantization scheme ({e})") from None
    return model.to(device).eval(), info.raw


def has_state(run: str | Path) -> bool:
    return (Path(run) / STATE).is_file()


def save_state(run: str | Path, epoch: int, model: nn.Module, opt: torch.optim.Optimizer,
               history: list[dict[str, Any]], method_state: dict[str, Any]) -> None:
    """One atomic file per resume point: model weights and optimizer tensors (safetensors), with
    epoch, history, optimizer scalars and method state as JSON in its metadata. A kill at any
    moment leaves either the previous resume point or the new one, never a mix."""
    sd = opt.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = val
            else:
                scalars.setdefault(str(idx), {})[key] = val
    info = {"epoch": epoch, "history": history, "method_state": method_state,
            "optimizer": {"param_groups": sd["param_groups"], "scalars": scalars}}
    tensors = _cpu_tensors(tensors)
    atomic_write(Path(run) / STATE, lambda tmp: save_file(tensors, tmp, metadata={"state": dumps(info)}))


def read_state_info(run: str | Path) -> dict[str, Any]:
    """The JSON part of a run's resume point: epoch, history, method state, optimizer scalars."""
    path = Path(run) / STATE
    _check_not_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads(f.metadata()["state"])
    except (SafetensorError, KeyError, TypeError, OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot resume {run}: {path.name} has no valid state ({e})") from None
    where = f"cannot resume {run}: {path.name}"
    if not isinstance(info, dict):
        raise UserError(f"{where} holds no state object")
    if not (_is_int(info.get("epoch")) and info["epoch"] >= 0):
        raise UserError(f"{where}: epoch must be an integer ≥ 0, not {info.get('epoch')!r}")
    if not isinstance(info.get("history"), list) or not all(isinstance(h, dict)
                                                            for h in info["history"]):
        raise UserError(f"{where}: history must be a list of per-epoch objects")
    opt = info.get("optimizer")
    if not (isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)
            and isinstance(opt.get("scalars"), dict)):
        raise UserError(f"{where}: optimizer state is missing or malformed")
    if not isinstance(info.get("method_state", {}), dict):
        raise UserError(f"{where}: method_state must be an object")
    return info


def load_state(run: str | Path, model: nn.Module, opt: torch.optim.Optimizer,
               device: torch.device) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """Restore weights and optimizer of an interrupted run; returns (epochs done, history, method state)."""
    path = Path(run) / STATE
    tensors = read_weights(path, device)
    info = read_state_info(run)
    check_tensors(path, tensors, None)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise UserError(f"cannot resume {run}: its weights do not match the model ({e})") from None
    model.train()
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            idx, key = name[len("optim."):].split(".", 1)
            state.setdefault(int(idx), {})[key] = val
    try:
        for idx, vals in info["optimizer"]["scalars"].items():
            state.setdefault(int(idx), {}).update(vals)
        opt.load_state_dict({"state": state, "param_groups": info["optimizer"]["param_groups"]})
        for p, st in opt.state.items():  # shapes must match the parameters they belong to
            for key, v in st.items():
                if isinstance(v, torch.Tensor) and v.ndim and v.shape != p.shape:
                    raise ValueError(f"{key} has shape {tuple(v.shape)}, parameter {tuple(p.shape)}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"cannot resume {run}: optimizer state does not match ({e})") from None
    return int(info["epoch"]), info["history"], info.get("method_state", {})
