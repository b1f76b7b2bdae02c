"""Seeded random bit error patterns, profiled chip maps and the voltage/energy model (spec §6).

**Patterns.** Bits are addressed by a counter: bit j (0 = least significant) of weight i of the
flat code buffer of `robustlab.quant.Quantized` (tensors concatenated in parameter-dict order,
i.e. module order for `model.named_parameters()`) has counter 8·i + j. A pattern is a seed; bit
(i, j) gets the uniform number u = H(seed, 8·i + j) / 2^32 from a counter-based integer hash H
and flips at rate p iff u < p (only j < m, the m low bits of an m-bit code). Consequently:

- patterns are nested across rates (p′ < p ⇒ flips at p′ ⊆ flips at p);
- every model whose parameters have the same shapes in the same order sees the same pattern,
  and an m-bit model sees the low m bits of the 8-bit pattern;
- H uses only exact 64-bit integer arithmetic, so CPU and GPU give identical patterns;
- masks are generated in fixed-size chunks on the codes' device: memory does not depend on the
  number of patterns.

Injection is `codes ^ mask`, then `Quantized.dequantize`.

**Chip maps** (`ChipMap`, file formats in `robustlab/examples/README.md`) give each memory cell of
a rows × cols array a flip probability and/or a stuck-at value. Bit (i, j) of an m-bit model is
stored in cell (offset + m·i + j) mod (rows·cols), row-major; a sample with seed s flips it iff
H(s, 8·i + j)/2^32 < flip_prob[cell] (so a uniform map at p reproduces the random pattern at p),
then stuck cells force their value.

**Energy curves** (`EnergyCurve`) map supply voltage to bit error rate and relative energy per
access; `safe_voltage` picks the lowest voltage whose robust error stays within a tolerance.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustlab.errors import UserError
from robustlab.quant import Quantized

M32 = 0xFFFFFFFF
_C1, _C2 = 0x21F0AAAD, 0x735A2D97  # odd multipliers < 2^31: products stay below 2^63
CHUNK_CPU = 1 << 16  # weights per generation chunk on CPU (a power of two ≤ 2^29)
CHUNK_GPU = 1 << 20
CHIP_FORMAT = "robustlab-chip-map-v1"
EXAMPLES = Path(__file__).parent / "examples"


def example(name: str) -> Path:
    """Path of a shipped (synthetic) example file, e.g. `example("synthetic_chip_map.json")`."""
    path = EXAMPLES / name
    if not path.is_file():
        have = ", ".join(sorted(p.name for p in EXAMPLES.iterdir() if p.suffix != ".md"))
        raise UserError(f"no example {name!r}; available: {have}")
    return path


def _mix_int(x: int) -> int:
    """The 32-bit mixing function H on a Python int (for keys)."""
    x &= M32
    x ^= x >> 16
    x = (x * _C1) & M32
    x ^= x >> 15
    x = (x * _C2) & M32
    x ^= x >> 15
    return x


def _mix_(x: torch.Tensor, tmp: torch.Tensor | None = None) -> torch.Tensor:
    """H in place on an int64 tensor with values in [0, 2^32); `tmp` is scratch of x's shape."""
    tmp = torch.empty_like(x) if tmp is None else tmp
    x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=tmp))
    x.mul_(_C1).bitwise_and_(M32)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 15, out=tmp))
    x.mul_(_C2).bitwise_and_(M32)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 15, out=tmp))
    return x


def check_seed(seed: int) -> int:
    seed = int(seed)
    if not 0 <= seed < 2**63:
        raise UserError(f"bit error seed {seed} must be in [0, 2^63)")
    return seed


def _keys(seed: int) -> tuple[int, int]:
    seed = check_seed(seed)
    k1 = _mix_int(_mix_int(seed & M32) ^ (seed >> 32) ^ 0x9E3779B9)
    return k1, _mix_int(k1 ^ 0x85EBCA6B)


def hash_counters(seed: int, counters: torch.Tensor) -> torch.Tensor:
    """H(seed, c) ∈ [0, 2^32) (int64) for int64 counters c ≥ 0 — the uniform numbers × 2^32."""
    k1, k2 = _keys(seed)
    x = (counters & M32) ^ k1
    hk = _mix_((counters >> 32).add_(k2).bitwise_and_(M32))
    return _mix_(_mix_(x).bitwise_xor_(hk))


def default_chunk(device: torch.device | str) -> int:
    """Weights per generation chunk: cache-sized on CPU, large on accelerators."""
    return CHUNK_CPU if torch.device(device).type == "cpu" else CHUNK_GPU


def _chunks(numel: int, bits: int, seed: int, device: torch.device, chunk: int | None
            ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (start, stop, h), h[j, k] = H(seed, 8·(start+k) + j) for j < bits (bits × n int64).

    `h` is a reused buffer: consume it before advancing. Results do not depend on `chunk`.
    """
    chunk = default_chunk(device) if chunk is None else int(chunk)
    if chunk & (chunk - 1) or not 0 < chunk <= 1 << 29:
        raise ValueError("chunk must be a power of two ≤ 2^29")
    chunk = min(chunk, max(1, 1 << max(0, numel - 1).bit_length()))
    k1, k2 = _keys(seed)
    j = torch.arange(bits, dtype=torch.int64, device=device)[:, None]
    ramp = torch.arange(chunk, dtype=torch.int64, device=device)[None, :] << 3
    buf = torch.empty(bits * chunk, dtype=torch.int64, device=device)
    tmp = torch.empty_like(buf)
    for start in range(0, numel, chunk):
        n = min(numel, start + chunk) - start
        h, t = buf[:bits * n].view(bits, n), tmp[:bits * n].view(bits, n)
        torch.add(ramp[:, :n], j + (start << 3), out=h)
        hk = _mix_int(((start << 3) >> 32) + k2)  # constant within an aligned chunk
        h.bitwise_and_(M32).bitwise_xor_(k1)
        yield start, start + n, _mix_(_mix_(h, t).bitwise_xor_(hk), t)


def threshold(rate: float) -> int:
    """Integer threshold t with u < p ⇔ H < t (t = ⌈p·2^32⌉)."""
    rate = check_rate(rate)
    return math.ceil(rate * 2.0**32)


def check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:  # also rejects nan
        raise UserError(f"bit error rate {rate!r} must be in [0, 1]")
    return rate


def random_masks(numel: int, bits: int, seed: int, rates: Sequence[float], *,
                 device: torch.device | str = "cpu", chunk: int | None = None) -> torch.Tensor:
    """R×numel `uint8` XOR masks of pattern `seed` at each rate (only the `bits` low bits)."""
    if not 1 <= bits <= 8:
        raise UserError(f"bits {bits} must be in 1..8")
    thr = [threshold(r) for r in rates]
    device = torch.device(device)
    out = torch.empty(len(thr), numel, dtype=torch.uint8, device=device)
    shifts = torch.arange(bits, dtype=torch.uint8, device=device)[:, None]
    flags = torch.empty(bits * min(numel, default_chunk(device) if chunk is None else chunk),
                        dtype=torch.bool, device=device)
    for start, stop, h in _chunks(numel, bits, seed, device, chunk):
        fl = flags[:h.numel()].view(h.shape)
        f8 = fl.view(torch.uint8)
        for r, t in enumerate(thr):
            torch.lt(h, t, out=fl)
            f8.bitwise_left_shift_(shifts)
            torch.sum(f8, 0, dtype=torch.uint8, out=out[r, start:stop])
    return out


def masks(q: Quantized, seed: int, rates: Sequence[float], *,
          chunk: int | None = None) -> torch.Tensor:
    """R×numel XOR masks for the codes of `q` (on its device), one row per rate."""
    return random_masks(q.numel, q.scheme.bits, seed, rates, device=q.device, chunk=chunk)


def mask(q: Quantized, seed: int, rate: float) -> torch.Tensor:
    """The flat XOR mask of pattern `seed` at `rate` for the codes of `q`."""
    return masks(q, seed, [rate])[0]


def inject(codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip bits: codes XOR mask (a new tensor)."""
    return torch.bitwise_xor(codes, mask)


def perturb(q: Quantized, seed: int, rate: float) -> dict[str, torch.Tensor]:
    """Dequantized parameters of `q` with random pattern `seed` injected at `rate`."""
    return q.dequantize(inject(q.codes, mask(q, seed, rate)))


# ---------------------------------------------------------------------------------------------
# profiled chips


@dataclass
class ChipMap:
    """Per-cell behaviour of a rows × cols memory array at one supply voltage.

    `flip_prob[r, c]` ∈ [0, 1]: probability that a bit stored in the cell reads flipped;
    `stuck[r, c]` ∈ {−1, 0, 1}: −1 = not stuck, else the value the cell always reads.
    """

    flip_prob: torch.Tensor  # rows×cols float64
    stuck: torch.Tensor  # rows×cols int8
    voltage: float | None = None
    name: str = ""
    description: str = ""

    @property
    def rows(self) -> int:
        return int(self.flip_prob.shape[0])

    @property
    def cols(self) -> int:
        return int(self.flip_prob.shape[1])

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    def summary(self) -> dict[str, Any]:
        stuck = self.stuck >= 0
        return {"name": self.name, "voltage": self.voltage, "rows": self.rows, "cols": self.cols,
                "mean_flip_prob": float(self.flip_prob[~stuck].mean()) if (~stuck).any() else 0.0,
                "stuck_fraction": float(stuck.double().mean()),
                "stuck_at_0": int((self.stuck == 0).sum()), "stuck_at_1": int((self.stuck == 1).sum()),
                "description": self.description}

    def apply(self, q: Quantized, seed: int, offset: int = 0, *,
              codes: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
        """Flat codes of `q` (or `codes`) as read back from this chip with sample `seed`.

        Weights are laid out linearly: bit j of weight i sits in cell (offset + m·i + j) mod
        (rows·cols), row-major; flips use the same uniform numbers as random patterns.
        """
        if int(offset) < 0:
            raise UserError(f"chip offset {offset} must be ≥ 0")
        m, device = q.scheme.bits, q.device
        base = (q.codes if codes is None else codes).clone()
        thr = torch.ceil(self.flip_prob.reshape(-1) * 2.0**32).to(torch.int64).to(device)
        stuck = self.stuck.reshape(-1).to(device)
        j = torch.arange(m, dtype=torch.int64, device=device)[:, None]
        shifts = torch.arange(m, dtype=torch.uint8, device=device)[:, None]
        for start, stop, h in _chunks(q.numel, m, seed, device, chunk):
            i = torch.arange(start, stop, dtype=torch.int64, device=device)[None, :]
            cell = (int(offset) + i * m + j) % self.cells
            st = stuck[cell]
            flip = ((h < thr[cell]) & (st < 0)).to(torch.uint8)
            xor = (flip << shifts).sum(0, dtype=torch.uint8)
            force1 = ((st == 1).to(torch.uint8) << shifts).sum(0, dtype=torch.uint8)
            force0 = ((st == 0).to(torch.uint8) << shifts).sum(0, dtype=torch.uint8)
            seg = base[start:stop]
            seg.bitwise_xor_(xor).bitwise_and_(~force0).bitwise_or_(force1)
        return base


def _chip_error(path: Path, msg: str) -> UserError:
    return UserError(f"chip map {path}: {msg}")


def load_chip_map(path: str | Path) -> ChipMap:
    """Read a chip map from `.json` or `.npz` (format: robustlab/examples/README.md)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"chip map {path} not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                d: dict[str, Any] = {k: z[k] for k in z.files}
            for k in ("name", "description", "format"):
                if k in d:
                    d[k] = str(d[k])
            if "voltage" in d:
                d["voltage"] = float(d["voltage"])
            for k in ("rows", "cols"):
                if k in d:
                    d[k] = int(d[k])
        elif path.suffix == ".json":
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
            if not isinstance(d, dict):
                raise _chip_error(path, "the top level must be a JSON object")
        else:
            raise _chip_error(path, f"unknown extension {path.suffix!r}; use .json or .npz")
    except (OSError, ValueError) as e:
        raise _chip_error(path, f"cannot parse ({e})") from None
    return chip_map_from_dict(d, path)


def chip_map_from_dict(d: dict[str, Any], path: str | Path = "<dict>") -> ChipMap:
    """Validate the fields of a chip map (see the file format) and build a `ChipMap`."""
    path = Path(path)
    fmt = d.get("format", CHIP_FORMAT)
    if fmt != CHIP_FORMAT:
        raise _chip_error(path, f"format {fmt!r} is not {CHIP_FORMAT!r}")
    known = {"format", "name", "description", "synthetic", "voltage", "rows", "cols",
             "flip_prob", "stuck", "stuck_cells"}
    bad = sorted(set(d) - known)
    if bad:
        raise _chip_error(path, f"unknown field {bad[0]!r}; allowed: {', '.join(sorted(known))}")
    if "flip_prob" not in d and "stuck" not in d and "stuck_cells" not in d:
        raise _chip_error(path, "needs flip_prob and/or stuck or stuck_cells")
    try:
        fp = np.asarray(d.get("flip_prob", 0.0), dtype=np.float64)
        st = np.asarray(d["stuck"], dtype=np.float64) if "stuck" in d else None
    except (TypeError, ValueError):
        raise _chip_error(path, "flip_prob and stuck must be numbers or rows×cols arrays") from None
    shape = None
    for arr, key in ((fp, "flip_prob"), (st, "stuck")):
        if arr is not None and arr.ndim == 2:
            if shape is not None and arr.shape != shape:
                raise _chip_error(path, f"{key} has shape {arr.shape}, flip_prob has {shape}")
            shape = arr.shape
        elif arr is not None and arr.ndim != 0:
            raise _chip_error(path, f"{key} must be a number or a rows×cols array, got {arr.ndim}-D")
    if "rows" in d or "cols" in d:
        try:
            rc = (int(d["rows"]), int(d["cols"]))
        except (KeyError, TypeError, ValueError):
            raise _chip_error(path, "rows and cols must both be integers") from None
        if shape is not None and rc != shape:
            raise _chip_error(path, f"rows×cols {rc[0]}×{rc[1]} does not match the arrays' {shape}")
        shape = rc
    if shape is None:
        raise _chip_error(path, "give rows and cols (or rows×cols arrays)")
    if shape[0] < 1 or shape[1] < 1:
        raise _chip_error(path, f"rows×cols {shape[0]}×{shape[1]} must be positive")
    fp = np.broadcast_to(fp, shape)
    if not np.all((fp >= 0) & (fp <= 1)):
        raise _chip_error(path, "flip_prob values must be in [0, 1]")
    stuck = np.full(shape, -1, dtype=np.int8)
    if st is not None:
        st = np.broadcast_to(st, shape)
        if not np.all(np.isin(st, (-1, 0, 1))):
            raise _chip_error(path, "stuck values must be -1 (not stuck), 0 or 1")
        stuck[...] = st
    for cell in d.get("stuck_cells", []) or []:
        try:
            r, c, v = (int(x) for x in cell)
        except (TypeError, ValueError):
            raise _chip_error(path, f"stuck_cells entry {cell!r} must be [row, col, value]") from None
        if not (0 <= r < shape[0] and 0 <= c < shape[1] and v in (0, 1)):
            raise _chip_error(path, f"stuck_cells entry {cell!r} outside {shape[0]}×{shape[1]} "
                              "or value not 0/1")
        stuck[r, c] = v
    volt = d.get("voltage")
    if volt is not None:
        try:
            volt = float(volt)
        except (TypeError, ValueError):
            raise _chip_error(path, f"voltage {volt!r} must be a number") from None
    return ChipMap(torch.tensor(np.ascontiguousarray(fp)), torch.from_numpy(stuck), volt,
                   str(d.get("name", path.stem)), str(d.get("description", "")))


# ---------------------------------------------------------------------------------------------
# energy


@dataclass
class EnergyCurve:
    """Supply voltage → (bit error rate, energy per access relative to the nominal voltage).

    Rows are sorted by decreasing voltage; the first row is the nominal operating point.
    """

    voltage: list[float]
    bit_error_rate: list[float]
    energy: list[float]
    description: str = ""

    def relative_energy(self, i: int) -> float:
        return self.energy[i] / self.energy[0]


def load_curve(path: str | Path) -> EnergyCurve:
    """Read a CSV curve: header `voltage,bit_error_rate,energy`, `#` comment lines."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"energy curve {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"energy curve {path}: cannot read ({e})") from None
    comments = [ln.lstrip("#").strip() for ln in text.splitlines() if ln.lstrip().startswith("#")]
    rows = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.reader(rows)
    header = [h.strip() for h in next(reader, [])]
    need = ["voltage", "bit_error_rate", "energy"]
    if any(h not in header for h in need):
        raise UserError(f"energy curve {path}: header must name columns {','.join(need)}, "
                        f"got {','.join(header) or 'nothing'}")
    col = {h: header.index(h) for h in need}
    pts: list[tuple[float, float, float]] = []
    for n, rec in enumerate(reader, start=2):
        try:
            v, p, e = (float(rec[col[h]]) for h in need)
        except (IndexError, ValueError):
            raise UserError(f"energy curve {path}: data row {n} {','.join(rec)!r} is not "
                            "three numbers") from None
        if not (math.isfinite(v) and v > 0):
            raise UserError(f"energy curve {path}: voltage {v} in row {n} must be > 0")
        if not 0 <= p <= 1:
            raise UserError(f"energy curve {path}: bit_error_rate {p} in row {n} must be in [0, 1]")
        if not (math.isfinite(e) and e > 0):
            raise UserError(f"energy curve {path}: energy {e} in row {n} must be > 0")
        pts.append((v, p, e))
    if not pts:
        raise UserError(f"energy curve {path}: no data rows")
    pts.sort(key=lambda t: -t[0])
    if len({v for v, _, _ in pts}) != len(pts):
        raise UserError(f"energy curve {path}: voltages must be distinct")
    return EnergyCurve([v for v, _, _ in pts], [p for _, p, _ in pts], [e for _, _, e in pts],
                       " ".join(comments))


def safe_voltage(curve: EnergyCurve, rerr: Sequence[float], clean_err: float,
                 tolerance: float) -> dict[str, Any]:
    """Lowest voltage v such that RErr ≤ clean Err + tolerance at v and at every higher voltage.

    `rerr[i]` is the (mean) robust error at `curve.voltage[i]`, errors and tolerance are fractions.
    Returns the index (None if even the nominal voltage fails), voltage and energy saved
    (1 − E(v)/E(nominal)).
    """
    if tolerance < 0:
        raise UserError(f"tolerance {tolerance} must be ≥ 0")
    ok = [r <= clean_err + tolerance + 1e-12 for r in rerr]
    idx = None
    for i, good in enumerate(ok):
        if not good:
            break
        idx = i
    out: dict[str, Any] = {"safe": ok, "index": idx}
    if idx is None:
        out.update(voltage=None, bit_error_rate=None, relative_energy=None, energy_saved=0.0)
    else:
        rel = curve.relative_energy(idx)
        out.update(voltage=curve.voltage[idx], bit_error_rate=curve.bit_error_rate[idx],
                   relative_energy=rel, energy_saved=1.0 - rel)
    return out
