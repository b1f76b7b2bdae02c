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
from functools import partial

import torch
from common import add_peer_options, batched_wrong, peer_setup, tally, tally_table, timed_run

from robustlab.attacks import square
from robustlab.io import atomic_write_json, versions

EPS = {"linf": 0.1, "l2": 1.5}
LIBS = ("robustlab", "torchattacks")


def run_lib(lib: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
            eps: float, queries: int, seed: int, batch: int) -> torch.Tensor:
    """Per-example misclassified after the attack (bool, n)."""
    if lib == "robustlab":
        def attack(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return square(model, xb, yb, norm=norm, eps=eps, queries=queries,
                          generator=torch.Generator().manual_seed(seed), early_stop=0.0).x_adv
    else:
        import torchattacks as ta

        def attack(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return ta.Square(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps,
                             n_queries=queries, n_restarts=1, seed=seed)(xb, yb)
    return batched_wrong(model, x, y, batch, norm, eps, lib, attack)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_peer_options(ap, "square_vs_peers", ",".join(LIBS), n=250, seeds="0,1,2", batch_size=250)
    ap.add_argument("--queries", type=int, default=1000)
    a = ap.parse_args()
    norms, libs, seeds, model, x, y = peer_setup(a, tuple(EPS), LIBS)
    res = {f"{norm} {lib}": tally(a.n, norm=norm, library=lib) for norm in norms for lib in libs}
    for si, seed in enumerate(seeds):
        for norm in norms:
            order = libs if si % 2 == 0 else libs[::-1]
            for lib in order:
                r = res[f"{norm} {lib}"]
                wall, _ = timed_run(r, partial(run_lib, lib, model, x, y, norm, EPS[norm],
                                               a.queries, seed, a.batch_size))
                print(f"  seed {seed} {norm} {lib}: {100 * r['rates'][-1]:.1f} % ({wall:.1f}s)",
                      flush=True)
    print(f"\nSquare on {a.model}, first {a.n} test images, {a.queries} queries, seeds {a.seeds}: "
          "misclassified in %")
    rows = tally_table(list(res.values()), {"norm": 5, "library": 13})
    atomic_write_json(a.out, {"benchmark": "square_vs_peers", "config": vars(a), "rows": rows,
                              "versions": versions()})
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
