"""Average- or worst-case flatness of the robust (or clean) loss under relative weight
perturbations (`robustlab flatness`)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from robustlab.tasks.spec import EvalSpec, option, register
from robustlab.values import list_of, nonneg_float, nonneg_int, positive_float, positive_int

F32_MAX = 3.4028234663852886e38
CASES = ("average", "worst")

# keyword names of evaluate.flatness.flatness/landscape → spec fields (`attack_settings`: below)
FLAT_OLD_KEYS = {"n": "n_test", "kind": "case", "gap": "train", "selection": "params",
                 "step_size": "ascent_step_size"}
ATTACK_KEYS = ("norm", "eps", "steps")


def spread_attack(settings: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """Older preset settings held the inner PGD's as `attack_settings: {norm, eps, steps}`:
    spread into the spec's fields (a field given itself wins), with a one-line note."""
    from robustlab.errors import UserError, deprecated

    s = dict(settings or {})
    if "attack_settings" not in s:
        return s
    att = s.pop("attack_settings")
    deprecated(f"{where}: 'attack_settings'", ", ".join(repr(k) for k in ATTACK_KEYS))
    bad = sorted(set(att or {}) - set(ATTACK_KEYS)) if isinstance(att, dict) else [repr(att)]
    if bad:
        raise UserError(f"{where}: attack_settings: unknown setting {bad[0]!r}; allowed: "
                        f"{', '.join(ATTACK_KEYS)}")
    for k, v in (att or {}).items():
        s.setdefault(k, v)
    return s


def check_finite(**values: Any) -> None:
    """Radii, step sizes and extents must be finite numbers (one-line error naming the option)."""
    from robustlab.errors import UserError

    for opt, vs in values.items():
        for v in vs if isinstance(vs, (list, tuple)) else [vs]:
            if v is not None and not (math.isfinite(v) and v <= F32_MAX):
                raise UserError(f"--{opt.replace('_', '-')} {v} is invalid; it must be a finite "
                                f"number")


def check_radius(params: dict, names: Any, xis: list[float], extent: float | None) -> None:
    """ξ·‖w_l‖ (and the landscape's extent·‖w_l‖) must be representable in float32."""
    import torch

    from robustlab.errors import UserError

    selected = [params[n] for n in (names or params) if n in params]
    if not selected:
        return
    norm = max(float(torch.linalg.vector_norm(w.detach().double())) for w in selected)
    for v in [*xis, *([extent] if extent is not None else [])]:
        if not v * max(norm, 1.0) <= F32_MAX:
            raise UserError(f"--xi {v:g} is too large: a perturbation of {v:g}·‖w‖ (‖w‖ up to "
                            f"{norm:.3g}) overflows float32; relative radii are usually ≤ 1")


def attack_settings(spec: Any, run: Any) -> dict[str, Any]:
    """The inner PGD's settings for `evaluate.flatness` (the run's dataset picks the default ε)."""
    s: dict[str, Any] = {"norm": spec.norm, "steps": spec.steps}
    if spec.eps is not None:
        s["eps"] = spec.eps
    if ((getattr(run, "meta", None) or {}).get("data") or {}).get("name") == "mnist":
        s["dataset"] = "mnist"
    return s


@register
class Flatness(EvalSpec):
    """Increase of the robust (or clean) loss over the unperturbed model for weights perturbed in
    the relative ball ‖ν_l‖ ≤ ξ‖w_l‖: mean over random ν on its sphere (average case) or projected
    normalized ascent on ν jointly with PGD (worst case); adversarial examples are recomputed for
    every perturbed model."""

    kind: ClassVar[str] = "flatness"
    title: ClassVar[str] = "flatness of the robust loss under relative weight perturbations"
    requires: ClassVar[str] = "robustlab.evaluate.flatness"
    old_keys: ClassVar[dict[str, str]] = FLAT_OLD_KEYS

    case: str = option(default="average", choices=CASES,
                       help="average (random ν) or worst (ascent on ν); the command's --kind")
    xi: list[float] | None = option(default=None, type=list_of(nonneg_float),
                                    help="relative radii, comma-separated (default: 0.5 average, "
                                    "0.003 worst)")
    clean: bool = option(default=False, help="flatness of the clean loss (δ = 0)")
    samples: int = option(default=10, type=positive_int, help="random ν (average case)")
    ascent_steps: int = option(default=20, type=nonneg_int,
                               help="ascent steps on ν (worst case; this was --steps, which now "
                               "means the PGD iterations)")
    restarts: int = option("restarts", help="restarts of the ascent on ν (worst case)")
    ascent_step_size: float | None = option(default=None, type=positive_float, aliases=("--step-size",),
                                            help="ν step η relative to ‖w_l‖ (worst case; "
                                            "default ξ/4)")
    params: str = option("params", help="perturbed tensors: all (conv/linear weights and "
                         "biases), default (the same), weights (conv/linear weights), or "
                         "comma-separated parameter names")
    n_test: int = option("n_test", 1000, help="first N test images")
    train: bool = option(default=True, help="skip the robust loss on N training images (the "
                         "test−train gap)")
    norm: str = option("norm", help="threat model of the inner PGD")
    eps: float | None = option("eps", help="PGD radius (default: the spec's radius for the image size)")
    steps: int = option("steps", 20, aliases=("--attack-steps",),
                        help="PGD iterations of the robust loss (was --attack-steps; --steps "
                        "used to be the ascent steps on ν, now --ascent-steps)")
    seed: int = option("seed")
    batch_size: int = option("batch_size", 256)

    def __post_init__(self) -> None:
        if isinstance(self.xi, (int, float)):
            self.xi = [float(self.xi)]

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None, where: str = "") -> EvalSpec:
        return super().from_settings(spread_attack(settings, where or f"{cls.kind} settings"),
                                     where)

    def xis(self) -> list[float]:
        """The radii: `xi`, else 0.5 (average case) or 0.003 (worst case)."""
        return list(self.xi) if self.xi is not None else [0.5 if self.case == "average" else 0.003]

    def check(self) -> None:
        """What can be checked before any work."""
        from robustlab.errors import UserError

        if self.case not in CASES:
            raise UserError(f"unknown flatness kind {self.case!r}; choose one of "
                            f"{', '.join(CASES)}")
        check_finite(xi=self.xis(), eps=self.eps, ascent_step_size=self.ascent_step_size)
        if not 0 <= int(self.seed) < 2**64:
            raise UserError(f"--seed {self.seed} is out of range; it must be an integer in "
                            f"0..2^64−1")

    def result_name(self) -> str:
        """`flatness-average`, `flatness-worst-clean`, …"""
        return f"flatness-{self.case}" + ("-clean" if self.clean else "")

    def compute(self, run: Any, *, progress: bool | None = None, return_nu: bool = False
                ) -> tuple[dict[str, Any], list[Any] | None]:
        """(the result body, the worst-case ν per ξ when `return_nu`)."""
        from robustlab.errors import UserError
        from robustlab.evaluate.flatness import flatness
        from robustlab.weights import select

        self.check()
        xis = self.xis()
        check_radius(run.params(), select(run.model, self.params), xis, None)
        res = flatness(run.model, run.test, kind=self.case, xi=xis, clean=self.clean,
                       attack_settings=attack_settings(self, run), n_test=self.n_test,
                       samples=self.samples, steps=self.ascent_steps, restarts=self.restarts,
                       step_size=self.ascent_step_size, selection=self.params,
                       params=run.params(), train=run.train if self.train else None,
                       seed=self.seed, batch_size=self.batch_size, device=run.device,
                       progress=progress, return_nu=return_nu)
        nus = res.pop("nu", None)
        values = [res.get("loss"), *res.get("flatness", [])]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise UserError(f"--xi {','.join(f'{x:g}' for x in xis)}: the perturbed loss is not "
                            f"finite (flatness {res.get('flatness')}); use a smaller --xi")
        return res, nus

    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None
            ) -> dict[str, Any]:
        return self.compute(run, progress=progress)[0]

    def cost(self, n_test: int) -> float:
        n = min(int(self.n_test or n_test), n_test)
        steps = int(self.steps) + 1
        per = int(self.samples) if self.case == "average" else \
            int(self.ascent_steps) * int(self.restarts)
        return 2 * n * steps * (per * len(self.xis()) + 1) * (1 if not self.clean else 0.2)

    def describe(self) -> str:
        att = {"norm": self.norm, "steps": self.steps, **({"eps": self.eps} if self.eps else {})}
        kw = (f"kind={self.case!r}, xi={self.xis()!r}, clean={self.clean}, attack_settings={att!r}, "
              f"n_test={self.n_test}, "
              + (f"samples={self.samples}" if self.case == "average" else
                 f"steps={self.ascent_steps}, restarts={self.restarts}, "
                 f"step_size={self.ascent_step_size}")
              + f", selection={self.params!r}, seed={self.seed}"
              + ("" if self.train else ", train=None"))
        return f"robustlab.evaluate.flatness.flatness(model, test, {kw})"

    group: ClassVar[str] = "flatness"  # the report's section
    names: ClassVar[tuple[str, ...]] = (  # the command's result names (`result_name()`)
        "flatness-average", "flatness-worst", "flatness-average-clean", "flatness-worst-clean")

    def metrics(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        from robustlab.report.metric import NORM_NAMES, Metric, mean_metric, number, plural, sig3

        r = result
        pre = self.prefix(name)
        out: dict[str, Any] = {}
        variant = "" if r.get("variant", "robust") == "robust" else f"{r['variant']} "
        att = r.get("attack") or {}
        on = (f"{NORM_NAMES.get(att.get('norm'), att.get('norm'))} ε={sig3(att['eps'])}"
              if att.get("eps") is not None else "")
        setting = ", ".join(s for s in (f"n={r.get('n')}", f"PGD {on}, {plural(att.get('steps'), 'step')}"
                                        if on else "") if s)
        for d in r.get("details") or []:
            if number(d.get("flatness")) is not None:
                base = number(d.get("loss"))
                losses = d.get("perturbed_losses")
                diffs = ([x - base for x in losses] if base is not None and isinstance(losses, list)
                         else None)
                key = f"{pre}{variant}{r['flatness_kind']} flatness ξ={d['xi']:g}"
                samples = len(losses) if isinstance(losses, list) else None
                out[key] = mean_metric(
                    d["flatness"], diffs, None, samples, unit="",
                    label=f"{pre}{variant}{r['flatness_kind']}-case flatness ξ={d['xi']:g}"
                    + (f" ({variant or 'robust '}loss, {on})" if on else ""),
                    over="samples", setting=setting)
        if number(r.get("loss")) is not None:
            out[f"{pre}{variant or 'robust '}loss"] = Metric(
                float(r["loss"]), label=f"{pre}{variant or 'robust '}test loss"
                + (f" ({on})" if on else ""), unit="", over="", n=None, setting=setting)
        if number(r.get("gap")) is not None:
            out[f"{pre}{variant or 'robust '}loss gap"] = Metric(
                float(r["gap"]), label=f"{pre}{variant or 'robust '}loss gap test − train", unit="",
                over="", setting=setting)
        return out

    def setting_line(self, result: dict[str, Any]) -> str:
        from robustlab.report.metric import NORM_NAMES, plural, sig3

        att = result.get("attack") or {}
        samples = (result.get("config") or {}).get("samples")
        return (f"n={result.get('n')} test images, {result.get('flatness_kind')}-case"
                + (f" over {plural(samples, 'random perturbation')}" if samples else "")
                + (f", PGD {NORM_NAMES.get(att.get('norm'), att.get('norm'))} "
                   f"ε={sig3(att.get('eps'))}, {plural(att.get('steps'), 'step')}"
                   if att.get("eps") is not None else ""))

    @classmethod
    def report_figures(cls, items: list[tuple[str, dict[str, Any]]], name: str, figs: Any
                       ) -> list[dict[str, Any]]:
        """Flatness per model and, with a robust loss gap for at least three models, flatness
        against robust generalization."""
        from robustlab.report.extra_plots import plot_flatness_bars
        from robustlab.report.flatness_plots import plot_correlation

        samples = sorted({len(d.get("perturbed_losses") or []) for _, r in items
                          for d in r.get("details") or []} - {0})
        xis = sorted({d["xi"] for _, r in items for d in r.get("details") or []})
        err = (f"Error bars: 95 % t interval of the mean over the {samples[-1]} random "
               "perturbations." if samples and samples[-1] > 1 else
               "No error bars: one random perturbation (or a worst case) per model.")
        out = [figs.make(f"Flatness per model ({name})",
                         "Increase of the robust loss under relative weight perturbations "
                         f"‖ν_l‖ ≤ ξ‖w_l‖, ξ = {', '.join(f'{x:g}' for x in xis)} "
                         f"(adversarial examples recomputed per perturbed model). {err}",
                         lambda p: plot_flatness_bars(items, p))]
        if len([r for _, r in items if r.get("gap") is not None]) >= 3:
            labelled = [{**r, "label": lab} for lab, r in items]
            out.append(figs.make(f"Flatness vs robust generalization ({name})",
                                 "Robust test loss and test−train robust loss gap against flatness, "
                                 "one point per model, with Kendall τ and its two-sided p-value "
                                 "(few models: a weak test).",
                                 lambda p: plot_correlation(labelled, p)))
        return [f for f in out if f]

    def table(self, result: dict[str, Any]) -> str:
        res = result
        what = "clean" if res.get("variant") == "clean" else "robust"
        lines = [f"{what} loss {res['loss']:.4f} on {res['n']} test images"
                 + (f", test-train gap {res['gap']:.4f}" if "gap" in res else "")]
        for v, f in zip(res["xi"], res["flatness"]):
            lines.append(f"  {res['flatness_kind']}-case flatness at xi={v:g}: {f:.4f}")
        return "\n".join(lines)
