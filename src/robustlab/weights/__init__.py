"""Weight attacks: relative-ball perturbations (flatness, AWP) and bit attacks (spec §8).

Nothing here imports `robustlab.train` or `robustlab.evaluate`.
"""

from robustlab.weights.ascent import average_case, check_count, loss_along, worst_case_ascent
from robustlab.weights.ball import (
    SELECTIONS,
    RelativeBall,
    check_xi,
    filter_normalized,
    select,
    tensor_normalized,
)
from robustlab.weights.bits import (
    BitAttackResult,
    attack_codes,
    bfa,
    random_flips,
    tensor_mask,
)
from robustlab.weights.objective import FunctionObjective, ModelObjective, Objective, eval_mode

__all__ = [
    "SELECTIONS", "BitAttackResult", "attack_codes", "bfa", "random_flips", "tensor_mask",
    "FunctionObjective", "ModelObjective", "Objective", "RelativeBall", "average_case",
    "check_count", "check_xi", "eval_mode", "filter_normalized", "loss_along", "select", "tensor_normalized",
    "worst_case_ascent",
]
