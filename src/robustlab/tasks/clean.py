"""Clean evaluation: test error, per-class error and confusion matrix (`robustlab eval`)."""

from __future__ import annotations

from typing import Any, ClassVar

from robustlab.tasks.spec import EvalSpec, option, register


def first_n(test: Any, n: int | None) -> Any:
    """The first `n` examples of a dataset (all of it when `n` is None)."""
    return test if not n else test.subset(slice(0, min(int(n), len(test))))


@register
class Clean(EvalSpec):
    """Clean test error of a run's model (at its quantized weights when trained quantized)."""

    kind: ClassVar[str] = "clean"
    title: ClassVar[str] = "clean test error, per-class error and confusion matrix"
    requires: ClassVar[str] = "robustlab.evaluate.clean"

    n_test: int | None = option("n_test", aliases=("--n",))
    batch_size: int = option("batch_size")

    def run(self, run: Any, *, progress: bool | None = None, name: str | None = None
            ) -> dict[str, Any]:
        from robustlab.evaluate.clean import clean

        return clean(run.predictor(), first_n(run.test, self.n_test), batch_size=self.batch_size,
                     device=run.device)

    def cost(self, n_test: int) -> float:
        return 0.3 * min(int(self.n_test or n_test), n_test)

    def describe(self) -> str:
        return f"robustlab.evaluate.clean.clean(model, test{f'[:{self.n_test}]' if self.n_test else ''})"

    group: ClassVar[str] = "clean"  # the report's section
    names: ClassVar[tuple[str, ...]] = ("eval",)  # older runs' name of the result

    def metrics(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        from robustlab.report.metric import number, rate_metric

        pre = self.prefix(name)
        if number(result.get("err")) is None:
            return {}
        return {f"{pre}Err": rate_metric(result["err"], result.get("n"), label=f"{pre}Err clean",
                                   setting=f"n={result.get('n', '?')} test images")}

    def setting_line(self, result: dict[str, Any]) -> str:
        return f"n={result['n']} test images" if result.get("n") else ""

    def table(self, result: dict[str, Any]) -> str:
        lines = [f"clean test error {100 * result['err']:.2f}% on {result['n']} images"]
        width = max(len(c) for c in result["classes"])
        for c, e in zip(result["classes"], result["per_class_err"]):
            lines.append(f"  {c:<{width}}  {100 * e:6.2f}%")
        return "\n".join(lines)
