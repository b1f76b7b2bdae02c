"""Evaluation: clean error, adversarial suites, bit error sweeps, flatness.

`rl.evaluate.clean(...)`, `rl.evaluate.adversarial(...)`, `rl.evaluate.bit_errors(...)`,
`rl.evaluate.chip_errors(...)`, `rl.evaluate.energy(...)`, `rl.evaluate.flatness(...)`,
`rl.evaluate.landscape(...)` and `rl.evaluate.bit_attack(...)` are the functions of the submodules
of the same idea. Every one takes the model (any `nn.Module` or callable `x -> logits`) and data
as users hold it: a robustlab `Dataset`, an `(x, y)` pair of tensors, a torch `Dataset` or a
`DataLoader` (`robustlab.sources.as_data`). Every one runs the model in eval mode and gives each
submodule its train/eval flag back afterwards; none changes a model's parameters or buffers.

They are imported eagerly: a lazily looked-up function would be shadowed by its submodule
(`robustlab.evaluate.clean`) as soon as anything imported that submodule.

Example:
    >>> import torch, robustlab as rl
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> rl.evaluate.clean(model, (torch.rand(6, 1, 4, 4), torch.arange(6) % 3))["n"]
    6
"""

from robustlab.evaluate.adversarial import adversarial
from robustlab.evaluate.bitattack import bit_attack
from robustlab.evaluate.biterrors import bit_errors, chip_errors, energy
from robustlab.evaluate.clean import clean
from robustlab.evaluate.flatness import flatness, landscape

__all__ = ["adversarial", "bit_attack", "bit_errors", "chip_errors", "clean", "energy", "flatness",
           "landscape"]
