"""The adversarial evaluation suite with confidence thresholding (`robustlab attack`).

The fields are the suite's only defaults: `robustlab attack`'s options are generated from them
and presets build the spec from their settings. `run` calls
`robustlab.evaluate.adversarial.adversarial` with its public keywords.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, ClassVar

from robustlab.attacks.fab import FAB_NORMS
from robustlab.errors import UserError
from robustlab.evaluate.adversarial import DEFAULT_SUITE, parse_eps
from robustlab.tasks.spec import EvalSpec, option, register
from robustlab.values import list_of, nonneg_int, positive_int


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; it must be in (0, 1)") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"{text} is out of range; it must be in (0, 1)")
    return v


_fraction.__name__ = "a fraction in (0, 1)"


def _radii(text: str) -> str:
    try:
        parse_eps(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


_radii.__name__ = "radii NORM=R,…"


def _severity(text: str) -> int:
    from robustlab.attacks.corruptions import SEVERITIES

    try:
        v = int(text)
    except ValueError:
        v = None
    if v not in SEVERITIES:
        raise argparse.ArgumentTypeError(f"corruption severity {text} is invalid; it must be one "
                                         "of 1..5")
    return v


_severity.__name__ = "a corruption severity"

# spec field → the keyword of `adversarial()` when the names differ
_KEYWORDS = {"early_exit": "early_stop", "radii": "eps"}


@register
class Adversarial(EvalSpec):
    """Err, RErr, τ at each TPR, RErr@τ, FPR@τ and ROC AUC under every threat of `suite`."""

    kind: ClassVar[str] = "adversarial"
    title: ClassVar[str] = "robust error under the attack suite, with confidence thresholding"
    requires: ClassVar[str] = "robustlab.evaluate.adversarial"

    suite: str = option(default=DEFAULT_SUITE, type=str, help=(
        "comma list of linf, l2, l1, l0, frames, patch, distal, corrupt; an item may carry a "
        "radius/width/side/severity, e.g. linf:0.2"))
    radii: str | dict | None = option(None, None, type=_radii, metavar="NORM=R,…", aliases=("--eps",),
                               help="radii replacing the suite's defaults, e.g. linf=0.2,l2=3 "
                               "(default: the spec's for the image size: 0.1/1.5/10/15 on 28×28 "
                               "gray)")
    attacks: str = option(default="standard", type=str, help=(
        "optimizers of the Lp threats: standard (APGD-CE, APGD-T, APGD-conf, FAB-T and Square in "
        "sequence, the worst case per example), pgd (a quick look: PGD with each of "
        "--objectives), or a comma list of apgd-ce, apgd-dlr, apgd-t, apgd-conf, fab-t, square, pgd"))
    restarts: int = option("restarts", help="attack restarts: APGD restarts; PGD: runs per "
                           "objective, one from zero, the rest random")
    steps: int | None = option("steps", help="attack iterations (default: APGD 100, PGD 40, "
                               "patches 100)")
    queries: int | None = option(None, None, type=positive_int, help=(
        "Square queries (default 5000; 50 × --steps when --steps is given)"))
    targets: int = option("targets", help="APGD-T target classes (the most likely non-true ones)")
    patch_steps: int | None = option(None, None, type=nonneg_int,
                                     help="iterations for patches (default: --steps, else 100)")
    objectives: list[str] = option(default_factory=lambda: ["ce", "conf"], type=list_of(str),
                                   help="PGD objectives (--attacks pgd, L0, frames, patches), each "
                                   "run separately (ce, conf, dlr)")
    n_test: int = option("n_test", 1000, help="test images to attack", aliases=("--n",))
    holdout: float = option(default=0.1, type=_fraction,
                            help="fraction at the end of the test set that calibrates τ")
    tprs: list[float] = option("tprs")
    severities: list[int] = option(default_factory=lambda: [3], type=list_of(_severity),
                                   help="corruption severities 1..5", aliases=("--severity",))
    corruptions: list[str] | None = option(None, None, type=list_of(str),
                                           help="corruption names (default: all)")
    momentum: float = option(default=0.9, type=float, help="PGD momentum β (0 = off)")
    # booleans that default to True: the help text is that of their `--no-…` switch
    backtrack: bool = option(default=True, help="fixed PGD step sizes (no backtracking)")
    early_exit: bool = option(default=True, help=(
        "inside an attack, keep attacking examples that are already adversarial with c ≥ the "
        "largest τ (the verdicts are the same)"))
    sanity: bool = option(default=True, help="skip the sanity checks (flags)")
    batch_size: int = option("batch_size", 500)
    seed: int = option("seed")

    # ---- checks and the run ----------------------------------------------------------------
    def check(self) -> None:
        """Refuse bad settings (one line) before any model or data is loaded."""
        from robustlab.attacks import corruptions
        from robustlab.evaluate.adversarial import parse_attacks, parse_suite

        parse_suite(self.suite)
        parse_eps(self.radii)
        parse_attacks(self.attacks)
        if not 0 <= self.momentum < 1:
            raise UserError(f"momentum {self.momentum} is invalid; it must be in [0, 1)")
        for s in self.severities:
            if s not in corruptions.SEVERITIES:
                raise UserError(f"corruption severity {s} is invalid; it must be one of 1..5")

    def keywords(self) -> dict[str, Any]:
        """The settings as keyword arguments of `adversarial()`."""
        return {_KEYWORDS.get(k, k): v for k, v in self.settings().items()}

    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None,
            bf16: bool = False, channels_last: bool | None = None) -> dict[str, Any]:
        """The suite on `run`'s test set; example images go to
        `results/<name>_examples.safetensors`."""
        from robustlab.evaluate.adversarial import adversarial

        kw = self.keywords()
        suite = kw.pop("suite")
        return adversarial(run.predictor(), run.test, suite, **kw, device=run.device, bf16=bf16,
                           channels_last=channels_last, dataset=run.meta["data"]["name"],
                           examples_path=Path(run.path) / "results"
                           / f"{name or self.kind}_examples.safetensors", progress=progress)

    # ---- plans -------------------------------------------------------------------------------
    def cost(self, n_test: int) -> float:
        n = min(int(self.n_test), n_test)
        steps = int(self.steps or 40)
        patch_steps = int(self.patch_steps or (100 if self.steps is None else steps))
        per = int(self.restarts) * len(self.objectives)
        suite = self.suite
        items = [i.split(":")[0] for i in (suite.split(",") if isinstance(suite, str) else suite)]
        attacks = self.attacks.split(",") if isinstance(self.attacks, str) else list(self.attacks)
        standard = any(a.strip() != "pgd" for a in attacks)
        cost = 0.0
        for item in items:
            if item == "patch":
                cost += n * patch_steps * per * 2.5
            elif item == "distal":
                cost += n * steps * int(self.restarts)
            elif item == "corrupt":
                cost += 0.3 * n * 11 * len(self.severities)
            elif item in ("linf", "l2", "l1") and standard:
                # APGD-CE, APGD-T (one run per target), APGD-conf, on L∞/L2 FAB-T (one run
                # per target); Square's queries: forwards only
                apgd_steps = int(self.steps or 100)
                queries = int(self.queries or (min(5000, 50 * apgd_steps) if self.steps else 5000))
                runs = 2 + int(self.targets) * (2 if item in FAB_NORMS else 1)
                cost += n * apgd_steps * runs * int(self.restarts)
                cost += 0 if item == "l1" else n * queries * 0.4
            else:
                cost += n * steps * per
        return cost

    def describe(self) -> str:
        default = type(self)()
        kw = {k: v for k, v in self.keywords().items() if v != default.keywords()[k]}
        return ("robustlab.evaluate.adversarial.adversarial(model, test, "
                + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ")")

    # ---- what a result shows -----------------------------------------------------------------
    group: ClassVar[str] = "input attacks"  # the report's section
    names: ClassVar[tuple[str, ...]] = ("attack",)  # older runs' name of the result

    def metrics(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        from robustlab.report import metric as M

        r = result
        out: dict[str, Any] = {}
        pre = self.prefix(name)
        clean = r.get("clean") or {}
        taus = list(clean.get("tau") or {})
        n_cfg = (r.get("config") or {}).get("n")
        for key, t in (r.get("threats") or {}).items():
            threat = t.get("threat", key)
            label = f"{pre}{key}"
            tl = f"{pre}{M.threat_label(key, t)}"
            setting = adversarial_setting(r, t)
            n = t.get("n", n_cfg)
            ats = {k: v for k, v in (t.get("at") or {}).items() if not taus or k == taus[0]}
            if threat == "distal":
                for tk, a in ats.items():
                    if M.number(a.get("fpr")) is not None:
                        out[f"FPR@{M.tau_label(tk)} {label}"] = M.rate_metric(
                            a["fpr"], n, label=f"FPR@{M.tau_label(tk)} {tl}", setting=setting)
            elif threat == "corrupt":
                count = max(1, len(t.get("corruptions") or {}))
                nn = n * count if isinstance(n, int) else None
                if M.number(t.get("mean_err")) is not None:
                    out[f"Err {label}"] = M.rate_metric(t["mean_err"], nn, label=f"Err {tl}",
                                                  setting=f"n={n} × {count} corruption(s)")
                for tk, a in ats.items():
                    if M.number(a.get("err")) is not None:
                        out[f"Err@{M.tau_label(tk)} {label}"] = M.rate_metric(
                            a["err"], nn, label=f"Err@{M.tau_label(tk)} {tl}",
                            setting=f"n={n} × {count} corruption(s)")
            else:
                if M.number(t.get("rerr")) is not None:
                    out[f"RErr {label}"] = M.rate_metric(t["rerr"], n, label=f"RErr {tl}", setting=setting)
                for tk, a in ats.items():
                    if M.number(a.get("rerr")) is not None:
                        tau = a.get("tau", (clean.get("tau") or {}).get(tk))
                        kd = (M.rerr_at_count(t, clean, tau, a["rerr"])
                              if M.number(tau) is not None else None)
                        out[f"RErr@{M.tau_label(tk)} {label}"] = M.rate_metric(
                            a["rerr"], kd[1] if kd else n, k=kd[0] if kd else None,
                            label=f"RErr@{M.tau_label(tk)} {tl}", setting=setting)
                    if M.number(a.get("fpr")) is not None:
                        out[f"FPR@{M.tau_label(tk)} {label}"] = M.rate_metric(
                            a["fpr"], n, label=f"FPR@{M.tau_label(tk)} {tl}", setting=setting)
                if M.number(t.get("auc")) is not None:
                    out[f"AUC {label}"] = M.auc_metric(t, clean, f"ROC AUC {tl}", setting)
        if M.number(clean.get("err")) is not None:
            out[f"{pre}Err (attacked split)"] = M.rate_metric(clean["err"], n_cfg,
                                                        label=f"{pre}Err (attacked split)")
        return out

    def setting_line(self, result: dict[str, Any]) -> str:
        """Attacked and held-out images, the attacks per threat, steps and restarts."""
        from robustlab.report.metric import NORM_NAMES, plural

        cfg = result.get("config") or {}
        threats = result.get("threats") or {}
        by_attacks: dict[str, list[str]] = {}
        for key, t in threats.items():
            if t.get("attacks"):
                label = NORM_NAMES.get(t.get("threat"), t.get("threat", key))
                by_attacks.setdefault(" + ".join(t["attacks"]), []).append(str(label))
        patch = any(t.get("threat") == "patch" for t in threats.values())
        parts = [f"n={cfg.get('n')} attacked test images"
                 + (f" (τ from {cfg['holdout']} held-out)" if cfg.get("holdout") else "")]
        if by_attacks:
            parts.append("attacks (worst case per image): " + "; ".join(
                f"{', '.join(names)}: {a}" for a, names in by_attacks.items()))
        if cfg.get("steps") is not None:
            parts.append(plural(cfg["steps"], "step") + (
                f" (patch {cfg['patch_steps']})" if cfg.get("patch_steps") not in
                (None, cfg["steps"]) and patch else ""))
        if cfg.get("restarts") is not None:
            parts.append(plural(cfg["restarts"], "restart"))
        return ", ".join(parts)

    def table(self, result: dict[str, Any]) -> str:
        return summary_table(result)

    @classmethod
    def report_figures(cls, items: list[tuple[str, dict[str, Any]]], name: str, figs: Any
                       ) -> list[dict[str, Any]]:
        """RErr per threat model across the models, their confidence histograms (order 2) and
        each model's example images (order 3)."""
        from robustlab.report import adversarial_plots as plots
        from robustlab.report.metric import n_note

        note = n_note([("", {"n": (r.get("config") or {}).get("n")}) for _, r in items], "n")
        bars = figs.make(
            f"RErr per threat model ({name})",
            "Per threat model and model: light bars without rejection (RErr; distal: "
            "every input counts, 100 %; corruptions: mean Err), dark bars with inputs of "
            "confidence below τ rejected, τ at 99 % TPR (RErr@τ; distal: FPR@τ; "
            f"corruptions: Err@τ). Error bars: 95 % Wilson intervals over the {note} "
            "attacked images (RErr@τ: over those not rejected).",
            lambda p: plots.plot_rerr_bars(items, p))
        hists = figs.make(
            f"Confidence per model and threat ({name})",
            "Rows: models; columns: threat models. Green: confidence of the correctly "
            "classified clean images; red: confidence of the adversarial inputs that are "
            "misclassified (distal: of every distal input); dashed: τ at 99 % TPR. Each "
            "panel is a density histogram on its own y-scale.",
            lambda p: plots.plot_confidence_grid(items, p), order=2)
        return [f for f in (bars, hists) if f] + plots.example_figures(items, name, figs)

    def figures(self, result: dict[str, Any], folder: Path, *, name: str | None = None,
                title: str | None = None) -> list[Path]:
        """RErr bars, confidence histograms and example images, as `<name>_*.png` in `folder`
        (the result's own folder: the example images are read from beside it)."""
        from robustlab.report import adversarial_plots as plots

        name = name or self.kind
        folder = Path(folder)
        title = title if title is not None else Path(str(result.get("run", ""))).name
        figs = [plots.plot_rerr_bars(result, folder / f"{name}_rerr.png", title=title)]
        if any(t.get("adv_conf") is not None or t.get("threat") == "distal"
               for t in result["threats"].values()):
            figs.append(plots.plot_confidence_histograms(result, folder / f"{name}_confidence.png",
                                                         title=title))
        if result.get("examples_file"):
            figs.append(plots.plot_examples(folder / result["examples_file"],
                                            folder / f"{name}_examples.png", title=title))
        return figs


def _p(v: float | None) -> str:
    return "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"


def summary_table(res: dict[str, Any]) -> str:
    """A plain-text table: one row per threat model, errors in %."""
    keys = list(res["clean"]["tau"])
    head = f"{'threat':<12} {'radius':>7} {'RErr':>5}"
    for k in keys:
        pct = f"{100 * float(k):g}%"
        head += f" {'RErr@' + pct:>10} {'FPR@' + pct:>9}"
    head += f" {'AUC':>5}"
    lines = [f"clean Err {100 * res['clean']['err']:.2f}% on {res['config']['n']} images; τ: "
             + ", ".join(f"{100 * float(k):g}% TPR → {v:.4f}" for k, v in res["clean"]["tau"].items()),
             head]
    for name, t in res["threats"].items():
        radius = t.get("eps", t.get("width", t.get("size", [None])[0] if t.get("size") else None))
        rad = f"{radius:7.4g}" if isinstance(radius, (int, float)) else f"{'':>7}"
        at = t.get("at", {})
        if t["threat"] == "distal":
            row = f"{name:<12} {rad} {'':>5}" + "".join(
                f" {'':>10} {_p(at.get(k, {}).get('fpr')):>9}" for k in keys) + f" {'':>5}"
        elif t["threat"] == "corrupt":
            row = f"{name:<12} {rad} {_p(t.get('mean_err')):>5}" + "".join(
                f" {_p(at.get(k, {}).get('err')):>10} {'':>9}" for k in keys) + f" {'':>5}"
        else:
            auc = t.get("auc")
            row = f"{name:<12} {rad} {_p(t.get('rerr')):>5}" + "".join(
                f" {_p(at.get(k, {}).get('rerr')):>10} {_p(at.get(k, {}).get('fpr')):>9}"
                for k in keys) + (f" {auc:5.3f}" if isinstance(auc, float) and not math.isnan(auc)
                                  else f" {'-':>5}")
        lines.append(row)
    lines.append("(distal: FPR@τ of noise-started inputs; corrupt: mean Err and Err@τ)")
    for name, t in res["threats"].items():
        if t.get("by_attack"):
            lines.append(f"{name}: examples broken by each attack: " + ", ".join(
                f"{a} +{v['added']}" for a, v in t["by_attack"].items()))
    return "\n".join(lines)


def adversarial_setting(r: dict[str, Any], t: dict[str, Any] | None = None) -> str:
    """'n=200 attacked, τ from 200 held-out; ce/zero×1 + conf/zero×1, 7 steps, 1 restart'."""
    from robustlab.report import metric as M

    cfg = r.get("config") or {}
    parts = []
    n = (t or {}).get("n", cfg.get("n"))
    if n is not None:
        parts.append(f"n={n}" + (f", τ from {cfg['holdout']} held-out" if cfg.get("holdout") else ""))
    attacks = (t or {}).get("attacks")
    if attacks:
        parts.append(" + ".join(str(a) for a in attacks))
    steps = cfg.get("patch_steps") if (t or {}).get("threat") == "patch" else cfg.get("steps")
    if steps is not None:
        parts.append(M.plural(steps, "step"))
    if cfg.get("restarts") is not None:
        parts.append(M.plural(cfg["restarts"], "restart"))
    return ", ".join(parts)


def flag_lines(res: dict[str, Any]) -> list[str]:
    """One 'warning: …' line per sanity flag of a result."""
    return [f"warning: {f['message']}" for f in res.get("flags", [])]
