"""Checks every attack test makes the same way: early exit changes no verdict, and the returned
point is the worst case of every point visited."""

import torch

from robustlab.attacks import worst_case_key


def assert_early_exit_invariant(on, off, c: float, max_decided: int | None = None) -> torch.Tensor:
    """`on` (early exit at confidence c) and `off` give the same verdicts; the examples that were
    not decided (misclassified with confidence ≥ c) ran exactly the same. Returns `decided`."""
    assert 0.1 < off.success.float().mean() < 0.95
    assert torch.equal(on.success, off.success)
    decided = on.success & (on.wrong_conf >= c)
    assert torch.equal(decided, off.success & (off.wrong_conf >= c))
    assert 20 < int(decided.sum()) < (max_decided or decided.numel() + 1)
    assert torch.equal(on.x_adv[~decided], off.x_adv[~decided])
    return decided


def assert_worst_of_visited(res, visited: torch.Tensor, y: torch.Tensor, model) -> torch.Tensor:
    """`res` is misclassified iff some visited point was, and its key is the best visited key;
    its logits are the float32 logits at its own input. `visited`: T×N×K logits. Returns the
    visited keys (T×N)."""
    keys = torch.stack([worst_case_key(v, y) for v in visited])
    ever_wrong = (visited.argmax(2) != y).any(0)
    assert ever_wrong.any() and not ever_wrong.all()
    assert torch.equal(res.success, ever_wrong)
    assert torch.equal(res.key(), keys.max(0).values)
    assert torch.allclose(res.logits, model(res.x_adv), atol=1e-5)
    return keys
