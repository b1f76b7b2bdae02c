"""Square attack: robustlab against torchattacks at equal queries, on attack_strength.py's models.

The same images, model, ε and number of queries; one run per (seed, norm, library), the libraries
interleaved (order alternating per seed). Both libraries stop an example at its first
misclassification for this comparison (robustlab: `early_stop=0`; torchattacks always does),
so the reported success rate is the fraction of images misclassified (clean errors included).
Wall times and process CPU times are per library, summed over seeds (on a shared machine the CPU
time is the steadier of the two).

    python benchmarks/square_vs_peers.py --model at --n 250 --queries 1000 --seeds 0,1,2

The model comes from attack_strength.py's cache (run that script once to train it). Writes
benchmarks/results/square_vs_peers.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from common import bench_data, cached_model, choose

from robustlab.attacks import square
from robustlab.io import atomic_write_json, versions

EPS = {"linf": 0.1, "l2": 1.5}
LIBS = ("robustlab", "torchattacks")


def run_lib(lib: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
            eps: float, queries: int, seed: int, batch: int) -> torch.Tensor:
    """Per-example misclassified after the attack (bool, n)."""
    out = []
    for i in range(0, x.shape[0], batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        if lib == "robustlab":
            g = torch.Generator().manual_seed(seed)
            adv = square(model, xb, yb, norm=norm, eps=eps, queries=queries, generator=g,
                         early_stop=0.0).x_adv
        else:
            import torchattacks as ta

            atk = ta.Square(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps,
                            n_queries=queries, n_restarts=1, seed=seed)
            adv = atk(xb, yb)
        d = (adv - xb).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert float(size.max()) <= eps * (1 + 1e-4) + 1e-5, (lib, float(size.max()))
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1, lib
        with torch.no_grad():
            out.append(model(adv).argmax(1) != yb)
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="at", choices=("normal", "at", "ccat"))
    ap.add_argument("--norms", default="linf,l2")
    ap.add_argument("--libraries", default=",".join(LIBS))
    ap.add_argument("--n", type=int, default=250, help="first n test images")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--subset", type=int, default=20000)
    ap.add_argument("--cache", default="/tmp/robustlab_attack_strength")
    ap.add_argument("--out", default="benchmarks/results/square_vs_peers.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    norms = choose(a.norms, tuple(EPS), "norm")
    libs = choose(a.libraries, LIBS, "library")
    seeds = [int(s) for s in a.seeds.split(",")]
    train, test = bench_data(False, a.subset, 0)
    model = cached_model(a.model, a.cache, train)
    x, y = test.x[:a.n].float(), test.y[:a.n].long()
    res: dict[str, dict[str, Any]] = {}
    for norm in norms:
        for lib in libs:
            res[f"{norm} {lib}"] = {"norm": norm, "library": lib, "rates": [], "time_s": 0.0,
                                    "cpu_s": 0.0, "union": torch.zeros(a.n, dtype=torch.bool)}
    for si, seed in enumerate(seeds):
        for norm in norms:
            order = libs if si % 2 == 0 else libs[::-1]
            for lib in order:
                t0, c0 = time.perf_counter(), time.process_time()
                wrong = run_lib(lib, model, x, y, norm, EPS[norm], a.queries, seed, a.batch_size)
                r = res[f"{norm} {lib}"]
                r["time_s"] += time.perf_counter() - t0
                r["cpu_s"] += time.process_time() - c0
                r["rates"].append(float(wrong.float().mean()))
                r["union"] |= wrong
                print(f"  seed {seed} {norm} {lib}: {100 * r['rates'][-1]:.1f} % "
                      f"({time.perf_counter() - t0:.1f}s)", flush=True)
    print(f"\nSquare on {a.model}, first {a.n} test images, {a.queries} queries, seeds {a.seeds}: "
          "misclassified in %")
    print(f"{'norm':<5} {'library':<13} {'per seed':<24} {'mean':>6} {'union':>6} {'time s':>7} "
          f"{'cpu s':>7}")
    rows = []
    for r in res.values():
        mean = sum(r["rates"]) / len(r["rates"])
        per = " ".join(f"{100 * v:.1f}" for v in r["rates"])
        print(f"{r['norm']:<5} {r['library']:<13} {per:<24} {100 * mean:6.1f} "
              f"{100 * float(r['union'].float().mean()):6.1f} {r['time_s']:7.1f} {r['cpu_s']:7.1f}")
        rows.append({"norm": r["norm"], "library": r["library"], "rates": r["rates"],
                     "mean": mean, "union": float(r["union"].float().mean()),
                     "time_s": round(r["time_s"], 1), "cpu_s": round(r["cpu_s"], 1)})
    atomic_write_json(a.out, {"benchmark": "square_vs_peers", "config": vars(a), "rows": rows,
                              "versions": versions()})
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
