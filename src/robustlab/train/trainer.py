"""The training loop: optimizers, schedules, clipping, quantization-aware forward, checkpoints, resume.

Randomness: the model is initialised from the run seed, and every epoch draws its data order and
all method randomness (attack starts, bit error patterns) from a generator seeded by
(seed, epoch). Together with a learning rate that is a pure function of the step, this makes a
run resumed from any epoch checkpoint end with exactly the weights of an uninterrupted run.

Under `torchrun` (see docs/distributed.md) every rank draws the same data order from the epoch
generator and trains on its share of each global batch of `batch_size` examples; the gradients are
averaged over the global batch with one all-reduce after `method.backward`, so methods keep working
on the plain module (`ctx.model`, `ctx.forward`, `ctx.params()`). Rank 0 then continues the epoch
generator for its method randomness, rank r > 0 uses a generator seeded by (seed, epoch, r): attack
starts and bit error patterns differ between ranks and are reproducible for a given world size.
Rank 0 writes the checkpoints; every rank waits for it before the next epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from robustlab import checkpoint, distributed, sources
from robustlab.data import Dataset
from robustlab.device import autocast
from robustlab.errors import UserError
from robustlab.io import atomic_write_text, dumps
from robustlab.models import Predictor, forward_with
from robustlab.train.methods import Method

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "multistep", "cosine", "exponential")
EpochHook = Callable[["TrainContext"], dict[str, float]]
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a training run besides model, data and method."""

    epochs: int = 5
    lr: float = 0.05
    batch_size: int = 128
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_size: int = 10          # step: decay every step_size epochs
    milestones: tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of training (or epochs if ≥ 1)
    gamma: float = 0.1           # step/multistep factor; exponential: per-epoch factor
    seed: int = 0
    label_smoothing: float = 0.0
    clip: float | None = None    # clamp every parameter to [-clip, clip] after each step
    channels_last: bool = False
    bf16: bool = False

    def validate(self) -> None:
        """Refuse settings that cannot give a finite run (one `UserError` line naming the value).

        Factors that multiply float32 weights or gradients (lr, weight decay, the schedule's
        largest learning rate) must be finite and at most the float32 maximum; seeds are integers
        in 0..2^64−1 (what `torch.Generator.manual_seed` takes).
        """
        f32 = FLOAT32_MAX
        checks = [("epochs", self.epochs >= 1, "≥ 1"),
                  ("lr", 0 < self.lr <= f32, f"a finite number > 0 (at most {f32:.3g})"),
                  ("batch_size", self.batch_size >= 1, "≥ 1"),
                  ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                  ("weight_decay", 0 <= self.weight_decay <= f32,
                   f"a finite number ≥ 0 (at most {f32:.3g})"),
                  ("gamma", 0 < self.gamma <= f32, "a finite number > 0"),
                  ("step_size", self.step_size >= 1, "≥ 1"),
                  ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
                  ("clip", self.clip is None or self.clip > 0, "> 0"),
                  ("seed", isinstance(self.seed, int) and not isinstance(self.seed, bool)
                   and 0 <= self.seed < 2**64, "an integer in 0..2^64−1")]
        for name, ok, allowed in checks:
            if not ok:
                raise UserError(f"{name.replace('_', '-')} = {getattr(self, name)} is invalid; "
                                f"it must be {allowed}")
        try:  # the schedule's extremes (exponential/step decay with gamma > 1 grows)
            peak = max(self.lr_at(0.0), self.lr_at(max(0.0, self.epochs - 1e-9)))
        except OverflowError:
            peak = math.inf
        if not peak <= f32:
            raise UserError(f"gamma = {self.gamma} makes the learning rate of the {self.schedule} "
                            f"schedule overflow ({peak:.3g} after {self.epochs} epochs); use a "
                            f"gamma ≤ 1 or fewer epochs")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")

    def to_dict(self) -> dict[str, Any]:
        """The settings, JSON-ready (as recorded in model.json's `train_config`)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(d["milestones"])
        return d

    def lr_at(self, t: float) -> float:
        """Learning rate at fractional epoch t ∈ [0, epochs)."""
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1 + math.cos(math.pi * t / self.epochs))
        if self.schedule == "step":
            return self.lr * self.gamma ** int(t // self.step_size)
        if self.schedule == "exponential":
            return self.lr * self.gamma ** t
        passed = sum(t >= (m * self.epochs if m < 1 else m) for m in self.milestones)
        return self.lr * self.gamma ** passed


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of an epoch (its data order and method randomness); any seed < 2^64 works."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**64)


def rank_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Method randomness of rank `rank` > 0 in a distributed run (rank 0 continues `epoch_generator`)."""
    return torch.Generator().manual_seed(distributed.derive_seed(seed, epoch, rank))


class TrainContext:
    """What a training method sees: the model, the forward pass, the criterion and the randomness."""

    def __init__(self, model: nn.Module, config: TrainConfig, device: torch.device,
                 num_classes: int, quant: Any = None):
        self.model, self.config, self.device = model, config, device
        self.num_classes, self.quant = num_classes, quant
        self.epoch, self.step = 0, 0
        self.generator = epoch_generator(config.seed, 0)
        self.last_epoch: dict[str, float] = {}
        self.rank, self.world_size = distributed.rank(), distributed.world_size()

    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())

    def forward(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None, *,
                quantize: bool = True) -> torch.Tensor:
        """Logits at `params` (default: the model's own), quantized with a straight-through gradient
        when the run is quantization-aware and `quantize` (False: at exactly `params`)."""
        quant = self.quant if quantize else None
        if self.config.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.config.bf16):
            if params is None and quant is None:
                out = self.model(x)
            else:
                p = self.params() if params is None else params
                if quant is not None:
                    p = quant.fake_quantize(p)
                out = forward_with(self.model, p, x)
        return out.float()

    def criterion(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Model in eval mode inside (e.g. while attacks run), previous mode restored after."""
        was = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was)


def make_optimizer(model: nn.Module, c: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `fit` trains with (SGD or Adam over the parameters that require grad)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if c.optimizer == "adam":
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0,
                           weight_decay=c.weight_decay)


@torch.no_grad()
def _clip(model: nn.Module, w_max: float) -> None:
    """Clip to [−w_max, w_max]; norm-layer scales to [1 − w_max, 1 + w_max] (`models.clip_`)."""
    from robustlab.models import clip_

    clip_(model, w_max)


@torch.no_grad()
def evaluate_loss_err(ctx: TrainContext, ds: Dataset, batch_size: int = 512) -> tuple[float, float]:
    """Mean clean loss and error of the (quantized, if QAT) model on `ds` (sharded across ranks)."""
    n = len(ds)
    if distributed.active():
        ds = ds.subset(slice(*distributed.shard_bounds(n)))
    loss = err = 0.0
    if len(ds):  # a rank's shard may be empty: it contributes nothing
        with ctx.eval_mode():  # ctx.forward: the training numerics (bf16, channels-last, QAT)
            s = Predictor(ctx.forward, quant=False).sweep(ds.batches(batch_size, device=ctx.device),
                                                          loss=True)
        loss, err = float(s.loss), float(s.wrong.sum())
    if distributed.active():
        loss, err = distributed.all_reduce_sum(torch.tensor([loss, err], dtype=torch.float64)).tolist()
    return loss / n, err / n


def _shard_batches(ctx: TrainContext, ds: Dataset, batch_size: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of each global batch of the epoch's permutation (the same on all ranks)."""
    order = torch.randperm(len(ds), generator=ctx.generator)
    if ctx.rank > 0:
        ctx.generator = rank_generator(ctx.config.seed, ctx.epoch, ctx.rank)
    for start in range(0, len(ds), batch_size):
        idx = distributed.split_batch(order[start:start + batch_size])
        yield ds.x[idx].to(ctx.device, non_blocking=True), ds.y[idx].to(ctx.device, non_blocking=True)


def _distributed_backward(method: Method, ctx: TrainContext, model: nn.Module, x: torch.Tensor,
                          y: torch.Tensor, global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`method.backward` on this rank's share, then the gradient of the global batch mean."""
    if len(y):
        loss, logits = method.backward(ctx, x, y)
    else:  # a last global batch smaller than the world leaves some ranks without examples
        loss, logits = torch.zeros((), device=ctx.device), torch.zeros(0, ctx.num_classes, device=ctx.device)
    distributed.reduce_gradients([p for p in model.parameters() if p.requires_grad],
                                 len(y) / global_batch)
    return loss, logits


def _method_state(method: Method) -> dict[str, Any]:
    """Rank 0's method state, plus every rank's under "distributed" when several ranks train."""
    state = method.state_dict()
    if not distributed.active():
        return state
    ranks = distributed.all_gather_object(state)
    return {**ranks[0], "distributed": {"world_size": len(ranks), "ranks": ranks}}


def _load_method_state(method: Method, state: dict[str, Any]) -> None:
    per_rank = state.get("distributed")
    if per_rank and per_rank.get("world_size") == distributed.world_size():
        state = per_rank["ranks"][distributed.rank()]
    method.load_state_dict({k: v for k, v in state.items() if k != "distributed"})


def fit(model: nn.Module, train: Dataset, *, method: Method | None = None,
        config: TrainConfig | None = None, val: Dataset | None = None, quant: Any = None,
        out: str | Path | None = None, resume: bool = False, device: str | torch.device = "auto",
        meta: dict[str, Any] | None = None, epoch_hooks: list[EpochHook] | None = None,
        select_best: str | None = None, progress: bool | None = None, log: bool = True,
        **overrides: Any) -> list[dict[str, Any]]:
    """Train `model` on `train` with `method` (default: plain cross-entropy); returns per-epoch metrics.

    `config` fields can also be given as keyword overrides (`epochs=5, lr=0.1`). With `out`, every
    epoch writes `metrics.jsonl` and an atomic checkpoint; `resume=True` continues from it.
    `epoch_hooks` return extra metrics per epoch (e.g. robust validation error); `select_best`
    names a metric to minimise, and the best epoch's weights are kept as `model_best.safetensors`.
    `progress` shows a per-batch bar (None: when on a terminal); `log` prints a line per epoch.
    `train`/`val`: a robustlab `Dataset`, `(x, y)` tensors, a map-style torch `Dataset` or a
    `DataLoader` over one (read batch by batch; `robustlab.sources`). With `quant`, the model is
    returned carrying its scheme (`rl.models.quant_of(model)`), so `rl.evaluate.*` measure it at
    its dequantized weights, exactly as the CLI measures the saved run.
    """
    train = sources.as_data(train)
    val = None if val is None else sources.as_data(val)
    method = method or Method()
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    config.validate()
    dev = distributed.init(device)  # resolves the device; joins the process group under torchrun
    world, main = distributed.world_size(), distributed.is_main()
    model.to(dev)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if quant is None and method.needs_quant:
        from robustlab.quant import RQUANT8

        quant = RQUANT8  # bit error methods train quantization-aware; recorded in model.json
    ctx = TrainContext(model, config, dev, train.num_classes, quant)
    opt = make_optimizer(model, config)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    run = Path(out) if out is not None else None
    meta = dict(meta or {})
    meta.update(train_config=config.to_dict(), method=method.config(), seed=config.seed,
                quant=quant.to_dict() if quant is not None else None)
    if world > 1:
        meta["world_size"] = world  # method randomness depends on it (docs/distributed.md)
    if len(train) == 0:
        raise UserError(f"training set {train.name!r} is empty: nothing to train on")
    if run is not None and resume and checkpoint.has_state(run):
        start_epoch, history, method_state = load_resume_point(run, model, opt, dev, config.epochs)
        _load_method_state(method, method_state)
        if history:
            ctx.last_epoch = history[-1]
    if world > 1:
        if len(set(distributed.all_gather_object(start_epoch))) > 1:
            raise UserError(f"ranks disagree on the epoch to resume {run} from; the run directory must "
                            "be on a file system that every rank sees")
        distributed.broadcast_module(model)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    best = min((h[select_best] for h in history if select_best in h), default=math.inf)
    for epoch in range(start_epoch, config.epochs):
        ctx.epoch, ctx.generator = epoch, epoch_generator(config.seed, epoch)
        ctx.step = epoch * steps_per_epoch
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        err_sum = torch.zeros((), device=dev)
        first_bad = torch.full((), -1, dtype=torch.int64, device=dev)  # first non-finite loss step
        seen = 0
        batches = (train.batches(config.batch_size, shuffle=True, generator=ctx.generator, device=dev)
                   if world == 1 else _shard_batches(ctx, train, config.batch_size))
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                   leave=False, unit="batch",
                   disable=True if not main else None if progress is None else not progress)
        for i, (x, y) in enumerate(bar):
            lr = config.lr_at(epoch + i / steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            if world == 1:
                loss, logits = method.backward(ctx, x, y)
            else:
                loss, logits = _distributed_backward(
                    method, ctx, model, x, y, min(config.batch_size, len(train) - i * config.batch_size))
            opt.step()
            if config.clip is not None:
                _clip(model, config.clip)
            if world > 1:
                distributed.broadcast_buffers(model)
            loss_sum += loss * len(y)
            err_sum += (logits.argmax(1) != y).sum()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), i, first_bad)
            seen += len(y)
            ctx.step += 1
            if i % 20 == 19:
                if main:
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}",
                                    acc=f"{1 - err_sum.item() / seen:.3f}")
                if world == 1 and int(first_bad) >= 0:  # stop early (one sync per 20 steps)
                    break
        bar.close()
        _check_finite(model, first_bad, epoch, steps_per_epoch, run, world)
        if world > 1:
            totals = torch.stack([loss_sum.double(), err_sum.double(),
                                  torch.tensor(float(seen), dtype=torch.float64, device=dev)])
            distributed.all_reduce_sum(totals)
            loss_sum, err_sum, seen = totals[0], totals[1], int(totals[2].item())
        metrics: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum.item() / seen,
                                   "train_err": err_sum.item() / seen,
                                   "time_s": round(time.perf_counter() - t0, 3)}
        if val is not None:
            metrics["val_loss"], metrics["val_err"] = evaluate_loss_err(ctx, val)
        for hook in epoch_hooks or []:
            metrics.update(hook(ctx))
        history.append(metrics)
        ctx.last_epoch = metrics
        if log and main:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                              if k not in ("epoch", "lr") and isinstance(v, float))
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: {shown}")
        method_state = _method_state(method) if run is not None else {}
        if run is not None and main:
            if select_best is not None and metrics.get(select_best, math.inf) < best:
                best = metrics[select_best]
                checkpoint.save_weights(run / "model_best.safetensors", model)
                meta["best_epoch"] = epoch + 1
            checkpoint.save(run, model, meta)
            checkpoint.save_state(run, epoch + 1, model, opt, history, method_state)
            atomic_write_text(run / "metrics.jsonl", "".join(dumps(h, indent=None) + "\n"
                                                             for h in history))
        distributed.barrier()
    from robustlab.models import QUANT_ATTR

    setattr(model, QUANT_ATTR, quant)  # evaluators use the weights the run computes with
    return history


def _check_finite(model: nn.Module, first_bad: torch.Tensor, epoch: int, steps_per_epoch: int,
                  run: Path | None, world: int) -> None:
    """Stop a diverged run (non-finite loss or weights) before anything of the epoch is written."""
    ok = [torch.isfinite(p).all() for p in model.parameters()]
    bad_weights = ~torch.stack(ok).all() if ok else torch.zeros((), dtype=torch.bool)
    flags = torch.stack([(first_bad >= 0).double(), bad_weights.double().to(first_bad.device)])
    if world > 1:  # every rank stops together
        distributed.all_reduce_sum(flags)
    bad_loss, bad_w = bool(flags[0] > 0), bool(flags[1] > 0)
    if not (bad_loss or bad_w):
        return
    step = int(first_bad)
    if bad_loss and step >= 0:
        what = f"the training loss became non-finite at epoch {epoch + 1}, step {step + 1} of " \
               f"{steps_per_epoch}"
    else:
        what = f"the weights became non-finite in epoch {epoch + 1} (by step {steps_per_epoch})"
    kept = (f"; {run} keeps the last good checkpoint (epoch {epoch})" if run is not None and epoch > 0
            else "; no epoch was saved")
    raise UserError(f"training diverged: {what}{kept}; lower --lr (or --weight-decay, a method "
                    f"weight such as --beta) or add --clip")


def load_resume_point(run: str | Path, model: nn.Module, opt: torch.optim.Optimizer,
                      device: torch.device, epochs: int | None = None
                      ) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """Validate and load a run's resume point → (epochs done, history, method state).

    Every defect of the stored state (wrong types, a history that disagrees with the epoch, an
    optimizer state missing or of the wrong shape, non-finite tensors, more epochs done than
    `epochs`) is one `UserError` line; the model and optimizer are only changed when it is valid.
    """
    info = checkpoint.read_state_info(run)
    where = f"cannot resume {run}: {checkpoint.STATE}"
    epoch = info.get("epoch") if isinstance(info, dict) else None
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise UserError(f"{where} records epoch {epoch!r}, not an integer")
    if epoch < 0:
        raise UserError(f"{where} records epoch {epoch}, which is negative")
    history = info.get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history) \
            or len(history) != epoch:
        n = len(history) if isinstance(history, list) else type(history).__name__
        raise UserError(f"{where} records epoch {epoch} but a history of {n} epochs")
    optim = info.get("optimizer")
    if not isinstance(optim, dict) or not isinstance(optim.get("param_groups"), list) \
            or not isinstance(optim.get("scalars"), dict):
        raise UserError(f"{where} has no valid optimizer state (param_groups and scalars)")
    method_state = info.get("method_state", {})
    if not isinstance(method_state, dict):
        raise UserError(f"{where} has a method state that is not a mapping")
    if epochs is not None and epoch > epochs:
        raise UserError(f"{where} records {epoch} finished epochs, more than --epochs {epochs}")
    try:
        start, history, method_state = checkpoint.load_state(run, model, opt, device)
    except UserError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError) as e:
        raise UserError(f"{where} is inconsistent ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r})") from None
    params = dict(model.named_parameters())
    by_id = {id(p): n for n, p in params.items()}
    for p, st in opt.state.items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor) and val.ndim > 0 and val.shape != p.shape:
                raise UserError(f"{where}: optimizer {key} of {by_id.get(id(p), '?')} has shape "
                                f"{tuple(val.shape)}, the weight {tuple(p.shape)}")
            if isinstance(val, torch.Tensor) and val.is_floating_point() \
                    and not bool(torch.isfinite(val).all()):
                raise UserError(f"{where}: optimizer {key} of {by_id.get(id(p), '?')} is not finite")
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{where}: weight {name} is not finite")
    return start, history, method_state

