"""Model registry: mlp, lenet, convnet (the fast default for 28×28), resnet20, wrn.

Every built-in model clamps its input to [0, 1] and takes `norm="none"|"bn"|"gn"`. Norm layers
have their scale parameterized as 1 + γ (γ stored in `.weight`, initialised to 0) so that weight
clipping of γ does not cap the scale. Any user `nn.Module` mapping images to logits works with the
rest of the library; the registry only adds convenience and rebuildable checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from robustlab import sources
from robustlab.errors import UserError

NORMS = ("none", "bn", "gn")


class Norm2d(nn.Module):
    """BatchNorm or GroupNorm without affine, followed by the reparameterized affine (1+γ)·x + β."""

    def __init__(self, channels: int, kind: str, groups: int = 8):
        super().__init__()
        if kind == "bn":
            self.norm: nn.Module = nn.BatchNorm2d(channels, affine=False)
        elif kind == "gn":
            self.norm = nn.GroupNorm(min(groups, channels), channels, affine=False)
        else:
            raise UserError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")
        self.weight = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm
        if isinstance(n, nn.BatchNorm2d):  # one fused op with the scale 1+γ
            return F.batch_norm(x, n.running_mean, n.running_var, 1 + self.weight, self.bias,
                                self.training, n.momentum, n.eps)
        return F.group_norm(x, n.num_groups, 1 + self.weight, self.bias, n.eps)


def norm_layer(channels: int, norm: str) -> nn.Module:
    if norm == "none":
        return nn.Identity()
    return Norm2d(channels, norm)


class Classifier(nn.Module):
    """Clamp to [0, 1], then the body."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.clamp(0, 1))


def _conv_block(cin: int, cout: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"), norm_layer(cout, norm),
            nn.ReLU(inplace=True)]


def _flat_features(features: nn.Module, in_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        was = features.training
        features.eval()
        n = features(torch.zeros(1, *in_shape)).numel()
        features.train(was)
    return n


def mlp(in_shape: tuple[int, int, int], num_classes: int, *, hidden: tuple[int, ...] = (256, 256),
        norm: str = "none") -> nn.Module:
    """Fully connected ReLU network (`norm` is ignored: no norm layers)."""
    d = in_shape[0] * in_shape[1] * in_shape[2]
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
        d = h
    layers.append(nn.Linear(d, num_classes))
    return Classifier(nn.Sequential(*layers))


def lenet(in_shape: tuple[int, int, int], num_classes: int, *, norm: str = "none") -> nn.Module:
    """LeNet-5 style: two 5×5 convolutions with pooling, three linear layers."""
    c = in_shape[0]
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2), norm_layer(6, norm), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), norm_layer(16, norm), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten())
    d = _flat_features(features, in_shape)
    return Classifier(nn.Sequential(features, nn.Linear(d, 120), nn.ReLU(inplace=True),
                                    nn.Linear(120, 84), nn.ReLU(inplace=True),
                                    nn.Linear(84, num_classes)))


def convnet(in_shape: tuple[int, int, int], num_classes: int, *, width: int = 32,
            norm: str = "bn", hidden: int = 128) -> nn.Module:
    """Small fast CNN: 2×(conv-conv-pool) with `width`, 2·`width` channels, then two linear layers."""
    c, w = in_shape[0], width
    features = nn.Sequential(
        *_conv_block(c, w, norm), *_conv_block(w, w, norm), nn.MaxPool2d(2),
        *_conv_block(w, 2 * w, norm), *_conv_block(2 * w, 2 * w, norm), nn.MaxPool2d(2),
        nn.Flatten())
    d = _flat_features(features, in_shape)
    return Classifier(nn.Sequential(features, nn.Linear(d, hidden), nn.ReLU(inplace=True),
                                    nn.Linear(hidden, num_classes)))


class BasicBlock(nn.Module):
    """Pre-activation residual block (norm-ReLU-conv twice) with a 1×1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.n1, self.c1 = norm_layer(cin, norm), nn.Conv2d(cin, cout, 3, stride, 1, bias=norm == "none")
        self.n2, self.c2 = norm_layer(cout, norm), nn.Conv2d(cout, cout, 3, 1, 1, bias=norm == "none")
        self.relu = nn.ReLU()
        self.short = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                      if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu(self.n1(x))
        s = self.short(o) if self.short is not None else x
        o = self.c1(o)
        o = self.c2(self.relu(self.n2(o)))
        return o + s


def _resnet(in_shape: tuple[int, int, int], num_classes: int, blocks: int, widths: list[int],
            norm: str) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], widths[0], 3, padding=1, bias=norm == "none")]
    cin = widths[0]
    for stage, w in enumerate(widths[1:]):
        for b in range(blocks):
            layers.append(BasicBlock(cin, w, 2 if stage > 0 and b == 0 else 1, norm))
            cin = w
    layers += [norm_layer(cin, norm), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(cin, num_classes)]
    return Classifier(nn.Sequential(*layers))


def resnet20(in_shape: tuple[int, int, int], num_classes: int, *, width: int = 16,
             norm: str = "bn") -> nn.Module:
    """ResNet-20 (3 stages × 3 blocks) with `width`, 2·`width`, 4·`width` channels."""
    return _resnet(in_shape, num_classes, 3, [width, width, 2 * width, 4 * width], norm)


def wrn(in_shape: tuple[int, int, int], num_classes: int, *, depth: int = 16, widen: int = 4,
        norm: str = "bn") -> nn.Module:
    """Wide ResNet WRN-depth-widen (depth = 6n + 4)."""
    if (depth - 4) % 6:
        raise UserError(f"wrn depth {depth} must be 6n+4 (e.g. 16, 22, 28)")
    n = (depth - 4) // 6
    return _resnet(in_shape, num_classes, n, [16, 16 * widen, 32 * widen, 64 * widen], norm)


REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp, "lenet": lenet, "convnet": convnet, "resnet20": resnet20, "wrn": wrn}


def names() -> list[str]:
    return sorted(REGISTRY)


def create(name: str, *, dataset=None, in_shape: tuple[int, int, int] | None = None,
           num_classes: int | None = None, seed: int | None = 0, **kwargs) -> nn.Module:
    """Build a registered model for `dataset` (or an explicit `in_shape` and `num_classes`).

    Initial weights come from `seed` (the global RNG is left untouched); `seed=None` draws from it.
    The returned module carries `robustlab_spec` = {"name", "kwargs"} so checkpoints can rebuild it.
    """
    if name not in REGISTRY:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(names())}")
    if dataset is not None:
        in_shape = in_shape or tuple(dataset.shape)
        num_classes = num_classes or dataset.num_classes
    if in_shape is None or num_classes is None:
        raise UserError("create() needs a dataset or both in_shape and num_classes")
    norm = kwargs.get("norm")
    if norm is not None and norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    check_size(name, in_shape, num_classes, **kwargs)
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = REGISTRY[name](tuple(in_shape), int(num_classes), **kwargs)
    except TypeError as e:
        raise UserError(f"model {name!r}: {e}") from None
    model.robustlab_spec = {"name": name, "kwargs": {"in_shape": list(in_shape),
                                                     "num_classes": int(num_classes), **kwargs}}
    return model


class Normalized(nn.Module):
    """`model((x − mean) / std)`: normalization inside the model, so attacks see inputs in [0, 1].

    The pattern AutoAttack and RobustBench recommend: a model trained on standardized inputs is
    wrapped once, and every attack, evaluator and bound check works in the [0, 1] pixel space where
    ε is defined. `mean` and `std` are per channel (a sequence of C numbers, or one number for all
    channels); they are buffers, never parameters, so quantization, clipping and bit errors leave
    them alone. The wrapped model's parameters keep their names under the prefix `model.`.

    Example:
        >>> import torch, robustlab as rl
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
        >>> m = rl.models.Normalized(net, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
        >>> m(torch.rand(2, 3, 4, 4)).shape
        torch.Size([2, 10])
    """

    def __init__(self, model: nn.Module, mean: float | list[float] | tuple[float, ...] | torch.Tensor,
                 std: float | list[float] | tuple[float, ...] | torch.Tensor):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() == 0 or std_t.numel() == 0:
            raise UserError("Normalized: mean and std need at least one number each")
        if mean_t.numel() != std_t.numel() and 1 not in (mean_t.numel(), std_t.numel()):
            raise UserError(f"Normalized: mean has {mean_t.numel()} numbers but std has "
                            f"{std_t.numel()}; give one per channel (or one for all)")
        if not bool(torch.isfinite(mean_t).all()) or not bool((std_t > 0).all()):
            raise UserError(f"Normalized: std must be positive and mean finite "
                            f"(got mean={mean_t.tolist()}, std={std_t.tolist()})")
        self.model = model
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean, self.std
        if x.ndim != 4:  # non-image inputs (N×D): normalize along dim 1
            mean, std = mean.view(1, -1), std.view(1, -1)
        return self.model((x - mean.to(x.dtype)) / std.to(x.dtype))

    def extra_repr(self) -> str:
        def fmt(t: torch.Tensor) -> str:
            return "(" + ", ".join(f"{v:.4g}" for v in t.flatten().tolist()) + ")"

        return f"mean={fmt(self.mean)}, std={fmt(self.std)}"


# ---- resource guard: sizes are checked on the meta device before anything is allocated ----

TRAIN_COPIES = 4  # weights, gradients, optimizer state and a checkpoint copy


def available_memory() -> int | None:
    """Bytes of memory available to this process (Linux MemAvailable; None when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def check_size(name: str, in_shape, num_classes, **kwargs) -> int:
    """Refuse a model that cannot be built for these images or would not fit in memory; → its
    number of parameters. The model is built on the meta device (shapes only, no storage)."""
    try:
        shape = tuple(int(s) for s in in_shape)
        k = int(num_classes)
    except (TypeError, ValueError):
        raise UserError(f"model {name!r}: image shape {in_shape!r} and class count "
                        f"{num_classes!r} must be integers") from None
    if len(shape) != 3 or min(shape) < 1 or k < 1:
        raise UserError(f"model {name!r}: images {'×'.join(map(str, shape))} with {k} classes; "
                        f"images must be C×H×W with every size ≥ 1 and at least one class")
    for key, v in kwargs.items():
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise UserError(f"model {name!r}: {key}={v} must be ≥ 1")
    try:
        with torch.device("meta"):
            meta_model = REGISTRY[name](shape, k, **kwargs)
    except TypeError as e:
        raise UserError(f"model {name!r}: {e}") from None
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model {name!r} cannot take {'×'.join(map(str, shape))} images "
                        f"({first})") from None
    n = count_parameters(meta_model)
    need = n * 4 * TRAIN_COPIES
    avail = available_memory()
    if avail is not None and need > avail:
        opts = ", ".join(f"{k_}={v}" for k_, v in kwargs.items()) or "default options"
        raise UserError(f"model {name!r} ({opts}) for {'×'.join(map(str, shape))} images and {k} "
                        f"classes would have {n:.3g} parameters ({_bytes(n * 4)} of float32 "
                        f"weights, about {_bytes(need)} to train) but only {_bytes(avail)} of "
                        f"memory is available; use a smaller width or fewer classes")
    return n


def forward_with(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Run `model` on `x` with some parameters replaced (a partial dict is fine)."""
    return functional_call(model, params, (x,))


def perturbable_names(model: nn.Module) -> list[str]:
    """Names of conv/linear weights and biases: what weight perturbations act on (no norm params)."""
    out = []
    for mname, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear, nn.Conv1d, nn.Conv3d)):
            for pname, _ in mod.named_parameters(recurse=False):
                out.append(f"{mname}.{pname}" if mname else pname)
    return out


# Normalization layers found by module type (BatchNorm*/SyncBatchNorm/InstanceNorm* derive from
# _NormBase). Their `weight` is a multiplicative scale around 1; the built-in `Norm2d` is not listed:
# its `weight` already is the offset γ of the scale 1 + γ.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


def norm_scale_names(model: nn.Module) -> list[str]:
    """Names of the scale parameters (`weight`) of every normalization layer of `model`, found by
    module type (BatchNorm, SyncBatchNorm, InstanceNorm, GroupNorm, LayerNorm, RMSNorm).

    These scales multiply normalized activations and live around 1: clipping keeps them within
    w_max of 1 (`clip_`), exactly as the built-in models' 1 + γ parameterization does.

    Example:
        >>> import torch.nn as nn, robustlab as rl
        >>> rl.models.norm_scale_names(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
        ['1.weight']
    """
    out = []
    for mname, mod in model.named_modules():
        if isinstance(mod, NORM_TYPES):
            w = getattr(mod, "weight", None)
            if isinstance(w, nn.Parameter):
                out.append(f"{mname}.weight" if mname else "weight")
    return out


@torch.no_grad()
def clip_(model: nn.Module, w_max: float) -> None:
    """Weight clipping (spec §5), in place: every parameter to [−w_max, w_max], except the scales
    of normalization layers (`norm_scale_names`), which go to [1 − w_max, 1 + w_max].

    A scale s = 1 + γ is thus treated exactly like the built-in models' γ: clipping never caps a
    norm scale at w_max. Norm biases (shifts) are clipped like any other parameter.

    Example:
        >>> import torch, torch.nn as nn, robustlab as rl
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
        >>> rl.models.clip_(net, 0.1)
        >>> float(net[1].weight.detach().max())   # LayerNorm scale stays near 1
        1.0
    """
    scales = set(norm_scale_names(model))
    for name, p in model.named_parameters():
        if not torch.is_floating_point(p):
            continue
        if name in scales:
            p.clamp_(1 - w_max, 1 + w_max)
        else:
            p.clamp_(-w_max, w_max)


QUANT_ATTR = "robustlab_quant"  # the Scheme a quantization-aware `fit` attaches to its model


def quant_of(model: object) -> object | None:
    """The quantization scheme `model` computes with (attached by `rl.train.fit(..., quant=...)`,
    or by `rl.checkpoint`/runs for a quantized run), or None for a float model."""
    return getattr(model, QUANT_ATTR, None)


class Predictor(nn.Module):
    """One model at one set of weights, with its quantization: what every evaluator runs.

    `Predictor(model)` computes at the model's own parameters, quantized then dequantized when it
    carries a scheme (`quant_of`; or pass `quant=`), exactly as a quantized run computes; the
    weights are re-quantized only when a parameter changed. `Predictor(model, params)` computes at
    `params` taken as given (already dequantized or perturbed, gradients flow through them; a
    partial dict is fine: missing
    entries fall back to the model's own, dequantized when quantized). `at(params)` is the same
    model at other weights. `sweep(batches)` is the one routine that runs it over a data set in
    batches (predictions, loss, clean and robust error); buffers are always the model's own.

    Example:
        >>> import torch, robustlab as rl
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> p = rl.models.Predictor(net, quant=rl.quant.RQUANT4)
        >>> s = p.sweep([(torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 0, 1, 1]))])
        >>> s.n, s.wrong.shape
        (5, torch.Size([5]))
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor],
                 params: dict[str, torch.Tensor] | None = None, *, quant: object = None):
        super().__init__()
        self.model = model
        self.quant = None if quant is False else quant if quant is not None else quant_of(model)
        self.fixed = None if params is None else dict(params)
        self._key: tuple | None = None
        self._params: dict[str, torch.Tensor] = {}

    @classmethod
    def of(cls, model: Callable[[torch.Tensor], torch.Tensor]) -> Predictor:
        """`model` itself when it already is a predictor, else `Predictor(model)`."""
        return model if isinstance(model, Predictor) else cls(model)

    def params(self) -> dict[str, torch.Tensor]:
        """The weights replacing the model's own (empty for a float model at its own weights)."""
        if self.quant is None or not isinstance(self.model, nn.Module):
            return self.fixed or {}
        named = [(n, p) for n, p in self.model.named_parameters() if torch.is_floating_point(p)]
        key = tuple((n, p.data_ptr(), p._version, p.device) for n, p in named)
        if key != self._key:
            with torch.no_grad():
                self._params = self.quant.fake_quantize({n: p.detach() for n, p in named})
            self._key = key
        return {**self._params, **self.fixed} if self.fixed else self._params

    def at(self, params: dict[str, torch.Tensor]) -> Predictor:
        """The same model at `params` (taken as given), other weights as here."""
        return Predictor(self.model, {**self.params(), **params}, quant=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = self.params()
        if not params:
            return self.model(x)
        return forward_with(self.model, params, x)

    @property
    def device(self) -> torch.device:
        """Where the model's first parameter (or buffer) lives; CPU for a plain callable."""
        return sources.model_device(self.model)

    def sweep(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
              adversary: Callable[[Predictor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
              loss: bool = False, keep_logits: bool = False, name: str = "") -> Sweep:
        """Run over `batches` of (x, y) in eval mode (every submodule's mode restored after).

        `adversary(predictor, x, y) -> x_adv` attacks each batch at these weights (robust error:
        wrong clean or attacked, spec §2); `loss` sums the cross-entropy (float64, per batch in
        float32 as the model computes); `keep_logits` keeps the float32 logits on the CPU. The
        verdicts run without autocast (float32, as `robustlab.attacks.evaluate_logits`). No batch
        at all is a `UserError` naming the data (`name`).
        """
        ys, preds, clean_preds, outs = [], [], [], []
        total = clean_total = None
        restore = sources.eval_mode(self.model)
        try:
            for x, y in batches:
                xa = x if adversary is None else adversary(self, x, y)
                with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                    out = self(xa).float()
                    preds.append(out.argmax(1))
                    ys.append(y)
                    if keep_logits:
                        outs.append(out.cpu())
                    if loss:
                        part = F.cross_entropy(out, y, reduction="sum").double()
                        total = part if total is None else total + part
                    if adversary is not None:
                        clean = self(x).float()
                        clean_preds.append(clean.argmax(1))
                        if loss:
                            part = F.cross_entropy(clean, y, reduction="sum").double()
                            clean_total = part if clean_total is None else clean_total + part
        finally:
            restore()
        if not ys:
            raise UserError(f"data {name!r} is empty")
        y_all = torch.cat(ys)
        return Sweep(y_all, torch.cat(preds), torch.cat(clean_preds) if clean_preds else None,
                     total, clean_total if adversary is not None else total,
                     torch.cat(outs) if keep_logits else None)

    def loss_and_grad(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                      wrt: Sequence[torch.Tensor], *, n: int, sign: float = 1.0, grad: bool = True,
                      adversary: Callable[[Predictor, torch.Tensor, torch.Tensor], torch.Tensor]
                      | None = None, attack_at: Predictor | None = None
                      ) -> tuple[torch.Tensor, list[torch.Tensor] | None, torch.Tensor]:
        """The weight attacks' objective over `batches`: Σ sign·CE/`n` (float64 sum of the
        per-batch float32 values), its gradient w.r.t. the tensors `wrt` (leaves inside this
        predictor's weights; with `grad`) and how many examples were predicted as their label.
        `adversary` attacks each batch at `attack_at` (default: these weights). Eval mode."""
        total = agree = None
        grads = [torch.zeros_like(w) for w in wrt] if grad else None
        restore = sources.eval_mode(self.model)
        try:
            for x, y in batches:
                xa = x if adversary is None else adversary(attack_at or self, x, y)
                with torch.set_grad_enabled(grad):
                    out = self(xa).float()
                    batch = sign * F.cross_entropy(out, y, reduction="sum") / n
                    if grads is not None:
                        for acc, g in zip(grads, torch.autograd.grad(batch, list(wrt),
                                                                     allow_unused=True)):
                            if g is not None:
                                acc += g
                part, same = batch.detach().double(), (out.detach().argmax(1) == y).sum()
                total = part if total is None else total + part
                agree = same if agree is None else agree + same
        finally:
            restore()
        if total is None or agree is None:
            raise UserError("no examples to evaluate (the data set is empty)")
        return total, grads, agree


@dataclasses.dataclass
class Sweep:
    """What `Predictor.sweep` saw: labels, predictions (on attacked inputs when an adversary ran,
    else clean), clean predictions, cross-entropy sums (float64) and optionally the logits."""

    y: torch.Tensor
    pred: torch.Tensor
    clean_pred: torch.Tensor | None = None
    loss: torch.Tensor | None = None        # Σ cross-entropy on the (attacked) inputs
    clean_loss: torch.Tensor | None = None  # Σ cross-entropy on the clean inputs
    logits: torch.Tensor | None = None      # CPU float32, with keep_logits

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def wrong(self) -> torch.Tensor:
        """Misclassified (attacked, when an adversary ran) examples."""
        return self.pred != self.y

    @property
    def clean_wrong(self) -> torch.Tensor:
        return self.wrong if self.clean_pred is None else self.clean_pred != self.y

    @property
    def robust_wrong(self) -> torch.Tensor:
        """Wrong clean or attacked (spec §2)."""
        return self.wrong if self.clean_pred is None else self.wrong | self.clean_wrong


class Batches:
    """A data set as (x, y) batches on `device`, readable again and again: an in-memory robustlab
    `Dataset` or `(x, y)` tensors are moved to the device once; a `robustlab.sources.Stream` is
    read again on every pass (memory does not grow with it). Inputs are checked against `bounds`
    once (on the first pass for a stream)."""

    def __init__(self, data: Any, batch_size: int, device: torch.device | str | None = None,
                 bounds: Sequence[float] | None = None):
        self.batch_size, self.device, self.bounds = int(batch_size), device, bounds
        if isinstance(data, tuple):
            x, y = data
            self.n, self.stream = int(x.shape[0]), None
            self.cached = [(x[s:s + self.batch_size].to(device), y[s:s + self.batch_size].to(device))
                           for s in range(0, self.n, self.batch_size)]
        else:
            self.n = len(data)
            self.stream = data if isinstance(data, sources.Stream) else None
            if self.stream is None:
                self.cached = list(sources.batches_of(data, self.batch_size, device, bounds))

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.stream is None:
            return iter(self.cached)
        bounds, self.bounds = self.bounds, None  # checked on the first pass
        return sources.batches_of(self.stream, self.batch_size, self.device, bounds)


class Dequantized(Predictor):
    """`model` computing at its quantized-then-dequantized weights (the values a quantized run
    really uses; `robustlab.runs.Run.params()` computes the same tensors): a `Predictor` with an
    explicit scheme.

    Example:
        >>> import torch, robustlab as rl
        >>> net = torch.nn.Linear(4, 2)
        >>> d = rl.models.Dequantized(net, rl.quant.RQUANT4)
        >>> x = torch.rand(3, 4)
        >>> bool((d(x) - net(x)).abs().max() > 0)   # 4-bit weights differ from the floats
        True
    """

    def __init__(self, model: nn.Module, scheme: object):
        super().__init__(model, quant=scheme)


def with_quant(model: object) -> object:
    """`Predictor(model)` when `model` carries a quantization scheme (`quant_of`), else `model`
    itself: a model trained quantization-aware is measured at the weights it was trained to
    compute with, as the CLI measures its run."""
    if quant_of(model) is None or isinstance(model, Predictor) or not isinstance(model, nn.Module):
        return model
    return Predictor(model)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
