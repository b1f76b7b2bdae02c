"""`robustlab train`: train a model with a method; writes a run directory.

Under `torchrun --nproc-per-node N -m robustlab train …` the ranks train together (data-parallel,
see docs/distributed.md); rank 0 writes the run directory and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import types
import typing
from pathlib import Path

from robustlab import models
from robustlab.cli import (
    add_data,
    add_device,
    add_speed,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    unit_interval_open,
)
from robustlab.errors import UserError
from robustlab.io import atomic_write_text
from robustlab.train import methods as method_registry
from robustlab.train.trainer import OPTIMIZERS, SCHEDULES, TrainConfig

_TYPES = {int: int, float: float, str: str}


def _field_type(tp: typing.Any) -> typing.Any:
    """Unwrap `X | None` to X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def add_method_options(p: argparse.ArgumentParser) -> dict[str, set[str]]:
    """One option per field of every registered method; returns {method: its option dests}."""
    group = p.add_argument_group("method options (each applies to the methods that take it)")
    taken = {a.dest for a in p._actions}
    owners: dict[str, list[str]] = {}
    per_method: dict[str, set[str]] = {}
    for name, cls in sorted(method_registry.discover().items()):
        hints = typing.get_type_hints(cls)
        per_method[name] = set()
        for f in dataclasses.fields(cls):
            per_method[name].add(f.name)
            owners.setdefault(f.name, []).append(name)
            if f.name in taken:
                continue
            taken.add(f.name)
            tp = _field_type(hints.get(f.name, str))
            flag = "--" + f.name.replace("_", "-")
            help_ = f.metadata.get("help", "")
            if tp is bool:
                group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=help_)
            else:
                group.add_argument(flag, dest=f.name, type=_TYPES.get(tp, str),
                                   default=argparse.SUPPRESS, metavar=tp.__name__.upper()
                                   if isinstance(tp, type) else "VALUE", help=help_)
    for dest, names in owners.items():
        for action in group._group_actions:
            if action.dest == dest and action.help is not None:
                action.help = f"{action.help} [{', '.join(names)}]".strip()
    return per_method


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model", description="Train a classifier with a "
                       "training method and write a run directory (model.safetensors, model.json, "
                       "metrics.jsonl). An interrupted run continues with --resume.")
    add_data(p)
    p.add_argument("--subset", type=positive_int, default=None,
                   help="train on the first N training images only")
    p.add_argument("--val-fraction", type=unit_interval_open, default=0.0,
                   help="hold out this fraction of the training set for validation")
    p.add_argument("--model", default="convnet", help=f"one of {', '.join(models.names())}")
    p.add_argument("--norm", default=None, choices=list(models.NORMS), help="normalization layers")
    p.add_argument("--width", type=positive_int, default=None, help="channel width (convnet, resnet20)")
    p.add_argument("--method", default="normal", help="training method")
    d = TrainConfig()
    p.add_argument("--epochs", type=positive_int, default=d.epochs)
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--momentum", type=unit_interval_open, default=d.momentum)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=nonneg_float, default=d.weight_decay)
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    p.add_argument("--step-size", type=positive_int, default=d.step_size, help="epochs per step decay")
    p.add_argument("--gamma", type=positive_float, default=d.gamma, help="decay factor")
    p.add_argument("--label-smoothing", type=unit_interval_open, default=0.0)
    p.add_argument("--clip", type=positive_float, default=None, metavar="W_MAX",
                   help="clamp every weight to [-W_MAX, W_MAX] after each step")
    p.add_argument("--quant", default=None, metavar="SCHEME",
                   help="quantization-aware training, e.g. rquant8 (see `robustlab biterrors --help`)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    add_device(p)
    add_speed(p)
    p.add_argument("--out", default=None, help="run directory (default: runs/DATA-MODEL-METHOD-sSEED)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, _method_options=add_method_options(p))


def run(args: argparse.Namespace) -> int:
    from robustlab import checkpoint, distributed, runs
    from robustlab.train import fit

    # Validate everything before anything is written.
    method_opts = {k: getattr(args, k) for k in set().union(*args._method_options.values())
                   if hasattr(args, k)}
    if args.method not in args._method_options:
        raise UserError(f"unknown method {args.method!r}; choose one of "
                        f"{', '.join(sorted(args._method_options))}")
    foreign = sorted(set(method_opts) - args._method_options[args.method])
    if foreign:
        raise UserError(f"--{foreign[0].replace('_', '-')} does not apply to method {args.method!r}")
    method = method_registry.create(args.method, **method_opts)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         optimizer=args.optimizer, momentum=args.momentum, nesterov=args.nesterov,
                         weight_decay=args.weight_decay, schedule=args.schedule,
                         step_size=args.step_size, gamma=args.gamma, seed=args.seed,
                         label_smoothing=args.label_smoothing, clip=args.clip,
                         channels_last=args.channels_last, bf16=args.bf16)
    config.validate()
    owns_group = not distributed.is_initialized()
    device = distributed.init(args.device)  # joins the process group under torchrun
    quant = None
    if args.quant:
        from robustlab import quant as quant_mod

        quant = quant_mod.parse(args.quant)
    spec = runs.data_spec(args.data, data_dir=args.data_dir, subset=args.subset,
                          val_fraction=args.val_fraction)
    train, val, _test = runs.load_data(spec)
    kwargs = {k: v for k, v in (("norm", args.norm), ("width", args.width)) if v is not None}
    model = models.create(args.model, dataset=train, seed=args.seed, **kwargs)
    out = Path(args.out or f"runs/{Path(args.data).stem}-{args.model}-{args.method}-s{args.seed}")
    if args.resume and not checkpoint.has_state(out):
        raise UserError(f"--resume: {out} holds no interrupted run to continue")
    if not args.resume and (out / checkpoint.META).exists():
        raise UserError(f"{out} already holds a run; use --resume to continue it or another --out")

    distributed.barrier()  # every rank has checked `out` before rank 0 writes to it
    main = distributed.is_main()
    created = not out.exists()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    try:
        if main:
            atomic_write_text(out / "config.yaml", _yaml(vars(args)))
        fit(model, train, method=method, config=config, val=val, quant=quant, out=out,
            resume=args.resume, device=device, meta={"data": spec},
            progress=False if args.quiet else None)
    except UserError:
        if created and main:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if owns_group:
            distributed.destroy()
    if main:
        print(f"run written to {out}")
    return 0


def _yaml(options: dict) -> str:
    import yaml

    keep = {k: v for k, v in options.items() if not k.startswith("_") and k != "func"}
    return yaml.safe_dump(keep, sort_keys=True)
