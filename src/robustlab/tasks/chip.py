"""A model stored on a profiled chip: Err and RErr per weight-layout offset (`biterrors --chip`)."""

from __future__ import annotations

from typing import Any, ClassVar

from robustlab.tasks.biterrors import PatternSpec
from robustlab.tasks.spec import option, register
from robustlab.values import list_of, nonneg_int


@register
class Chip(PatternSpec):
    """Err and RErr of a run's quantized model read back through a profiled chip's bit error map:
    K samples per weight-layout offset."""

    kind: ClassVar[str] = "chip"
    title: ClassVar[str] = "Err and RErr of the quantized model stored on a profiled chip"
    requires: ClassVar[str] = "robustlab.evaluate.biterrors"
    source: ClassVar[tuple[str, str, str] | None] = (
        "chip", "load_chip_map", "chip: give a chip map file (.json or .npz)")
    old_keys: ClassVar[dict[str, str]] = {"chip_file": "chip"}

    chip: str | None = option(default=None, metavar="FILE",
                              help="chip map (.json or .npz; format in robustlab/examples/README.md)")
    offsets: list[int] = option(default_factory=lambda: [0], type=list_of(nonneg_int),
                                metavar="N,N,...",
                                help="cell offsets of the weight layout on the chip (default 0)")
    patterns: int = option("patterns", help="samples of the chip's bit errors per offset "
                           "(seeds SEED…SEED+K−1)")
    seed: int = option("seed", 100, help="first sample seed: samples use seeds SEED…SEED+K−1")

    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None,
            chip: Any = None) -> dict[str, Any]:
        """`chip`: the map already loaded by `load()` (else it is read here)."""
        from robustlab.evaluate.biterrors import chip_errors

        res = self.apply(chip_errors, run, chip if chip is not None else self.load(),
                            offsets=self.offsets, progress=progress)
        return {"chip_file": str(self.chip), **res}

    def cost(self, n_test: int) -> float:
        return self.pattern_cost(n_test, len(self.offsets))

    def describe(self) -> str:
        return self.call_text("chip_errors", f"robustlab.biterrors.load_chip_map({self.chip!r})",
                              f"offsets={self.offsets!r}")

    def table(self, result: dict[str, Any]) -> str:
        o = result["overall"]
        return (f"chip {result['chip']['name']}: clean Err {100 * result['clean_err']:.2f}%, mean "
                f"RErr {100 * o['rerr_mean']:.2f}% (max {100 * o['rerr_max']:.2f}%) over "
                f"{len(result['offsets'])} offset(s) × {result['patterns']} samples")
