"""Weight attacks: relative-ball perturbations (flatness, AWP) and bit attacks (spec §8).

Nothing here imports `robustlab.train` or `robustlab.evaluate`.
"""

from robustlab.weights.ascent import average_case, check_count, loss_along, worst_case_ascent
from robustlab.weights.ball import (
    RelativeBall,
    check_xi,
    filter_normalized,
    select,
    tensor_normalized,
)
from robustlab.weights.bits import BitAttackResult, bfa, bit_attack, random_flips
from robustlab.weights.objective import FunctionObjective, ModelObjective, Objective, eval_mode

__all__ = [
    "BitAttackResult", "bfa", "bit_attack", "random_flips",
    "FunctionObjective", "ModelObjective", "Objective", "RelativeBall", "average_case",
    "check_count", "check_xi", "eval_mode", "filter_normalized", "loss_along", "select", "tensor_normalized",
    "worst_case_ascent",
]
