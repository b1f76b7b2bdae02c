"""Adversarial patches by location mode: fixed, random, optimized (spec §3, §9.4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from robustlab.evaluate.patches import LOCATIONS
from robustlab.tasks.spec import EvalSpec, option, register
from robustlab.values import list_of, positive_int

_KEYWORDS: dict[str, str] = {}  # spec field → keyword of `evaluate.patches.patches()`


@register
class Patches(EvalSpec):
    """RErr under location-fixed, random and optimized patches (same steps, restarts, seed)."""

    kind: ClassVar[str] = "patches"
    title: ClassVar[str] = "robust error under adversarial patches by location mode"
    requires: ClassVar[str] = "robustlab.attacks.patches"

    locations: list[str] = option(
        default_factory=lambda: list(LOCATIONS), type=list_of(str),
        help="patch location modes: fixed, random, optimized-full, … (robustlab.attacks.patches)")
    n_test: int = option("n_test", 1000, help="test images to attack", aliases=("--n",))
    size: int | None = option(None, None, type=positive_int,
                              help="patch side in pixels (default: 7 on 28×28, scaled with the image)")
    steps: int = option("steps", 100, help="attack iterations on the patch content")
    step_size: float = option("step_size", 0.05, help="attack step size on the patch content")
    restarts: int = option("restarts")
    stride: int = option(default=2, type=positive_int,
                         help="pixels the optimized location moves per step")
    objective: str = option(default="ce", type=str, help="attack objective: ce, conf or dlr")
    seed: int = option("seed")
    batch_size: int = option("batch_size", 500)

    def keywords(self) -> dict[str, Any]:
        """The settings as keyword arguments of `robustlab.evaluate.patches.patches()`."""
        return {_KEYWORDS.get(k, k): v for k, v in self.settings().items()}

    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None
            ) -> dict[str, Any]:
        from robustlab.evaluate.patches import patches

        return patches(run.predictor(), run.test, device=run.device,
                       examples_path=Path(run.path) / "results"
                       / f"{name or self.kind}_examples.safetensors", **self.keywords())

    def cost(self, n_test: int) -> float:
        n = min(int(self.n_test), n_test)
        steps = int(self.steps) * int(self.restarts)
        return sum(n * steps * (2.5 if "optimized" in loc else 1.0)
                   for loc in (self.locations or LOCATIONS))

    def describe(self) -> str:
        default = type(self)().keywords()
        kw = {k: v for k, v in self.keywords().items() if v != default[k]}
        return ("robustlab.evaluate.patches.patches(model, test, "
                + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ")")

    group: ClassVar[str] = "input attacks"  # the report's section

    def metrics(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        from robustlab.report import metric as M

        r, out = result, {}
        pre = self.prefix(name)
        n = r.get("n")
        cfg = r.get("config") or {}
        setting = ", ".join(p for p in (f"n={n}" if n is not None else "",
                                        M.plural(cfg["steps"], "step")
                                        if cfg.get("steps") is not None else "",
                                        M.plural(cfg["restarts"], "restart")
                                        if cfg.get("restarts") else "")
                            if p)
        for loc, v in (r.get("locations") or {}).items():
            if M.number(v.get("rerr")) is not None:
                out[f"{pre}RErr patch {loc}"] = M.rate_metric(
                    v["rerr"], n, label=f"{pre}RErr patch, {loc} location", setting=setting)
        if M.number((r.get("clean") or {}).get("err")) is not None:
            out[f"{pre}Err (attacked split)"] = M.rate_metric(r["clean"]["err"], n,
                                                        label=f"{pre}Err (attacked split)")
        return out

    def setting_line(self, result: dict[str, Any]) -> str:
        from robustlab.report.metric import plural

        cfg = result.get("config") or {}
        return (f"patch locations: n={result.get('n')}, {plural(cfg.get('steps'), 'step')}, "
                f"{plural(cfg.get('restarts'), 'restart')}")

    @classmethod
    def report_figures(cls, items: list[tuple[str, dict[str, Any]]], name: str, figs: Any
                       ) -> list[dict[str, Any]]:
        """RErr per location mode across the models (order 1: after the suites' RErr bars) and
        each model's example images (order 3)."""
        from robustlab.report.adversarial_plots import example_figures
        from robustlab.report.extra_plots import plot_patch_locations
        from robustlab.report.metric import n_note

        bars = figs.make(f"RErr per patch location mode ({name})",
                         "Robust error under adversarial patches whose location is fixed, "
                         "random or optimized during the attack, with 95 % Wilson "
                         f"intervals over the {n_note(items, 'n')} attacked images "
                         "(black bar: clean Err of those images).",
                         lambda p: plot_patch_locations(items, p), order=1)
        return ([bars] if bars else []) + example_figures(items, name, figs)

    def table(self, result: dict[str, Any]) -> str:
        lines = [f"clean Err {100 * result['clean']['err']:.2f}% on {result['n']} images",
                 f"{'location':<16} {'RErr':>6} {'Err':>6}"]
        for loc, v in result["locations"].items():
            lines.append(f"{loc:<16} {100 * v['rerr']:6.2f} {100 * v['err']:6.2f}")
        return "\n".join(lines)
