"""`robustlab info RUN`: what a run directory holds."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a run directory",
                       description="Print a run's model.json (architecture, data, method, seed, "
                       "versions), its last training metrics and the results it holds.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--json", action="store_true", help="print model.json as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robustlab.checkpoint import read_meta
    from robustlab.io import read_result
    from robustlab.runs import tidy

    meta = read_meta(args.run)  # schema-checked: a malformed model.json is one line, exit 2
    tidy(args.run)  # temporary files of killed writes
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    run_dir = Path(args.run)
    print(f"run           {run_dir}")
    print(f"architecture  {meta.get('architecture')} {json.dumps(meta.get('kwargs', {}))}")
    print(f"parameters    {meta.get('parameters')}")
    print(f"data          {json.dumps(meta.get('data'))}")
    print(f"method        {json.dumps(meta.get('method'))}")
    print(f"quantization  {json.dumps(meta.get('quant'))}")
    print(f"seed          {meta.get('seed')}")
    print(f"versions      {json.dumps(meta.get('versions'))}")
    if meta.get("factory"):
        f = meta["factory"]
        print(f"factory       {f['path']}:{f['function']} {json.dumps(f.get('kwargs', {}))}")
    if meta.get("normalization"):
        print(f"normalization {json.dumps(meta['normalization'])}")
    hashes = meta.get("weights") or {}
    print("integrity     " + (", ".join(f"{k} sha256 {v['sha256'][:16]}…" for k, v in hashes.items())
                              or "no SHA-256 recorded (older run): dtypes and values checked only"))
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        lines = metrics.read_text(encoding="utf-8", errors="replace").splitlines()
        if lines:
            print(f"epochs        {len(lines)}; last: {lines[-1]}")
    results = sorted((run_dir / "results").glob("*.json"))
    described = [_describe(p.stem, read_result(p)) for p in results]  # malformed: one line, exit 2
    if described:
        print(f"results       {', '.join(described)}")
    return 0


def _describe(name: str, result: dict) -> str:
    """'name' or 'name (kind: title)': the kind through the registry (`report.summary.kind_of`:
    the `kind` of results with a schema, guessed for older files)."""
    from robustlab.report.summary import kind_of, spec_for

    kind = kind_of(name, result)
    cls = spec_for(kind)
    what = [kind] if kind not in (name, "other") else []
    what += [cls.title] if cls is not None and cls.title else []
    return f"{name} ({': '.join(what)})" if what else name
