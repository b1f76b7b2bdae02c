"""Lowest safe memory supply voltage of a run's quantized model and the energy it saves
(`robustlab energy`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from robustlab.tasks.biterrors import PatternSpec
from robustlab.tasks.spec import option, register
from robustlab.values import nonneg_float


@register
class Energy(PatternSpec):
    """For every point of a voltage → (bit error rate, energy) curve, RErr under K random bit error
    patterns at that rate; the lowest voltage at (and above) which the mean RErr stays within
    `tolerance` percentage points of the clean error, and the energy per access saved there."""

    kind: ClassVar[str] = "energy"
    title: ClassVar[str] = "lowest safe memory voltage of the quantized model and energy saved"
    requires: ClassVar[str] = "robustlab.evaluate.biterrors"
    source: ClassVar[tuple[str, str, str] | None] = (
        "curve", "load_curve", "energy: give a voltage curve file (--curve CSV)")
    old_keys: ClassVar[dict[str, str]] = {"curve_file": "curve", "tolerance_pp": "tolerance"}

    curve: str | None = option(
        default=None,
        help="voltage,bit_error_rate,energy curve (format in robustlab/examples/README.md; a "
        "synthetic example ships as robustlab/examples/synthetic_energy_curve.csv)",
        metavar="CSV")
    tolerance: float = option(default=1.0, type=nonneg_float, metavar="PP",
                              help="allowed RErr above the clean error, in percentage points "
                              "(default 1.0)")

    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None,
            curve: Any = None) -> dict[str, Any]:
        """`curve`: the curve already loaded by `load()` (else it is read here)."""
        from robustlab.evaluate.biterrors import energy

        res = self.apply(energy, run, curve if curve is not None else self.load(),
                            tolerance=self.tolerance / 100, progress=progress)
        return {"curve_file": str(self.curve), "tolerance_pp": self.tolerance, **res}

    def cost(self, n_test: int) -> float:
        try:
            points = len(self.load().voltage)
        except Exception:  # noqa: BLE001 - a plan's estimate; the run reports a bad curve
            points = 10
        return self.pattern_cost(n_test, points)

    def describe(self) -> str:
        return self.call_text("energy", f"robustlab.biterrors.load_curve({self.curve!r})",
                              f"tolerance={self.tolerance / 100:g}")

    def metrics(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        import math

        from robustlab.report.metric import Metric, number, sig3

        r = result
        if number(r.get("energy_saved")) is None:
            return {}
        return {"energy saved": Metric(float(r["energy_saved"]), label="energy saved",
                                       better="higher", over="", setting=f"tolerance "
                                       f"{sig3(100 * r.get('tolerance', math.nan))} points")}

    @classmethod
    def report_figures(cls, items: list[tuple[str, dict[str, Any]]], name: str, figs: Any
                       ) -> list[dict[str, Any]]:
        """One energy figure per model (order 1: after the RErr vs rate curves)."""
        from robustlab.report.biterrors_plot import plot_energy

        out = [figs.make(f"Energy of {label} ({name})", "Mean RErr and relative energy "
                         "per memory access against supply voltage.",
                         lambda p, r=r: plot_energy(r, p), order=1) for label, r in items]
        return [f for f in out if f]

    def figures(self, result: dict[str, Any], folder: Path) -> list[Path]:
        from robustlab.report.biterrors_plot import plot_energy

        return [plot_energy(result, Path(folder) / "energy.png")]

    def table(self, result: dict[str, Any]) -> str:
        res = result
        tol = res.get("tolerance_pp", 100 * res["tolerance"])
        lines = [f"clean Err {100 * res['clean_err']:.2f}%, tolerance {tol:g} points, "
                 f"{res['patterns']} patterns",
                 f"  {'voltage':>8}  {'p (%)':>9}  {'energy':>6}  {'RErr (%)':>8}  {'max':>6}  safe"]
        for row in res["voltages"]:
            lines.append(f"  {row['voltage']:8.3g}  {100 * row['bit_error_rate']:9.3g}  "
                         f"{row['relative_energy']:6.3f}  {100 * row['rerr_mean']:8.2f}  "
                         f"{100 * row['rerr_max']:6.2f}  {'yes' if row['safe'] else 'no'}")
        if res["lowest_safe_voltage"] is None:
            lines.append("no safe voltage: RErr exceeds the tolerance already at the nominal voltage")
        else:
            lines.append(f"lowest safe voltage {res['lowest_safe_voltage']:g} (bit error rate "
                         f"{100 * res['bit_error_rate']:.3g}%): energy saved "
                         f"{100 * res['energy_saved']:.1f}%")
        return "\n".join(lines)
