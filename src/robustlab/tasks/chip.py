"""A model stored on a profiled chip: Err and RErr per weight-layout offset (`biterrors --chip`)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from robustlab.tasks.biterrors import BIT_LEGACY, QUANT_HELP, legacy, resolve_quant
from robustlab.tasks.clean import first_n
from robustlab.tasks.spec import EvalSpec, option, register
from robustlab.values import list_of, nonneg_int


@register
@dataclasses.dataclass
class Chip(EvalSpec):
    """Err and RErr of a run's quantized model read back through a profiled chip's bit error map:
    K samples per weight-layout offset."""

    kind: ClassVar[str] = "chip"
    title: ClassVar[str] = "Err and RErr of the quantized model stored on a profiled chip"
    requires: ClassVar[str] = "robustlab.evaluate.biterrors"

    chip: str | None = option(default=None, metavar="FILE",
                              help="chip map (.json or .npz; format in robustlab/examples/README.md)")
    offsets: list[int] = option(default_factory=lambda: [0], type=list_of(nonneg_int),
                                metavar="N,N,...",
                                help="cell offsets of the weight layout on the chip (default 0)")
    patterns: int = option("patterns", help="samples of the chip's bit errors per offset "
                           "(seeds SEED…SEED+K−1)")
    seed: int = option("seed", 100, help="first sample seed: samples use seeds SEED…SEED+K−1")
    quant: str | None = option("quant", help=QUANT_HELP)
    n_test: int | None = option("n_test")
    batch_size: int = option("batch_size", 1000)

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None, where: str = "") -> EvalSpec:
        return super().from_settings(legacy(settings, {**BIT_LEGACY, "chip_file": "chip"}), where)

    def load(self) -> Any:
        """The chip map (a one-line error when missing or malformed)."""
        from robustlab import biterrors as be
        from robustlab.errors import UserError

        if not self.chip:
            raise UserError("chip: give a chip map file (.json or .npz)")
        return be.load_chip_map(self.chip)

    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None,
            chip: Any = None) -> dict[str, Any]:
        """`chip`: the map already loaded by `load()` (else it is read here)."""
        from robustlab.evaluate.biterrors import chip_errors

        res = chip_errors(run.model, first_n(run.test, self.n_test),
                          chip if chip is not None else self.load(),
                          scheme=resolve_quant(self.quant, getattr(run, "quant", None)),
                          offsets=self.offsets, patterns=self.patterns, seed0=self.seed,
                          batch_size=self.batch_size, device=run.device, progress=progress)
        return {"chip_file": str(self.chip), **res}

    def cost(self, n_test: int) -> float:
        n = min(int(self.n_test or n_test), n_test)
        return 0.5 * n * int(self.patterns) * len(self.offsets)

    def describe(self) -> str:
        test = f"test[:{self.n_test}]" if self.n_test else "test"
        return (f"robustlab.evaluate.biterrors.chip_errors(model, {test}, "
                f"robustlab.biterrors.load_chip_map({self.chip!r}), offsets={self.offsets!r}, "
                f"patterns={self.patterns}, seed0={self.seed}"
                + (f", scheme={self.quant!r}" if self.quant else "") + ")")

    def table(self, result: dict[str, Any]) -> str:
        o = result["overall"]
        return (f"chip {result['chip']['name']}: clean Err {100 * result['clean_err']:.2f}%, mean "
                f"RErr {100 * o['rerr_mean']:.2f}% (max {100 * o['rerr_max']:.2f}%) over "
                f"{len(result['offsets'])} offset(s) × {result['patterns']} samples")
