"""Location-optimized patches: allowed region, placement, content moving with the patch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks.patches import _sample_corners, allowed_corners, patch_attack, place
from robustlab.errors import UserError

torch.set_num_threads(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Ramp(nn.Module):
    """2 logits [0, −Σ W·x] with W growing towards the bottom-right: for y = 1 the cross-entropy
    log(1 + exp(Σ W·x)) grows when bright content sits further down and right."""

    def __init__(self, h: int, w: int):
        super().__init__()
        i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        self.W = (i + j).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x.sum(1) * self.W).flatten(1).sum(1) / 50
        return torch.stack([torch.zeros_like(s), -s], 1)


def test_allowed_corners_exclude_central_box() -> None:
    ok = allowed_corners((8, 8), 2, exclude=4)  # central box rows/cols 2..5
    assert ok.shape == (7, 7)
    expected = torch.ones(7, 7, dtype=torch.bool)
    expected[1:6, 1:6] = False  # corners 1..5 make a 2×2 patch overlap rows/cols 2..5
    assert torch.equal(ok, expected)
    assert allowed_corners((8, 8), 2).all()


def test_place_pastes_content_and_nothing_else() -> None:
    g = gen()
    x = torch.rand(3, 2, 9, 7, generator=g)
    content = torch.rand(3, 2, 3, 2, generator=g)
    pos = torch.tensor([[0, 0], [6, 5], [2, 3]])
    out, mask = place(x, content, pos)
    for n, (r, c) in enumerate(pos.tolist()):
        assert torch.equal(out[n, :, r:r + 3, c:c + 2], content[n])
        m = torch.ones(9, 7, dtype=torch.bool)
        m[r:r + 3, c:c + 2] = False
        assert torch.equal(out[n][:, m], x[n][:, m])
    assert mask.sum() == 3 * 3 * 2


@pytest.mark.parametrize("location", ["fixed", "random", "optimized-full", "optimized-random"])
def test_patch_never_leaves_allowed_region(location: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 12 * 12, 3)).eval()
    g = gen(1)
    x = torch.rand(24, 1, 12, 12, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    allowed = allowed_corners((12, 12), 3, exclude=4)
    res = patch_attack(model, x, y, size=3, steps=12, stride=1, exclude=4, location=location,
                       restarts=2, generator=gen(2))
    pos = res.info["position"]
    assert allowed[pos[:, 0], pos[:, 1]].all()
    for n, (r, c) in enumerate(pos.tolist()):
        outside = torch.ones(12, 12, dtype=torch.bool)
        outside[r:r + 3, c:c + 3] = False
        assert torch.equal(res.x_adv[n][:, outside], x[n][:, outside])
        assert torch.equal(res.x_adv[n, :, r:r + 3, c:c + 3], res.info["content"][n])
    assert (res.x_adv[:, :, 4:8, 4:8] == x[:, :, 4:8, 4:8]).all()  # the central box is untouched
    if location == "fixed":
        assert (pos == torch.tensor([0, 0])).all()


def test_content_moves_with_the_patch() -> None:
    # With step size 0 the content stays the random start; location optimization moves the
    # patch, and the pasted content at the final place must still be that start.
    model = Ramp(10, 10)
    n = 8
    x = torch.zeros(n, 1, 10, 10)
    y = torch.ones(n, dtype=torch.long)
    res = patch_attack(model, x, y, size=3, steps=10, step_size=0.0, stride=1,
                       location="optimized-full", generator=gen(5))
    g = gen(5)
    allowed = allowed_corners((10, 10), 3)
    start = _sample_corners(allowed, n, g, torch.device("cpu"))
    content0 = torch.rand((n, 1, 3, 3), generator=g)
    final = res.info["position"]
    assert (final != start).any(1).all()  # every patch moved
    assert torch.equal(res.info["content"], content0)
    for i, (r, c) in enumerate(final.tolist()):
        assert torch.equal(res.x_adv[i, :, r:r + 3, c:c + 3], content0[i])


def test_optimized_location_finds_the_best_place() -> None:
    model = Ramp(10, 10)
    x = torch.zeros(6, 1, 10, 10)
    y = torch.ones(6, dtype=torch.long)
    for location, steps in (("optimized-full", 20), ("optimized-random", 80)):
        res = patch_attack(model, x, y, size=3, steps=steps, step_size=0.5, stride=1,
                           location=location, generator=gen(3))
        assert (res.info["position"] == torch.tensor([7, 7])).all()
        assert torch.equal(res.info["content"], torch.ones(6, 1, 3, 3))
    fixed = patch_attack(model, x, y, size=3, steps=5, step_size=0.5, location="fixed",
                         position=(2, 4), generator=gen(3))
    assert (fixed.info["position"] == torch.tensor([2, 4])).all()
    # optimized locations are a stronger attack than fixed or random ones
    rand = patch_attack(model, x, y, size=3, steps=20, step_size=0.5, location="random",
                        generator=gen(3))
    loss = {k: torch.nn.functional.cross_entropy(r.logits, y).item()
            for k, r in (("fixed", fixed), ("random", rand), ("opt", res))}
    assert loss["opt"] > loss["random"] and loss["opt"] > loss["fixed"]


def test_random_locations_cover_allowed_corners() -> None:
    allowed = allowed_corners((8, 8), 2, exclude=4)
    pos = _sample_corners(allowed, 2000, gen(0), torch.device("cpu"))
    assert allowed[pos[:, 0], pos[:, 1]].all()
    assert len({tuple(p) for p in pos.tolist()}) == int(allowed.sum())


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(size=13), "patch size 13×13"), (dict(size=(3, 20)), "patch size 3×20"),
    (dict(size=10, exclude=6), "no place"), (dict(location="nowhere"), "location mode 'nowhere'"),
    (dict(stride=0), "stride 0"), (dict(restarts=0), "restarts 0"),
    (dict(location="fixed", position=(11, 0)), "position"),
])
def test_bad_patch_input(kwargs: dict, fragment: str) -> None:
    x = torch.zeros(2, 1, 12, 12)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(UserError) as e:
        patch_attack(Ramp(12, 12), x, y, steps=1, **kwargs)
    assert fragment in str(e.value) and "\n" not in str(e.value)
