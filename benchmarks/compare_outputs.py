"""Compare two output folders of robustlab (runs, a demo, a preset workspace): every number of
every result JSON and every model file byte for byte. Used to show that a refactor changes
structure, not results (same seeds).

    python benchmarks/compare_outputs.py OLD_OUT NEW_OUT [--show 40]

Timings, versions, paths and the keys that only say what a result is (kind, schema, settings)
are ignored; a key present in OLD but missing in NEW is a difference (new keys are not).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import math
from pathlib import Path
from typing import Any

IGNORED = {"versions", "seconds", "time_s", "run", "plan_key", "schema", "settings", "kind",
           "evaluator", "wall_s", "elapsed", "time", "path", "out", "command", "seed", "data",
           "label", "snapshot"}


def compare(old: Path, new: Path) -> tuple[int, int, list[str]]:
    """(files compared, numbers compared, differences)."""
    diffs: list[str] = []
    numbers = 0

    def walk(x: Any, y: Any, where: str) -> None:
        nonlocal numbers
        if isinstance(x, dict) and isinstance(y, dict):
            for k in x:
                if k in IGNORED or "time" in k or "second" in k:
                    continue
                if k not in y:
                    diffs.append(f"{where}/{k}: missing in new")
                else:
                    walk(x[k], y[k], f"{where}/{k}")
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                diffs.append(f"{where}: length {len(x)} vs {len(y)}")
            else:
                for i, (u, v) in enumerate(zip(x, y)):
                    walk(u, v, f"{where}[{i}]")
        elif isinstance(x, (int, float)) and not isinstance(x, bool) and isinstance(y, (int, float)):
            numbers += 1
            if not (x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(float(y)))):
                diffs.append(f"{where}: {x} vs {y}")
        elif x != y and not isinstance(x, str):
            diffs.append(f"{where}: {x!r} vs {y!r}")

    files = 0
    for p in sorted(old.rglob("*")):
        q = new / p.relative_to(old)
        rel = str(p.relative_to(old))
        if p.suffix == ".safetensors" and "examples" not in p.name and p.name != "trainer_state.safetensors":
            files += 1
            if not q.exists():
                diffs.append(f"{rel}: missing in new")
            elif not filecmp.cmp(p, q, shallow=False):
                diffs.append(f"{rel}: bytes differ")
        elif p.suffix == ".json" and p.name != "plan.json":
            files += 1
            if not q.exists():
                diffs.append(f"{rel}: missing in new")
            else:
                walk(json.loads(p.read_text()), json.loads(q.read_text()), rel)
    return files, numbers, diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--show", type=int, default=40, help="differences to print")
    a = ap.parse_args()
    files, numbers, diffs = compare(a.old, a.new)
    print(f"{files} files, {numbers} numbers compared, {len(diffs)} differences")
    for d in diffs[:a.show]:
        print(" ", d)


if __name__ == "__main__":
    main()
