"""Fixed-point quantization of model parameters into real integer codes (spec §5).

A `Scheme` maps every float parameter tensor to m-bit codes (2 ≤ m ≤ 8) stored as `uint8`:

- range: per tensor (each tensor's own [min, max], or [−max|w|, max|w|] for the symmetric modes)
  or global ([−q_max, q_max] for every tensor);
- `symmetric_signed`: Δ = q_max/(2^{m−1}−1), q = rnd(w/Δ) stored as m-bit two's complement;
- `symmetric_unsigned` (offset binary): code = rnd(w/Δ) + 2^{m−1};
- `asymmetric` (unsigned): [lo, hi] → [0, 2^m − 1], Δ = (hi − lo)/(2^m − 1);
- rounding `round` (half to even) or `trunc` (toward zero).

Integer values are clamped to the representable range before the cast to `uint8`.
Dequantization is `clamp(base + c'·Δ, lo, hi)` with c' the code (or, for `symmetric_signed`, the
code with its top bit inverted, which turns two's complement into offset binary), so a code
hit by bit errors still dequantizes into the tensor's range. Only the m low bits of a code
matter. `RQUANT8` (per tensor, asymmetric, unsigned, rounded) is the recommended default.

`Quantized` holds all codes of a model in one flat buffer (tensors concatenated in the order of
the parameter dict, i.e. module order for `model.named_parameters()`), which is the layout bit
error patterns are defined on (`robustlab.biterrors`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustlab.errors import UserError

MODES = ("asymmetric", "symmetric_signed", "symmetric_unsigned")
ROUNDINGS = ("round", "trunc")
NPZ_FORMAT = "robustlab-quantized-v1"


@dataclass(frozen=True)
class Scheme:
    """An m-bit fixed-point quantization scheme (see the module docstring)."""

    bits: int = 8
    per_tensor: bool = True
    mode: str = "asymmetric"
    rounding: str = "round"
    q_max: float = 1.0  # global range [-q_max, q_max]; used only when per_tensor is False

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise UserError(f"quantization bits {self.bits!r} must be an integer in 2..8")
        if self.mode not in MODES:
            raise UserError(f"quantization mode {self.mode!r} must be one of {', '.join(MODES)}")
        if self.rounding not in ROUNDINGS:
            raise UserError(f"quantization rounding {self.rounding!r} must be one of "
                            f"{', '.join(ROUNDINGS)}")
        try:
            q_max = float(self.q_max)
        except (TypeError, ValueError):
            q_max = math.nan
        if not (q_max > 0 and math.isfinite(q_max)):  # checked even when unused (per tensor)
            raise UserError(f"quantization range q_max={self.q_max!r} must be a finite number > 0")

    # -- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scheme:
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise UserError(f"unknown quantization field {bad[0]!r}; allowed: {', '.join(sorted(known))}")
        return cls(**dict(d))

    def __str__(self) -> str:
        rng = "per-tensor" if self.per_tensor else f"global ±{self.q_max:g}"
        return f"{self.bits}-bit {rng} {self.mode} {self.rounding}"

    # -- the affine map ------------------------------------------------------------------
    @property
    def top(self) -> int:
        """2^{m−1}: the offset of the symmetric modes."""
        return 1 << (self.bits - 1)

    def _ranges(self, flat: torch.Tensor, seg: torch.Tensor, T: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-tensor (lo, hi), float64 vectors of length T, of the float64 values `flat`."""
        kw = {"dtype": torch.float64, "device": flat.device}
        if not self.per_tensor:
            q = torch.full((T,), float(self.q_max), **kw)
            return -q, q
        if self.mode == "asymmetric":
            lo = torch.full((T,), math.inf, **kw).scatter_reduce_(0, seg, flat, "amin")
            hi = torch.full((T,), -math.inf, **kw).scatter_reduce_(0, seg, flat, "amax")
            lo, hi = torch.where(torch.isfinite(lo), lo, 0.0), torch.where(torch.isfinite(hi), hi, 0.0)
            return lo, hi
        q = torch.zeros((T,), **kw).scatter_reduce_(0, seg, flat.abs(), "amax")
        return -q, q

    def _affine(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Δ, base) with value(c') = base + c'·Δ; Δ = 1 for an empty range (all codes → lo)."""
        m = self.bits
        if self.mode == "asymmetric":
            delta = (hi - lo) / (2**m - 1)
        else:
            delta = hi / (self.top - 1)
        delta = torch.where(delta > 0, delta, torch.ones_like(delta))
        base = lo if self.mode == "asymmetric" else -self.top * delta
        return delta, base

    def _offset_codes(self, flat: torch.Tensor, seg: torch.Tensor, lo: torch.Tensor,
                      delta: torch.Tensor) -> torch.Tensor:
        """c' ∈ [0, 2^m − 1] (integer-valued float64): the offset-binary code of every value.

        With `trunc`, a quotient within a few float64 ulps of an integer is that integer: x/(x/N)
        can land just below N, which would give a tensor's own range end the code below the end.
        """
        rnd = torch.round if self.rounding == "round" else _trunc_exact
        d = _gather(delta, seg)
        if self.mode == "asymmetric":
            return rnd((flat - _gather(lo, seg)) / d).clamp_(0, 2**self.bits - 1)
        return rnd(flat / d).clamp_(-self.top, self.top - 1).add_(self.top)

    def _table(self, lo: torch.Tensor, hi: torch.Tensor, delta: torch.Tensor,
               base: torch.Tensor) -> torch.Tensor:
        """T×256 float32: the dequantized value of every uint8 code (high bits ignored)."""
        c = torch.arange(256, device=lo.device) & (2**self.bits - 1)
        if self.mode == "symmetric_signed":
            c = c ^ self.top
        v = base[:, None] + c.to(torch.float64)[None, :] * delta[:, None]
        return torch.minimum(torch.maximum(v, lo[:, None]), hi[:, None]).to(torch.float32)

    def _flat(self, params: Mapping[str, torch.Tensor]) -> tuple[_Layout, torch.Tensor]:
        """The layout of `params` and all their values as one detached float64 vector."""
        layout = _Layout.of(params)
        flat = torch.cat([w.detach().reshape(-1).to(torch.float64) for w in params.values()])
        return layout, flat

    def _quantize_flat(self, layout: _Layout, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        seg = layout.segments(flat.device)
        lo, hi = self._ranges(flat, seg, len(layout.names))
        delta, base = self._affine(lo, hi)
        return self._offset_codes(flat, seg, lo, delta), lo, hi, delta, base

    # -- public API ----------------------------------------------------------------------
    def quantize(self, params: Mapping[str, torch.Tensor]) -> Quantized:
        """Quantize every tensor of `params` (floats) into one flat `uint8` code buffer."""
        layout, flat = self._flat(params)
        c, lo, hi, delta, base = self._quantize_flat(layout, flat)
        codes = c.to(torch.uint8)  # cast only after rounding and clamping
        if self.mode == "symmetric_signed":
            codes.bitwise_xor_(self.top)  # offset binary → two's complement
        return Quantized(self, list(layout.names), list(layout.shapes), list(layout.dtypes),
                         codes, lo, hi, delta, base)

    def _quantize_dequantize_flat(self, layout: _Layout, flat: torch.Tensor) -> torch.Tensor:
        c, lo, hi, delta, base = self._quantize_flat(layout, flat)
        seg = layout.segments(flat.device)
        v = _gather(base, seg) + c * _gather(delta, seg)  # as in the lookup table: equal values
        return torch.minimum(torch.maximum(v, _gather(lo, seg)), _gather(hi, seg)).to(torch.float32)

    def quantize_dequantize(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """dequantize(quantize(params)) without building codes (no gradient)."""
        layout, flat = self._flat(params)
        values = torch.split(self._quantize_dequantize_flat(layout, flat), layout.sizes)
        return {n: v.view(s).to(dt) for n, v, s, dt
                in zip(layout.names, values, layout.shapes, layout.dtypes)}

    def fake_quantize(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Straight-through view: values dequantize(quantize(w)), gradient identity to w.

        All tensors are processed as one flat vector: a fixed number of kernels per call.
        """
        layout, flat64 = self._flat(params)
        deq = self._quantize_dequantize_flat(layout, flat64)
        if len(set(layout.dtypes)) == 1:
            flat = torch.cat([w.reshape(-1) for w in params.values()])
            out = flat + (deq.to(flat.dtype) - flat).detach()
            return {n: v.view(s) for n, v, s in zip(layout.names, torch.split(out, layout.sizes),
                                                     layout.shapes)}
        values = torch.split(deq, layout.sizes)
        return {n: w + (v.view(w.shape).to(w.dtype) - w).detach()
                for (n, w), v in zip(params.items(), values)}


@dataclass(frozen=True)
class _Layout:
    """Names, shapes, dtypes and sizes of a parameter dict, and its segment index per device."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]
    sizes: tuple[int, ...]

    @staticmethod
    def of(params: Mapping[str, torch.Tensor]) -> _Layout:
        if not params:
            raise UserError("nothing to quantize: the model has no float parameters")
        for name, w in params.items():
            if not torch.is_floating_point(w):
                raise UserError(f"cannot quantize non-float tensor {name!r} ({w.dtype})")
        return _Layout(tuple(params), tuple(tuple(w.shape) for w in params.values()),
                       tuple(w.dtype for w in params.values()),
                       tuple(w.numel() for w in params.values()))

    def segments(self, device: torch.device) -> torch.Tensor:
        """int64 vector: the tensor index of every flat element (cached)."""
        key = (self.sizes, str(device))
        seg = _SEGMENTS.get(key)
        if seg is None:
            seg = torch.repeat_interleave(torch.arange(len(self.sizes), device=device),
                                          torch.tensor(self.sizes, device=device))
            if len(_SEGMENTS) >= 8:
                _SEGMENTS.pop(next(iter(_SEGMENTS)))
            _SEGMENTS[key] = seg
        return seg


_SEGMENTS: dict[tuple[tuple[int, ...], str], torch.Tensor] = {}


_SNAP_ULPS = 8  # a quotient of two float64 divisions is off by at most a few ulps


def _trunc_exact(v: torch.Tensor) -> torch.Tensor:
    """trunc toward zero, except that values within `_SNAP_ULPS` ulps of an integer snap to it."""
    r = torch.round(v)
    tol = _SNAP_ULPS * torch.finfo(v.dtype).eps * r.abs().clamp_min(1.0)
    return torch.where((v - r).abs() <= tol, r, torch.trunc(v))


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[index] for a 1-D `values` (index_select: several times faster on CPU)."""
    return torch.index_select(values, 0, index)


@dataclass
class Quantized:
    """All codes of a quantized parameter dict: a flat `uint8` buffer plus per-tensor ranges.

    Tensor t occupies `codes[offsets[t]:offsets[t] + sizes[t]]` (row-major). `lo`, `hi`,
    `delta`, `base` are float64 vectors with one entry per tensor.
    """

    scheme: Scheme
    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[torch.dtype]
    codes: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    delta: torch.Tensor
    base: torch.Tensor
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def sizes(self) -> list[int]:
        return [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    @property
    def offsets(self) -> list[int]:
        return [0, *np.cumsum(self.sizes)[:-1].tolist()]

    @property
    def numel(self) -> int:
        return int(self.codes.numel())

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def table(self) -> torch.Tensor:
        """T×256 float32 lookup table: dequantized value of each code of each tensor."""
        if "table" not in self._cache:
            self._cache["table"] = self.scheme._table(self.lo, self.hi, self.delta, self.base)
        return self._cache["table"]

    def _index_base(self) -> torch.Tensor:
        if "index" not in self._cache:
            layout = _Layout(tuple(self.names), tuple(self.shapes), tuple(self.dtypes),
                             tuple(self.sizes))
            self._cache["index"] = layout.segments(self.device) * 256
        return self._cache["index"]

    def to(self, device: torch.device | str) -> Quantized:
        return Quantized(self.scheme, list(self.names), list(self.shapes), list(self.dtypes),
                         self.codes.to(device), self.lo.to(device), self.hi.to(device),
                         self.delta.to(device), self.base.to(device))

    def split(self, codes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-tensor views (original shapes) of the flat `codes` (default: this model's)."""
        flat = self.codes if codes is None else codes
        return {n: c.view(s) for n, c, s in zip(self.names, torch.split(flat, self.sizes), self.shapes)}

    def dequantize_flat(self, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Flat float32 values of all tensors for the flat `codes` (default: unperturbed)."""
        flat = self.codes if codes is None else codes
        if flat.shape != self.codes.shape:
            raise ValueError(f"codes must have shape {tuple(self.codes.shape)}, got {tuple(flat.shape)}")
        return _gather(self.table.view(-1), self._index_base() + flat)

    def dequantize(self, codes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Dict name → float tensor (original shape and dtype) for the flat `codes`."""
        values = self.split(self.dequantize_flat(codes))
        return {n: v if v.dtype == dt else v.to(dt) for (n, v), dt in zip(values.items(), self.dtypes)}

    # -- export ----------------------------------------------------------------------------
    def export_npz(self, path: str | Path) -> Path:
        """Write the codes and ranges as an `.npz` an accelerator could load (no pickles).

        Keys: `code:<name>` (uint8, tensor shape), `lo`, `hi`, `delta`, `base` (float64, one
        per tensor in `names` order) and `meta` (a JSON string: format, scheme, names, shapes).
        Value of code c of tensor t: clamp(base[t] + c'·delta[t], lo[t], hi[t]) where c' = c,
        or c XOR 2^{m−1} for mode `symmetric_signed`.
        """
        from robustlab.io import atomic_write

        meta = {"format": NPZ_FORMAT, "scheme": self.scheme.to_dict(), "names": self.names,
                "shapes": [list(s) for s in self.shapes],
                "dtypes": [str(d).removeprefix("torch.") for d in self.dtypes],
                "dequantize": "clamp(base + c' * delta, lo, hi); c' = c, or c ^ 2**(bits-1) "
                              "for symmetric_signed"}
        arrays: dict[str, np.ndarray] = {
            f"code:{n}": c.cpu().numpy() for n, c in self.split().items()}
        for key in ("lo", "hi", "delta", "base"):
            arrays[key] = getattr(self, key).cpu().numpy()
        arrays["meta"] = np.array(json.dumps(meta))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        return atomic_write(path, write)

    @classmethod
    def load_npz(cls, path: str | Path, device: torch.device | str = "cpu") -> Quantized:
        """Read a file written by `export_npz` (never unpickles)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != NPZ_FORMAT:
                    raise UserError(f"{path}: not a robustlab quantized export "
                                    f"(format {meta.get('format')!r}, expected {NPZ_FORMAT!r})")
                codes = torch.cat([torch.from_numpy(z[f"code:{n}"].reshape(-1).copy())
                                   for n in meta["names"]])
                vec = {k: torch.from_numpy(z[k].copy()) for k in ("lo", "hi", "delta", "base")}
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"cannot read quantized export {path}: {e}") from None
        dtypes = [getattr(torch, d) for d in meta["dtypes"]]
        q = cls(Scheme.from_dict(meta["scheme"]), list(meta["names"]),
                [tuple(s) for s in meta["shapes"]], dtypes, codes, **vec)
        return q.to(device)


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of every uint8 / integer entry (its 8 low bits; int64).

    Example:
        >>> import torch, robustlab as rl
        >>> rl.quant.popcount(torch.tensor([0, 1, 3, 255], dtype=torch.uint8)).tolist()
        [0, 1, 2, 8]
    """
    x = x.long()
    out = torch.zeros_like(x)
    for j in range(8):
        out += (x >> j) & 1
    return out


def model_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's float parameters in module order (what gets quantized)."""
    return {n: p for n, p in model.named_parameters() if torch.is_floating_point(p)}


def quantize_model(model: torch.nn.Module, scheme: Scheme | None = None) -> Quantized:
    """Quantize every float parameter of `model` (weights, biases, norm affine parameters)."""
    with torch.no_grad():
        return (scheme or RQUANT8).quantize(model_params(model))


RQUANT8 = Scheme(8, per_tensor=True, mode="asymmetric", rounding="round")
RQUANT4 = dataclasses.replace(RQUANT8, bits=4)
NORMAL8 = Scheme(8, per_tensor=False, mode="symmetric_signed", rounding="trunc", q_max=1.0)

PRESETS: dict[str, Scheme] = {"rquant": RQUANT8, "normal": NORMAL8}


def parse(text: str) -> Scheme:
    """A scheme from a preset name with optional bit count and/or key=value overrides.

    Examples: `rquant8` (RQuant), `rquant4`, `normal8` (global ±1 symmetric signed, trunc),
    `rquant,bits=6,rounding=trunc`, `bits=8,per_tensor=false,mode=symmetric_unsigned,q_max=0.5`.
    """
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UserError("empty quantization scheme; try rquant8")
    fields: dict[str, Any] = {}
    if "=" not in parts[0]:
        m = re.fullmatch(r"([a-z_]+)(\d*)", parts.pop(0).lower())
        if not m or m.group(1) not in PRESETS:
            raise UserError(f"unknown quantization scheme {text!r}; use a preset "
                            f"({', '.join(f'{p}<bits>' for p in PRESETS)}) or key=value pairs")
        fields = PRESETS[m.group(1)].to_dict()
        if m.group(2):
            fields["bits"] = int(m.group(2))
    types = {f.name: f.type for f in dataclasses.fields(Scheme)}
    for p in parts:
        key, sep, val = p.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise UserError(f"bad quantization option {p!r}; use key=value with key in "
                            f"{', '.join(types)}")
        val = val.strip()
        try:
            if key == "bits":
                fields[key] = int(val)
            elif key == "q_max":
                fields[key] = float(val)
            elif key == "per_tensor":
                if val.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(val)
                fields[key] = val.lower() in ("true", "1", "yes")
            else:
                fields[key] = val
        except ValueError:
            raise UserError(f"bad value in quantization option {p!r}") from None
    return Scheme(**{**Scheme().to_dict(), **fields})
