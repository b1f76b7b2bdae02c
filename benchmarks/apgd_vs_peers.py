"""APGD and APGD-T: robustlab against torchattacks at equal steps, on attack_strength.py's models.

The same images, model, ε, 100 steps and 1 restart; robustlab `apgd(loss="ce")` against
torchattacks `APGD(loss="ce")`, and robustlab `apgd(loss="dlr-t", targets=9)` against
torchattacks `APGDT(n_classes=10)` (9 targets). One run per (seed, norm, attack, library), the
libraries interleaved (order alternating per seed and attack), 1 thread by default.

Stopping: torchattacks attacks the examples still correctly classified at the start of each
restart (APGD-T: each target) for all its steps, and an example counts as fooled when any
iterate is misclassified. robustlab runs with `early_stop=0.0`: an example stops at its first
misclassified iterate (the same success criterion) and skips later restarts and targets, so the
reported rate is the fraction of images misclassified (clean errors included) for both. The
library `robustlab-nostop` (`early_stop=None`, every example for every step and target) shows
robustlab's cost at the work of an attack without any early exit.
Wall times and process CPU times are per library, summed over seeds (on a shared machine the CPU
time is the steadier of the two).

    python benchmarks/apgd_vs_peers.py --model at --n 200 --seeds 0

The model comes from attack_strength.py's cache (run that script once to train it). Writes
benchmarks/results/apgd_vs_peers.json.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from common import add_peer_options, batched_wrong, choose, peer_setup, tally, tally_table, timed_run

from robustlab.attacks import apgd
from robustlab.io import atomic_write_json, versions

EPS = {"linf": 0.1, "l2": 1.5}
ATTACKS = ("apgd-ce", "apgd-t")
LIBS = ("robustlab", "torchattacks", "robustlab-nostop")


def run_lib(lib: str, attack: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
            norm: str, eps: float, steps: int, seed: int, batch: int) -> torch.Tensor:
    """Per-example misclassified after the attack (bool, n)."""
    if lib.startswith("robustlab"):
        def run(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            loss = "ce" if attack == "apgd-ce" else "dlr-t"
            return apgd(model, xb, yb, norm=norm, eps=eps, loss=loss, targets=9, steps=steps,
                        restarts=1, generator=torch.Generator().manual_seed(seed),
                        early_stop=None if lib.endswith("nostop") else 0.0).x_adv
    else:
        import torchattacks as ta

        def run(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            name = {"linf": "Linf", "l2": "L2"}[norm]
            if attack == "apgd-ce":
                atk = ta.APGD(model, norm=name, eps=eps, steps=steps, n_restarts=1, seed=seed,
                              loss="ce")
            else:
                atk = ta.APGDT(model, norm=name, eps=eps, steps=steps, n_restarts=1, seed=seed,
                               n_classes=10)
            return atk(xb, yb).detach()
    return batched_wrong(model, x, y, batch, norm, eps, lib, run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_peer_options(ap, "apgd_vs_peers", "robustlab,torchattacks", n=200, seeds="0",
                     batch_size=200)
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--steps", type=int, default=100)
    a = ap.parse_args()
    norms, libs, seeds, model, x, y = peer_setup(a, tuple(EPS), LIBS)
    attacks = choose(a.attacks, ATTACKS, "attack")
    res = {f"{norm} {attack} {lib}": tally(a.n, norm=norm, attack=attack, library=lib)
           for norm in norms for attack in attacks for lib in libs}
    turn = 0
    for seed in seeds:
        for norm in norms:
            for attack in attacks:
                order = libs if turn % 2 == 0 else libs[::-1]
                turn += 1
                for lib in order:
                    r = res[f"{norm} {attack} {lib}"]
                    wall, cpu = timed_run(r, partial(run_lib, lib, attack, model, x, y, norm,
                                                     EPS[norm], a.steps, seed, a.batch_size))
                    print(f"  seed {seed} {norm} {attack} {lib}: {100 * r['rates'][-1]:.1f} % "
                          f"({wall:.1f}s wall, {cpu:.1f}s cpu)", flush=True)
    print(f"\nAPGD on {a.model}, first {a.n} test images, {a.steps} steps, 1 restart, "
          f"seeds {a.seeds}, {a.threads} thread(s): misclassified in %")
    rows = tally_table(list(res.values()), {"norm": 5, "attack": 8, "library": 17})
    atomic_write_json(a.out, {"benchmark": "apgd_vs_peers", "config": vars(a), "rows": rows,
                              "versions": versions()})
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
