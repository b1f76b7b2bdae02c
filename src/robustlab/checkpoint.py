"""Run directories: `model.safetensors` + `model.json`, and the trainer state for `--resume`.

Nothing here unpickles: weights and optimizer tensors are safetensors, everything else JSON.
"""

from __future__ import annotations

import json
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
STATE = "trainer_state.safetensors"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol ≥ 2; torch.save zip archives


def _cpu_tensors(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in d.items()}


def save_weights(path: str | Path, model: nn.Module) -> Path:
    tensors = _cpu_tensors(model.state_dict())
    return atomic_write(path, lambda tmp: save_file(tensors, tmp))


def save(run: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write the weights and `model.json` (architecture, kwargs, versions, plus `meta`)."""
    run = Path(run)
    spec = getattr(model, "robustlab_spec", None)
    info = {"architecture": spec["name"] if spec else "custom",
            "kwargs": spec["kwargs"] if spec else {},
            "class": type(model).__name__, "parameters": models.count_parameters(model),
            **(meta or {}), "versions": versions()}
    save_weights(run / WEIGHTS, model)
    atomic_write_json(run / META, info)
    return run


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
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"checkpoint {path} is corrupt or not a safetensors file ({e})") from None


def read_meta(run: str | Path) -> dict[str, Any]:
    run = Path(run)
    if not run.is_dir():
        if run.is_file() and run.suffix in (".pt", ".pth", ".pkl", ".ckpt"):
            _check_not_pickle(run)
        raise UserError(f"run directory {run} does not exist")
    if not (run / META).is_file():
        raise UserError(f"{run} is not a robustlab run: {META} is missing")
    try:
        return read_json(run / META)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{run / META} is not valid JSON ({e})") from None


def load(run: str | Path, *, model: nn.Module | None = None, device: str | torch.device = "cpu",
         best: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a run (or fill the given `model`) and load its weights."""
    run = Path(run)
    meta = read_meta(run)
    if model is None:
        arch = meta.get("architecture")
        if arch == "custom" or arch not in models.REGISTRY:
            raise UserError(f"{run} holds a custom model ({meta.get('class')}); pass model= to load it")
        kwargs = dict(meta.get("kwargs", {}))
        kwargs["in_shape"] = tuple(kwargs["in_shape"])
        model = models.create(arch, **kwargs)
    state = read_weights(run / ("model_best.safetensors" if best else WEIGHTS), device)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"checkpoint {run} does not match its architecture: "
                        f"{first[1].strip() if len(first) > 1 else first[0]}") from None
    return model.to(device).eval(), meta


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
            return json.loads(f.metadata()["state"])
    except (SafetensorError, KeyError, TypeError, OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot resume {run}: {path.name} has no valid state ({e})") from None


def load_state(run: str | Path, model: nn.Module, opt: torch.optim.Optimizer,
               device: torch.device) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """Restore weights and optimizer of an interrupted run; returns (epochs done, history, method state)."""
    path = Path(run) / STATE
    tensors = read_weights(path, device)
    info = read_state_info(run)
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
    for idx, vals in info["optimizer"]["scalars"].items():
        state.setdefault(int(idx), {}).update(vals)
    try:
        opt.load_state_dict({"state": state, "param_groups": info["optimizer"]["param_groups"]})
    except (ValueError, KeyError) as e:
        raise UserError(f"cannot resume {run}: optimizer state does not match ({e})") from None
    return int(info["epoch"]), info["history"], info.get("method_state", {})
