"""CCAT vs AT vs normal training on Fashion-MNIST (spec §4, §9.3).

Trains three models with ε∞ = 0.1 training attacks:

    normal   plain cross-entropy
    at       adversarial training, half of every batch adversarial (f = 0.5), PGD-CE
    ccat     confidence-calibrated AT, f = 0.5, PGD-Conf, ρ = 10

and evaluates each with `robustlab.evaluate.adversarial`: τ at 99% TPR from the last 10% of the
test set, the first --n-test test images attacked with L∞ 0.1 (seen), L∞ 0.2 (unseen), L2 1.5,
L1 10, L0 15, adversarial frames, distal noise and the corruption set. Every Lp/frame threat runs
PGD with both the `ce` and the `conf` objective, each from a zero start plus --restarts − 1 random
starts (with momentum and backtracking), and keeps the per-example worst case. The table reports
clean Err, then per threat RErr@τ (and FPR@τ), distal FPR@τ and the mean corruption Err@τ; the
JSON holds every metric including RErr without rejection. Writes benchmarks/results/ccat.json.

    python benchmarks/ccat.py --device cuda                                     # the real run
    python benchmarks/ccat.py --device cpu --epochs 1 --subset 2000 --n-test 100 --steps 5

Defaults: convnet (BN), 10 epochs, batch 128, SGD lr 0.05 cosine, training attack 10 steps,
evaluation 200 steps with 3 restarts per objective.
"""

from __future__ import annotations

import argparse
import time

from robustlab import data, models
from robustlab.device import resolve_device
from robustlab.evaluate.adversarial import adversarial
from robustlab.io import atomic_write_json, versions
from robustlab.train import fit
from robustlab.train.adversarial_methods import AT, CCAT
from robustlab.train.methods import Method

SUITE = "linf,linf:0.2,l2,l1,l0,frames,distal,corrupt"
COLUMNS = [("linf", "L∞ .1"), ("linf:0.2", "L∞ .2"), ("l2", "L2"), ("l1", "L1"), ("l0", "L0"),
           ("frames", "frames")]


def methods(a: argparse.Namespace) -> dict[str, tuple[str, Method]]:
    kw = dict(eps=a.eps, attack_steps=a.train_steps)
    return {"normal": ("Normal", Method()),
            "at": ("AT 50%", AT(fraction=0.5, **kw)),
            "ccat": ("CCAT ρ=10", CCAT(fraction=0.5, rho=10.0, **kw))}


def pct(v: float | None) -> str:
    return "   -  " if v is None or v != v else f"{100 * v:6.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--subset", type=int, default=0, help="training images (0 = all)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--eps", type=float, default=0.1, help="L∞ radius of the training attacks")
    ap.add_argument("--train-steps", type=int, default=10, help="training attack iterations")
    ap.add_argument("--runs", default="normal,at,ccat")
    ap.add_argument("--n-test", type=int, default=1000, help="attacked test images")
    ap.add_argument("--steps", type=int, default=200, help="evaluation attack iterations")
    ap.add_argument("--restarts", type=int, default=3, help="per objective (first from zero)")
    ap.add_argument("--suite", default=SUITE)
    ap.add_argument("--batch-eval", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/ccat.json")
    a = ap.parse_args()
    device = resolve_device(a.device)
    train, test = data.load(a.data)
    if a.subset:
        train = train.subset(slice(0, a.subset))
    rows = {}
    for key in a.runs.split(","):
        label, method = methods(a)[key]
        model = models.create(a.model, dataset=train, seed=a.seed)
        t0 = time.perf_counter()
        fit(model, train, method=method, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
            seed=a.seed, device=device, bf16=a.bf16, channels_last=a.channels_last,
            progress=False if a.quiet else None)
        t_train = time.perf_counter() - t0
        model.eval()
        t0 = time.perf_counter()
        res = adversarial(model, test, a.suite, n_test=a.n_test, steps=a.steps, restarts=a.restarts,
                          objectives=("ce", "conf"), batch_size=a.batch_eval, seed=a.seed,
                          device=device, bf16=a.bf16, channels_last=a.channels_last,
                          dataset=a.data, progress=False if a.quiet else None)
        rows[key] = {"label": label, "method": method.config(), "train_s": round(t_train, 1),
                     "eval_s": round(time.perf_counter() - t0, 1), "result": res}
        print(f"{label}: trained in {t_train:.0f}s, evaluated in {rows[key]['eval_s']:.0f}s")
    tpr = "0.99"
    head = f"{'model':<11} {'Err':>6}" + "".join(f" {name:>13}" for _, name in COLUMNS) \
        + f" {'distal':>7} {'corrupt':>8}"
    print("\nRErr@τ / FPR@τ in % at 99% TPR (τ from the held-out last 10% of the test set)")
    print(head)
    table = []
    for row in rows.values():
        r = row["result"]
        th = r["threats"]
        line = {"model": row["label"], "Err": r["clean"]["err"]}
        text = f"{row['label']:<11} {pct(r['clean']['err'])}"
        for k, name in COLUMNS:
            at = th.get(k, {}).get("at", {}).get(tpr, {})
            line[f"RErr@99 {name}"], line[f"FPR@99 {name}"] = at.get("rerr"), at.get("fpr")
            line[f"RErr {name}"] = th.get(k, {}).get("rerr")
            text += f" {pct(at.get('rerr'))}/{pct(at.get('fpr')).strip():>6}"
        d = th.get("distal", {}).get("at", {}).get(tpr, {}).get("fpr")
        c = th.get("corrupt", {}).get("at", {}).get(tpr, {}).get("err")
        line["FPR@99 distal"], line["Err@99 corrupt"] = d, c
        text += f" {pct(d)} {pct(c):>8}"
        table.append(line)
        print(text)
    print("(RErr without rejection is in the JSON; AT is expected to win on L∞ .1 without it)")
    out = {"benchmark": "ccat", "device": str(device), "data": a.data, "config": vars(a),
           "table": table, "runs": rows, "versions": versions()}
    atomic_write_json(a.out, out)
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
