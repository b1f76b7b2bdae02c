"""One command-line vocabulary: each shared option name means the same thing in every command.

Spec fields name a term (`option("n_test")`) and get its flag, help, type and default; a spec
may override the default (e.g. a different `batch_size`), never the meaning. `markdown()`
renders the table in docs/cli.md (a test keeps the two equal). Old spellings (`aliases`) keep
working for one release with a one-line deprecation note.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from typing import Any

from robustlab.attacks.norms import NORMS as _NORM_REGISTRY
from robustlab.values import list_of, nonneg_int, positive_float, positive_int, seed_int


@dataclasses.dataclass(frozen=True)
class Term:
    help: str
    type: Callable[[str], Any] | None = None
    default: Any = None
    metavar: str | None = None
    choices: Collection[Any] | None = None
    aliases: tuple[str, ...] = ()


def _tpr(text: str) -> float:
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"TPR {text!r} is not a number; it must be in (0, 1]") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"TPR {text} is out of range; it must be in (0, 1]")
    return v


_tpr.__name__ = "a TPR in (0, 1]"


def _tprs(text: str) -> list[float]:
    """Comma-separated TPRs, or `none` (no confidence thresholding)."""
    return [] if text.strip().lower() == "none" else list_of(_tpr)(text)


_tprs.__name__ = "TPRs in (0, 1], or none"

# the registered Lp norms, a live view: a norm registered later (attacks.norms.NORMS) is accepted too
NORMS = _NORM_REGISTRY.keys()

VOCABULARY: dict[str, Term] = {
    # which data, how much of it, how fast
    "n_test": Term("evaluate on the first N test images (default: all)", positive_int, None, "N"),
    "batch_size": Term("images per forward pass", positive_int, 512),
    "seed": Term("seed of every random draw (attack starts, bit error patterns, …)", seed_int, 0,
                 aliases=("--seed0",)),
    # quantized weights and bit errors
    "quant": Term("quantization scheme: rquant<bits> or normal<bits>, optionally with key=value "
                  "overrides, e.g. rquant4 or 'rquant8,rounding=trunc' (default: the run's own, "
                  "else rquant8)", str, None, "SCHEME", aliases=("--scheme",)),
    "rates": Term("bit error rates as fractions or percentages, e.g. 0.001,1%", None, None,
                  "P,P,…"),
    "patterns": Term("random bit error patterns per rate (seeds SEED…SEED+K−1)", positive_int, 50,
                     "K"),
    "budgets": Term("numbers of flipped bits", list_of(nonneg_int), [10, 20, 40, 80, 160, 320],
                    "B,B,…", aliases=("--budget",)),
    "params": Term("which tensors to perturb: all (every parameter), weights (conv/linear weights), "
                   "or a comma list of parameter names", str, "all", "WHICH"),
    # input attacks and threat models
    "norm": Term("the threat model's norm", str, "linf", choices=NORMS),
    "eps": Term("perturbation radius", positive_float, None, "R"),
    "steps": Term("attack iterations", nonneg_int, None),
    "step_size": Term("attack step size", positive_float, None),
    "restarts": Term("attack restarts", positive_int, 1),
    "targets": Term("target classes of targeted attacks (the most likely non-true ones)",
                    positive_int, 9),
    "tprs": Term("true positive rates at which the confidence threshold τ is calibrated "
                 "('none': no τ; an example is then decided once misclassified, as in "
                 "AutoAttack)", _tprs, [0.99, 0.98], "T,T,…", aliases=("--tpr",)),
    # models
    "norm_layer": Term("normalization layers of the model", str, None, aliases=("--norm",)),
}


def markdown() -> str:
    """The vocabulary as a Markdown table (docs/cli.md)."""
    rows = ["| option | meaning | old spelling |", "|---|---|---|"]
    for name, t in VOCABULARY.items():
        flag = "--" + name.replace("_", "-")
        old = ", ".join(f"`{a}`" for a in t.aliases)
        rows.append(f"| `{flag}` | {t.help} | {old} |")
    return "\n".join(rows) + "\n"
