"""Quantization: exact codes, error bounds, two's complement, clamping, STE, export."""

import itertools

import numpy as np
import pytest
import torch

from robustlab import quant
from robustlab.errors import UserError
from robustlab.quant import NORMAL8, RQUANT8, Quantized, Scheme


def _params(seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": (scale * torch.randn(4, 3, 3, 3, generator=g)).clamp(-0.9, 0.9),
            "conv.bias": 0.05 * torch.randn(4, generator=g),
            "norm.weight": torch.zeros(4),  # a fresh 1+γ norm scale: constant tensor
            "fc.weight": (scale * torch.rand(10, 8, generator=g) - 0.1)}


ALL = [Scheme(bits, per_tensor, mode, rnd, q_max=1.0)
       for bits, per_tensor, mode, rnd in itertools.product(
           range(2, 9), (True, False), quant.MODES, quant.ROUNDINGS)]


@pytest.mark.parametrize("scheme", ALL, ids=str)
def test_codes_in_range_and_error_bound(scheme):
    p = _params()
    q = scheme.quantize(p)
    assert q.codes.dtype == torch.uint8 and q.codes.numel() == sum(v.numel() for v in p.values())
    assert int(q.codes.max()) <= 2**scheme.bits - 1
    deq = q.dequantize()
    for t, (name, w) in enumerate(p.items()):
        assert deq[name].shape == w.shape and deq[name].dtype == w.dtype
        err = (deq[name] - w).abs().max().item()
        delta = q.delta[t].item()
        bound = delta / 2 if scheme.rounding == "round" else delta
        assert err <= bound * (1 + 1e-6) + 1e-7, (name, err, delta)
        if scheme.per_tensor and w.abs().max() == 0:
            assert err == 0.0  # an empty per-tensor range is represented exactly
        # every dequantized value lies in the tensor's range
        assert deq[name].min() >= q.lo[t].item() - 1e-7 and deq[name].max() <= q.hi[t].item() + 1e-7
    # per-tensor path (used for the STE) agrees exactly with the flat table path
    qd = scheme.quantize_dequantize(p)
    assert all(torch.equal(qd[n], deq[n]) for n in p)


def test_asymmetric_closed_form_and_half_to_even():
    s = Scheme(2, mode="asymmetric", rounding="round")
    w = torch.tensor([0.0, 0.5, 1.5, 2.5, 3.0, 1.0])  # range [0, 3] → Δ = 1
    q = s.quantize({"w": w})
    assert q.delta.item() == 1.0
    assert q.codes.tolist() == [0, 0, 2, 2, 3, 1]  # 0.5 → 0 and 2.5 → 2: half to even
    assert q.dequantize()["w"].tolist() == [0.0, 0.0, 2.0, 2.0, 3.0, 1.0]


def test_symmetric_signed_is_twos_complement_and_unsigned_is_offset():
    w = torch.tensor([-3.0, -2.7, -1.0, 0.0, 2.7, 3.0])
    signed = Scheme(3, per_tensor=False, mode="symmetric_signed", rounding="trunc", q_max=3.0)
    q = signed.quantize({"w": w})  # Δ = 3/(2^2-1) = 1; trunc(-2.7) = -2 (toward zero)
    assert q.codes.tolist() == [0b101, 0b110, 0b111, 0, 2, 3]
    assert q.dequantize()["w"].tolist() == [-3.0, -2.0, -1.0, 0.0, 2.0, 3.0]
    unsigned = Scheme(3, per_tensor=False, mode="symmetric_unsigned", rounding="trunc", q_max=3.0)
    assert unsigned.quantize({"w": w}).codes.tolist() == [1, 2, 3, 4, 6, 7]
    rounded = Scheme(3, per_tensor=False, mode="symmetric_signed", rounding="round", q_max=3.0)
    assert rounded.quantize({"w": w}).codes.tolist() == [0b101, 0b101, 0b111, 0, 3, 3]


def test_cast_after_clamp_and_dequantization_clamps():
    # far outside the global range: must saturate, not wrap around in the uint8 cast
    w = torch.tensor([5.0, -5.0, 300.0, -300.0])
    for mode in quant.MODES:
        q = Scheme(8, per_tensor=False, mode=mode, q_max=1.0).quantize({"w": w})
        assert q.dequantize()["w"].tolist() == [1.0, -1.0, 1.0, -1.0]
    # the most negative two's complement code (-128 Δ) is outside [-q_max, q_max]: clamped
    q = NORMAL8.quantize({"w": torch.tensor([0.0])})
    assert q.dequantize(torch.tensor([128], dtype=torch.uint8))["w"].item() == -1.0
    assert q.dequantize(torch.tensor([127], dtype=torch.uint8))["w"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("scheme", [RQUANT8, Scheme(4), NORMAL8,
                                    Scheme(6, per_tensor=False, mode="symmetric_unsigned")], ids=str)
def test_single_bit_flip_moves_code_by_power_of_two(scheme):
    p = _params(1)
    q = scheme.quantize(p)
    m = scheme.bits
    codes = q.codes.to(torch.int64)
    for j in range(m):
        flipped = torch.bitwise_xor(q.codes, torch.tensor(1 << j, dtype=torch.uint8)).to(torch.int64)
        assert torch.equal((flipped - codes).abs(), torch.full_like(codes, 1 << j))
    # asymmetric: the dequantized value moves by exactly ±2^j Δ (within the range, no clamping)
    if scheme.mode == "asymmetric":
        t = q.names.index("conv.weight")
        table = q.table[t].double()
        for j in range(m):
            c = torch.arange(2**m)
            step = (table[c ^ (1 << j)] - table[c]).abs()
            assert torch.allclose(step, torch.full_like(step, (1 << j) * q.delta[t].item()),
                                  rtol=1e-5, atol=1e-7)


def test_constant_tensor_is_immune_and_high_bits_ignored():
    q = RQUANT8.quantize({"gamma": torch.zeros(5), "w": torch.tensor([-1.0, 1.0])})
    all_ones = torch.full_like(q.codes, 255)
    assert q.dequantize(all_ones)["gamma"].tolist() == [0.0] * 5
    q4 = Scheme(4).quantize({"w": torch.linspace(-1, 1, 16)})
    assert torch.equal(q4.dequantize_flat(q4.codes | 0xF0), q4.dequantize_flat())


def test_fake_quantize_straight_through():
    p = {k: v.clone().requires_grad_(True) for k, v in _params(2).items()}
    fq = RQUANT8.fake_quantize(p)
    deq = RQUANT8.quantize_dequantize(p)
    for n in p:
        assert torch.equal(fq[n].detach(), deq[n])
    upstream = {n: torch.randn(v.shape, generator=torch.Generator().manual_seed(3)) for n, v in p.items()}
    loss = sum((fq[n] * upstream[n]).sum() for n in p)
    loss.backward()
    for n in p:
        assert torch.equal(p[n].grad, upstream[n])  # identity gradient


def test_dtypes_preserved_and_partial():
    p = {"a": torch.linspace(-1, 1, 7, dtype=torch.float64), "b": torch.linspace(0, 1, 3)}
    q = RQUANT8.quantize(p)
    d = q.dequantize()
    assert d["a"].dtype == torch.float64 and d["b"].dtype == torch.float32
    assert q.sizes == [7, 3] and q.offsets == [0, 7]
    assert torch.equal(q.split()["a"], q.codes[:7])
    with pytest.raises(UserError, match="non-float"):
        RQUANT8.quantize({"i": torch.arange(3)})


def test_export_npz_roundtrip_and_documented_formula(tmp_path):
    for scheme in (RQUANT8, NORMAL8, Scheme(5, per_tensor=False, mode="symmetric_unsigned")):
        q = scheme.quantize(_params(4))
        path = q.export_npz(tmp_path / "codes.npz")
        back = Quantized.load_npz(path)
        assert back.scheme == scheme and back.names == q.names and back.shapes == q.shapes
        assert torch.equal(back.codes, q.codes)
        for n, v in q.dequantize().items():
            assert torch.equal(back.dequantize()[n], v)
        # what an accelerator does with the file: integer codes plus per-tensor ranges, no torch
        with np.load(path, allow_pickle=False) as z:
            for t, name in enumerate(q.names):
                c = z[f"code:{name}"].astype(np.int64)
                assert z[f"code:{name}"].dtype == np.uint8
                if scheme.mode == "symmetric_signed":
                    c = c ^ (1 << (scheme.bits - 1))
                w = np.clip(z["base"][t] + c * z["delta"][t], z["lo"][t], z["hi"][t])
                np.testing.assert_allclose(w, q.dequantize()[name].numpy(), rtol=1e-6, atol=1e-7)


def test_load_npz_rejects_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", meta=np.array('{"format": "other"}'))
    with pytest.raises(UserError, match="not a robustlab quantized export"):
        Quantized.load_npz(tmp_path / "x.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read"):
        Quantized.load_npz(tmp_path / "bad.npz")


def test_scheme_validation_parse_and_dict():
    for bad in (dict(bits=1), dict(bits=9), dict(bits=8.0), dict(mode="log"),
                dict(rounding="floor"), dict(per_tensor=False, q_max=0.0),
                dict(per_tensor=False, q_max=-1.0)):
        with pytest.raises(UserError):
            Scheme(**bad)
    assert quant.parse("rquant8") == RQUANT8
    assert quant.parse("rquant4") == quant.RQUANT4 == Scheme(4)
    assert quant.parse("normal8") == NORMAL8
    assert quant.parse("normal,bits=6,rounding=round") == Scheme(6, False, "symmetric_signed", "round")
    assert quant.parse("bits=3,per_tensor=false,mode=symmetric_unsigned,q_max=0.5") == Scheme(
        3, False, "symmetric_unsigned", "round", 0.5)
    for bad in ("rquant9", "rquant1", "fancy8", "", "rquant,colour=red", "bits=x", "per_tensor=maybe"):
        with pytest.raises(UserError):
            quant.parse(bad)
    for s in ALL[:10]:
        assert Scheme.from_dict(s.to_dict()) == s
    with pytest.raises(UserError, match="unknown quantization field"):
        Scheme.from_dict({"bits": 8, "colour": 1})


def test_quantize_model_covers_every_parameter():
    from robustlab import models

    model = models.create("convnet", in_shape=(1, 8, 8), num_classes=4, norm="bn", width=4)
    q = quant.quantize_model(model)
    names = [n for n, _ in model.named_parameters()]
    assert q.names == names  # weights, biases and norm affine parameters, in module order
    assert any(n.endswith(".weight") and "norm" not in n for n in names)


# ---- issue 11: trunc is exact at the range ends; q_max is always checked ---------------------

END_CASES = [("asymmetric", True), ("symmetric_signed", True), ("symmetric_unsigned", True),
             ("asymmetric", False), ("symmetric_signed", False), ("symmetric_unsigned", False)]


@pytest.mark.parametrize("rounding", quant.ROUNDINGS)
@pytest.mark.parametrize("mode,per_tensor", END_CASES)
def test_trunc_hits_both_end_codes_exactly(mode, per_tensor, rounding):
    """2000 random tensors (quantized together, each with its own range): each tensor's range ends
    get the end codes and dequantize back to themselves exactly, with trunc as with round
    (x/(x/N) can land just below N in floating point)."""
    g = torch.Generator().manual_seed(11)
    m, top = 8, 2**8 - 1  # offset binary: asymmetric 0..2^m−1, symmetric ±(2^{m−1}−1) → 1..2^m−1
    bottom = 0 if mode == "asymmetric" else 1
    q_max = 0.8 if not per_tensor else 1.0
    params, ends = {}, {}
    for t in range(2000):
        w = torch.randn(int(torch.randint(2, 40, (1,), generator=g)), generator=g)
        w = w * float(torch.rand(1, generator=g) * 3 + 1e-3)
        if not per_tensor:
            w = w.clamp(-q_max, q_max)
            w[0], w[1] = q_max, -q_max
        elif mode != "asymmetric":  # both ends of [−max|w|, max|w|] present
            w[0], w[1] = w.abs().max(), -w.abs().max()
        params[f"t{t}"] = w
        ends[f"t{t}"] = (int(torch.argmin(w)), int(torch.argmax(w)))
    s = Scheme(m, per_tensor=per_tensor, mode=mode, rounding=rounding, q_max=q_max)
    q = s.quantize(params)
    deq = q.dequantize()
    bad = []
    for name, c in q.split().items():
        c = c.long() ^ (1 << (m - 1)) if mode == "symmetric_signed" else c.long()
        i_lo, i_hi = ends[name]
        w = params[name]
        if (int(c[i_lo]), int(c[i_hi])) != (bottom, top) or deq[name][i_lo] != w[i_lo] \
                or deq[name][i_hi] != w[i_hi]:
            bad.append((name, int(c[i_lo]), int(c[i_hi])))
    assert bad == [], f"{len(bad)} of 2000 tensors miss an end code: {bad[:3]}"


def test_trunc_issue_example():
    q = Scheme(8, mode="symmetric_signed", rounding="trunc").quantize({"w": torch.tensor([0.8, -0.8])})
    assert q.codes.tolist() == [127, 129]
    assert q.dequantize()["w"].tolist() == torch.tensor([0.8, -0.8]).tolist()


def test_trunc_still_truncates_inside_the_range():
    s = Scheme(8, mode="symmetric_signed", rounding="trunc")
    w = torch.tensor([1.0, 0.5 + 1e-3, -0.5 - 1e-3, 0.999 / 127])
    c = s.quantize({"w": w}).codes.to(torch.int8).tolist()  # two's complement
    assert c == [127, 63, -63, 0]  # 63.6 → 63, −63.6 → −63, 0.999 → 0 (toward zero)


@pytest.mark.parametrize("text", ["rquant8,q_max=nan", "rquant8,q_max=inf", "rquant8,q_max=-1",
                                  "normal8,q_max=0", "bits=8,per_tensor=false,q_max=nan"])
def test_q_max_must_be_finite_positive_even_per_tensor(text):
    with pytest.raises(UserError, match="q_max"):
        quant.parse(text)


def test_biterrors_overhead_ratio_uses_a_warm_median(monkeypatch):
    """`overhead_ratio`'s unit is the median of warm clean forwards, not the cold first one."""
    from robustlab.data import synthetic
    from robustlab.evaluate import biterrors as ev_mod
    from robustlab.models import create

    train, test = synthetic(64, 32, shape=(1, 8, 8), num_classes=4, seed=0)
    model = create("mlp", dataset=train, seed=0)
    times = iter([10.0, 3.0, 1.0, 2.0])  # cold, then three warm passes
    real = ev_mod.Evaluator.timed_wrong

    def fake(self, params):
        w, _ = real(self, params)
        return w, next(times)

    monkeypatch.setattr(ev_mod.Evaluator, "timed_wrong", fake)
    res = ev_mod.bit_errors(model, test, rates=[0.01], patterns=2, device="cpu", progress=False)
    t = res["timing"]
    assert t["clean_forward_cold_s"] == 10.0 and t["clean_forward_s"] == 2.0
    assert t["overhead_ratio"] == t["total_s"] / (2 * 1 * 2.0)
