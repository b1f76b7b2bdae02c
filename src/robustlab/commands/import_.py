"""`robustlab import`: make a run directory from your own model (a factory function + weights).

The run is then used like any other by eval, attack, biterrors, bitattack, flatness, energy and
report: `model.json` records the factory's file (absolute path and SHA-256), its function and
keyword arguments, and the optional input normalization, so the model can be rebuilt anywhere.
Weights are read without unpickling objects: safetensors, or a state dict saved with
`torch.save(model.state_dict(), …)` read by `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.io import create_dir, remove_created

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


def _floats(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers, e.g. "
                                         "0.49,0.48,0.45") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must be finite numbers, one per channel")
    return values


_floats.__name__ = "numbers"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import", help="make a run directory from your own model (factory + weights)",
        description="Build your model with FACTORY (a function in a Python file), load WEIGHTS "
        "into it (.safetensors, or a .pt/.pth state dict read with torch.load(weights_only=True); "
        "pickled objects are refused, never run), check it on DATA and write a run directory "
        "that every evaluation command uses like a trained one. The factory file is recorded "
        "by absolute path and SHA-256: moving or changing it later is an error. With --mean/--std "
        "the model is wrapped so that it takes images in [0, 1] and normalizes them itself.")
    p.add_argument("--factory", required=True, metavar="FILE.py:FUNCTION",
                   help="function that returns the (untrained) torch.nn.Module")
    p.add_argument("--kwargs", default="{}", metavar="JSON",
                   help="keyword arguments for the factory, a JSON object (default: {})")
    p.add_argument("--weights", required=True, metavar="W",
                   help="state dict: .safetensors, .pt or .pth (tensors only)")
    p.add_argument("--data", required=True, help="dataset name or .npz path the model is for")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--mean", type=_floats, default=None, metavar="M,…",
                   help="per-channel mean the model expects its inputs normalized with")
    p.add_argument("--std", type=_floats, default=None, metavar="S,…",
                   help="per-channel std the model expects its inputs normalized with")
    p.set_defaults(func=run)


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """A state dict {name: tensor} from .safetensors or a .pt/.pth, never unpickling objects."""
    import pickle
    import warnings

    import torch

    from robustlab import checkpoint

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--weights {path} does not exist")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise UserError(f"--weights {path} must be a {', '.join(WEIGHT_SUFFIXES)} file")
    if path.suffix == ".safetensors":
        return checkpoint.read_weights(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it may not support
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"--weights {path} holds pickled Python objects, not only tensors; it was "
                        "not loaded (robustlab never unpickles objects): save "
                        "model.state_dict() with torch.save, or use safetensors") from None
    except Exception as e:  # truncated archives, not a torch file at all, …
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"--weights {path} is not a readable state dict ({first})") from None
    if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "model"):
        obj = next(iter(obj.values()))
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in obj.items())):
        raise UserError(f"--weights {path} holds a {type(obj).__name__}, not a state dict "
                        "(parameter name → tensor)")
    return obj


def run(args: argparse.Namespace) -> int:
    import torch

    from robustlab import checkpoint, models, runs

    # cheap checks first, then the weights (no user code runs for a refused file), then the factory
    fpath, fname = checkpoint.parse_factory(args.factory)
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as e:
        raise UserError(f"--kwargs {args.kwargs!r} is not valid JSON ({e.msg})") from None
    if not isinstance(kwargs, dict):
        raise UserError(f"--kwargs must be a JSON object like '{{\"width\": 16}}', not {args.kwargs}")
    if (args.mean is None) != (args.std is None):
        raise UserError("--mean and --std go together; give both or neither")
    if args.std is not None and min(args.std) <= 0:
        raise UserError(f"--std {args.std} must be positive")
    weights = Path(args.weights)
    state = read_state_dict(weights)
    checkpoint.check_tensors(weights, state, None)
    out = Path(args.out)
    runs.claim(out)
    if (out / checkpoint.META).exists():
        raise UserError(f"{out} already holds a run; choose another --out")
    spec = runs.data_spec(args.data, data_dir=args.data_dir)
    _train, _val, test = runs.load_data(spec, args.data_dir)
    if len(test) == 0:
        raise UserError(f"--data {args.data}: the test set is empty")
    ref = f"{fpath}:{fname}"
    model = checkpoint.call_factory(checkpoint.import_factory(fpath, fname), kwargs, ref)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        raise UserError(f"--weights {weights} do not fit the model of {ref}: "
                        f"{lines[1] if len(lines) > 1 else lines[0]}") from None
    if args.mean is not None:
        c = test.shape[0]
        for name, v in (("--mean", args.mean), ("--std", args.std)):
            if len(v) not in (1, c):
                raise UserError(f"{name} has {len(v)} numbers; the data has {c} channel(s)")
        model = models.Normalized(model, args.mean, args.std)
    model.eval()
    try:
        with torch.no_grad():
            logits = model(test.x[:2])
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"the model of {ref} cannot run on --data {args.data} images of shape "
                        f"{tuple(test.shape)}: {first}") from None
    if not isinstance(logits, torch.Tensor) or logits.shape != (len(test.x[:2]), test.num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UserError(f"the model of {ref} must output N×{test.num_classes} logits for "
                        f"--data {args.data}; it gave {shape}")
    created = create_dir(out)
    try:
        checkpoint.save(out, model, {
            "data": spec, "seed": None, "method": None, "quant": None,
            "imported": {"weights": str(weights.absolute()),
                         "sha256": checkpoint.file_sha256(weights)}},
            factory=ref, factory_kwargs=kwargs)
    except BaseException:
        remove_created(out, created)  # only a folder this invocation created
        raise
    print(f"{ref} with {models.count_parameters(model)} parameters"
          + (" (normalization inside the model)" if args.mean is not None else "")
          + f"; run written to {out}")
    return 0
