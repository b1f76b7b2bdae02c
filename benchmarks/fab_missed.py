"""FAB-T alone on the AT-L2 examples robustlab's suite missed (attack_strength_at_l2_analysis.json).

Prints, per example, the smallest adversarial L2 distance FAB-T found and whether it is ≤ ε;
writes benchmarks/results/fab_missed.json. Needs the cached AT model of attack_strength.py.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import bench_data, cached_model

from robustlab.attacks.fab import fab
from robustlab.io import atomic_write_json, versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="/tmp/robustlab_attack_strength")
    ap.add_argument("--norm", default="l2")
    ap.add_argument("--eps", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/fab_missed.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    an = json.loads(Path("benchmarks/results/attack_strength_at_l2_analysis.json").read_text())
    missed = an["rows"][0]["missed"]
    idx = torch.tensor([m["i"] for m in missed])
    train, test = bench_data(False, 20000, 500)
    model = cached_model("at", a.cache, train)
    x, y = test.x[:500][idx], test.y[:500][idx]
    t0 = time.perf_counter()
    res = fab(model, x, y, norm=a.norm, eps=a.eps, generator=torch.Generator().manual_seed(0))
    wall = time.perf_counter() - t0
    rows = []
    print(f"{'i':>4} {'ta-fab-t':>8} {'distance':>9} {'broken':>6}")
    for j, m in enumerate(missed):
        r = {"i": m["i"], "ta_fab_t": "ta-fab-t" in m["rerr"],
             "distance": float(res.info["distance"][j]), "broken": bool(res.success[j])}
        rows.append(r)
        print(f"{r['i']:>4} {str(r['ta_fab_t']):>8} {r['distance']:>9.3f} {str(r['broken']):>6}")
    nb = sum(r["broken"] for r in rows)
    nt = sum(r["broken"] and r["ta_fab_t"] for r in rows)
    print(f"robustlab FAB-T breaks {nb} of {len(rows)} (of ta-fab-t's {sum(r['ta_fab_t'] for r in rows)}: "
          f"{nt}); {wall:.1f}s")
    atomic_write_json(a.out, {"benchmark": "fab_missed", "config": vars(a), "rows": rows,
                              "broken": nb, "time_s": wall, "versions": versions()})


if __name__ == "__main__":
    main()
