"""Random bit errors in the quantized weights: Err and RErr per bit error rate (`robustlab biterrors`).

Also the helpers every bit error spec shares (chip, energy, bitattack): the rate parser, the
quantization help text, resolving a run's scheme."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from robustlab.tasks.clean import first_n
from robustlab.tasks.spec import EvalSpec, option, register
from robustlab.values import list_of

QUANT_HELP = ("quantization scheme: a preset rquant<bits> (per tensor, asymmetric, unsigned, "
              "rounded; the default) or normal<bits> (global ±1, symmetric signed, truncated), "
              "optionally followed by key=value overrides, e.g. 'rquant4', "
              "'rquant8,rounding=trunc', 'bits=8,per_tensor=false,mode=symmetric_unsigned,q_max=0.5' "
              "(modes: asymmetric, symmetric_signed, symmetric_unsigned; rounding: round, trunc; "
              "bits 2..8). Default: the run's own scheme, else rquant8")


def rate(text: str) -> float:
    """A bit error rate: a fraction in [0, 1] or a percentage such as '0.5%'."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; a bit error rate must be a "
                                         "fraction in [0, 1] or a percentage like 0.5%") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"bit error rate {text} is out of range; it must be in "
                                         "[0, 1] (or 0%..100%)")
    return value


rate.__name__ = "bit error rate"


def resolve_quant(text: str | None, run_quant: Any) -> Any:
    """The scheme named by `text`, else the run's own, else RQuant 8-bit."""
    from robustlab import quant

    if text:
        return quant.parse(str(text))
    return run_quant if run_quant is not None else quant.RQUANT8


@dataclasses.dataclass
class PatternSpec(EvalSpec):
    """Base of the specs that evaluate a run's quantized model under K seeded bit error patterns
    (biterrors, chip, energy): their shared fields, the older preset keys and the keywords of
    `robustlab.evaluate.biterrors`' functions. Not registered itself."""

    group: ClassVar[str] = "random bit errors"  # the report's section
    # keyword names of evaluate.biterrors.bit_errors/chip_errors/energy → spec fields
    old_keys: ClassVar[dict[str, str]] = {"n": "n_test", "scheme": "quant", "seed0": "seed"}
    # an input file: (its field, its reader in robustlab.biterrors, the error when it is missing)
    source: ClassVar[tuple[str, str, str] | None] = None

    patterns: int = option("patterns")
    seed: int = option("seed", 100, help="first pattern seed: patterns use seeds SEED…SEED+K−1")
    quant: str | None = option("quant", help=QUANT_HELP)
    n_test: int | None = option("n_test")
    batch_size: int = option("batch_size", 1000)

    def scheme(self, run: Any) -> Any:
        return resolve_quant(self.quant, getattr(run, "quant", None))

    def load(self) -> Any:
        """The input file of `source` (chip map, voltage curve): a one-line error when missing
        or malformed."""
        from robustlab import biterrors as be
        from robustlab.errors import UserError

        if self.source is None:
            return None
        name, reader, missing = self.source
        if not getattr(self, name):
            raise UserError(missing)
        return getattr(be, reader)(getattr(self, name))

    def apply(self, function: Any, run: Any, *args: Any, progress: bool | None = None,
                 **kw: Any) -> dict[str, Any]:
        """`function(model, test[:n_test], *args, **kw)` with the patterns, seed, scheme, batch
        size and device of this spec and run."""
        return function(run.model, first_n(run.test, self.n_test), *args, quant=self.scheme(run),
                        patterns=self.patterns, seed=self.seed, batch_size=self.batch_size,
                        device=run.device, progress=progress, **kw)

    def pattern_cost(self, n_test: int, points: int) -> float:
        """K patterns at each of `points` rates (offsets, voltages) over the test images."""
        n = min(int(self.n_test or n_test), n_test)
        return 0.5 * n * int(self.patterns) * points

    def call_text(self, function: str, *args: str) -> str:
        """The Python call of `describe()`: `args` (empty ones left out), then the patterns."""
        test = f"test[:{self.n_test}]" if self.n_test else "test"
        kw = [*args, f"patterns={self.patterns}", f"seed={self.seed}",
              f"quant={self.quant!r}" if self.quant else ""]
        return f"robustlab.evaluate.biterrors.{function}(model, {test}, {', '.join(k for k in kw if k)})"


@register
class BitErrors(PatternSpec):
    """Err and RErr of a run's quantized model under K seeded random bit error patterns per rate
    (nested across rates, identical for every model of the same shapes)."""

    kind: ClassVar[str] = "biterrors"
    title: ClassVar[str] = "Err and RErr under random bit errors in the quantized weights"
    requires: ClassVar[str] = "robustlab.evaluate.biterrors"

    rates: list[float] | None = option(
        "rates", type=list_of(rate),
        help="bit error rates as fractions or percentages (e.g. 0.001,0.01 or 0.1%%,1%%); "
        "default: 0.1,0.5,1,2,3,4,5,10,15,20%% for 28×28 data, 0.005…2.5%% for 32×32")

    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None
            ) -> dict[str, Any]:
        from robustlab.evaluate.biterrors import bit_errors

        return self.apply(bit_errors, run, rates=self.rates, progress=progress)

    def cost(self, n_test: int) -> float:
        return self.pattern_cost(n_test, len(self.rates or [0] * 10))

    def describe(self) -> str:
        return self.call_text("bit_errors", f"rates={self.rates!r}" if self.rates else "")

    def metrics(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        from robustlab.report.metric import mean_metric, number, rate_label, rate_metric

        r = result
        pre = self.prefix(name)
        out: dict[str, Any] = {}
        n, k = r.get("n_test"), r.get("patterns")
        bits = (r.get("scheme") or {}).get("bits")
        qname = f"{bits}-bit" if bits else "quantized"
        setting = f"{k} patterns × n={n}" if k is not None else f"n={n}"
        if number(r.get("clean_err")) is not None:
            out[f"{pre}Err q"] = rate_metric(r["clean_err"], n, label=f"{pre}Err {qname} (no bit errors)",
                                       setting=f"n={n}")
        rerr = r.get("rerr") or {}
        values = rerr.get("values")
        for i, (p, m) in enumerate(zip(r.get("rates") or [], rerr.get("mean") or [])):
            col = [row[i] for row in values] if isinstance(values, list) and values else None
            std = (rerr.get("std") or [None] * (i + 1))[i]
            out[f"{pre}RErr p={rate_label(p)}"] = mean_metric(
                m, col, std, k, label=f"{pre}RErr bit errors p={rate_label(p)}", over="patterns",
                setting=setting, fallback_n=n)
        return out

    def setting_line(self, result: dict[str, Any]) -> str:
        from robustlab.report.metric import plural

        bits = (result.get("scheme") or {}).get("bits")
        return (f"n={result.get('n_test')} test images, {plural(result.get('patterns'), 'pattern')} "
                f"per rate" + (f", {bits}-bit weights" if bits else ""))

    @classmethod
    def report_figures(cls, items: list[tuple[str, dict[str, Any]]], name: str, figs: Any
                       ) -> list[dict[str, Any]]:
        """Mean RErr against the bit error rate, one curve per model."""
        from robustlab.report.biterrors_plot import plot_rerr_vs_rate
        from robustlab.report.metric import n_note

        k = items[0][1].get("patterns")
        f = figs.make(f"RErr vs bit error rate ({name})",
                      f"Mean robust error over {k} random bit error patterns per rate on "
                      f"{n_note(items)} test images; error bars: 95 % interval of the mean "
                      "(t over patterns, never narrower than Wilson over images); shaded: min–max "
                      "over patterns. The legend gives each model's quantized clean error.",
                      lambda p: plot_rerr_vs_rate([r for _, r in items], p,
                                                  labels=[lab for lab, _ in items]))
        return [f] if f else []

    def figures(self, result: dict[str, Any], folder: Path) -> list[Path]:
        from robustlab.report.biterrors_plot import plot_rerr_vs_rate

        return [plot_rerr_vs_rate(result, Path(folder) / "biterrors.png")]

    def table(self, result: dict[str, Any]) -> str:
        res = result
        label = res.get("label") or Path(str(res.get("run", "run"))).name
        lines = [f"{label}: {res['scheme']['bits']}-bit, clean Err {100 * res['clean_err']:.2f}% "
                 f"(float {100 * res['float_err']:.2f}%), {res['patterns']} patterns, "
                 f"{res['n_test']} images",
                 f"  {'p (%)':>8}  {'Err (%)':>8}  {'RErr (%)':>8}  {'± std':>6}  {'min':>6}  "
                 f"{'max':>6}"]
        rr, er = res["rerr"], res["err"]
        for i, p in enumerate(res["rates"]):
            lines.append(f"  {100 * p:8.3g}  {100 * er['mean'][i]:8.2f}  {100 * rr['mean'][i]:8.2f}  "
                         f"{100 * rr['std'][i]:6.2f}  {100 * rr['min'][i]:6.2f}  "
                         f"{100 * rr['max'][i]:6.2f}")
        return "\n".join(lines)
