"""Bit error patterns: rate, nesting, reproducibility across models and devices; chip maps."""

import json
import math

import pytest
import torch
from torch import nn

from robustlab import biterrors as be
from robustlab.errors import UserError
from robustlab.quant import RQUANT8, Scheme


def _bits(mask: torch.Tensor, m: int = 8) -> torch.Tensor:
    """numel × m 0/1 matrix of the mask's bits (bit 0 first)."""
    return (mask.to(torch.int64)[:, None] >> torch.arange(m)) & 1


def _ref_hash(seed: int, c: int) -> int:
    """Pure-Python reference of the counter hash (exact integer arithmetic)."""
    k1, k2 = be._keys(seed)
    return be._mix_int(be._mix_int((c & be.M32) ^ k1) ^ be._mix_int((c >> 32) + k2))


def test_hash_matches_pure_python_reference():
    g = torch.Generator().manual_seed(0)
    counters = torch.cat([torch.arange(20), torch.randint(0, 2**40, (200,), generator=g),
                          torch.tensor([2**32 - 1, 2**32, 2**32 + 7, 2**62])])
    for seed in (0, 1, 100, 2**40 + 3):
        h = be.hash_counters(seed, counters)
        assert h.tolist() == [_ref_hash(seed, int(c)) for c in counters]
        assert int(h.min()) >= 0 and int(h.max()) < 2**32
    # pinned values: patterns must not change between versions or machines
    assert be.hash_counters(100, torch.arange(4)).tolist() == [_ref_hash(100, c) for c in range(4)]
    # the chunked generator addresses bit j of weight i with counter 8i + j
    h = torch.cat([h.clone() for _, _, h in be._chunks(300, 8, 7, torch.device("cpu"), 64)], 1)
    c = torch.arange(300)[None, :] * 8 + torch.arange(8)[:, None]
    assert torch.equal(h, be.hash_counters(7, c))


def test_masks_follow_their_definition_exactly():
    n, seed, p = 500, 123, 0.2
    mask = be.random_masks(n, 8, seed, [p])[0]
    c = torch.arange(n)[:, None] * 8 + torch.arange(8)
    u = be.hash_counters(seed, c).double() / 2**32
    assert torch.equal(_bits(mask), (u < p).to(torch.int64))


@pytest.mark.parametrize("p", [0.001, 0.01, 0.1, 0.5])
def test_flip_rate_within_binomial_tolerance(p):
    n = 100_000
    mask = be.random_masks(n, 8, 100, [p])[0]
    bits = _bits(mask)
    total = n * 8
    k = int(bits.sum())
    assert abs(k - p * total) <= 5 * math.sqrt(total * p * (1 - p))
    for j in range(8):  # every bit position flips at rate p
        kj = int(bits[:, j].sum())
        assert abs(kj - p * n) <= 5 * math.sqrt(n * p * (1 - p))


def test_rate_zero_one_and_low_bits_only():
    m0, m1 = be.random_masks(1000, 8, 5, [0.0, 1.0])
    assert int(m0.max()) == 0 and bool((m1 == 255).all())
    for bits in (2, 4, 7):
        mb = be.random_masks(5000, bits, 5, [0.3])[0]
        assert int(mb.max()) <= 2**bits - 1
        assert bool((be.random_masks(5000, bits, 5, [1.0]) == 2**bits - 1).all())
        # an m-bit model sees the low m bits of the 8-bit pattern
        assert torch.equal(mb, be.random_masks(5000, 8, 5, [0.3])[0] & (2**bits - 1))


def test_nested_across_rates():
    rates = [0.0001, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5]
    ms = be.random_masks(20_000, 8, 9, rates)
    for small, big in zip(ms[:-1], ms[1:]):
        assert int((small & ~big).sum()) == 0  # p′ < p ⇒ flips at p′ ⊆ flips at p
        assert int(small.ne(0).sum()) <= int(big.ne(0).sum())
    # the multi-rate call equals single-rate calls
    for r, p in enumerate(rates):
        assert torch.equal(ms[r], be.random_masks(20_000, 8, 9, [p])[0])


def test_single_rate_mask_is_nested_across_rates():
    # RandBET and `perturb` use the single-rate `mask()`: its pattern at p′ < p must be a subset
    # of the one at p, and equal the row of the multi-rate call
    from robustlab.quant import quantize_model

    q = quantize_model(_NetA(0))
    rates = [0.001, 0.01, 0.05, 0.1, 0.3, 0.6]
    ms = [be.mask(q, 7, p) for p in rates]
    for small, big in zip(ms[:-1], ms[1:]):
        assert int((small & ~big).sum()) == 0
        assert int(small.ne(0).sum()) < int(big.ne(0).sum())
    assert torch.equal(torch.stack(ms), be.masks(q, 7, rates))
    assert torch.equal(ms[3], be.random_masks(q.numel, q.scheme.bits, 7, [0.1])[0])
    # and `perturb` injects exactly that mask
    pert = be.perturb(q, 7, 0.1)
    ref = q.dequantize(be.inject(q.codes, ms[3]))
    assert all(torch.equal(pert[k], v) for k, v in ref.items())


def test_threshold_is_exact_u_less_than_p():
    # a bit flips iff u = H/2^32 < p, i.e. iff H < t: t is the smallest integer with t/2^32 ≥ p
    for p in (0.0, 1e-9, 0.001, 0.1, 0.2, 1 / 3, 0.5, 0.999999, 1.0):
        t = be.threshold(p)
        assert (t - 1) / 2**32 < p <= t / 2**32 or (p == 0.0 and t == 0), p


def test_independent_of_chunking_and_seeds_independent():
    a = be.random_masks(70_000, 8, 3, [0.01, 0.3], chunk=1024)
    b = be.random_masks(70_000, 8, 3, [0.01, 0.3], chunk=1 << 20)
    assert torch.equal(a, b)
    p = 0.3
    x, y = _bits(be.random_masks(70_000, 8, 3, [p])[0]), _bits(be.random_masks(70_000, 8, 4, [p])[0])
    total = x.numel()
    both = int((x & y).sum())  # independent patterns overlap at rate p²
    assert abs(both - p * p * total) <= 5 * math.sqrt(total * p * p * (1 - p * p))


class _NetA(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class _NetB(nn.Module):  # other names, same parameter shapes in the same order
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(6, 5)
        self.second = nn.Linear(5, 3)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


def test_same_seed_same_pattern_on_models_with_equal_shapes():
    from robustlab.quant import quantize_model

    qs = [quantize_model(m) for m in (_NetA(0), _NetA(1), _NetB())]
    assert not torch.equal(qs[0].codes, qs[1].codes)
    ms = [be.mask(q, 100, 0.1) for q in qs]
    assert torch.equal(ms[0], ms[1]) and torch.equal(ms[0], ms[2])
    assert not torch.equal(ms[0], be.mask(qs[0], 101, 0.1))
    # injection is XOR: each flipped bit changes the code by exactly ±2^j
    q = qs[0]
    flipped = be.inject(q.codes, ms[0])
    diff = (flipped.to(torch.int64) - q.codes.to(torch.int64)).abs()
    single = ms[0].to(torch.int64)
    one_bit = (single & (single - 1)) == 0
    assert torch.equal(diff[one_bit], single[one_bit])
    assert torch.equal(be.inject(flipped, ms[0]), q.codes)
    pert = be.perturb(q, 100, 0.1)
    assert all(torch.equal(pert[n], v) for n, v in q.dequantize(flipped).items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_and_cuda_patterns_equal():
    cpu = be.random_masks(300_000, 8, 100, [0.001, 0.01, 0.1])
    gpu = be.random_masks(300_000, 8, 100, [0.001, 0.01, 0.1], device="cuda")
    assert torch.equal(cpu, gpu.cpu())


def test_bad_rates_and_seeds():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(UserError, match="bit error rate"):
            be.random_masks(10, 8, 0, [bad])
    with pytest.raises(UserError, match="seed"):
        be.random_masks(10, 8, -1, [0.1])


# ---- chip maps ---------------------------------------------------------------------------


def _q(n=300, bits=8):
    w = torch.linspace(-1, 1, n)
    return Scheme(bits).quantize({"w": w[: n // 2], "v": w[n // 2:]})


def test_uniform_chip_equals_random_pattern():
    q = _q()
    chip = be.chip_map_from_dict({"rows": 7, "cols": 9, "flip_prob": 0.05})
    for seed, off in ((100, 0), (101, 13)):
        assert torch.equal(chip.apply(q, seed, off), q.codes ^ be.mask(q, seed, 0.05))


def test_chip_layout_offset_and_wraparound():
    bits = 4
    q = Scheme(bits).quantize({"w": torch.zeros(40)})  # all codes 0
    rows, cols = 3, 5  # 15 cells < 40·4 bits: the array wraps around
    stuck = [[-1] * cols for _ in range(rows)]
    stuck[1][2] = 1  # cell 7
    chip = be.chip_map_from_dict({"flip_prob": 0.0, "stuck": stuck})
    for offset in (0, 3, 20):
        got = chip.apply(q, 0, offset)
        k = torch.arange(40 * bits)
        expect_bits = ((offset + k) % 15 == 7).to(torch.int64).view(40, bits)
        expect = (expect_bits << torch.arange(bits)).sum(1)
        assert torch.equal(got.to(torch.int64), expect), offset
    # stuck-at-0 everywhere clears every code; stuck-at-1 sets the m low bits
    q8 = _q()
    zero = be.chip_map_from_dict({"rows": 2, "cols": 2, "stuck": 0})
    one = be.chip_map_from_dict({"rows": 2, "cols": 2, "stuck": 1, "flip_prob": 1.0})
    assert int(zero.apply(q8, 1).max()) == 0 and bool((one.apply(q8, 1) == 255).all())


def test_chip_flip_probabilities_per_cell():
    q = _q(40_000)
    # a 1×8 array: with 8-bit codes and offset 0, cell j holds bit j of every weight
    probs = [0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
    chip = be.chip_map_from_dict({"flip_prob": [probs]})
    flips = _bits(chip.apply(q, 5) ^ q.codes)
    n = q.numel
    for j, p in enumerate(probs):
        k = int(flips[:, j].sum())
        assert abs(k - p * n) <= 5 * math.sqrt(n * p * (1 - p)) + 1e-9


def test_example_chip_map_loads():
    chip = be.load_chip_map(be.example("synthetic_chip_map.json"))
    assert (chip.rows, chip.cols, chip.voltage) == (32, 64, 0.7)
    assert "SYNTHETIC" in chip.description
    s = chip.summary()
    assert s["stuck_at_0"] == 3 and s["stuck_at_1"] == 3
    assert 0 < s["mean_flip_prob"] < 0.05
    codes = chip.apply(RQUANT8.quantize({"w": torch.linspace(-1, 1, 5000)}), 100, 17)
    assert codes.dtype == torch.uint8


def test_chip_map_npz(tmp_path):
    import numpy as np

    fp = np.full((4, 6), 0.02)
    st = -np.ones((4, 6), dtype=np.int8)
    st[0, 0] = 1
    np.savez(tmp_path / "c.npz", flip_prob=fp, stuck=st, voltage=0.75, name="mine")
    chip = be.load_chip_map(tmp_path / "c.npz")
    assert (chip.rows, chip.cols, chip.voltage, chip.name) == (4, 6, 0.75, "mine")
    assert int(chip.stuck[0, 0]) == 1 and int((chip.stuck == -1).sum()) == 23


@pytest.mark.parametrize("content,message", [
    ("{not json", "cannot parse"),
    ("[1, 2]", "top level must be a JSON object"),
    ({"rows": 2, "cols": 2, "flip_prob": 1.5}, "flip_prob values must be in"),
    ({"flip_prob": [[0.1, 0.2], [0.1]]}, "flip_prob"),
    ({"flip_prob": [[0.1, 0.2]], "stuck": [[0, 1], [1, 0]]}, "shape"),
    ({"rows": 2, "cols": 2, "stuck": 2}, "stuck values"),
    ({"rows": 2, "cols": 2}, "needs flip_prob"),
    ({"flip_prob": 0.1}, "give rows and cols"),
    ({"rows": 0, "cols": 3, "flip_prob": 0.1}, "must be positive"),
    ({"rows": 2, "cols": 2, "flip_prob": 0.1, "colour": 1}, "unknown field 'colour'"),
    ({"rows": 2, "cols": 2, "flip_prob": 0.1, "stuck_cells": [[5, 0, 1]]}, "stuck_cells entry"),
    ({"rows": 2, "cols": 2, "flip_prob": 0.1, "format": "v0"}, "format"),
    ({"rows": 2, "cols": 2, "flip_prob": "high"}, "must be numbers"),
])
def test_malformed_chip_maps(tmp_path, content, message):
    path = tmp_path / "chip.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UserError, match=message) as e:
        be.load_chip_map(path)
    assert "\n" not in str(e.value)


def test_chip_map_missing_and_wrong_extension(tmp_path):
    with pytest.raises(UserError, match="not found"):
        be.load_chip_map(tmp_path / "none.json")
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(UserError, match="unknown extension"):
        be.load_chip_map(tmp_path / "c.txt")
