"""Average- and worst-case flatness of the (robust) loss, and loss landscapes (spec §8).

`flatness(model, test, kind="average", xi=0.5)` perturbs the conv/linear weights and biases in the
relative ball B_ξ(w) and reports the increase of the robust loss (mean cross-entropy on PGD examples
recomputed for every perturbed model) or, with `clean=True`, of the clean loss. The same attack
settings and the same attack seed are used on both sides of each difference, so ξ = 0 gives 0.

Under `torchrun` the loss evaluations of average-case flatness (the unperturbed model and the
random ν) and of landscapes (the grid points) are dealt round-robin to the ranks, and the
gathered losses are fed back to the same aggregation code: every rank returns the single-process
result. Worst-case flatness is one sequential ascent; every rank computes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from robustlab import distributed, sources
from robustlab.data import Dataset
from robustlab.errors import UNSET, UserError, renamed
from robustlab.models import Predictor
from robustlab.weights import (
    ModelObjective,
    RelativeBall,
    average_case,
    check_count,
    check_xi,
    filter_normalized,
    loss_along,
    select,
    tensor_normalized,
    worst_case_ascent,
)
from robustlab.weights.objective import Attack

KINDS = ("average", "worst")
DIRECTIONS = ("random", "adversarial")


def default_attack(shape: Sequence[int], **overrides: Any) -> tuple[Attack, dict[str, Any]]:
    """The robust loss's inner attack: PGD-L∞ with the spec's default ε for the image size
    (`robustlab.attacks.PGD`), returned with its settings for the result file."""
    from robustlab.evaluate.robust_tracking import make_attack

    settings = {"norm": "linf", "steps": 20, **overrides}
    return make_attack(settings, shape)


def _custom_settings(attack: Attack) -> dict[str, Any]:
    """What the result file records of a caller's attack: its name and, for a dataclass attack
    such as `robustlab.attacks.PGD`, its plain-valued fields."""
    out: dict[str, Any] = {"custom": getattr(attack, "__name__", type(attack).__name__)}
    if dataclasses.is_dataclass(attack) and not isinstance(attack, type):
        for f in dataclasses.fields(attack):
            v = getattr(attack, f.name)
            if v is None or isinstance(v, (bool, int, float, str)):
                out[f.name] = v
            elif isinstance(v, tuple) and all(isinstance(e, (int, float)) for e in v):
                out[f.name] = list(v)
    return out


def _xis(xi: float | Sequence[float]) -> list[float]:
    values = [xi] if isinstance(xi, (int, float)) else list(xi)
    if not values:
        raise UserError("xi: give at least one relative radius")
    return [check_xi(v) for v in values]


class _Dealt:
    """Stands in for an objective whose `value` calls are independent: call i is computed on rank
    i mod W (the others get a placeholder); after `replay()` every call returns the gathered value
    of the same call, so a second run of the same code aggregates all of them."""

    def __init__(self, objective: Any) -> None:
        self.objective, self.calls, self.mine = objective, 0, {}
        self.table: dict[int, torch.Tensor] | None = None

    def value(self, params: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
        i, self.calls = self.calls, self.calls + 1
        if self.table is not None:
            return self.table[i]
        if i % distributed.world_size() != distributed.rank():
            return torch.zeros((), device=getattr(self.objective, "device", None))
        self.mine[i] = self.objective.value(params, seed)
        return self.mine[i]

    def replay(self) -> None:
        table: dict[int, torch.Tensor] = {}
        for part in distributed.all_gather_object({i: v.cpu() for i, v in self.mine.items()}):
            table.update(part)
        dev = getattr(self.objective, "device", None)
        self.table = {i: v.to(dev) for i, v in table.items()}
        self.calls = 0


def _dealt(call: Callable[[Any, bool | None], Any], objective: Any, progress: bool | None,
           generator: torch.Generator | None = None) -> Any:
    """`call(objective, progress)`, with its loss evaluations split across ranks (`_Dealt`); the
    generator is rewound so that the replay draws what the first pass drew."""
    if not distributed.active():
        return call(objective, progress)
    dealt = _Dealt(objective)
    state = generator.get_state() if generator is not None else None
    call(dealt, progress if distributed.is_main() else False)
    dealt.replay()
    if generator is not None:
        generator.set_state(state)
    return call(dealt, False)


def _first(ds: Dataset | sources.Stream, n: int | None,
           bounds: Sequence[float] | None = None) -> Dataset | sources.Stream:
    """The first `n` examples (all for None) as a source the objective reads batch by batch:
    a view of an in-memory `Dataset`, or a stream that is read again on every evaluation.
    Inputs are checked against `bounds` (once in memory; on every batch read for a stream)."""
    n = len(ds) if n is None else min(int(n), len(ds))
    part = ds if n == len(ds) else ds.subset(slice(0, n))
    if bounds is not None:
        if isinstance(part, sources.Stream):
            part.bounds = sources.check_bounds_arg(bounds)
        else:
            sources.check_bounds(part.x, bounds, f"images of {ds.name!r}")
    return part


def _attack_overrides(attack_settings: dict[str, Any] | None,
                      bounds: Sequence[float] | None) -> dict[str, Any]:
    """The default attack's settings; non-default `bounds` become the attack's box."""
    s = dict(attack_settings or {})
    if bounds is not None and tuple(float(b) for b in bounds) != sources.DEFAULT_BOUNDS:
        s.setdefault("bounds", tuple(float(b) for b in bounds))
    return s


def _setup(model: nn.Module, params: dict[str, torch.Tensor] | None, selection: Any,
           device: torch.device | str | None) -> tuple[dict[str, torch.Tensor], list[str]]:
    if device is not None:
        model.to(device)
    if params is None:  # the model's own weights, dequantized when it carries a scheme
        params = {**dict(model.named_parameters()), **Predictor(model).params()}
    base = {n: p.detach() for n, p in params.items()}
    names = select(model, selection)
    return base, names


def flatness(model: nn.Module, test: Any, *, kind: str = "average",
             xi: float | Sequence[float] = 0.5, clean: bool = False,
             attack: Attack | None = None, attack_settings: dict[str, Any] | None = None,
             n_test: int | None = 1000, samples: int = 10, steps: int = 20, restarts: int = 1,
             step_size: float | None = None, selection: Any = "all",
             params: dict[str, torch.Tensor] | None = None, train: Any = None,
             seed: int = 0, batch_size: int = 256, device: torch.device | str | None = None,
             progress: bool | None = None, return_nu: bool = False,
             bounds: Sequence[float] | None = (0.0, 1.0),
             n: Any = UNSET) -> dict[str, Any]:
    """Flatness of the robust (or clean) loss at the model's weights for each ξ.

    kind: "average" (mean over `samples` random ν on the sphere of B_ξ) or "worst" (projected
    normalized ascent on ν jointly with the input attack, `steps` steps, max over `restarts`).
    attack: an input attack `attack(model, x, y, *, generator) -> AttackResult` such as
    `rl.attacks.PGD(...)` or `rl.attacks.APGD(...)`; default PGD-L∞ (`attack_settings` override
    its options). `params` replaces the model's weights (default: the model's own, or its
    dequantized weights when it carries a quantization scheme, `rl.models.Predictor`).
    `selection`: which tensors the ball perturbs (`robustlab.weights.select`; default "all":
    the conv/linear weights and biases, never norm-layer parameters).
    With `train`, the same robust loss on as many training examples gives the test−train gap.
    `test`/`train`: a robustlab `Dataset`, `(x, y)` tensors, a torch `Dataset` or a `DataLoader`
    (streamed: the first `n_test` examples are read again for every loss evaluation, never held).
    Inputs outside `bounds` are refused; the default attack stays within them. The model runs in
    eval mode; its mode and buffers are left as they were.

    Example:
        >>> import torch, robustlab as rl
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(20, 1, 4, 4), torch.arange(20) % 3
        >>> r = rl.evaluate.flatness(model, (x, y), xi=[0.0, 0.5], clean=True, samples=2)
        >>> r["flatness"][0]
        0.0
    """
    n = renamed("flatness", "n", n, "n_test", n_test)
    test = sources.as_data(test)
    if kind not in KINDS:
        raise UserError(f"unknown flatness kind {kind!r}; choose one of {', '.join(KINDS)}")
    xis = _xis(xi)
    samples = check_count("samples", samples, 1)
    steps = check_count("steps", steps, 0)
    restarts = check_count("restarts", restarts, 1)
    if n is not None:
        check_count("n", n, 1)
    base, names = _setup(model, params, selection, device)
    settings: dict[str, Any] = {"variant": "clean"}
    if not clean:
        if attack is None:
            attack, settings = default_attack(test.shape, **_attack_overrides(attack_settings,
                                                                              bounds))
        else:
            settings = _custom_settings(attack)
        settings = {"variant": "robust", **settings}
    inner = None if clean else attack
    part = _first(test, n, bounds)
    fixed = {k: v for k, v in base.items() if k not in names}
    objective = ModelObjective(model, part, None, inner, batch_size=batch_size, fixed=fixed)
    ref = objective.evaluate({k: base[k] for k in names}, seed)
    result: dict[str, Any] = {
        "flatness_kind": kind, "variant": "clean" if clean else "robust", "n": int(len(part)),
        "seed": seed, "attack": settings, "parameters": names,
        "loss": float(ref["loss"]), "err": float(ref["err"]), "clean_err": float(ref["clean_err"]),
        "config": {"samples": samples} if kind == "average" else
        {"steps": steps, "restarts": restarts, "step_size": step_size},
    }
    if not clean:
        result["robust_err"] = float(ref["robust_err"])
    if train is not None:
        tpart = _first(sources.as_data(train), len(part), bounds)
        tr = ModelObjective(model, tpart, None, inner, batch_size=batch_size, fixed=fixed)
        tr_ref = tr.evaluate({k: base[k] for k in names}, seed)
        result["train_loss"] = float(tr_ref["loss"])
        result["train_err"] = float(tr_ref["err"])
        result["gap"] = result["loss"] - result["train_loss"]
    gen = torch.Generator().manual_seed(seed)
    per_xi, values, nus = [], [], []
    for v in xis:
        ball = RelativeBall(base, names, v)
        if kind == "average":
            r = _dealt(lambda obj, prog, ball=ball: average_case(
                obj, ball, samples=samples, generator=gen, seed=seed, progress=prog),
                objective, progress, gen)
        else:
            r = worst_case_ascent(objective, ball, steps=steps, restarts=restarts,
                                  step_size=step_size, generator=gen, seed=seed, progress=progress)
            nus.append(r.pop("nu"))
        values.append(r["flatness"])
        per_xi.append({"xi": v, **r})
    result.update(xi=xis, flatness=values, details=per_xi)
    if return_nu:
        result["nu"] = nus
    return result


def landscape(model: nn.Module, test: Any, *, dims: int = 1, direction: str = "random",
              xi: float = 0.5, extent: float | None = None, points: int = 21,
              attack: Attack | None = None, attack_settings: dict[str, Any] | None = None,
              n_test: int | None = 1000, selection: Any = "all",
              params: dict[str, torch.Tensor] | None = None, nu: dict[str, torch.Tensor] | None = None,
              steps: int = 20, seed: int = 0, batch_size: int = 256,
              device: torch.device | str | None = None,
              progress: bool | None = None,
              bounds: Sequence[float] | None = (0.0, 1.0),
              n: Any = UNSET) -> dict[str, Any]:
    """Clean and robust loss along 1-D or 2-D directions through the weights.

    Directions: "random" (filter-normalized Gaussian: coordinate α perturbs every filter by α
    times its norm) or "adversarial" (the worst-case ν of B_ξ divided by ξ, so α = ξ is the ball's
    boundary; a given `nu` is reused, else it is computed). In 2-D the second direction is random.
    Coordinates run over [−extent, extent] (default 2ξ, or 0.5 when ξ = 0). `test` and `bounds`
    as for `flatness`.

    Example:
        >>> import torch, robustlab as rl
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(20, 1, 4, 4), torch.arange(20) % 3
        >>> r = rl.evaluate.landscape(model, (x, y), points=3, attack_settings={"steps": 2})
        >>> len(r["clean_loss"]), len(r["robust_loss"])
        (3, 3)
    """
    n = renamed("landscape", "n", n, "n_test", n_test)
    test = sources.as_data(test)
    if dims not in (1, 2):
        raise UserError(f"landscape dims={dims} must be 1 or 2")
    if direction not in DIRECTIONS:
        raise UserError(f"unknown landscape direction {direction!r}; choose one of "
                        f"{', '.join(DIRECTIONS)}")
    xi = check_xi(xi)
    points = check_count("points", points, 2)
    extent = float(extent) if extent is not None else (2 * xi if xi > 0 else 0.5)
    if not extent > 0:
        raise UserError(f"landscape extent {extent} must be > 0")
    base, names = _setup(model, params, selection, device)
    if attack is None:
        attack, settings = default_attack(test.shape, **_attack_overrides(attack_settings, bounds))
    else:
        settings = _custom_settings(attack)
    part = _first(test, n, bounds)
    fixed = {k: v for k, v in base.items() if k not in names}
    gen = torch.Generator().manual_seed(seed)
    perturbed = {k: base[k] for k in names}
    dirs: list[dict[str, torch.Tensor]] = []
    if direction == "adversarial":
        if nu is None:
            if xi == 0:
                raise UserError("an adversarial landscape direction needs xi > 0")
            robust = ModelObjective(model, part, None, attack, batch_size=batch_size,
                                    fixed=fixed)
            nu = worst_case_ascent(robust, RelativeBall(base, names, xi), steps=steps,
                                   generator=gen, seed=seed, progress=progress)["nu"]
        scale = 1.0 / xi if xi > 0 else 1.0
        dirs.append({k: nu[k] * scale for k in names})
    else:
        dirs.append(filter_normalized(base, names, gen))
    if dims == 2:
        dirs.append(filter_normalized(base, names, gen) if direction == "adversarial"
                    else tensor_normalized(base, names, gen))
    half = (points - 1) / 2  # symmetric grid: the middle point (odd `points`) is exactly 0
    axis = (torch.arange(points, dtype=torch.float64) - half) / half * extent
    if dims == 1:
        coords = axis[:, None]
    else:
        a, b = torch.meshgrid(axis, axis, indexing="ij")
        coords = torch.stack([a.flatten(), b.flatten()], 1)
    out: dict[str, Any] = {"dims": dims, "direction": direction, "xi": xi, "extent": extent,
                           "points": points, "axis": axis.tolist(), "n": int(len(part)),
                           "attack": settings, "seed": seed}
    for variant, inner in (("clean", None), ("robust", attack)):
        obj = ModelObjective(model, part, None, inner, batch_size=batch_size, fixed=fixed)
        losses = _dealt(lambda o, prog: loss_along(o, perturbed, dirs, coords.float(), seed=seed,
                                                   progress=prog), obj, progress)
        out[f"{variant}_loss"] = (losses.tolist() if dims == 1
                                  else losses.view(points, points).tolist())
    return out

