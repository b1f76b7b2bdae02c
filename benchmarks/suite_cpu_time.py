"""CPU time of robustlab's default suite against AutoAttack's, on the attack_strength models.

On a shared, loaded machine wall times mostly measure the other jobs; the process CPU time of a
one-thread run measures the work. For each model (the cached LeNets of `attack_strength.py`:
normal, at, ccat) and threat, robustlab's default suite (`rl.evaluate.adversarial`, as in
attack_strength.py) and torchattacks' AutoAttack (APGD-CE, APGD-T, FAB-T, Square 5000, the
paper's 100 steps) run one after the other on the first --n-test test images; reported: CPU
seconds, wall seconds, their ratios (target of issue 10: robustlab ≤ 1/3 of AutoAttack's time),
RErr of both and robustlab's RErr@τ (99 % TPR), and robustlab's per-attack record.

    python benchmarks/suite_cpu_time.py --models at --n-test 100
    python benchmarks/suite_cpu_time.py --models normal,at,ccat --threats linf,l2
    python benchmarks/suite_cpu_time.py --models at --tprs none   # RErr only, AutoAttack's rule

Needs the cached models (run attack_strength.py once) and torchattacks. Writes
benchmarks/results/suite_cpu_time.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from attack_strength import EPS, MODELS, TPR, peer
from common import bench_data, cached_model, choose

from robustlab.evaluate.adversarial import adversarial
from robustlab.io import atomic_write_json, versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threats", default="linf")
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--subset", type=int, default=20000, help="training images (model shapes)")
    ap.add_argument("--tprs", default="0.99", choices=("0.99", "none"),
                    help="robustlab's τ: 0.99 (RErr@τ at 99%% TPR; an example is decided once "
                    "misclassified with confidence ≥ τ) or none (RErr only; decided once "
                    "misclassified, AutoAttack's rule)")
    ap.add_argument("--cache", default="/tmp/robustlab_attack_strength")
    ap.add_argument("--out", default="benchmarks/results/suite_cpu_time.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    keys = choose(a.models, MODELS, "model")
    threats = choose(a.threats, tuple(EPS), "threat")
    train, test = bench_data(False, a.subset, 0)
    pa = argparse.Namespace(steps=100, queries=5000, batch_size=min(a.batch_size, a.n_test))
    rows: list[dict[str, Any]] = []
    print(f"{'model':<7} {'threat':<8} {'robustlab CPU s':>15} {'AutoAttack CPU s':>16} {'ratio':>6} "
          f"{'wall ratio':>10} {'RErr rl/AA':>11} {'rl RErr@τ':>9}")
    for key in keys:
        model = cached_model(key, a.cache, train)
        for threat in threats:
            eps = EPS[threat]
            item = f"{threat}:{eps}"
            c0, w0 = time.process_time(), time.perf_counter()
            tprs = (TPR,) if a.tprs != "none" else ()
            r = adversarial(model, test, item, n_test=a.n_test, tprs=tprs, batch_size=pa.batch_size,
                            device="cpu", progress=False)
            rl_cpu, rl_wall = time.process_time() - c0, time.perf_counter() - w0
            t = r["threats"][item]
            run = peer("ta-autoattack", model, threat, eps, pa)
            c0, w0 = time.process_time(), time.perf_counter()
            wrong = []
            for i in range(0, a.n_test, pa.batch_size):
                x, y = test.x[i:min(a.n_test, i + pa.batch_size)], test.y[i:min(a.n_test, i + pa.batch_size)]
                adv = run(x, y).detach().float()
                with torch.no_grad():
                    wrong.append(model(adv).argmax(1) != y)
            aa_cpu, aa_wall = time.process_time() - c0, time.perf_counter() - w0
            aa_rerr = float(torch.cat(wrong).float().mean())
            row = {"model": key, "threat": threat, "eps": eps, "n": a.n_test,
                   "robustlab_cpu_s": round(rl_cpu, 1), "autoattack_cpu_s": round(aa_cpu, 1),
                   "cpu_ratio": rl_cpu / aa_cpu, "robustlab_wall_s": round(rl_wall, 1),
                   "autoattack_wall_s": round(aa_wall, 1), "wall_ratio": rl_wall / aa_wall,
                   "robustlab_rerr": t["rerr"], "autoattack_rerr": aa_rerr,
                   "robustlab_rerr_at_99": t["at"].get(f"{TPR:g}", {}).get("rerr", float("nan")),
                   "by_attack": t["by_attack"]}
            rows.append(row)
            print(f"{key:<7} {item:<8} {rl_cpu:15.1f} {aa_cpu:16.1f} {rl_cpu / aa_cpu:6.2f} "
                  f"{rl_wall / aa_wall:10.2f} {100 * t['rerr']:5.1f}/{100 * aa_rerr:<5.1f} "
                  f"{100 * row['robustlab_rerr_at_99']:9.1f}", flush=True)
            atomic_write_json(a.out, {"benchmark": "suite_cpu_time", "config": vars(a),
                                      "rows": rows, "versions": versions()})
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
