"""How large may a radius be? Nearest other-class distances per norm (`robustlab epsilons`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from robustlab.evaluate.epsilons import QUANTILES, RADIUS_FACTORS
from robustlab.tasks.spec import EvalSpec, option, register
from robustlab.tasks.vocabulary import NORMS
from robustlab.values import list_of, positive_int


@register
class Epsilons(EvalSpec):
    """Per norm, the distance of each test image to its nearest training image of another class."""

    kind: ClassVar[str] = "epsilons"
    title: ClassVar[str] = "distances of test images to the nearest other-class training image"
    requires: ClassVar[str] = "robustlab.evaluate.epsilons"

    norms: list[str] = option(default_factory=lambda: list(NORMS), type=list_of(str),
                              help="comma list of linf, l2, l1, l0 (default: all)")
    n_test: int = option("n_test", 500, help="first test images to measure")
    n_train: int | None = option(None, None, type=positive_int,
                                 help="first training images to search (default: all)")
    seed: int = option("seed")
    quantiles: list[float] = option(default_factory=lambda: list(QUANTILES), cli=False,
                                    help="quantiles of the distances to report")
    bins: int = option(default=30, cli=False, help="histogram bins")
    radius_factors: list[float] = option(default_factory=lambda: list(RADIUS_FACTORS), cli=False,
                                         help="example radii as multiples of the default radius")

    def check(self) -> None:
        from robustlab.attacks.threat import check_norm

        for norm in self.norms:
            check_norm(norm)

    def measure(self, train: Any, test: Any, *, model: Callable | None = None,
                dataset: str | None = None, device: Any = "cpu",
                examples_path: str | Path | None = None,
                progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """`robustlab.evaluate.epsilons.epsilons` with these settings."""
        from robustlab.evaluate.epsilons import epsilons

        return epsilons(train, test, self.norms, n_test=self.n_test, n_train=self.n_train,
                        quantiles=self.quantiles, bins=self.bins, radius_factors=self.radius_factors,
                        model=model, dataset=dataset, seed=self.seed, device=device,
                        examples_path=examples_path, progress=progress)

    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None
            ) -> dict[str, Any]:
        """The run's data; adversarial example images by the run's model."""
        return self.measure(run.train, run.test, model=run.predictor(),
                            dataset=(run.meta.get("data") or {}).get("name"), device=run.device,
                            examples_path=Path(run.path) / "results"
                            / f"{name or self.kind}_examples.safetensors")

    def cost(self, n_test: int) -> float:
        return 0.05 * min(int(self.n_test), n_test) * len(self.norms)

    def describe(self) -> str:
        return (f"robustlab.evaluate.epsilons.epsilons(train, test, {self.norms!r}, "
                f"n_test={self.n_test}, n_train={self.n_train}, seed={self.seed})")

    def table(self, result: dict[str, Any]) -> str:
        d = result["data"]
        lines = [f"{d['name']}: {d['n_test']} test images against {d['n_train']} training images"]
        qs = list(next(iter(result["norms"].values()))["quantiles"])
        lines.append(f"{'norm':<5} {'min':>8} " + " ".join(f"{'q' + q:>8}" for q in qs)
                     + f" {'default ε':>9} {'within ε':>8}")
        for norm, v in result["norms"].items():
            lines.append(f"{norm:<5} {v['min']:8.4g} "
                         + " ".join(f"{v['quantiles'][q]:8.4g}" for q in qs)
                         + f" {v['default_eps']:9.4g} {100 * v['frac_within_default_eps']:7.2f}%")
        return "\n".join(lines)

    @classmethod
    def report_figures(cls, items: list[tuple[str, dict[str, Any]]], name: str, figs: Any
                       ) -> list[dict[str, Any]]:
        """None: distances within the data set compare no models (`robustlab epsilons` draws
        `figures()` beside the result, where its example images are read from)."""
        return []

    def figures(self, result: dict[str, Any], folder: Path) -> list[Path]:
        """The distance histograms and, when saved, the perturbed example images."""
        from robustlab.report import adversarial_plots as plots

        folder = Path(folder)
        figs = [plots.plot_epsilon_histograms(result, folder / "epsilons_hist.png")]
        if result.get("examples_file"):
            figs.append(plots.plot_epsilon_examples(folder / result["examples_file"],
                                                    folder / "epsilons_examples.png"))
        return figs
