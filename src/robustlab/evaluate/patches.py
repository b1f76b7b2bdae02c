"""Adversarial patches at fixed, random and optimized locations (spec §3, §9.4).

Every location mode attacks the same first test images with `robustlab.attacks.patch_attack`
(same content steps, restarts and seed), so the modes are compared on identical randomness.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from robustlab.errors import UNSET, renamed

LOCATIONS = ("fixed", "random", "optimized-full")


def patches(model: Callable[[torch.Tensor], torch.Tensor], test: Any, *,
            locations: list[str] | tuple[str, ...] = LOCATIONS,
            n_test: int = 1000, size: int | None = None, steps: int = 100, step_size: float = 0.05,
            restarts: int = 1, stride: int = 2, objective: str = "ce", seed: int = 0,
            batch_size: int = 500, device: Any = "cpu", n_examples: int = 8,
            examples_path: str | Path | None = None,
            n: Any = UNSET) -> dict[str, Any]:
    """RErr under location-fixed, random and optimized adversarial patches (spec §3, §9.4).

    Every location mode attacks the first `n_test` test images with `robustlab.attacks.patch_attack`
    (same content steps, restarts and seed); RErr counts an example wrong clean or patched. With
    `examples_path`, the first patched images of every mode are saved for the report
    (`robustlab.evaluate.adversarial.save_examples`).
    """
    n = renamed("patches", "n", n, "n_test", n_test)
    from robustlab.attacks.base import confidence, evaluate_logits
    from robustlab.attacks.patches import parse_location, patch_attack

    locs = [parse_location(loc) for loc in locations]
    n = min(int(n), len(test))
    x_all, y_all = test.x[:n], test.y[:n]
    clean_wrong, out_locs, examples = [], {}, {}
    for i in range(0, n, batch_size):
        x = x_all[i:i + batch_size].to(device)
        clean_wrong.append(evaluate_logits(model, x).argmax(1).cpu() != y_all[i:i + batch_size])
    cw = torch.cat(clean_wrong)
    for loc in locs:
        g = torch.Generator().manual_seed(seed)
        wrong = []
        for i in range(0, n, batch_size):
            x, y = x_all[i:i + batch_size].to(device), y_all[i:i + batch_size].to(device)
            res = patch_attack(model, x, y, size=size, steps=steps, step_size=step_size,
                               location=loc, stride=stride, restarts=restarts, objective=objective,
                               generator=g)
            wrong.append((res.pred != y).cpu())
            if i == 0:
                k = min(n_examples, x.shape[0])
                examples[loc] = {"clean": x[:k].cpu(), "adv": res.x_adv[:k].detach().cpu(),
                                 "pred": res.pred[:k].cpu(), "conf": confidence(res.logits[:k]).cpu(),
                                 "y": y[:k].cpu()}
        w = torch.cat(wrong)
        out_locs[loc] = {"rerr": float((w | cw).double().mean()), "err": float(w.double().mean())}
    out: dict[str, Any] = {"n": n, "clean": {"err": float(cw.double().mean())}, "locations": out_locs,
                           "config": {"size": size, "steps": steps, "step_size": step_size,
                                      "restarts": restarts, "stride": stride,
                                      "objective": objective, "seed": seed}}
    if examples_path is not None and examples:
        from robustlab.evaluate.adversarial import save_examples

        out["examples_file"] = save_examples(examples_path, examples, list(test.classes))
    return out
