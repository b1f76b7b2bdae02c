"""Guards found missing by a second mutation campaign (issue 15, fresh bugs).

Each test catches a realistic single-line bug that the rest of the suite let through; the
comment above it names the spec sentence it guards. Only public APIs are used.
"""

from __future__ import annotations

import pytest
import torch

from robustlab import quant


# §5: dequantization clamps to the tensor's range — also in the fused quantize→dequantize path
# (QAT's fake quantization), not only in the lookup table.
def test_quantize_dequantize_clamps_to_the_range_like_the_table() -> None:
    s = quant.Scheme(8, per_tensor=False, mode="symmetric_signed", rounding="round", q_max=1.0)
    p = {"w": torch.tensor([-1.5, -1.0, 0.3, 1.2])}
    table = s.dequantize(s.quantize(p))["w"]
    fused = s.quantize_dequantize(p)["w"]
    fake = s.fake_quantize(p)["w"]
    assert float(table[0]) == -1.0  # code −128 would be −128/127 without the clamp
    assert torch.equal(fused, table) and torch.equal(fake, table)


# §5 scheme strings: boolean options accept 1/0 and yes/no as well as true/false
@pytest.mark.parametrize("text,want", [("per_tensor=1", True), ("per_tensor=yes", True),
                                       ("per_tensor=0", False), ("per_tensor=no", False)])
def test_scheme_boolean_spellings(text: str, want: bool) -> None:
    start = "normal" if want else "rquant"  # start from the opposite value
    assert quant.parse(f"{start},{text}").per_tensor is want


# §6: bit (i, j) flips iff u < p with u = H(seed, 8i + j)/2^32 — strictly less: at p = u exactly
# the bit stays, one step above it flips (random patterns and chip maps alike).
def test_bit_flips_iff_u_strictly_below_p() -> None:
    from robustlab import biterrors as be

    seed = 3
    h = be.hash_counters(seed, torch.arange(8, dtype=torch.int64)).tolist()  # weight 0, bits 0..7
    q = quant.Scheme(8).quantize({"w": torch.zeros(1)})
    for j, hj in enumerate(h):
        at, above = hj / 2**32, (hj + 1) / 2**32
        assert (int(be.random_masks(1, 8, seed, [at])[0, 0]) >> j) & 1 == 0
        assert (int(be.random_masks(1, 8, seed, [above])[0, 0]) >> j) & 1 == 1
        for p, want in ((at, 0), (above, 1)):
            chip = be.chip_map_from_dict({"flip_prob": [[p] * 8]})
            flipped = int(chip.apply(q, seed)[0]) ^ int(q.codes[0])
            assert (flipped >> j) & 1 == want


# §6: a pattern is defined by its whole seed: seeds that differ only above bit 32 are different
# patterns (seeds are allowed up to 2^63).
def test_seeds_differing_in_high_bits_give_different_patterns() -> None:
    from robustlab import biterrors as be

    base = be.random_masks(4096, 8, 5, [0.1])[0]
    for other in (5 + 2**32, 5 + 2**40, 5 + 2**62):
        diff = (base != be.random_masks(4096, 8, other, [0.1])[0]).float().mean()
        assert float(diff) > 0.5  # independent patterns at 10 % differ in ~1 − 0.9²·… of codes
