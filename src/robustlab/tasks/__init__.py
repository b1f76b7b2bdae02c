"""The task layer: every evaluation a registered spec (`tasks.spec`), shared by the CLI,
presets and the demo, benchmarks and the report. Layers, top to bottom, imports only downward:
commands → tasks → evaluate/, train/ → attacks/, weights/, biterrors, quant → models, data, io.

Each evaluation kind lives in its own module here (`tasks/<kind>.py`) and registers itself;
`load_all()` imports them so `REGISTRY` is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustlab.tasks.spec import (
    REGISTRY,
    EvalSpec,
    load_all,
    make_result,
    option,
    register,
    spec_class,
    spec_of,
)


def evaluate(spec: EvalSpec, run: Any, *, name: str | None = None, progress: bool | None = None,
             write: bool = True) -> tuple[dict[str, Any], Path | None]:
    """Run `spec` on an opened run; write `run/results/<name or kind>.json` (atomically, with
    kind, schema, settings, data, seed and versions). Returns (result, path or None)."""
    from robustlab.io import write_result

    body = spec.run(run, progress=progress, name=name)
    result = make_result(spec, run, body)
    path = write_result(run.path, name or spec.kind, result) if write else None
    return result, path


__all__ = ["REGISTRY", "EvalSpec", "evaluate", "load_all", "make_result", "option", "register",
           "spec_class", "spec_of"]
