"""Square attack (spec §3a): feasibility, seeding, the p schedule, gradient masking, early exit."""

from __future__ import annotations

import pytest
import torch
from attackchecks import assert_early_exit_invariant, assert_worst_of_visited
from test_pgd import batch, gen, small_cnn, trained_digits
from torch import nn

from robustlab.attacks import Square, lp_norm, pgd, square
from robustlab.attacks.norms import NORMS, pyramid, square_pattern, window_index
from robustlab.attacks.square import p_schedule, square_side
from robustlab.errors import UserError

torch.set_num_threads(1)


def test_p_schedule_halves_at_the_papers_iterations() -> None:
    # 10 000 queries: halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
    got = [p_schedule(i, 10000) for i in (0, 10, 11, 50, 51, 200, 201, 501, 1001, 2001, 4001, 6001,
                                          8001, 9999)]
    assert got == [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.05, 0.025, 0.0125, 0.8 / 128, 0.8 / 256,
                   0.8 / 512, 0.8 / 512]
    # other budgets rescale the iteration: 1000 queries halve after iterations 1, 5, 20, …
    assert [p_schedule(i, 1000) for i in (1, 2, 5, 6, 21)] == [0.8, 0.4, 0.4, 0.2, 0.1]
    assert square_side(0.8, 28, 28) == 25 and square_side(0.001, 28, 28) == 1
    assert square_side(0.8, 8, 8) == 7  # at most H − 1


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-0.5, 1.5)])
def test_every_output_is_in_the_ball_and_the_box(norm: str, eps: float, bounds: tuple) -> None:
    model = small_cnn(channels=3)
    x, y = batch(channels=3)
    res = square(model, x, y, norm=norm, eps=eps, queries=60, restarts=2, generator=gen(),
                 bounds=bounds)
    assert (lp_norm(res.x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    assert res.x_adv.min() >= bounds[0] and res.x_adv.max() <= bounds[1]
    assert (res.x_adv != x).any()
    assert torch.allclose(res.logits, model(res.x_adv), atol=1e-5)
    assert (res.info["queries"] <= 60).all()


def test_seeded_and_reproducible() -> None:
    model = small_cnn()
    x, y = batch()
    for norm in ("linf", "l2"):
        a = square(model, x, y, norm=norm, eps=0.5, queries=30, generator=gen(7))
        b = square(model, x, y, norm=norm, eps=0.5, queries=30, generator=gen(7))
        c = square(model, x, y, norm=norm, eps=0.5, queries=30, generator=gen(8))
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.logits, b.logits)
        assert not torch.equal(a.x_adv, c.x_adv)
    d = Square(eps=0.5, queries=30)(model, x, y, generator=gen(7))
    assert torch.equal(d.x_adv, square(model, x, y, eps=0.5, queries=30, generator=gen(7)).x_adv)


class Quantized(nn.Module):
    """The model sees round(4x)/4: its input gradient is zero everywhere (masked gradients)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


def test_square_breaks_a_model_whose_gradients_are_masked() -> None:
    inner, x, y = trained_digits()
    model = Quantized(inner)
    x, y = x[:100], y[:100]
    clean_wrong = model(x).argmax(1) != y
    g = pgd(model, x, y, eps=0.15, steps=20, init="zero", generator=gen())
    assert torch.equal(g.success, clean_wrong)  # zero gradients: PGD never moves
    s = square(model, x, y, eps=0.15, queries=300, generator=gen())
    assert s.success.float().mean() > clean_wrong.float().mean() + 0.3


def test_early_exit_on_and_off_give_identical_verdicts_on_a_trained_model() -> None:
    model, x, y = trained_digits()
    c = 0.6
    off = square(model, x, y, eps=0.12, queries=150, generator=gen(2))
    on = square(model, x, y, eps=0.12, queries=150, generator=gen(2), early_stop=c)
    decided = assert_early_exit_invariant(on, off, c)
    assert (on.info["queries"][decided] < 150).any()


def test_bad_input_is_one_line() -> None:
    model = small_cnn()
    x, y = batch(2)
    for kw, fragment in ((dict(norm="l1"), "norm 'l1'"), (dict(queries=0), "queries 0"),
                         (dict(p_init=0.0), "p_init 0"), (dict(eps=-1.0), "eps -1")):
        with pytest.raises(UserError) as e:
            square(model, x, y, **{"eps": 0.1, **kw})
        assert fragment in str(e.value) and "\n" not in str(e.value)


def test_l2_pattern_is_two_pyramids_of_opposite_sign() -> None:
    # spec §3a / the paper: Σ_{j=d+1}^{n+1} 1/j² on ring d; two halves of opposite sign, unit norm
    m = pyramid(3, 3, torch.device("cpu"), torch.float64)
    assert torch.allclose(m, torch.tensor([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25],
                                           [0.25, 0.25, 0.25]], dtype=torch.float64))
    b = square_pattern(6, torch.device("cpu"), torch.float64)
    assert b.shape == (6, 6) and abs(float(b.norm()) - 1) < 1e-12
    assert (b[:, :3] > 0).all() and (b[:, 3:] < 0).all()
    assert torch.allclose(b[:, :3], -b[:, 3:])  # equal halves for even sides


def test_l2_window_side_is_odd_and_fits() -> None:
    # L2 windows have odd sides (both pyramids get a centre line), at least 3, at most H − 1
    got = [square_side(p, 28, 28, 3, odd=True) for p in (0.8, 0.4, 0.2, 0.1, 0.05, 0.025, 0.0125,
                                                         0.001)]
    assert got == [25, 19, 13, 9, 7, 5, 3, 3]
    assert square_side(0.8, 9, 9, 3, odd=True) == 7  # 8 is even and 9 does not fit
    assert square_side(0.4, 28, 28) == 18  # L∞ keeps the rounded side


def test_l2_start_is_a_centred_grid_of_patterns_at_norm_eps() -> None:
    x = torch.zeros(4, 2, 28, 28, dtype=torch.float64)
    d = NORMS["l2"].square_start(x, 1.5, gen(5))
    assert torch.allclose(d.flatten(1).norm(dim=1), torch.full((4,), 1.5, dtype=torch.float64))
    # 5×5 tiles of side ⌊28/5⌋ = 5, starting at (28 − 25)//2 = 1: nothing outside rows/cols 1..25
    inside = torch.zeros(28, 28, dtype=torch.bool)
    inside[1:26, 1:26] = True
    assert (d[:, :, ~inside] == 0).all() and (d[:, :, inside] != 0).all()
    # every tile is ± the pattern or its transpose, sign and orientation drawn per example
    pat = square_pattern(5, x.device, x.dtype)
    unit = d / d[:, :, 1:6, 1:6].norm(dim=(2, 3), keepdim=True)
    orient = set()
    for i in range(4):
        for c in range(2):
            for r0 in range(1, 26, 5):
                for c0 in range(1, 26, 5):
                    t = unit[i, c, r0:r0 + 5, c0:c0 + 5]
                    hit = [k for k, q in enumerate((pat, -pat, pat.t(), -pat.t()))
                           if torch.allclose(t, q)]
                    assert len(hit) == 1
                    orient.add(hit[0])
    assert orient == {0, 1, 2, 3}


def _mask(r: torch.Tensor, c: torch.Tensor, s: int, like: torch.Tensor) -> torch.Tensor:
    """N×C×H×W mask of the s×s windows at corners (r, c), built pixel by pixel."""
    m = torch.zeros(like.shape, dtype=torch.bool)
    for i in range(like.shape[0]):
        m[i, :, int(r[i]):int(r[i]) + s, int(c[i]):int(c[i]) + s] = True
    return m


def test_window_index_addresses_the_windows_of_every_channel() -> None:
    r, c = torch.tensor([0, 3, 5]), torch.tensor([2, 0, 4])
    like = torch.zeros(3, 2, 8, 7)
    lin = window_index(r, c, 3, tuple(like.shape))
    assert lin.shape == (3, 2, 3, 3)
    got = torch.zeros(like.numel(), dtype=torch.bool)
    got[lin.flatten()] = True
    assert torch.equal(got.view(like.shape), _mask(r, c, 3, like))


def test_linf_proposal_sets_the_window_to_plus_minus_eps_per_channel() -> None:
    g = gen(12)
    x = torch.rand(5, 3, 10, 9, generator=g)
    delta = 0.2 * torch.rand(5, 3, 10, 9, generator=g) - 0.1
    linf = NORMS["linf"]
    dr = linf.square_draws(x, 4, g)
    prop = linf.square_propose(x, delta.clone(), 0.1, 4, dr)
    m = _mask(dr["r1"], dr["c1"], 4, delta)
    assert torch.equal(prop[~m], delta[~m])
    want = (0.1 * dr["signs"])[:, :, None, None].expand_as(delta)
    assert torch.equal(prop[m], want[m]) and (prop[m].abs() == torch.tensor(0.1)).all()
    assert torch.equal(dr["signs"].abs(), torch.ones(5, 3))


def test_model_blocks_are_the_engines_blocks() -> None:
    # Square's model calls see exactly the rows eval_rows would give them (so its floats match
    # the engine's): blocks of `rows` rows, the last padded with its last row
    from robustlab.attacks.pgd import EngineCfg, eval_rows
    from robustlab.attacks.square import _logits

    base = small_cnn()

    def recorder(seen: list):
        return lambda xb: (seen.append(xb.clone()), base(xb))[1]

    cfg = EngineCfg("linf", 0.1, 1, lambda z, y: z.sum(1))
    for r, rows in ((10, 4), (8, 4), (3, 4), (0, 4)):
        x = torch.rand(r, 1, 8, 8, generator=gen(r))
        seen, seen_ref = [], []
        got = _logits(recorder(seen), x, rows)
        want = eval_rows(recorder(seen_ref), x, None, cfg, rows, grad=False)[1]
        assert torch.equal(got, want) and got.shape == (r, 5)
        assert [b.shape[0] for b in seen] == [b.shape[0] for b in seen_ref]
        assert all(torch.equal(a, b) for a, b in zip(seen, seen_ref))
        assert all(b.shape[0] == rows for b in seen) or r == 0


@pytest.mark.parametrize("fill", [1.0, 0.6])
def test_l2_proposal_moves_mass_within_the_windows_and_keeps_norm_eps(fill: float) -> None:
    # Algorithm 3: W2 is emptied, W1 gets all of W1 ∪ W2's mass (per channel) plus an equal share
    # of the unused budget ε² − ‖δ‖², the rest is unchanged, so ‖δ'‖₂ = ε exactly.
    g = gen(11)
    x = torch.rand(6, 3, 16, 16, generator=g, dtype=torch.float64)
    delta = torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64)
    delta = delta / delta.flatten(1).norm(dim=1)[:, None, None, None] * 2.0 * fill
    s = 5
    l2 = NORMS["l2"]
    dr = l2.square_draws(x, s, g)
    prop = l2.square_propose(x, delta.clone(), 2.0, s, dr)
    assert torch.allclose(prop.flatten(1).norm(dim=1), torch.full((6,), 2.0, dtype=torch.float64))
    m1 = _mask(dr["r1"], dr["c1"], s, delta)
    m2 = _mask(dr["r2"], dr["c2"], s, delta)
    assert torch.equal(prop[~(m1 | m2)], delta[~(m1 | m2)])
    assert (prop[m2 & ~m1] == 0).all()
    union = torch.where(m1 | m2, delta, 0).flatten(2).pow(2).sum(2)
    unused = 4.0 - delta.flatten(1).pow(2).sum(1)
    in_w1 = torch.where(m1, prop, 0).flatten(2).pow(2).sum(2)
    assert torch.allclose(in_w1, union + unused[:, None] / 3)


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 0.9)])
def test_best_query_is_the_worst_case_of_all_queries(norm: str, eps: float) -> None:
    # spec §2: the result is the most damaging input queried (misclassified first, then the
    # highest wrong-class confidence), not the one the margin search ends at
    from test_pgd import Recorder


    base, x, y = trained_digits()
    x, y = x[:64], y[:64]  # one block: one recorded call per query
    model = Recorder(base)
    res = square(model, x, y, norm=norm, eps=eps, queries=40, generator=gen(4))
    visited = torch.stack(model.calls)
    assert visited.shape == (40, 64, 10)
    assert_worst_of_visited(res, visited, y, base)


def test_l2_early_exit_on_and_off_give_identical_verdicts() -> None:
    model, x, y = trained_digits()
    c = 0.6
    off = square(model, x, y, norm="l2", eps=0.9, queries=120, generator=gen(2))
    on = square(model, x, y, norm="l2", eps=0.9, queries=120, generator=gen(2), early_stop=c)
    assert_early_exit_invariant(on, off, c)
