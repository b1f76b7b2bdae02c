"""Atomic file writes, JSON results and environment stamps."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(obj, indent=indent, default=_jsonable, allow_nan=True)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def versions() -> dict[str, str]:
    """Versions of the pieces that determine numbers."""
    import numpy

    import robustlab

    return {"robustlab": robustlab.__version__, "torch": torch.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def write_result(run_dir: str | Path, name: str, result: dict[str, Any]) -> Path:
    """Write `run_dir/results/<name>.json`, stamped with versions; returns the path."""
    result = {"kind": name, **result, "versions": versions()}
    return atomic_write_json(Path(run_dir) / "results" / f"{name}.json", result)
