"""`robustlab train`: train a model with a method; writes a run directory.

Under `torchrun --nproc-per-node N -m robustlab train …` the ranks train together (data-parallel,
see docs/distributed.md); rank 0 writes the run directory and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
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
from robustlab.io import atomic_write_text, create_dir, remove_created
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
    p.add_argument("--init", default=None, metavar="RUN",
                   help="start from the model and weights of an existing run (fine-tuning; also "
                        "for runs made by `robustlab import`); --model, --norm and --width do "
                        "not apply")
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


# Options that may differ on --resume: --epochs extends a run; the rest do not change its weights.
RESUME_SAFE = {"epochs", "resume", "quiet", "device", "out", "data_dir"}
F32_MAX = 3.4028234663852886e38
# Method options for which +inf is a documented value (e.g. bit errors from the first batch).
INF_ALLOWED = {"loss_threshold"}


def _check_method_options(method_opts: dict[str, object]) -> None:
    for k, v in sorted(method_opts.items()):
        if k in INF_ALLOWED and v == math.inf:
            continue
        if isinstance(v, float) and not (math.isfinite(v) and abs(v) <= F32_MAX):
            raise UserError(f"--{k.replace('_', '-')} {v} is invalid; it must be a finite number")


def run(args: argparse.Namespace) -> int:
    from robustlab import checkpoint, distributed, runs
    from robustlab.train import fit

    # Validate everything before anything is written.
    if args.out is not None and not args.out.strip():
        raise UserError("--out '' is empty; give a run directory (or leave --out out for the "
                        "default runs/DATA-MODEL-METHOD-sSEED)")
    method_opts = {k: getattr(args, k) for k in set().union(*args._method_options.values())
                   if hasattr(args, k)}
    if args.method not in args._method_options:
        raise UserError(f"unknown method {args.method!r}; choose one of "
                        f"{', '.join(sorted(args._method_options))}")
    foreign = sorted(set(method_opts) - args._method_options[args.method])
    if foreign:
        raise UserError(f"--{foreign[0].replace('_', '-')} does not apply to method {args.method!r}")
    _check_method_options(method_opts)
    method = method_registry.create(args.method, **method_opts)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         optimizer=args.optimizer, momentum=args.momentum, nesterov=args.nesterov,
                         weight_decay=args.weight_decay, schedule=args.schedule,
                         step_size=args.step_size, gamma=args.gamma, seed=args.seed,
                         label_smoothing=args.label_smoothing, clip=args.clip,
                         channels_last=args.channels_last, bf16=args.bf16)
    config.validate()
    quant = None
    if args.quant:
        from robustlab import quant as quant_mod

        quant = quant_mod.parse(args.quant)
    from robustlab import data as data_mod

    data_mod.check_data_dir(args.data_dir)  # a missing folder is an error, not a fall back
    arch = Path(args.init).name if args.init else args.model
    out = Path(args.out or f"runs/{Path(args.data).stem}-{arch}-{args.method}-s{args.seed}")
    runs.claim(out)  # a second writer of `out` exits 2 naming this one; removes stale temp files
    fresh_start = False  # --resume of a run interrupted before its first epoch finished
    if args.resume:
        fresh_start = _check_resume(out, args)
    elif (out / checkpoint.META).exists():
        raise UserError(f"{out} already holds a run; use --resume to continue it or another --out")
    owns_group = not distributed.is_initialized()
    device = distributed.init(args.device)  # joins the process group under torchrun
    spec = runs.data_spec(args.data, data_dir=args.data_dir, subset=args.subset,
                          val_fraction=args.val_fraction)
    train, val, _test = runs.load_data(spec)
    if len(train) == 0:
        raise UserError(f"--data {args.data}: the training set is empty")
    kwargs = {k: v for k, v in (("norm", args.norm), ("width", args.width)) if v is not None}
    if args.init is not None:
        model = _init_model(args, train)
    else:
        model = models.create(args.model, dataset=train, seed=args.seed, **kwargs)
    if args.resume and args.init is None and (out / checkpoint.META).is_file():
        _check_resume_meta(out, model, method, config, spec, quant)
    if args.resume and not fresh_start:  # a corrupt resume point is refused before any write
        import torch

        from robustlab.train.trainer import _optimizer, load_resume_point

        load_resume_point(out, model, _optimizer(model, config), torch.device("cpu"), args.epochs)

    distributed.barrier()  # every rank has checked `out` before rank 0 writes to it
    main = distributed.is_main()
    created = create_dir(out) if main else None
    try:
        if main:
            _write_config(out, args)
        if fresh_start and main:
            print(f"{out}: no epoch had finished; training it from the start")
        fit(model, train, method=method, config=config, val=val, quant=quant, out=out,
            resume=args.resume and not fresh_start, device=device, meta={"data": spec},
            progress=False if args.quiet else None)
    except UserError:
        # remove only what this invocation created and that holds no finished epoch
        if main and not checkpoint.has_state(out):
            remove_created(out, created)
        raise
    finally:
        if owns_group:
            distributed.destroy()
    if main:
        print(f"run written to {out}")
    return 0


def _init_model(args: argparse.Namespace, train) -> object:
    """The model of the run `--init` (built-in, Normalized or a factory model), checked against
    the training data's image shape and classes."""
    import torch

    from robustlab import checkpoint

    given = [f for f, v in (("--model", args.model != "convnet"), ("--norm", args.norm),
                            ("--width", args.width)) if v]
    if given:
        raise UserError(f"{given[0]} does not apply with --init {args.init}: the model comes "
                        "from that run")
    init = Path(args.init)
    if not (init / checkpoint.META).is_file():
        raise UserError(f"--init {args.init} is not a run directory (no {checkpoint.META})")
    model, _ = checkpoint.load(init)
    x = train.x[:1]
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as e:
        raise UserError(f"--init {args.init}: the model does not accept the images of --data "
                        f"{args.data} (shape {tuple(x.shape[1:])}): "
                        f"{str(e).strip().splitlines()[0]}") from None
    classes = int(train.y.max()) + 1 if len(train) else 0
    if out.ndim != 2 or out.shape[1] < classes:
        raise UserError(f"--init {args.init}: the model has {out.shape[-1]} outputs but --data "
                        f"{args.data} has {classes} classes")
    return model


def _recorded_options(out: Path) -> dict | None:
    """The options `robustlab train` recorded in OUT/config.yaml (None: not written by train)."""
    import yaml

    path = out / "config.yaml"
    if not path.is_file():
        return None
    try:
        rec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"--resume: {path} is unreadable ({str(e).splitlines()[0]})") from None
    if not isinstance(rec, dict) or rec.get("command") != "train" or "method" not in rec:
        return None  # written by a preset (demo/reproduce): model.json is compared instead
    return rec


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _differences(recorded: dict, now: dict) -> list[str]:
    return [f"{_flag(k)} {now.get(k)!r} (recorded {recorded.get(k)!r})"
            for k in sorted(set(recorded) | set(now))
            if k not in RESUME_SAFE and not k.startswith("_") and k != "func"
            and recorded.get(k) != now.get(k)]


def _check_resume(out: Path, args: argparse.Namespace) -> bool:
    """Refuse --resume when there is nothing to resume or the options differ from the recorded
    ones; True when the run never finished an epoch (it is then trained from the start)."""
    from robustlab import checkpoint

    rec = _recorded_options(out)
    if rec is not None:
        now = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "func"}
        diff = _differences(rec, now)
        if diff:
            raise UserError(f"--resume: options differ from the ones {out} was started with: "
                            f"{'; '.join(diff)}; only --epochs (to extend), --device, --data-dir "
                            f"and --quiet may change")
    if checkpoint.has_state(out):  # the state itself is validated when fit loads it
        _check_epochs_left(out, args.epochs)
        return False
    if rec is not None and not (out / checkpoint.META).exists():
        return True  # interrupted during its first epoch: only config.yaml was written
    raise UserError(f"--resume: {out} holds no interrupted run to continue")


def _check_epochs_left(out: Path, epochs: int) -> None:
    from robustlab import checkpoint

    info = checkpoint.read_state_info(out)
    done = info.get("epoch") if isinstance(info, dict) else None
    if isinstance(done, int) and not isinstance(done, bool) and done == epochs:
        raise UserError(f"--resume: {out} already completed its {done} epochs; pass a larger "
                        f"--epochs to train it further")


def _check_resume_meta(out: Path, model, method, config: TrainConfig, spec: dict,
                       quant) -> None:
    """Compare what determines the weights with the run's model.json (preset runs, or a missing
    config.yaml): architecture, data, method, training settings other than epochs, quantization."""
    from robustlab import checkpoint
    from robustlab.train.trainer import _jsonable_config

    meta = checkpoint.read_meta(out)
    if not isinstance(meta, dict):
        raise UserError(f"--resume: {out / checkpoint.META} is not a JSON object")
    diff = []
    rec_kwargs = meta.get("kwargs") if isinstance(meta.get("kwargs"), dict) else {}
    spec_now = model.robustlab_spec
    if meta.get("architecture") != spec_now["name"]:
        diff.append(f"--model {spec_now['name']!r} (recorded {meta.get('architecture')!r})")
    for k, v in spec_now["kwargs"].items():
        if k not in ("in_shape", "num_classes") and rec_kwargs.get(k, v) != v:
            diff.append(f"{_flag(k)} {v!r} (recorded {rec_kwargs.get(k)!r})")
    rec_data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    for k, flag in (("name", "--data"), ("subset", "--subset"), ("val_fraction", "--val-fraction")):
        if rec_data.get(k) != spec.get(k):
            diff.append(f"{flag} {spec.get(k)!r} (recorded {rec_data.get(k)!r})")
    rec_cfg = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
    for k, v in _jsonable_config(config).items():
        if k != "epochs" and k in rec_cfg and rec_cfg[k] != v:
            diff.append(f"{_flag(k)} {v!r} (recorded {rec_cfg[k]!r})")
    rec_method = meta.get("method") if isinstance(meta.get("method"), dict) else {}
    for k, v in method.config().items():
        if rec_method.get(k) != v:
            diff.append(f"{'--method' if k == 'name' else _flag(k)} {v!r} "
                        f"(recorded {rec_method.get(k)!r})")
    q_now = quant.to_dict() if quant is not None else None
    if q_now is not None and meta.get("quant") != q_now:
        diff.append(f"--quant {q_now!r} (recorded {meta.get('quant')!r})")
    if diff:
        raise UserError(f"--resume: options differ from the ones {out} was trained with: "
                        f"{'; '.join(diff)}; only --epochs (to extend), --device, --data-dir and "
                        f"--quiet may change")


def _write_config(out: Path, args: argparse.Namespace) -> None:
    """OUT/config.yaml: the options of the run. A resumed run keeps its recorded options; only
    an extended --epochs is updated."""
    import yaml

    now = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "func"}
    rec = _recorded_options(out) if args.resume else None
    if rec is None:
        atomic_write_text(out / "config.yaml", _yaml(now))
    elif rec.get("epochs") != args.epochs:
        atomic_write_text(out / "config.yaml", yaml.safe_dump({**rec, "epochs": args.epochs},
                                                              sort_keys=True))


def _yaml(options: dict) -> str:
    import yaml

    keep = {k: v for k, v in options.items() if not k.startswith("_") and k != "func"}
    return yaml.safe_dump(keep, sort_keys=True)
