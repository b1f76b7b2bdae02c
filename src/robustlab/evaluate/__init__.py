"""Evaluation: clean error, adversarial suites, bit error sweeps, flatness.

`rl.evaluate.clean(...)`, `rl.evaluate.adversarial(...)`, `rl.evaluate.bit_errors(...)`,
`rl.evaluate.flatness(...)` and `rl.evaluate.bit_attack(...)` are the functions of the submodules
of the same idea. They are imported eagerly: a lazily looked-up function would be shadowed by its
submodule (`robustlab.evaluate.clean`) as soon as anything imported that submodule.
"""

from robustlab.evaluate.adversarial import adversarial
from robustlab.evaluate.bitattack import bit_attack
from robustlab.evaluate.biterrors import bit_errors
from robustlab.evaluate.clean import clean
from robustlab.evaluate.flatness import flatness

__all__ = ["adversarial", "bit_attack", "bit_errors", "clean", "flatness"]
