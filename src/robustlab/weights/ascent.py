"""Average- and worst-case weight perturbations in a relative ball (spec §8).

Both functions take an `Objective` (see `objective.py`) and a `RelativeBall` and return the loss
increase over the unperturbed weights. The same `seed` drives the inner input attack on both
sides of every difference, so ξ = 0 gives exactly 0.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from robustlab.errors import UserError
from robustlab.weights.ball import Params, RelativeBall
from robustlab.weights.objective import Objective


def check_count(name: str, value: int, minimum: int = 1) -> int:
    """`value` as an int; a UserError unless it is an integer >= `minimum`."""
    if int(value) != value or value < minimum:
        raise UserError(f"{name}={value} must be an integer >= {minimum}")
    return int(value)


def average_case(objective: Objective, ball: RelativeBall, *, samples: int = 10,
                 generator: torch.Generator, seed: int = 0, kind: str = "sphere",
                 progress: bool | None = None) -> dict:
    """Mean over `samples` random ν on the sphere of B_ξ (or in the ball) of
    L(w + ν) − L(w), each L recomputed with the same attack seed."""
    samples = check_count("samples", samples)
    base = objective.value(ball.apply(ball.zeros()), seed)
    losses = []
    for _ in tqdm(range(samples), desc="average-case", disable=True if progress is False else None,
                  leave=False):
        nu = ball.sample(generator, kind)
        losses.append(objective.value(ball.apply(nu), seed))
    losses_t = torch.stack(losses)
    return {"flatness": float(losses_t.mean() - base), "loss": float(base),
            "perturbed_losses": losses_t.tolist(),
            "std": float(losses_t.std()) if samples > 1 else 0.0}


def worst_case_ascent(objective: Objective, ball: RelativeBall, *, steps: int = 20,
                       restarts: int = 1, step_size: float | None = None, generator: torch.Generator,
                       seed: int = 0, progress: bool | None = None) -> dict:
    """Projected normalized ascent on ν ∈ B_ξ (jointly with the objective's input attack):
    ν_l += η‖w_l‖·g_l/‖g_l‖, project; each restart starts uniformly in the ball and keeps its best
    iterate. The best ν of each restart is re-evaluated with the reference `seed`; the result is
    the maximum over restarts minus L(w). `step_size` η defaults to ξ/4."""
    steps = check_count("steps", steps, 0)
    restarts = check_count("restarts", restarts)
    eta = ball.xi / 4 if step_size is None else float(step_size)
    if not eta >= 0:
        raise UserError(f"step size {step_size} must be >= 0")
    base = objective.value(ball.apply(ball.zeros()), seed)
    finals, best_nus, traces = [], [], []
    bar = tqdm(total=restarts * (steps + 1), desc="worst-case", leave=False,
               disable=True if progress is False else None)
    for r in range(restarts):
        nu = ball.sample(generator, "ball")
        best_val, best_nu, trace = None, nu, []
        for t in range(steps + 1):
            step_seed = seed + 1 + r * (steps + 1) + t
            if t < steps:
                val, grads = objective.value_and_grad(ball.apply(nu), step_seed)
            else:
                val, grads = objective.value(ball.apply(nu), step_seed), None
            trace.append(val)
            if best_val is None:
                best_val, best_nu = val, nu
            else:  # keep the best iterate without a host synchronisation
                better = val > best_val
                best_val = torch.where(better, val, best_val)
                best_nu = {n: torch.where(better.to(v.device), v, best_nu[n])
                           for n, v in nu.items()}
            if grads is not None:
                nu = ball.ascent(nu, grads, eta)
            bar.update(1)
        finals.append(objective.value(ball.apply(best_nu), seed))
        best_nus.append(best_nu)
        traces.append(torch.stack(trace).tolist())
    bar.close()
    finals_t = torch.stack(finals)
    k = int(finals_t.argmax())
    return {"flatness": float(finals_t[k] - base), "loss": float(base),
            "perturbed_losses": finals_t.tolist(), "traces": traces, "step_size": eta,
            "nu": best_nus[k]}


def loss_along(objective: Objective, params: Params, directions: list[Params],
               coords: torch.Tensor, seed: int = 0, progress: bool | None = None) -> torch.Tensor:
    """Losses at w + Σ_i coords[j, i]·d_i for every row j of `coords` (1-D or 2-D landscapes)."""
    out = []
    for row in tqdm(coords, desc="landscape", leave=False,
                    disable=True if progress is False else None):
        p = {}
        for n, w in params.items():
            v = w.detach()
            for a, d in zip(row.tolist(), directions):
                v = v + a * d[n]
            p[n] = v
        out.append(objective.value(p, seed))
    return torch.stack(out)
