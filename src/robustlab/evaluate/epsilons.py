"""How large may a threat model's radius be? Distances to the nearest other-class training image.

For each norm, the distance of every (first `n_test`) test image to its nearest training image of
another class bounds the radius at which an attack can honestly claim the label is unchanged: a
ball that reaches such an image contains a real example of another class. Distances are computed
in chunks (test × train blocks with `torch.cdist`, whose p = 0 counts differing entries), so memory
stays bounded for the full training set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from robustlab.attacks.pgd import init_delta, pgd, project
from robustlab.attacks.threat import NORMS, check_norm, default_eps
from robustlab.data import Dataset
from robustlab.errors import UserError
from robustlab.models import Predictor

_P = {"linf": math.inf, "l2": 2.0, "l1": 1.0, "l0": 0.0}
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5)
RADIUS_FACTORS = (0.5, 1.0, 2.0, 4.0)


def pairwise(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """|A|×|B| distances of flattened images in `norm` (L0: number of differing entries)."""
    check_norm(norm)
    a, b = a.flatten(1), b.flatten(1)
    if norm == "l2":  # exact differences, not the ‖a‖² + ‖b‖² − 2ab shortcut
        return torch.cdist(a, b, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")
    return torch.cdist(a, b, p=_P[norm])


@torch.no_grad()
def nearest_other_class(test_x: torch.Tensor, test_y: torch.Tensor, train_x: torch.Tensor,
                        train_y: torch.Tensor, norm: str, *, chunk_test: int = 256,
                        chunk_train: int = 4096, device: torch.device | str = "cpu",
                        progress: Callable[[int], None] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, train index) of the nearest training image of another class, per test image."""
    dev = torch.device(device)
    n = test_x.shape[0]
    best = torch.full((n,), math.inf, dtype=torch.float64)
    arg = torch.full((n,), -1, dtype=torch.long)
    for i in range(0, n, chunk_test):
        a = test_x[i:i + chunk_test].to(dev, torch.float64)
        ya = test_y[i:i + chunk_test].to(dev)
        b_best = torch.full((a.shape[0],), math.inf, dtype=torch.float64, device=dev)
        b_arg = torch.full((a.shape[0],), -1, dtype=torch.long, device=dev)
        for j in range(0, train_x.shape[0], chunk_train):
            b = train_x[j:j + chunk_train].to(dev, torch.float64)
            d = pairwise(a, b, norm)
            d = d.masked_fill(ya[:, None] == train_y[j:j + chunk_train].to(dev)[None, :], math.inf)
            v, k = d.min(1)
            take = v < b_best
            b_best = torch.where(take, v, b_best)
            b_arg = torch.where(take, k + j, b_arg)
        best[i:i + a.shape[0]] = b_best.cpu()
        arg[i:i + a.shape[0]] = b_arg.cpu()
        if progress is not None:
            progress(a.shape[0])
    return best, arg


def histogram(values: torch.Tensor, bins: int = 30) -> dict[str, list[float]]:
    v = values[torch.isfinite(values)].double()
    if v.numel() == 0:
        return {"edges": [0.0, 1.0], "counts": [0]}
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        hi = lo + 1.0
    counts = torch.histc(v, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()]}


def perturbation_examples(x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, norm: str,
                          radii: Sequence[float], *, model: Callable | None = None,
                          generator: torch.Generator | None = None, steps: int = 40
                          ) -> dict[str, torch.Tensor]:
    """One image perturbed at each radius: randomly (a random direction of the norm at exactly r,
    then the box) and adversarially (PGD on `model`; without a model, the largest step towards
    `target`, the nearest training image of another class)."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    model = None if model is None else Predictor.of(model)  # quantized: its dequantized weights
    x1 = x[:1]
    rand, adv = [], []
    for r in radii:
        if norm == "l0":
            d = init_delta(x1, norm, r, "norm", g)
            d = torch.where(d != 0, torch.rand(x1.shape, generator=g).round() - x1, d)
        else:
            d = init_delta(x1, norm, 1.0, "norm", g)
            nrm = {"linf": d.abs().amax(), "l2": d.norm(), "l1": d.abs().sum()}[norm]
            d = d / nrm.clamp(min=1e-12) * r
        rand.append((x1 + project(d, x1, norm, r)).clamp(0, 1))
        if model is not None:
            adv.append(pgd(model, x1, y[:1], norm=norm, eps=r, steps=steps, init="zero",
                           momentum=0.9, backtrack=True).x_adv)
        else:  # the largest move towards the target inside the ball (and the box)
            adv.append((x1 + project(target[:1] - x1, x1, norm, r)).clamp(0, 1))
    return {"random": torch.cat(rand), "adversarial": torch.cat(adv)}


def epsilons(train: Dataset, test: Dataset, norms: Sequence[str] = NORMS, *, n_test: int = 500,
             n_train: int | None = None, quantiles: Sequence[float] = QUANTILES, bins: int = 30,
             radius_factors: Sequence[float] = RADIUS_FACTORS, model: Callable | None = None,
             dataset: str | None = None, seed: int = 0, device: torch.device | str = "cpu",
             examples_path: str | Path | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Per norm: distances of the first `n_test` test images to their nearest other-class training
    image (among the first `n_train`, default all), low quantiles, a histogram and the fraction of
    test images closer than the spec's default radius.

    With `examples_path`, the first test image perturbed randomly and adversarially at
    `radius_factors` × the default radius is saved there (safetensors: `clean`,
    `<norm>/random`, `<norm>/adversarial`; radii in the metadata) and named in `examples_file`.
    """
    for norm in norms:
        check_norm(norm)
    if not norms:
        raise UserError(f"no norms given; choose from {', '.join(NORMS)}")
    if n_test < 1 or (n_train is not None and n_train < 1):
        raise UserError("--n-test and --n-train must be integers ≥ 1")
    for q in quantiles:
        if not 0 <= q <= 1:
            raise UserError(f"quantile {q} is invalid; it must be in [0, 1]")
    te = test.subset(slice(0, min(n_test, len(test))))
    tr = train if n_train is None else train.subset(slice(0, min(n_train, len(train))))
    if len(torch.unique(tr.y)) < 2:
        raise UserError("the training images hold a single class; there is no other class to "
                        "measure distances to")
    shape = tuple(test.shape)
    name = dataset or test.name
    out: dict[str, Any] = {"data": {"name": name, "n_test": len(te), "n_train": len(tr),
                                    "shape": list(shape)},
                           "config": {"norms": list(norms), "quantiles": list(quantiles),
                                      "bins": bins, "radius_factors": list(radius_factors),
                                      "seed": seed, "adversarial": "pgd" if model else "nearest"},
                           "norms": {}}
    examples = {"clean": te.x[:1].clone()}
    g = torch.Generator().manual_seed(seed)
    radii_meta = {}
    for norm in norms:
        dist, idx = nearest_other_class(te.x, te.y, tr.x, tr.y, norm, device=device,
                                        progress=progress)
        eps = default_eps(norm, shape, name)
        q = torch.quantile(dist, torch.tensor(list(quantiles), dtype=torch.float64)).tolist()
        out["norms"][norm] = {
            "min": float(dist.min()), "median": float(dist.median()), "mean": float(dist.mean()),
            "quantiles": {f"{k:g}": v for k, v in zip(quantiles, q)},
            "histogram": histogram(dist, bins), "default_eps": eps,
            "frac_within_default_eps": float((dist <= eps).double().mean()),
            "distances": [round(v, 6) for v in dist.tolist()],
            "nearest_index": idx.tolist()}
        radii = [f * eps for f in radius_factors]
        if norm == "l0":
            radii = [float(max(1, round(r))) for r in radii]
        radii_meta[norm] = radii
        ex = perturbation_examples(te.x[:1], te.y[:1], tr.x[idx[:1]], norm, radii, model=model,
                                   generator=g)
        examples[f"{norm}/random"] = ex["random"]
        examples[f"{norm}/adversarial"] = ex["adversarial"]
    out["radii"] = radii_meta
    if examples_path is not None:
        out["examples_file"] = _save_examples(examples_path, examples, radii_meta)
    return out


def _save_examples(path: str | Path, examples: dict[str, torch.Tensor],
                   radii: dict[str, list[float]]) -> str:
    from safetensors.torch import save_file

    from robustlab.io import atomic_write

    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in examples.items()}
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"radii": json.dumps(radii)}))
    return path.name
