"""The default suite with and without FAB-T on the cached AT model (attack_strength.py's protocol).

Runs `rl.evaluate.adversarial` on the first --n-test Fashion-MNIST test images for each
--attacks list and prints RErr, RErr@τ (99 % TPR), wall time and, per attack, the examples it
broke first ("added") and its time. Writes benchmarks/results/fab_suite.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import bench_data, cached_model

from robustlab.evaluate.adversarial import adversarial
from robustlab.io import atomic_write_json, versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="/tmp/robustlab_attack_strength")
    ap.add_argument("--threat", default="l2:1.5")
    ap.add_argument("--attacks", default="apgd-ce,apgd-t,apgd-conf,square;"
                                         "apgd-ce,apgd-t,apgd-conf,fab-t,square")
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/fab_suite.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    train, test = bench_data(False, 20000, 0)
    model = cached_model("at", a.cache, train)
    rows = []
    for attacks in a.attacks.split(";"):
        t0 = time.perf_counter()
        r = adversarial(model, test, a.threat, n_test=a.n_test,
                        attacks=attacks, tprs=(0.99,), batch_size=a.batch_size, device="cpu",
                        progress=False)
        wall = time.perf_counter() - t0
        t = r["threats"][a.threat]
        at = next(iter(t["at"].values()))
        row = {"threat": a.threat, "attacks": attacks, "err": t["err"], "rerr": t["rerr"],
               "rerr_at_99": at["rerr"], "tau": at["tau"], "time_s": round(wall, 1),
               "by_attack": t["by_attack"]}
        rows.append(row)
        print(f"{a.threat} [{attacks}]: RErr {100 * row['rerr']:.1f}  RErr@τ "
              f"{100 * row['rerr_at_99']:.1f}  {wall:.0f}s", flush=True)
        for name, v in t["by_attack"].items():
            print(f"    {name:<10} added {v['added']:>4}  time {v['time_s']:.1f}s", flush=True)
    atomic_write_json(a.out, {"benchmark": "fab_suite", "config": vars(a), "rows": rows,
                              "versions": versions()})


if __name__ == "__main__":
    main()
