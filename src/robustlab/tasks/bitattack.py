"""Adversarial bit errors: RErr per number of flipped bits (`robustlab bitattack`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from robustlab.evaluate.bitattack import BUDGETS, RESTARTS, STEP_SIZE, STEPS
from robustlab.tasks.clean import first_n
from robustlab.tasks.spec import EvalSpec, option, register
from robustlab.values import nonneg_int, positive_int

METHOD_NAMES = {"attack": "projected attack", "bfa": "BFA", "random": "random flips",
                "worst": "worst case of the attacks"}


def target_class(text: str) -> int:
    return nonneg_int(text)


target_class.__name__ = "a class index ≥ 0"


@register
class BitAttack(EvalSpec):
    """Flip at most B bits of the quantized weights (at most one per weight) to maximize the loss
    on an attack set, then report the test RErr per budget: the projected attack, BFA, random
    flips, their worst case and its envelope."""

    kind: ClassVar[str] = "bitattack"
    title: ClassVar[str] = "RErr under adversarial bit flips, per number of flipped bits"
    requires: ClassVar[str] = "robustlab.evaluate.bitattack"
    old_keys: ClassVar[dict[str, str]] = {"n": "n_test", "scheme": "quant", "method": "methods",
                                          "selection": "params"}  # evaluate.bit_attack's keywords

    budgets: list[int] = option("budgets", default_factory=lambda: list(BUDGETS))
    methods: str = option(default="attack,bfa,random",
                          help="comma-separated: attack, bfa, random (default: attack,bfa,random)")
    target: int | None = option(default=None, type=target_class,
                                help="targeted attack: push inputs into this class")
    steps: int = option("steps", STEPS, help="projected attack iterations per start")
    step_size: float = option("step_size", STEP_SIZE,
                              help="step in units of half the code range, for the largest "
                              "gradient entry")
    restarts: int = option("restarts", RESTARTS,
                           help="starts of the projected attack per budget: the clean codes, the "
                           "best flips of the next smaller budget, then random flips")
    random_patterns: int = option(default=5, type=positive_int,
                                  help="seeds of the random-flip reference")
    n_attack: int = option(default=512, type=positive_int,
                           help="examples the attack is computed on")
    attack_split: str = option(default="train", choices=("train", "test"),
                               help="where the attack examples come from (first N of the split)")
    n_test: int | None = option("n_test")
    params: str = option("params", help="attacked tensors: all (every quantized tensor), default "
                         "(conv/linear weights and biases), weights, or comma-separated names")
    quant: str | None = option("quant", help="quantization for runs trained without one "
                               "(default: rquant8)")
    seed: int = option("seed")
    batch_size: int = option("batch_size", 512)

    def method_list(self) -> list[str]:
        """The methods, checked (a one-line error names a bad one)."""
        from robustlab.evaluate.bitattack import parse_methods

        return parse_methods(self.methods)

    def check(self) -> None:
        """What can be checked before any work."""
        self.method_list()

    def result_name(self) -> str:
        """`bitattack`, or `bitattack-targetK` for a targeted attack."""
        return self.kind + (f"-target{self.target}" if self.target is not None else "")

    def scheme(self, run: Any) -> Any:
        """The run's own quantization; `quant` only for runs trained without one."""
        from robustlab import quant
        from robustlab.errors import UserError

        if self.quant and run.quant is not None:
            raise UserError(f"--quant {self.quant}: {run.path} was trained with its own "
                            f"quantization ({run.quant}); leave --quant out")
        return run.quant if run.quant is not None else quant.parse(self.quant or "rquant8")

    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None
            ) -> dict[str, Any]:
        from robustlab.errors import UserError
        from robustlab.evaluate.bitattack import bit_attack

        methods = self.method_list()
        scheme = self.scheme(run)
        if self.target is not None and self.target >= run.test.num_classes:
            raise UserError(f"--target {self.target} must be a class in "
                            f"0..{run.test.num_classes - 1}")
        src = run.train if self.attack_split == "train" and run.train is not None else run.test
        res = bit_attack(run.model, first_n(run.test, self.n_test), budgets=self.budgets,
                         method=methods, quant=scheme, attack_data=src, n_attack=self.n_attack,
                         target=self.target, steps=self.steps, step_size=self.step_size,
                         restarts=self.restarts, random_patterns=self.random_patterns,
                         selection=self.params, seed=self.seed, batch_size=self.batch_size,
                         device=run.device, progress=progress)
        return {"attack_split": self.attack_split, **res}

    def cost(self, n_test: int) -> float:
        n = min(int(self.n_test or n_test), n_test)
        budgets = self.budgets or list(BUDGETS)
        methods = [m.strip() for m in self.methods.split(",")] if isinstance(self.methods, str) \
            else list(self.methods)
        n_att = int(self.n_attack)
        cost = 0.0
        if "attack" in methods:
            cost += len(budgets) * (int(self.steps) * int(self.restarts) * n_att + 0.3 * n)
        if "random" in methods:
            cost += len(budgets) * int(self.random_patterns) * 0.3 * n
        if "bfa" in methods:
            cost += max(budgets) * n_att * 3 + len(budgets) * 0.3 * n
        return cost

    def describe(self) -> str:
        test = f"test[:{self.n_test}]" if self.n_test else "test"
        kw = (f"budgets={list(self.budgets)!r}, method={self.methods!r}, n_attack={self.n_attack}, "
              f"steps={self.steps}, restarts={self.restarts}, random_patterns="
              f"{self.random_patterns}, selection={self.params!r}, seed={self.seed}"
              + (f", target={self.target}" if self.target is not None else "")
              + (f", quant={self.quant!r}" if self.quant else ""))
        return f"robustlab.evaluate.bitattack.bit_attack(model, {test}, {kw})"

    group: ClassVar[str] = "adversarial bit errors"  # the report's section

    def metrics(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        from robustlab.report.metric import number, plural, rate_metric

        r = result
        pre = self.prefix(name)
        out: dict[str, Any] = {}
        n = r.get("n_test")
        cfg = r.get("config") or {}
        for method, res in (r.get("results") or {}).items():
            if not isinstance(res, dict):
                continue
            suffix = "" if method == "attack" else f" ({method})"
            kk = cfg.get("random_patterns") if method == "random" else 1
            nn = n * kk if isinstance(n, int) and isinstance(kk, int) else n
            what = METHOD_NAMES.get(method, str(method))
            setting = f"n={n}" + (f" × {kk} patterns" if method == "random" and kk else "") + \
                (f", {r.get('n_attack')} attacked, {plural(cfg.get('steps'), 'step')}"
                 if method in ("attack", "worst") and r.get("n_attack") else "") + \
                (f", {r.get('n_attack')} attacked" if method == "bfa" and r.get("n_attack") else "")
            found = res.get("found_by") or []
            budgets = res.get("budget") or r.get("budgets") or []
            for i, (b, v) in enumerate(zip(budgets, res.get("rerr") or [])):
                if number(v) is not None:
                    by = f", found by {found[i]}" if i < len(found) and found[i] else ""
                    out[f"{pre}RErr {b} bits{suffix}"] = rate_metric(
                        v, nn, label=f"{pre}RErr {b} flipped bits, {what}", setting=setting + by)
            if method == "worst":  # spec §3a: the envelope max over b' ≤ b beside the raw values
                env_by = res.get("env_found_by") or []
                env_b = res.get("env_budget") or []
                for i, (b, v) in enumerate(zip(budgets, res.get("rerr_env") or [])):
                    if number(v) is not None:
                        at = (f", from {env_b[i]} bits by {env_by[i]}"
                              if i < len(env_b) and i < len(env_by) else "")
                        out[f"{pre}RErr ≤{b} bits{suffix}"] = rate_metric(
                            v, nn, label=f"{pre}RErr ≤{b} flipped bits, envelope of the worst case",
                            setting=setting + at)
        return out

    def setting_line(self, result: dict[str, Any]) -> str:
        from robustlab.report.metric import plural

        methods = list(result.get("results") or {})
        text = f"n={result.get('n_test')} test images; methods: {', '.join(methods)}"
        if "attack" in methods or "bfa" in methods:
            text += (f"; attack computed on {result.get('n_attack')} images, "
                     f"{plural((result.get('config') or {}).get('steps'), 'step')}")
        if "random" in methods:
            text += (f"; random flips: "
                     f"{plural((result.get('config') or {}).get('random_patterns'), 'pattern')}")
        return text

    @classmethod
    def report_figures(cls, items: list[tuple[str, dict[str, Any]]], name: str, figs: Any
                       ) -> list[dict[str, Any]]:
        """RErr against the number of flipped bits, one colour per model, one line style per
        method."""
        from robustlab.report.flatness_plots import METHOD_NAMES, plot_bit_attack
        from robustlab.report.metric import n_note

        methods = list(dict.fromkeys(m for _, r in items for m in (r.get("results") or {})))
        styles = {"attack": "solid", "bfa": "dash-dotted", "random": "dotted", "worst": "dashed"}
        what = ", ".join(f"{METHOD_NAMES.get(m, m)} ({styles.get(m, 'dashed')})" for m in methods)
        f = figs.make(f"RErr vs flipped bits ({name})", "Robust error of each model "
                      "(colour) after bit flips within the budget (at most one per "
                      f"weight), per method (line style): {what}. Error bars: 95 % "
                      f"Wilson intervals over the {n_note(items)} test images.",
                      lambda p: plot_bit_attack([r for _, r in items], p,
                                                labels=[lab for lab, _ in items]))
        return [f] if f else []

    def figures(self, result: dict[str, Any], folder: Path) -> list[Path]:
        from robustlab.report.flatness_plots import plot_bit_attack

        target = result.get("target")
        name = self.kind + (f"-target{target}" if target is not None else "")
        return [plot_bit_attack(result, Path(folder) / f"{name}.png")]

    def table(self, result: dict[str, Any]) -> str:
        res = result
        methods = list(res["methods"])
        lines = [f"clean error (quantized) {100 * res['clean_err']:.2f}% on {res['n_test']} "
                 f"images, {res['weights']} weights"]
        worst = res["results"].get("worst")
        lines.append("budget  " + "  ".join(f"{m:>8}" for m in methods)
                     + ("     worst  found by    envelope" if worst else "") + "   (RErr %)")
        for i, b in enumerate(res["budgets"]):
            line = f"{b:>6}  " + "  ".join(f"{100 * res['results'][m]['rerr'][i]:8.2f}"
                                           for m in methods)
            if worst:
                line += (f"  {100 * worst['rerr'][i]:8.2f}  {worst['found_by'][i]:<10} "
                         f"{100 * worst['rerr_env'][i]:7.2f}")
                if worst["env_budget"][i] != b:
                    line += f" (at {worst['env_budget'][i]} bits)"
            lines.append(line)
        return "\n".join(lines)
