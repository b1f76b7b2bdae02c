"""The package's layers (design.md, "The task layer"): imports only go downward, and no module
imports itself back through a chain of others (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import robustlab

ROOT = Path(robustlab.__file__).parent

# top to bottom; a module may import from its own rank or below
RANKS = [
    {"__main__", "cli", "commands"},
    {"tasks", "report", "experiments"},
    {"evaluate", "train"},
    {"attacks", "weights", "biterrors", "runs"},
    {"data_files", "data", "sources", "models", "quant", "checkpoint", "distributed"},
    {"", "errors", "values", "device", "io"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["robustlab", *parts])] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] == "robustlab":
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    edges[m].add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                edges[m].update(a.name for a in node.names if a.name.split(".")[0] == "robustlab")
    return edges


def _rank(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, group in enumerate(RANKS):
        if top in group:
            return i
    raise AssertionError(f"{module} is in no layer; add its package to RANKS in {__file__}")


def test_imports_only_go_downward() -> None:
    edges = _imports(_modules())
    upward = sorted(f"{a} -> {b}" for a, bs in edges.items() for b in bs
                    if b in edges and _rank(b) < _rank(a))
    assert upward == []


def test_no_import_cycle() -> None:
    edges = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checker_sees_a_planted_upward_import(tmp_path: Path) -> None:
    """The rank table is not vacuous: an engine importing the CLI would be caught."""
    assert _rank("robustlab.attacks.pgd") > _rank("robustlab.cli")
    assert _rank("robustlab.evaluate.clean") > _rank("robustlab.tasks.spec")
    assert _rank("robustlab.models") > _rank("robustlab.attacks.pgd")
