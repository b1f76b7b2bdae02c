"""`robustlab bitattack RUN`: robust error under adversarial bit flips, per bit budget.

Under `torchrun` the attack runs and random patterns are dealt to the ranks; rank 0 writes.
"""

from __future__ import annotations

import argparse

from robustlab.cli import add_device, list_of, nonneg_int, positive_float, positive_int, seed_int


def _class(text: str) -> int:
    return nonneg_int(text)


def register(sub: argparse._SubParsersAction) -> None:
    from robustlab.evaluate.bitattack import RESTARTS, STEP_SIZE, STEPS

    p = sub.add_parser(
        "bitattack", help="adversarial bit errors: RErr per number of flipped bits",
        description="Flip at most BUDGET bits of the quantized weights (at most one per weight) "
        "to maximize the loss on an attack set, then report the robust error on the test set "
        "(wrong clean or wrong with the flips). Methods: attack (projected gradient attack), "
        "bfa (progressive bit search baseline), random (random flips). Reports per budget the "
        "worst case over attack and BFA, which found it, and the envelope (max over budgets "
        "<= b). Writes RUN/results/bitattack[-targetK].json and a PNG of RErr against the budget.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--budget", type=list_of(nonneg_int), default=[10, 20, 40, 80, 160, 320],
                   help="bit budgets, comma-separated (default: %(default)s)")
    p.add_argument("--methods", default="attack,bfa,random",
                   help="comma-separated: attack, bfa, random (default: %(default)s)")
    p.add_argument("--target", type=_class, default=None,
                   help="targeted attack: push inputs into this class")
    p.add_argument("--steps", type=nonneg_int, default=STEPS,
                   help="projected attack iterations per start (default: %(default)s)")
    p.add_argument("--step-size", type=positive_float, default=STEP_SIZE,
                   help="step in units of half the code range, for the largest gradient entry "
                   "(default: %(default)s)")
    p.add_argument("--restarts", type=positive_int, default=RESTARTS,
                   help="starts of the projected attack per budget: the clean codes, the best "
                   "flips of the next smaller budget, then random flips (default: %(default)s)")
    p.add_argument("--random-patterns", type=positive_int, default=5,
                   help="seeds of the random-flip reference")
    p.add_argument("--n-attack", type=positive_int, default=512,
                   help="examples the attack is computed on")
    p.add_argument("--attack-split", choices=["train", "test"], default="train",
                   help="where the attack examples come from (first N of the split)")
    p.add_argument("--n-test", type=positive_int, default=None,
                   help="evaluate on the first N test images (default: all)")
    p.add_argument("--params", default="all",
                   help="attacked tensors: all (every quantized tensor), default "
                   "(conv/linear weights and biases), weights, or comma-separated names")
    p.add_argument("--quant", default=None, metavar="SCHEME",
                   help="quantization for runs trained without one (default: rquant8)")
    p.add_argument("--best", action="store_true", help="use the best snapshot, not the last")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=512)
    p.add_argument("--data-dir", default=None, help="where the run's dataset files are")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robustlab import distributed, quant
    from robustlab.errors import UserError
    from robustlab.evaluate.bitattack import _methods, bit_attack
    from robustlab.io import write_result
    from robustlab.report.flatness_plots import plot_bit_attack
    from robustlab.runs import open_run

    methods = _methods(args.methods)
    device = distributed.init(args.device)  # joins the process group under torchrun
    r = open_run(args.run, device=device, data_dir=args.data_dir, best=args.best)
    if args.quant and r.quant is not None:
        raise UserError(f"--quant {args.quant}: {args.run} was trained with its own quantization "
                        f"({r.quant}); leave --quant out")
    scheme = r.quant if r.quant is not None else quant.parse(args.quant or "rquant8")
    if args.target is not None and args.target >= r.test.num_classes:
        raise UserError(f"--target {args.target} must be a class in 0..{r.test.num_classes - 1}")
    test = r.test if args.n_test is None else r.test.subset(slice(0, args.n_test))
    src = r.train if args.attack_split == "train" and r.train is not None else r.test
    res = bit_attack(r.model, test, budgets=args.budget, method=methods, scheme=scheme,
                     attack_data=src, n_attack=args.n_attack, target=args.target,
                     steps=args.steps, step_size=args.step_size, restarts=args.restarts,
                     random_patterns=args.random_patterns, selection=args.params,
                     seed=args.seed, batch_size=args.batch_size, device=r.device,
                     progress=False if args.quiet else None)
    if not distributed.is_main():
        return 0
    name = "bitattack" + (f"-target{args.target}" if args.target is not None else "")
    path = write_result(r.path, name, {"run": str(r.path), "snapshot": "best" if args.best
                                       else "last", "attack_split": args.attack_split,
                                       "data": r.meta.get("data"), **res})
    png = plot_bit_attack(res, Path(path).with_suffix(".png"))
    print(f"clean error (quantized) {100 * res['clean_err']:.2f}% on {res['n_test']} images, "
          f"{res['weights']} weights")
    worst = res["results"].get("worst")
    print("budget  " + "  ".join(f"{m:>8}" for m in methods)
          + ("     worst  found by    envelope" if worst else "") + "   (RErr %)")
    for i, b in enumerate(res["budgets"]):
        line = f"{b:>6}  " + "  ".join(f"{100 * res['results'][m]['rerr'][i]:8.2f}"
                                       for m in methods)
        if worst:
            line += (f"  {100 * worst['rerr'][i]:8.2f}  {worst['found_by'][i]:<10} "
                     f"{100 * worst['rerr_env'][i]:7.2f}")
            if worst["env_budget"][i] != b:
                line += f" (at {worst['env_budget'][i]} bits)"
        print(line)
    print(f"written to {path} and {png}")
    return 0
