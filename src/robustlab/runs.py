"""Run directories as objects: the data a run was trained on, its model, its quantization.

Every evaluation command opens a run with `open_run(RUN)` so that it evaluates exactly the model
the run trained (at its dequantized weights when the run is quantized) on the same test split.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab import checkpoint, data
from robustlab.device import resolve_device
from robustlab.errors import UserError
from robustlab.models import forward_with

VAL_SPLIT_SEED = 0  # fixed, so every run of a dataset holds out the same validation examples


def data_spec(name: str, *, data_dir: str | None = None, subset: int | None = None,
              val_fraction: float = 0.0, **options: Any) -> dict[str, Any]:
    """How a run's data is made: `options` go to the loader (e.g. digits' `size=28`)."""
    return {"name": name, "data_dir": data_dir, "subset": subset, "val_fraction": val_fraction,
            "options": options}


def load_data(spec: dict[str, Any], data_dir: str | None = None
              ) -> tuple[data.Dataset, data.Dataset | None, data.Dataset]:
    """(train, val or None, test) as described by a run's `data` entry."""
    kwargs = dict(spec.get("options") or {})
    if data_dir or spec.get("data_dir"):
        kwargs["data_dir"] = data_dir or spec.get("data_dir")
    train, test = data.load(spec["name"], **kwargs)
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

    return quant.Scheme.from_dict(meta["quant"])


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

    def predictor(self):
        """x ↦ logits at `params()`, in eval mode: what attacks and metrics call."""
        params = self.params()
        self.model.eval()
        return lambda x: forward_with(self.model, params, x)


def open_run(run: str | Path, *, device: str | torch.device = "auto", with_data: bool = True,
             data_dir: str | None = None, best: bool = False) -> Run:
    dev = resolve_device(device)
    model, meta = checkpoint.load(run, device=dev, best=best)
    r = Run(Path(run), model, meta, quant_from_meta(meta), dev)
    if with_data:
        if "data" not in meta:
            raise UserError(f"{run} does not record its dataset; pass --data")
        r.train, r.val, r.test = load_data(meta["data"], data_dir)
    return r
