"""Loss landscapes: clean and robust loss along 1-D or 2-D directions through the weights
(`robustlab flatness --landscape`, presets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from robustlab.tasks.flatness import FLAT_OLD_KEYS, attack_settings, check_finite, spread_attack
from robustlab.tasks.spec import EvalSpec, option, register
from robustlab.values import nonneg_float, nonneg_int, positive_float, positive_int

DIRECTIONS = ("random", "adversarial")


@register
class Landscape(EvalSpec):
    """Clean and robust loss on a grid along a filter-normalized random direction or the
    worst-case ν of the relative ball B_ξ (2-D: plus a random one)."""

    kind: ClassVar[str] = "landscape"
    title: ClassVar[str] = "clean and robust loss along directions through the weights"
    requires: ClassVar[str] = "robustlab.evaluate.flatness"
    old_keys: ClassVar[dict[str, str]] = FLAT_OLD_KEYS  # those naming a landscape field

    dims: int = option(default=1, type=positive_int, choices=(1, 2),
                       help="1 (a line) or 2 (a plane); the command's --landscape 1d|2d")
    direction: str = option(default="random", choices=DIRECTIONS,
                            help="landscape direction (random: filter-normalized)")
    xi: float = option(default=0.5, type=nonneg_float,
                       help="relative radius of the adversarial direction's ball")
    points: int | None = option(default=None, type=positive_int,
                                help="landscape points per axis (default 21 in 1-D, 11 in 2-D)")
    extent: float | None = option(default=None, type=positive_float,
                                  help="landscape coordinates in [-E, E] (default 2·ξ)")
    ascent_steps: int = option(default=20, type=nonneg_int,
                               help="ascent steps on ν for the adversarial direction")
    params: str = option("params", help="perturbed tensors: all (conv/linear weights and "
                         "biases), default (the same), weights, or comma-separated names")
    n_test: int = option("n_test", 1000, help="first N test images")
    norm: str = option("norm", help="threat model of the inner PGD")
    eps: float | None = option("eps", help="PGD radius (default: the spec's radius for the image size)")
    steps: int = option("steps", 20, help="PGD iterations of the robust loss")
    seed: int = option("seed")
    batch_size: int = option("batch_size", 256)

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None, where: str = "") -> EvalSpec:
        return super().from_settings(spread_attack(settings, where or f"{cls.kind} settings"),
                                     where)

    def n_points(self) -> int:
        return int(self.points or (21 if self.dims == 1 else 11))

    def result_name(self) -> str:
        """`landscape-1d-random`, `landscape-2d-adversarial`, …"""
        return f"landscape-{self.dims}d-{self.direction}"

    def check(self) -> None:
        check_finite(xi=self.xi, eps=self.eps, extent=self.extent)

    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None,
            nu: Any = None) -> dict[str, Any]:
        """`nu`: the worst-case ν of B_ξ already found (by `Flatness.compute`), else computed."""
        from robustlab.evaluate.flatness import landscape

        self.check()
        return landscape(run.model, run.test, dims=self.dims, direction=self.direction,
                         xi=self.xi, extent=self.extent, points=self.n_points(),
                         attack_settings=attack_settings(self, run), n_test=self.n_test,
                         selection=self.params, params=run.params(), nu=nu,
                         steps=self.ascent_steps, seed=self.seed, batch_size=self.batch_size,
                         device=run.device, progress=progress)

    def cost(self, n_test: int) -> float:
        n = min(int(self.n_test or n_test), n_test)
        return n * self.n_points() ** int(self.dims) * (int(self.steps) + 1 + 0.3)

    def describe(self) -> str:
        att = {"norm": self.norm, "steps": self.steps, **({"eps": self.eps} if self.eps else {})}
        return (f"robustlab.evaluate.flatness.landscape(model, test, dims={self.dims}, "
                f"direction={self.direction!r}, xi={self.xi}, extent={self.extent}, "
                f"points={self.n_points()}, attack_settings={att!r}, n_test={self.n_test}, "
                f"selection={self.params!r}, steps={self.ascent_steps}, seed={self.seed})")

    group: ClassVar[str] = "flatness"  # the report's section (figures only: no metrics)

    @classmethod
    def report_figures(cls, items: list[tuple[str, dict[str, Any]]], name: str, figs: Any
                       ) -> list[dict[str, Any]]:
        """The 1-D landscapes of every model on one shared y-axis, each 2-D one on its own
        (order 1: after the flatness figures)."""
        from robustlab.report.flatness_plots import plot_landscape, plot_landscapes

        out = []
        one_d = [(lab, r) for lab, r in items if r.get("dims") == 1]
        if one_d:
            out.append(figs.make(f"Loss landscapes ({name})",
                                 "Clean (blue) and robust (red) loss along a weight direction "
                                 "through each model (α: step relative to each filter's norm; "
                                 "dotted: ±ξ for adversarial directions); one shared y-axis.",
                                 lambda p: plot_landscapes(one_d, p), order=1))
        for label, r in items:
            if r.get("dims") != 1:
                out.append(figs.make(f"Loss landscape of {label} ({name})",
                                     "Clean and robust loss over a 2-D plane of weight directions.",
                                     lambda p, r=r: plot_landscape(r, p), order=1))
        return [f for f in out if f]

    def figures(self, result: dict[str, Any], folder: Path) -> list[Path]:
        from robustlab.report.flatness_plots import plot_landscape

        name = f"landscape-{result['dims']}d-{result['direction']}"
        return [plot_landscape(result, Path(folder) / f"{name}.png")]

    def table(self, result: dict[str, Any]) -> str:
        lines = [f"{result['direction']} {result['dims']}-D landscape over [-{result['extent']:g}, "
                 f"{result['extent']:g}] on {result['n']} test images"]
        if result["dims"] == 1:
            lines.append(f"  {'α':>8}  {'clean':>8}  {'robust':>8}")
            for a, c, r in zip(result["axis"], result["clean_loss"], result["robust_loss"]):
                lines.append(f"  {a:8.4g}  {c:8.4f}  {r:8.4f}")
        return "\n".join(lines)
