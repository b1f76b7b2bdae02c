"""Robust tracking during training: robust error on a held-out split after every epoch (spec §8).

A preset run's `track: {...}` is this spec's settings. `hook(val, test)` is the trainer's epoch
hook (and the history key that picks the best snapshot); `run(run)` reads a trained run's
history back as best vs last epoch (the robust-overfitting numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from robustlab.errors import UserError
from robustlab.tasks.spec import EvalSpec, option, register


@register
class Tracking(EvalSpec):
    """PGD robust loss/error (and clean) of the training model on a held-out split, per epoch."""

    kind: ClassVar[str] = "tracking"
    title: ClassVar[str] = "robust error on a held-out split after every epoch (robust overfitting)"
    requires: ClassVar[str] = "robustlab.evaluate.robust_tracking"

    split: str = option(default="val", type=str, choices=("val", "test"),
                        help="held-out split attacked after every epoch (val: the test set when "
                        "the run has no validation split)")
    n_test: int = option("n_test", 500, help="held-out images attacked after every epoch",
                         aliases=("--n",))
    norm: str = option("norm")
    eps: float | None = option("eps", help="perturbation radius (default: the spec's for the "
                               "image size)")
    steps: int = option("steps", 10)
    step_size: float | None = option("step_size", help="attack step size (default: PGD's)")
    restarts: int = option("restarts")
    seed: int = option("seed", help="seed of the attack's random starts (the same every epoch)")
    batch_size: int = option("batch_size", 256)

    def attack_settings(self) -> dict[str, Any]:
        """PGD settings (`robustlab.evaluate.robust_tracking.make_attack`)."""
        s: dict[str, Any] = {"norm": self.norm, "steps": self.steps, "restarts": self.restarts}
        if self.eps is not None:
            s["eps"] = self.eps
        if self.step_size is not None:
            s["step_size"] = self.step_size
        return s

    def hook(self, val: Any, test: Any) -> tuple[Callable[[Any], dict[str, float]], str | None]:
        """(trainer epoch hook, history key that selects the best snapshot or None). The
        validation split when there is one and `split` is val, else the test set (`test_` keys,
        no snapshot selection)."""
        from robustlab.evaluate.robust_tracking import epoch_hook

        ds = val if self.split == "val" and val is not None else test
        on_val = ds is val
        hook = epoch_hook(ds, self.attack_settings(), seed=self.seed, n_test=self.n_test,
                          batch_size=self.batch_size, prefix="val_" if on_val else "test_")
        return hook, "val_robust_err" if on_val else None

    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None
            ) -> dict[str, Any]:
        """Best vs last epoch of a run trained with tracking (`best_vs_last`)."""
        from robustlab.evaluate.robust_tracking import best_vs_last
        from robustlab.report.summary import read_history

        history = read_history(run.path)
        for key in ("val_robust_err", "test_robust_err"):
            if any(key in h for h in history):
                return best_vs_last(history, key)
        raise UserError(f"{run.path} was trained without robust tracking; no epoch records "
                        "val_robust_err or test_robust_err")

    def cost(self, n_test: int) -> float:
        """Per training epoch: n clean forwards plus `steps` attack steps on each."""
        return float(self.n_test * (1 + self.steps))

    def describe(self) -> str:
        return (f"robustlab.evaluate.robust_tracking.epoch_hook(held_out, {self.attack_settings()!r}, "
                f"seed={self.seed}, n_test={self.n_test}, batch_size={self.batch_size})")

    def table(self, result: dict[str, Any]) -> str:
        key = result["key"]
        b, last = result["best"], result["last"]
        return (f"{key}: best {100 * b[key]:.2f}% at epoch {result['best_epoch']}, last "
                f"{100 * last[key]:.2f}% at epoch {result['last_epoch']} (robust overfitting "
                f"{100 * result['overfitting'].get(key, 0.0):+.2f} points)")
