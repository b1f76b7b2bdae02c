"""Quantization ranges (spec §5): per tensor means every tensor's own range, global means ±q_max."""

from __future__ import annotations

import itertools

import pytest
import torch

from robustlab import quant
from robustlab.quant import Scheme


def _params() -> dict[str, torch.Tensor]:
    # tensors with very different ranges, so a shared range is visible in every Δ
    return {"a": torch.tensor([-0.5, 0.1, 0.25, 0.3]), "b": torch.tensor([0.01, -0.02, 0.015]),
            "c": torch.tensor([[2.0, -1.0], [0.5, 1.5]])}


@pytest.mark.parametrize("bits,mode", list(itertools.product((2, 4, 8), quant.MODES)))
def test_per_tensor_ranges_are_each_tensors_own(bits: int, mode: str) -> None:
    p = _params()
    q = Scheme(bits, per_tensor=True, mode=mode, rounding="round").quantize(p)
    for t, w in enumerate(p.values()):
        w64 = w.double()
        if mode == "asymmetric":
            lo, hi = float(w64.min()), float(w64.max())
            delta = (hi - lo) / (2**bits - 1)
        else:
            hi = float(w64.abs().max())
            lo = -hi
            delta = hi / (2 ** (bits - 1) - 1)
        assert float(q.lo[t]) == pytest.approx(lo, rel=1e-12)
        assert float(q.hi[t]) == pytest.approx(hi, rel=1e-12)
        assert float(q.delta[t]) == pytest.approx(delta, rel=1e-12)
        # the tensor's extreme values are represented exactly (codes at the ends of the range)
        deq = q.dequantize()
        name = list(p)[t]
        i = int(w64.abs().argmax()) if mode != "asymmetric" else int(w64.argmax())
        assert float(deq[name].flatten()[i]) == pytest.approx(float(w.flatten()[i]), abs=1e-6)


@pytest.mark.parametrize("bits,mode", list(itertools.product((6, 8), quant.MODES)))
def test_global_range_is_plus_minus_q_max_for_every_tensor(bits: int, mode: str) -> None:
    p = _params()
    q_max = 0.75
    q = Scheme(bits, per_tensor=False, mode=mode, rounding="round", q_max=q_max).quantize(p)
    delta = 2 * q_max / (2**bits - 1) if mode == "asymmetric" else q_max / (2 ** (bits - 1) - 1)
    assert q.lo.tolist() == [-q_max] * 3 and q.hi.tolist() == [q_max] * 3
    assert torch.allclose(q.delta, torch.full((3,), delta, dtype=torch.float64), rtol=1e-12)
    # values beyond ±q_max saturate at the range's ends (clamped before the cast, never wrapped)
    deq = q.dequantize()
    assert float(deq["c"][0, 0]) == pytest.approx(q_max, abs=1e-6)  # 2.0 → q_max
    assert float(deq["c"][0, 1]) == pytest.approx(-q_max, abs=1e-6)  # -1.0 → -q_max


def test_offset_binary_codes_of_symmetric_unsigned() -> None:
    # symmetric unsigned: code = rnd(w/Δ) + 2^{m−1}, clamped to [0, 2^m − 1]; Δ = q_max/(2^{m−1}−1)
    w = torch.tensor([-1.0, -0.5, 0.0, 0.26, 0.5, 1.0, 3.0, -3.0])
    s = Scheme(4, per_tensor=False, mode="symmetric_unsigned", rounding="round", q_max=1.0)
    q = s.quantize({"w": w})
    d = 1.0 / 7
    expected = [max(0, min(15, round(v / d) + 8)) for v in w.tolist()]
    assert q.codes.tolist() == expected
    # signed stores the same values in two's complement: offset code XOR 2^{m−1}
    qs = Scheme(4, per_tensor=False, mode="symmetric_signed", rounding="round", q_max=1.0).quantize({"w": w})
    assert qs.codes.tolist() == [c ^ 8 for c in expected]
    assert torch.equal(qs.dequantize()["w"], q.dequantize()["w"])
