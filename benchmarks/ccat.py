"""CCAT vs AT vs normal training (spec §4, §9.3): the `ccat` preset's runs and evaluation, timed.

Trains the runs of configs/ccat.yaml with their `TrainSpec`s (ε∞ = 0.1 training attacks):

    normal   plain cross-entropy
    at       adversarial training, half of every batch adversarial (f = 0.5), PGD-CE
    ccat     confidence-calibrated AT, f = 0.5, PGD-Conf, ρ = 10

into --cache (a finished run with the same settings is reused) and evaluates each with the
preset's `adversarial` spec (`robustlab.tasks.adversarial.Adversarial`): τ at 99% TPR from the
last 10% of the preset's test subset, the first --n-test test images attacked with L∞ 0.1 (seen),
L∞ 0.2 (unseen), L2 1.5, L1 10, L0 15, adversarial frames, distal noise and corruptions (the
Lp threats with the standard APGD/FAB/Square composition, L0 and frames with PGD on both the `ce`
and the `conf` objective, the worst case per example). The table reports clean Err, then per
threat RErr@τ (and FPR@τ), distal FPR@τ and the mean corruption Err@τ; the JSON holds every
result (RErr without rejection included) and the training and evaluation seconds (a reused run
keeps the seconds of its training). Writes benchmarks/results/ccat.json.

    python benchmarks/ccat.py --device cuda --scale full                        # the real run
    python benchmarks/ccat.py --device cpu --epochs 1 --subset 2000 --n-test 100 --steps 5
    python benchmarks/ccat.py --smoke --device cpu                # tiny synthetic check (seconds)

Defaults: the preset at its default scale (small: convnet width 8 with BN, 5 epochs, training
attack 7 steps; evaluation 500 images, 20 steps, 2 restarts); --scale full: width 32, 30 epochs,
40 training steps, 1000 images, 200 steps, 5 restarts.
"""

from __future__ import annotations

import argparse

import common

from robustlab.io import atomic_write_json, versions

COLUMNS = [("linf", "L∞ .1"), ("linf:0.2", "L∞ .2"), ("l2", "L2"), ("l1", "L1"), ("l0", "L0"),
           ("frames", "frames")]


def pct(v: float | None) -> str:
    return "   -  " if v is None or v != v else f"{100 * v:6.1f}"


def table_line(label: str, r: dict, tpr: str = "0.99") -> tuple[dict, str]:
    """(JSON row, printed line) of one model's adversarial result."""
    th = r["threats"]
    line = {"model": label, "Err": r["clean"]["err"]}
    text = f"{label:<11} {pct(r['clean']['err'])}"
    for k, name in COLUMNS:
        at = th.get(k, {}).get("at", {}).get(tpr, {})
        line[f"RErr@99 {name}"], line[f"FPR@99 {name}"] = at.get("rerr"), at.get("fpr")
        line[f"RErr {name}"] = th.get(k, {}).get("rerr")
        text += f" {pct(at.get('rerr'))}/{pct(at.get('fpr')).strip():>6}"
    d = th.get("distal", {}).get("at", {}).get(tpr, {}).get("fpr")
    c = th.get("corrupt", {}).get("at", {}).get(tpr, {}).get("err")
    line["FPR@99 distal"], line["Err@99 corrupt"] = d, c
    return line, text + f" {pct(d)} {pct(c):>8}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_preset_options(ap, "ccat")
    common.add_attack_options(ap)
    ap.add_argument("--suite", default=None, help="threats (default: the preset's)")
    a = ap.parse_args()
    preset = common.bench_preset("ccat", a)
    ws = common.bench_workspace(preset, a)
    rows = {}
    for key in preset["runs"]:
        run, t_train = common.bench_run(ws, key)
        spec = common.preset_eval(ws, key, "adversarial", n_test=a.n_test, steps=a.steps,
                           restarts=a.restarts, suite=a.suite)
        res, t_eval = common.timed_eval(spec, run, progress=False if a.quiet else None, bf16=a.bf16,
                                 channels_last=a.channels_last or None)
        rows[key] = {"label": ws.run_label(key), "run": str(run.path),
                     "method": run.meta.get("method"), "train_s": t_train, "eval_s": t_eval,
                     "result": res}
        print(f"{rows[key]['label']}: trained in {t_train:.0f}s, evaluated in {t_eval:.0f}s")
    head = f"{'model':<11} {'Err':>6}" + "".join(f" {name:>13}" for _, name in COLUMNS) \
        + f" {'distal':>7} {'corrupt':>8}"
    print("\nRErr@τ / FPR@τ in % at 99% TPR (τ from the held-out last 10% of the test set)")
    print(head)
    table = []
    for row in rows.values():
        line, text = table_line(row["label"], row["result"])
        table.append(line)
        print(text)
    print("(RErr without rejection is in the JSON; AT is expected to win on L∞ .1 without it)")
    out = {"benchmark": "ccat", "device": str(run.device), "data": run.meta["data"]["name"],
           "config": vars(a), "preset": preset, "table": table, "runs": rows,
           "versions": versions()}
    atomic_write_json(a.out, out)
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
