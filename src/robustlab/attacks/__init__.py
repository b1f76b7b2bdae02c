"""Input attacks: PGD (L∞/L2/L1/L0), APGD (L∞/L2/L1; CE, DLR, APGD-T, conf), Square, FAB-T, frames,
location-optimized patches, distal inputs, corruptions.

Every attack is a function (and a frozen dataclass callable) over a model `x -> logits` that
returns an `AttackResult(x_adv, logits, y, info)`; `worst_case` merges several per example.

    from robustlab.attacks import apgd, pgd, square
    res = pgd(model, x, y, norm="l2", eps=1.5, steps=40, generator=torch.Generator().manual_seed(0))
    res.success, res.conf   # misclassified? confidence at x_adv
    res = apgd(model, x, y, norm="linf", eps=0.1, loss="dlr-t")   # APGD-T
    res = square(model, x, y, norm="linf", eps=0.1, queries=5000)  # gradient-free

Attacks validate inputs against `bounds` (default (0, 1)), run an `nn.Module` in eval mode, and
return float32 logits computed at exactly `x_adv`. Early exit (`early_stop=c`) gives the
verdicts of a run without it (see `robustlab.attacks.pgd`).
"""

from robustlab.attacks.apgd import APGD, apgd
from robustlab.attacks.base import (
                                    AttackResult,
                                    check_bounds,
                                    confidence,
                                    eval_mode,
                                    evaluate_logits,
                                    target_key,
                                    worst_case,
                                    worst_case_key,
                                    wrong_confidence,
)
from robustlab.attacks.corruptions import CORRUPTIONS, corrupt
from robustlab.attacks.distal import Distal, distal
from robustlab.attacks.fab import FAB, fab
from robustlab.attacks.frames import Frames, frame_mask, frames
from robustlab.attacks.norms import Norm, get_norm, project_l0, project_l1
from robustlab.attacks.patches import LOCATIONS, Patch, allowed_corners, patch_attack, place
from robustlab.attacks.pgd import INITS, OBJECTIVES, PGD, lp_norm, pgd, project
from robustlab.attacks.square import Square, square
from robustlab.attacks.threat import NORMS, default_eps

__all__ = [
    "APGD", "CORRUPTIONS", "FAB", "INITS", "LOCATIONS", "NORMS", "OBJECTIVES", "PGD", "Norm",
    "AttackResult", "Distal", "Frames", "Patch", "get_norm", "allowed_corners", "apgd",
    "check_bounds", "confidence", "corrupt", "eval_mode", "target_key",
    "default_eps", "distal", "evaluate_logits", "fab", "frame_mask", "frames", "lp_norm", "patch_attack",
    "pgd", "place", "project", "project_l0", "project_l1", "square", "Square", "worst_case",
    "worst_case_key",
    "wrong_confidence",
]
