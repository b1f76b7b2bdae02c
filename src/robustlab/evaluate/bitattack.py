"""Robust error under adversarial bit errors, per bit budget (spec §8).

`bit_attack(model, test, budgets=[10, 20, 40, 80, 160, 320])` quantizes the model, computes the
bit flips on an attack set (default: the first `n_attack` examples of `attack_data`, usually the
training set, so the test set is not attacked directly) and reports on the test set, per budget:

- RErr: fraction of test examples wrong clean (quantized, no flips) OR wrong with the flipped bits;
- Err with the flipped bits, the attack loss, and the number of flipped bits (≤ budget);
- targeted attacks also report the target rate: the fraction of test examples whose label is not
  the target but that are classified as the target.

Methods: "attack" (the projected attack of `robustlab.weights.bits`; budgets are attacked in
increasing order and each run also starts from the best flips of the next smaller budget), "bfa"
(progressive bit search, one run whose prefixes give every budget) and "random" (random flips,
at most one per weight, mean and max over `random_patterns` seeds) as a reference. Default:
"attack,bfa"; the projected attack's defaults are `STEPS` steps per start, `STEP_SIZE` and
`RESTARTS` starts (see `robustlab.weights.bits.attack_codes`).

**Worst case and envelope (spec §3a).** With "attack" and/or "bfa", `results["worst"]` gives per
budget the larger RErr of the two (`rerr`), which of them found it (`found_by`: "attack", "bfa",
or "attack+bfa" on a tie) and the envelope `rerr_env[i] = max over budgets b′ ≤ b_i of rerr`
(flips found with b′ bits are feasible with b ≥ b′ bits), with the budget b′ that attains it
(`env_budget`) and its attack (`env_found_by`). `results["attack"]` and `results["bfa"]` also get
their own `rerr_env`. The raw per-budget values stay in `rerr`.

Randomness: every attack run (one per budget) and every random pattern draws from its own
generator, seeded from (`seed`, method, budget index, pattern index), so each is reproducible.
Under `torchrun` the projected attack (all budgets), the BFA search and the random patterns are
dealt to the ranks and their rows gathered in order: every rank returns the single-process result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustlab import distributed, sources
from robustlab.data import Dataset
from robustlab.errors import UNSET, UserError, renamed
from robustlab.models import Batches, Predictor, quant_of
from robustlab.quant import RQUANT8, Quantized, Scheme, model_params
from robustlab.weights import bits as wb
from robustlab.weights.ball import select

BUDGETS = (10, 20, 40, 80, 160, 320)
METHODS = ("attack", "bfa", "random")
ATTACKS = ("attack", "bfa")  # the attacks whose per-budget worst case is reported
STEPS, STEP_SIZE = wb.STEPS, wb.STEP_SIZE
RESTARTS = 3  # clean codes; the previous budget's best with a growing budget; clean, growing


def envelope(budgets: Sequence[int], values: Sequence[float]) -> tuple[list[float], list[int]]:
    """`env[i] = max(values[j] for budgets[j] <= budgets[i])` and the index j attaining it (the
    smallest budget, then the first index, on ties): what an attack with budget b can reach,
    since flips found with b′ ≤ b bits are feasible with b bits. Budgets may come in any order."""
    if len(budgets) != len(values):
        raise ValueError("budgets and values must have the same length")
    env, at = [], []
    for b in budgets:
        j = min((j for j, bj in enumerate(budgets) if bj <= b),
                key=lambda j: (-values[j], budgets[j], j))
        env.append(values[j])
        at.append(j)
    return env, at


def worst_case(budgets: Sequence[int], results: dict[str, dict[str, list]]) -> dict[str, list]:
    """Per budget the worst case (largest RErr) over the attacks of `ATTACKS` in `results`, which
    attack found it ("attack+bfa" on an exact tie), and its envelope over smaller budgets."""
    names = [m for m in ATTACKS if m in results]
    if not names:
        raise ValueError(f"worst case needs one of {', '.join(ATTACKS)} in the results")
    row: dict[str, list] = {"budget": list(budgets), "rerr": [], "found_by": []}
    extra = [k for k in ("err", "flips", "target_rate") if all(k in results[m] for m in names)]
    for k in extra:
        row[k] = []
    for i in range(len(budgets)):
        vals = {m: results[m]["rerr"][i] for m in names}
        top = max(vals.values())
        found = [m for m in names if vals[m] == top]
        row["rerr"].append(top)
        row["found_by"].append("+".join(found))
        for k in extra:
            row[k].append(results[found[0]][k][i])
    row["rerr_env"], at = envelope(budgets, row["rerr"])
    row["env_budget"] = [budgets[j] for j in at]
    row["env_found_by"] = [row["found_by"][j] for j in at]
    return row


def parse_methods(method: str | Sequence[str]) -> list[str]:
    """Method names from a comma-separated string or a list, checked against `METHODS`."""
    names = [m.strip() for m in method.split(",")] if isinstance(method, str) else list(method)
    names = [m for m in names if m]
    bad = [m for m in names if m not in METHODS]
    if not names or bad:
        raise UserError(f"unknown bit attack method {(bad or [''])[0]!r}; choose from "
                        f"{', '.join(METHODS)}")
    return names


def bit_attack(model: nn.Module, test: Dataset, *, budgets: Sequence[int] = BUDGETS,
               method: str | Sequence[str] = "attack,bfa", quant: Scheme | None = None,
               quantized: Quantized | None = None, attack_data: Dataset | None = None,
               n_attack: int = 512, target: int | None = None, steps: int = STEPS,
               step_size: float = STEP_SIZE, restarts: int = RESTARTS, random_patterns: int = 5,
               selection: str | Sequence[str] = "all", seed: int = 0, batch_size: int = 512,
               device: torch.device | str | None = None,
               progress: bool | None = None,
               scheme: Any = UNSET) -> dict[str, Any]:
    """RErr of `model` on `test` under adversarial bit flips for each budget (module docstring)."""
    scheme = renamed("bit_attack", "scheme", scheme, "quant", quant)
    test = sources.as_data(test)  # tensors, torch Dataset, DataLoader (see robustlab.sources)
    attack_data = None if attack_data is None else sources.as_data(attack_data)
    scheme = scheme or quant_of(model)  # a quantization-aware fit's
    budgets = [wb.check_budget(b) for b in budgets]
    if not budgets:
        raise UserError("no bit budgets given")
    methods = parse_methods(method)
    for name, v, lo in (("n_attack", n_attack, 1), ("random_patterns", random_patterns, 1),
                        ("batch_size", batch_size, 1)):
        if int(v) != v or v < lo:
            raise UserError(f"{name}={v} must be an integer >= {lo}")
    if target is not None and not 0 <= int(target) < test.num_classes:
        raise UserError(f"target class {target} must be in 0..{test.num_classes - 1}")
    if device is not None:
        model.to(device)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    if quantized is None:
        with torch.no_grad():
            quantized = (scheme or RQUANT8).quantize(
                {k: v.detach() for k, v in model_params(model).items()})
    q = quantized.to(dev)
    allowed = wb.tensor_mask(q, select(model, selection, among=q.names))  # checked before any work
    src = attack_data if attack_data is not None else test
    xa, ya = src.x[:n_attack], src.y[:n_attack]
    batches = Batches(test, batch_size, q.device)

    def sweep(codes: torch.Tensor) -> Any:
        return Predictor(model, q.dequantize(codes), quant=False).sweep(batches)

    clean = sweep(q.codes)
    clean_wrong = clean.wrong
    not_target = clean.y != target if target is not None else None

    def scores(codes: torch.Tensor) -> dict[str, float]:
        s = sweep(codes)
        p, wrong = s.pred, s.wrong
        out = {"rerr": float((wrong | clean_wrong).double().mean()),
               "err": float(wrong.double().mean())}
        if not_target is not None:
            hit = (p == target) & not_target
            out["target_rate"] = float(hit.double().sum() / not_target.sum().clamp_min(1))
        return out

    results: dict[str, Any] = {}
    kw = dict(target=target, selection=selection, batch_size=batch_size)
    progress = progress if distributed.is_main() else False

    def gen(*unit: int) -> torch.Generator:
        return torch.Generator().manual_seed(distributed.derive_seed(seed, *unit))

    def run_unit(unit: tuple[str, int, int]) -> Any:
        """One independent piece of work: an attack run, the BFA search, or a random pattern."""
        m, j, k = unit
        if m == "attack":  # increasing budgets, each also started from the previous best
            per_budget: dict[int, dict[str, Any]] = {}
            init = None
            for j in sorted(range(len(budgets)), key=lambda j: budgets[j]):
                r = wb.attack_codes(model, q, xa, ya, budget=budgets[j], steps=steps,
                                  step_size=step_size, restarts=restarts, init=init,
                                  generator=gen(0, j), progress=progress, **kw)
                init = r.codes
                per_budget[j] = {"budget": budgets[j], "loss": r.loss, "flips": r.flips,
                                 **scores(r.codes)}
            return [per_budget[j] for j in range(len(budgets))]
        if m == "bfa":  # one search; rows in the order of `budgets`
            found = wb.bfa(model, q, xa, ya, budgets=budgets, progress=progress, **kw)
            by_budget = {b: {"budget": b, "loss": r.loss, "flips": r.flips, **scores(r.codes)}
                         for b, r in found.items()}
            return [by_budget[b] for b in budgets]
        return scores(wb.random_flips(q, budgets[j], gen(1, j, k), allowed))

    units = ([("bfa", 0, 0)] if "bfa" in methods else []) + \
        ([("attack", 0, 0)] if "attack" in methods else []) + \
        [("random", j, k) for j in range(len(budgets)) for k in range(random_patterns)
         if "random" in methods]
    done = dict(zip(units, distributed.sharded_map(run_unit, units)))
    for m in methods:
        rows: list[dict[str, Any]] = []
        if m in ATTACKS:
            rows = done[(m, 0, 0)]
        else:
            for j, b in enumerate(budgets):
                per = [done[("random", j, k)] for k in range(random_patterns)]
                row: dict[str, Any] = {"budget": b, "flips": min(b, int(allowed.sum()))}
                for key in per[0]:
                    vals = torch.tensor([p[key] for p in per], dtype=torch.float64)
                    row[key] = float(vals.mean())
                    row[f"{key}_max"] = float(vals.max())
                rows.append(row)
        results[m] = {key: [r.get(key) for r in rows] for key in rows[0]}
        if m in ATTACKS:
            results[m]["rerr_env"] = envelope(budgets, results[m]["rerr"])[0]
    if any(m in ATTACKS for m in methods):
        results["worst"] = worst_case(budgets, results)
    return {"budgets": budgets, "methods": methods, "scheme": q.scheme.to_dict(),
            "weights": q.numel, "bits": q.numel * q.scheme.bits, "n_test": len(test),
            "n_attack": int(xa.shape[0]), "target": target, "selection": selection
            if isinstance(selection, str) else list(selection), "seed": seed,
            "config": {"steps": steps, "step_size": step_size, "restarts": restarts,
                       "random_patterns": random_patterns},
            "clean_err": float(clean_wrong.double().mean()), "results": results}
