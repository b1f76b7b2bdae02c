"""`TrainSpec`: one training run as a typed spec, shared by `robustlab train` and the presets.

Its fields are training's only defaults (data, model, method and its options, the optimizer
and schedule, quantization, seed). `robustlab train` builds it from its options (`add_options`,
`from_args`: the spec's fields plus one flag per field of every registered training method),
presets build it from a run's settings (`from_preset`). `run(out)` loads the data, builds the
model and trains it with `robustlab.train.fit`, writing the run directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

from robustlab.errors import UserError, deprecated
from robustlab.tasks.spec import add_options as _add_spec_options
from robustlab.tasks.spec import option
from robustlab.tasks.vocabulary import VOCABULARY
from robustlab.train.trainer import OPTIMIZERS, SCHEDULES, TrainConfig
from robustlab.values import nonneg_float, positive_float, positive_int, unit_interval_open

_TC = TrainConfig()  # training's defaults: the spec's fields take them
_D = {**{f.name: getattr(_TC, f.name) for f in dataclasses.fields(_TC)}, "lr_step": _TC.step_size}
_NORM_LAYERS = ("none", "bn", "gn")
F32_MAX = 3.4028234663852886e38
INF_ALLOWED = {"loss_threshold"}  # method options for which +inf is a documented value


@dataclasses.dataclass
class TrainSpec:
    """Everything that determines a training run (and `robustlab train`'s options)."""

    kind: ClassVar[str] = "train"

    # data
    data: str = option(help="dataset name or .npz path", default="fashion-mnist")
    data_dir: str | None = option(help="folder holding the dataset files", default=None)
    subset: int | None = option(help="train on the first N training images only",
                                type=positive_int, default=None, metavar="N")
    val_fraction: float = option(help="hold out this fraction of the training set for validation",
                                 type=unit_interval_open, default=0.0)
    data_options: dict[str, Any] = option(help="dataset loader options (presets)", cli=False,
                                          default_factory=dict)
    # model
    model: str = option(help="model architecture (see `robustlab.models.names()`)",
                        default="convnet")
    norm_layer: str | None = option("norm_layer", choices=_NORM_LAYERS)
    width: int | None = option(help="channel width (convnet, resnet20)", type=positive_int,
                               default=None)
    model_options: dict[str, Any] = option(help="other model keyword arguments (presets)",
                                           cli=False, default_factory=dict)
    init: str | None = option(help="start from the model and weights of an existing run "
                              "(fine-tuning; also for runs made by `robustlab import`); --model, "
                              "--norm-layer and --width do not apply", default=None, metavar="RUN")
    # method
    method: str = option(help="training method", default="normal")
    options: dict[str, Any] = option(help="the method's options", cli=False, default_factory=dict)
    # optimization
    epochs: int = option(help="training epochs", type=positive_int, default=_D["epochs"])
    lr: float = option(help="learning rate", type=positive_float, default=_D["lr"])
    batch_size: int = option("batch_size", default=_D["batch_size"])
    optimizer: str = option(help="optimizer", choices=OPTIMIZERS, default=_D["optimizer"])
    momentum: float = option(help="momentum", type=unit_interval_open, default=_D["momentum"])
    nesterov: bool = option(help="Nesterov momentum", default=False)
    weight_decay: float = option(help="weight decay", type=nonneg_float,
                                 default=_D["weight_decay"])
    schedule: str = option(help="learning rate schedule", choices=SCHEDULES,
                           default=_D["schedule"])
    lr_step: int = option(help="epochs per step of the step learning rate decay",
                          type=positive_int, default=_D["lr_step"], aliases=("--step-size",))
    milestones: tuple[float, ...] = option(help="multistep: fractions of training (or epochs if "
                                           "≥ 1)", cli=False, default=_TC.milestones)
    gamma: float = option(help="learning rate decay factor", type=positive_float,
                          default=_D["gamma"])
    label_smoothing: float = option(help="label smoothing", type=unit_interval_open,
                                    default=_D["label_smoothing"])
    clip: float | None = option(help="clamp every weight to [-W_MAX, W_MAX] after each step",
                                type=positive_float, default=None, metavar="W_MAX")
    quant: str | None = option("quant", help="quantization scheme of quantization-aware "
                               "training, e.g. rquant8 (see `robustlab biterrors --help`; "
                               "default: none, RQuant 8-bit for bit error training methods)")
    seed: int = option("seed")
    channels_last: bool = option(help="channels_last memory format", default=False)
    bf16: bool = option(help="bfloat16 autocast (final verdicts in fp32)", default=False)

    # ---- building blocks ---------------------------------------------------------------------
    def config(self) -> Any:
        """The `TrainConfig` (validated: one `UserError` line on a value that cannot train)."""
        c = TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                        optimizer=self.optimizer, momentum=self.momentum, nesterov=self.nesterov,
                        weight_decay=self.weight_decay, schedule=self.schedule,
                        step_size=self.lr_step, milestones=tuple(self.milestones),
                        gamma=self.gamma, seed=self.seed, label_smoothing=self.label_smoothing,
                        clip=self.clip, channels_last=self.channels_last, bf16=self.bf16)
        c.validate()
        return c

    def method_class(self) -> type[Any]:
        from robustlab.train import discover

        methods = discover()
        if self.method not in methods:
            raise UserError(f"unknown method {self.method!r}; choose one of "
                            f"{', '.join(sorted(methods))}")
        return methods[self.method]

    def make_method(self) -> Any:
        """The training method with its options (finite values checked)."""
        from robustlab.train import create

        for k, v in sorted(self.options.items()):
            if k in INF_ALLOWED and v == math.inf:
                continue
            if isinstance(v, float) and not (math.isfinite(v) and abs(v) <= F32_MAX):
                raise UserError(f"--{k.replace('_', '-')} {v} is invalid; it must be a finite "
                                "number")
        return create(self.method, **self.options)

    def scheme(self) -> Any:
        """The quantization scheme of quantization-aware training, or None."""
        if not self.quant:
            return None
        from robustlab import quant

        return quant.parse(str(self.quant))

    def quantized(self) -> bool:
        """Whether the run trains quantization-aware (its own `quant`, or a method that needs it)."""
        return bool(self.quant) or bool(getattr(self.method_class(), "needs_quant", False))

    def data_spec(self) -> dict[str, Any]:
        """The run's `data` entry (`robustlab.runs.data_spec`)."""
        from robustlab import runs

        return runs.data_spec(self.data, data_dir=self.data_dir, subset=self.subset,
                              val_fraction=self.val_fraction, **self.data_options)

    def model_kwargs(self) -> dict[str, Any]:
        kw = dict(self.model_options)
        if self.norm_layer is not None:
            kw["norm"] = self.norm_layer
        if self.width is not None:
            kw["width"] = self.width
        return kw

    def make_model(self, train: Any) -> Any:
        """A fresh model for `train`'s images and classes, or the model of the run `init`."""
        if self.init is not None:
            return self._init_model(train)
        from robustlab import models

        if self.norm_layer is not None and self.norm_layer not in _NORM_LAYERS:
            raise UserError(f"unknown norm {self.norm_layer!r}; choose one of "
                            f"{', '.join(_NORM_LAYERS)}")
        return models.create(self.model, dataset=train, seed=self.seed, **self.model_kwargs())

    def _init_model(self, train: Any) -> Any:
        import torch

        from robustlab import checkpoint

        given = [f for f, v in (("--model", self.model != "convnet"),
                                ("--norm-layer", self.norm_layer), ("--width", self.width)) if v]
        if given:
            raise UserError(f"{given[0]} does not apply with --init {self.init}: the model comes "
                            "from that run")
        init = Path(self.init)
        if not (init / checkpoint.META).is_file():
            raise UserError(f"--init {self.init} is not a run directory (no {checkpoint.META})")
        model, _ = checkpoint.load(init)
        x = train.x[:1]
        try:
            with torch.no_grad():
                out = model(x)
        except RuntimeError as e:
            raise UserError(f"--init {self.init}: the model does not accept the images of --data "
                            f"{self.data} (shape {tuple(x.shape[1:])}): "
                            f"{str(e).strip().splitlines()[0]}") from None
        classes = int(train.y.max()) + 1 if len(train) else 0
        if out.ndim != 2 or out.shape[1] < classes:
            raise UserError(f"--init {self.init}: the model has {out.shape[-1]} outputs but --data "
                            f"{self.data} has {classes} classes")
        return model

    def check(self) -> tuple[Any, Any, Any]:
        """Validate everything that needs no data: (method, TrainConfig, scheme or None)."""
        return self.make_method(), self.config(), self.scheme()

    # ---- the run -----------------------------------------------------------------------------
    def run(self, out: str | Path | None, *, data: tuple[Any, Any, Any] | None = None,
            model: Any = None, resume: bool = False, device: Any = "auto",
            progress: bool | None = None, meta: dict[str, Any] | None = None,
            epoch_hooks: list[Any] | None = None, select_best: str | None = None
            ) -> list[dict[str, Any]]:
        """Train and write the run into `out` (model.safetensors, model.json, metrics.jsonl):
        the per-epoch history. `data` = (train, val, test) already loaded (else loaded from the
        spec), `model` = one already built (else `make_model`)."""
        from robustlab.train import fit

        method, config, scheme = self.check()
        if data is None:
            from robustlab import runs

            data = runs.load_data(self.data_spec())
        train, val, _test = data
        if len(train) == 0:
            raise UserError(f"--data {self.data}: the training set is empty")
        if model is None:
            model = self.make_model(train)
        return fit(model, train, method=method, config=config, val=val, quant=scheme, out=out,
                   resume=resume, device=device, meta={"data": self.data_spec(), **(meta or {})},
                   epoch_hooks=epoch_hooks, select_best=select_best, progress=progress)

    def cost(self, n_train: int | None = None) -> float:
        """Rough cost in forward-backward passes of one image: epochs × images × the method's
        extra passes (× 2.5 when quantization-aware: every tensor is fake-quantized)."""
        if n_train is None:
            n_train = self.subset or 60000
            if self.val_fraction:
                n_train = int(n_train * (1 - self.val_fraction))
        method = self.make_method()
        steps = float(getattr(method, "attack_steps", 0) or 0)
        fraction = float(getattr(method, "fraction", 1.0) or 1.0)
        if "optimized" in str(getattr(method, "location", "")):
            steps *= 2.0  # location moves: four extra forward passes per step
        factor = 1.0 + fraction * steps
        if _own_backward(type(method)):  # bit error training, AWP: a second pass per step
            factor += 1.0
        cost = self.epochs * n_train * factor
        return cost * 2.5 if self.quantized() else cost

    # ---- settings, presets, command lines ----------------------------------------------------
    def settings(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def train_settings(cls) -> set[str]:
        """The keys a preset's `train:` section may hold (`step_size`: the old name of `lr_step`)."""
        return {f.name for f in dataclasses.fields(cls)} - _NOT_TRAIN | {"step_size"}

    @classmethod
    def from_preset(cls, settings: dict[str, Any], *, data_dir: str | None = None) -> TrainSpec:
        """From a preset run's settings ({data: data spec, model: {name, …}, method, options,
        train: TrainConfig fields and quant}); unknown train settings are one-line errors."""
        d, m, t = settings["data"], dict(settings.get("model") or {}), dict(settings.get("train") or {})
        if "step_size" in t:  # the old name of lr_step (`--step-size` in `robustlab train`)
            if "lr_step" in t:
                raise UserError("train settings 'step_size' and 'lr_step' are the same setting; "
                                "give only 'lr_step'")
            deprecated("train setting 'step_size'", "'lr_step'")
            t["lr_step"] = t.pop("step_size")
        allowed = {f.name for f in dataclasses.fields(cls)} - _NOT_TRAIN
        bad = sorted(set(t) - allowed)
        if bad:
            raise UserError(f"unknown train setting {bad[0]!r}; allowed: {', '.join(sorted(allowed))}")
        if "milestones" in t:
            t["milestones"] = tuple(t["milestones"])
        return cls(data=d["name"], data_dir=data_dir if data_dir is not None else d.get("data_dir"),
                   subset=d.get("subset"), val_fraction=d.get("val_fraction") or 0.0,
                   data_options=dict(d.get("options") or {}), model=str(m.pop("name", "convnet")),
                   norm_layer=m.pop("norm", None), width=m.pop("width", None), model_options=m,
                   method=settings.get("method", "normal"),
                   options=dict(settings.get("options") or {}), **t)

    def command_line(self, out: str | Path | None = None) -> str:
        """The `robustlab train` command line that trains the same run (settings without a flag
        are named in a trailing comment)."""
        parts = ["robustlab", "train", "--data", str(self.data)]
        if self.subset:
            parts += ["--subset", str(self.subset)]
        if self.val_fraction:
            parts += ["--val-fraction", str(self.val_fraction)]
        parts += ["--model", self.model]
        for name in ("width", "norm_layer", "init"):
            parts += _flag_of(name, getattr(self, name))
        parts += ["--method", self.method, *_method_flags(self.options)]
        defaults = TrainSpec()
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name not in _NOT_TRAIN and f.metadata.get("cli", True) \
                    and v != getattr(defaults, f.name):
                parts += _flag_of(f.name, v)
        if out is not None:
            parts += ["--out", str(out)]
        line = " ".join(parts)
        extra = [f"dataset option {k}={v}" for k, v in self.data_options.items()]
        extra += [f"model option {k}={v}" for k, v in self.model_options.items()]
        if tuple(self.milestones) != tuple(defaults.milestones):
            extra.append(f"milestones={list(self.milestones)}")
        if extra:
            line += f"  # plus {', '.join(extra)} (no command-line flag)"
        return line

    # ---- the command line ------------------------------------------------------------------
    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> dict[str, set[str]]:
        """`robustlab train`'s options: one per CLI field, then one per field of every registered
        method; returns {method: its option names}."""
        _add_spec_options(parser, cls)  # type: ignore[arg-type]
        return add_method_options(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace, per_method: dict[str, set[str]]) -> TrainSpec:
        """From parsed options; a method option given to a method that does not take it, or an
        unknown method, is a one-line error."""
        opts = {k: getattr(args, k) for k in set().union(*per_method.values()) if hasattr(args, k)}
        if args.method not in per_method:
            raise UserError(f"unknown method {args.method!r}; choose one of "
                            f"{', '.join(sorted(per_method))}")
        foreign = sorted(set(opts) - per_method[args.method])
        if foreign:
            raise UserError(f"--{foreign[0].replace('_', '-')} does not apply to method "
                            f"{args.method!r}")
        kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if f.metadata.get("cli", True) and hasattr(args, f.name)}
        return cls(**kw, options=opts)


_NOT_TRAIN = {"data", "data_dir", "subset", "val_fraction", "data_options", "model", "width",
              "norm_layer", "model_options", "init", "method", "options"}  # not in `train:`


def _own_backward(cls: type[Any]) -> bool:
    from robustlab.train.methods import Method

    return getattr(cls, "backward", None) is not Method.backward


def _flag_of(name: str, v: Any) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(v, bool):
        return [flag] if v else []
    return [] if v is None else [flag, str(v)]


def _method_flags(options: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    for k, v in options.items():
        flag = f"--{k.replace('_', '-')}"
        if isinstance(v, bool):
            parts += [flag if v else f"--no-{k.replace('_', '-')}"]
        else:
            parts += [flag, str(v)]
    return parts


_TYPES = {int: int, float: float, str: str}


def _field_type(tp: Any) -> Any:
    """Unwrap `X | None` to X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _options(registry: Any, cls: type[Any]) -> list[Any]:
    """The options of a method class (`Method.options()`: AWP's include its base's)."""
    if hasattr(cls, "options"):
        return cls.options()
    if hasattr(registry, "options"):
        return registry.options(cls)
    hints = typing.get_type_hints(cls)
    return [types.SimpleNamespace(name=f.name, type=hints.get(f.name, str),
                                  help=f.metadata.get("help", ""))
            for f in dataclasses.fields(cls)]


def add_method_options(p: argparse.ArgumentParser) -> dict[str, set[str]]:
    """One option per field of every registered method; returns {method: its option dests}."""
    from robustlab.train import methods as registry

    group = p.add_argument_group("method options (each applies to the methods that take it)")
    taken = {a.dest for a in p._actions}
    owners: dict[str, list[str]] = {}
    per_method: dict[str, set[str]] = {}
    for name, cls in sorted(registry.discover().items()):
        per_method[name] = set()
        for f in _options(registry, cls):  # its fields; AWP's include its bases' options
            per_method[name].add(f.name)
            owners.setdefault(f.name, []).append(name)
            if f.name in taken:
                continue
            taken.add(f.name)
            tp = _field_type(f.type)
            flag = "--" + f.name.replace("_", "-")
            term = VOCABULARY.get(f.name)  # e.g. `eps`: a method option that is a shared term
            if tp is bool:
                group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=f.help)
                continue
            action = group.add_argument(
                flag, dest=f.name, type=term.type if term and term.type else _TYPES.get(tp, str),
                default=argparse.SUPPRESS, help=f.help,
                metavar=tp.__name__.upper() if isinstance(tp, type) else "VALUE")
            action.term = f.name if term else None  # type: ignore[attr-defined]
    for dest, names in owners.items():
        for action in group._group_actions:
            if action.dest == dest and action.help is not None:
                action.help = f"{action.help} [{', '.join(names)}]".strip()
    return per_method


__all__ = ["TrainSpec", "add_method_options"]
