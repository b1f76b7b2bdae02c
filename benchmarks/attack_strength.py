"""Attack strength: robustlab's default worst-case suite against torchattacks, Foolbox and ART.

Models (Fashion-MNIST, LeNet, trained with robustlab's own trainer on the first --subset
training images, SGD lr 0.05, batch 128, seed 0; cached in --cache):

    normal   plain cross-entropy, --epochs-normal epochs (default 10)
    at       AT, half of every batch adversarial, PGD-CE L∞ ε = 0.1, --train-steps (7) steps,
             --epochs-adv epochs (default 15)
    ccat     CCAT ρ = 10, f = 0.5, PGD-conf L∞ ε = 0.1, same steps and epochs as AT

Threats: L∞ 0.1 and L2 1.5 on the first --n-test test images (default 500). τ at 99 % TPR comes
from the held-out last 10 % of the test set (robustlab's protocol) and is used for every library.
Per model and threat, the libraries run interleaved (order rotated per model):

    robustlab      `rl.evaluate.adversarial` with its defaults (APGD-CE, APGD-T, APGD-conf, FAB-T,
                   Square 5000 queries on undecided examples; early exit; channels_last auto)
    ta-apgd-ce     torchattacks APGD, CE loss, 100 steps, 1 restart
    ta-apgd-t      torchattacks APGDT, 100 steps, 9 targets
    ta-autoattack  torchattacks APGD-CE, APGD-T, FAB-T, Square (5000 queries) with the paper's
                   100 steps (torchattacks' own AutoAttack class uses 10), robust points only
    fb-pgd         Foolbox LinfPGD / L2PGD, 100 steps of 2.5·ε/100, random start
    art-pgd        ART ProjectedGradientDescentPyTorch, 100 steps of 2.5·ε/100, random start

Reported: RErr (and RErr@τ for every model, the headline for CCAT), the per-example ensemble of
all peers (worst case by spec §2's key), how many examples each peer breaks that robustlab does
not (at RErr; "@τ" counts misclassified-and-accepted), and wall times. Target (issue 10):
robustlab ≥ peers' ensemble − 0.5 points everywhere, in ≤ 1/3 of AutoAttack's wall time.

    python benchmarks/attack_strength.py                              # the full benchmark
    python benchmarks/attack_strength.py --n-test 100 --threats linf  # what fits a busy CPU

Install the peers with `.venv/bin/pip install -e '.[bench]'` and
`.venv/bin/pip install --no-deps torchattacks` (it would pull torchvision otherwise).
Writes benchmarks/results/attack_strength.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import bench_data, choose

from robustlab.attacks.base import confidence, worst_case_key
from robustlab.checkpoint import read_weights, save_weights
from robustlab.evaluate import metrics as M
from robustlab.evaluate.adversarial import adversarial
from robustlab.io import atomic_write_json, versions
from robustlab.tasks.train import TrainSpec

EPS = {"linf": 0.1, "l2": 1.5}
MODELS = ("normal", "at", "ccat")
LIBRARIES = ("robustlab", "ta-apgd-ce", "ta-apgd-t", "ta-autoattack", "fb-pgd", "art-pgd")
# AutoAttack's other two parts on their own, for the per-example analysis (not in the default list)
EXTRA_LIBRARIES = ("ta-fab-t", "ta-square")
TPR = 0.99


def train_spec(key: str, a: argparse.Namespace) -> TrainSpec:
    """The training run of model `key` (what the header says), as robustlab's `TrainSpec`."""
    options = {"normal": {},
               "at": {"fraction": 0.5, "eps": 0.1, "attack_steps": a.train_steps},
               "ccat": {"fraction": 0.5, "rho": 10.0, "eps": 0.1, "attack_steps": a.train_steps}}
    return TrainSpec(model="lenet", method=key, options=options[key], lr=0.05, batch_size=128,
                     seed=0, epochs=a.epochs_normal if key == "normal" else a.epochs_adv)


def train_model(key: str, a: argparse.Namespace, train: Any) -> torch.nn.Module:
    path = Path(a.cache) / f"{key}.safetensors"
    spec = train_spec(key, a)
    model = spec.make_model(train)
    if path.exists():
        model.load_state_dict(read_weights(path))
        return model.eval()
    t0 = time.perf_counter()
    spec.run(None, data=(train, None, None), model=model, device="cpu", progress=False)
    print(f"{key}: trained in {time.perf_counter() - t0:.0f}s")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, model)
    return model.eval()


PHASE_TIMES: dict[str, float] = {}  # seconds per AutoAttack phase, reset per model and threat


def timed(fn: Any, phase: str) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            PHASE_TIMES[phase] = PHASE_TIMES.get(phase, 0.0) + time.perf_counter() - t0
    return run


def peer(name: str, model: torch.nn.Module, norm: str, eps: float, a: argparse.Namespace):
    """x, y -> adversarial x for a peer library."""
    steps = a.steps
    if name.startswith("ta-"):
        import torchattacks as ta

        tnorm = {"linf": "Linf", "l2": "L2"}[norm]
        if name == "ta-fab-t":
            atk = ta.FAB(model, norm=tnorm, eps=eps, steps=steps, n_restarts=1, multi_targeted=True,
                         n_classes=10, seed=0)
        elif name == "ta-square":
            atk = ta.Square(model, norm=tnorm, eps=eps, n_queries=a.queries, n_restarts=1, seed=0)
        elif name == "ta-apgd-ce":
            atk = ta.APGD(model, norm=tnorm, eps=eps, steps=steps, n_restarts=1, loss="ce", seed=0)
        elif name == "ta-apgd-t":
            atk = ta.APGDT(model, norm=tnorm, eps=eps, steps=steps, n_restarts=1, n_classes=10,
                           seed=0)
        else:
            phases = {
                "apgd-ce": ta.APGD(model, norm=tnorm, eps=eps, steps=steps, n_restarts=1,
                                   loss="ce", seed=0),
                "apgd-t": ta.APGDT(model, norm=tnorm, eps=eps, steps=steps, n_restarts=1,
                                   n_classes=10, seed=0),
                "fab-t": ta.FAB(model, norm=tnorm, eps=eps, steps=steps, n_restarts=1,
                                multi_targeted=True, n_classes=10, seed=0),
                "square": ta.Square(model, norm=tnorm, eps=eps, n_queries=a.queries,
                                    n_restarts=1, seed=0)}
            for phase, sub in phases.items():  # each phase's share of AutoAttack's time
                sub.forward = timed(sub.forward, phase)
            atk = ta.MultiAttack(list(phases.values()))
        return lambda x, y: atk(x, y)
    if name == "fb-pgd":
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        cls = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD
        atk = cls(abs_stepsize=2.5 * eps / steps, steps=steps, random_start=True)

        def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return atk(fmodel, x, y, epsilons=eps)[1]
        return run
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    atk = ProjectedGradientDescentPyTorch(clf, norm=np.inf if norm == "linf" else 2, eps=eps,
                                          eps_step=2.5 * eps / steps, max_iter=steps,
                                          num_random_init=1, batch_size=a.batch_size,
                                          verbose=False)
    return lambda x, y: torch.from_numpy(atk.generate(x.numpy(), y=y.numpy()))


def scored(wrong: torch.Tensor, conf: torch.Tensor, clean_wrong: torch.Tensor,
           clean_conf: torch.Tensor, tau: float) -> dict[str, Any]:
    m = M.adversarial_metrics(clean_wrong, clean_conf, wrong, conf, {"0.99": tau})
    return {"rerr": m["rerr"], "rerr_at": m["at"]["0.99"]["rerr"],
            "broken": (wrong | clean_wrong), "broken_at": (wrong & (conf >= tau))
            | (clean_wrong & (clean_conf >= tau))}


def print_rows(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    print(f"\nRErr / RErr@τ(99% TPR) in %, {a.n_test} Fashion-MNIST test images, LeNet")
    head = (f"{'model':<7} {'threat':<9} {'library':<16} {'RErr':>5} {'@τ':>5} {'time s':>7} "
            f"{'peer breaks, robustlab not':>27}")
    print(head)
    for r in rows:
        print(f"{r['model']:<7} {r['threat'] + ' ' + format(r['eps'], 'g'):<9} {r['library']:<16} "
              f"{pct(r['rerr'])} {pct(r['rerr_at_99'])} {r['time_s']:7.1f} "
              f"{r['breaks_not_robustlab']:>13} / {r['breaks_not_robustlab_at_99']:<3}"
              + (f"  margin {100 * r['margin_rerr']:+.1f} / {100 * r['margin_rerr_at_99']:+.1f} pts"
                 if "margin_rerr" in r else "")
              + (f", {r['time_vs_autoattack']:.2f}× AutoAttack's time" if "time_vs_autoattack" in r
                 else ""))
        if r.get("phase_time_s"):
            print(" " * 19 + "phases: " + ", ".join(
                f"{k} {v:.1f}s" for k, v in r["phase_time_s"].items()))


def per_example(res: dict[str, dict[str, Any]], mine: dict[str, Any], clean_wrong: torch.Tensor,
                clean_conf: torch.Tensor, tau: float) -> list[dict[str, Any]]:
    """Every example some library breaks (RErr, or RErr@τ) and robustlab does not: which libraries
    break it, robustlab's verdict (wrong-class confidence; `wrong` = misclassified) and which of
    robustlab's attacks produced it. Printed and returned for the JSON."""
    out = []
    libs = [lib for lib in res if lib not in ("robustlab", "peers' ensemble")]
    scores = {lib: scored(res[lib]["wrong"], res[lib]["conf"], clean_wrong, clean_conf, tau)
              for lib in libs}
    by = res["robustlab"].get("by_example")
    for i in range(len(mine["broken"])):
        at = [lib for lib in libs if scores[lib]["broken"][i] and not mine["broken"][i]]
        at_tau = [lib for lib in libs if scores[lib]["broken_at"][i] and not mine["broken_at"][i]]
        if at or at_tau:
            out.append({"i": i, "rerr": at, "rerr_at_99": at_tau,
                        "robustlab_wrong": bool(res["robustlab"]["wrong"][i]),
                        "robustlab_conf": round(float(res["robustlab"]["conf"][i]), 3),
                        "robustlab_by": by[i] if by else None})
    if out:
        print(f"  examples a peer breaks and robustlab does not (τ = {tau:.3f}):")
        for e in out:
            print(f"    #{e['i']:<4} RErr: {','.join(e['rerr']) or '-':<40} @τ: "
                  f"{','.join(e['rerr_at_99']) or '-':<40} robustlab "
                  f"{'wrong' if e['robustlab_wrong'] else 'right'} conf {e['robustlab_conf']:.3f}"
                  f" ({e['robustlab_by']})")
        for lib in libs:
            k = sum(lib in e["rerr"] for e in out)
            k_at = sum(lib in e["rerr_at_99"] for e in out)
            only = sum(e["rerr"] == [lib] for e in out)
            print(f"    {lib:<14} breaks {k:3d} / {k_at:3d} (@τ) of them; the only one on {only}")
    return out


def pct(v: float) -> str:
    return f"{100 * v:5.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threats", default="linf,l2")
    ap.add_argument("--libraries", default=",".join(LIBRARIES))
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--subset", type=int, default=20000, help="training images")
    ap.add_argument("--epochs-normal", type=int, default=10)
    ap.add_argument("--epochs-adv", type=int, default=15)
    ap.add_argument("--train-steps", type=int, default=7, help="training attack iterations")
    ap.add_argument("--steps", type=int, default=100, help="peers' iterations")
    ap.add_argument("--queries", type=int, default=5000, help="AutoAttack's Square queries")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--cache", default="/tmp/robustlab_attack_strength")
    ap.add_argument("--out", default="benchmarks/results/attack_strength.json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    keys = choose(a.models, MODELS, "model")
    threats = choose(a.threats, tuple(EPS), "threat")
    libs = choose(a.libraries, LIBRARIES + EXTRA_LIBRARIES, "library")
    train, test = bench_data(False, a.subset, 0)
    rows: list[dict[str, Any]] = []
    for mi, key in enumerate(keys):
        model = train_model(key, a, train)
        for p in model.parameters():
            p.requires_grad_(False)
        for threat in threats:
            eps = EPS[threat]
            order = libs[mi % len(libs):] + libs[:mi % len(libs)]  # interleaved, rotated
            res: dict[str, dict[str, Any]] = {}
            base = None
            for lib in order:
                t0 = time.perf_counter()
                if lib == "robustlab":
                    r = adversarial(model, test, f"{threat}:{eps}", n_test=a.n_test, tprs=(TPR,),
                                    batch_size=a.batch_size, device="cpu", progress=False)
                    wall = time.perf_counter() - t0
                    t = r["threats"][f"{threat}:{eps}"]
                    base = r
                    wrong = torch.tensor(t["adv_wrong"])
                    conf = torch.tensor(t["adv_conf"])
                    extra = {"by_attack": {k: v["added"] for k, v in t["by_attack"].items()},
                             "phase_time_s": {k: v["time_s"] for k, v in t["by_attack"].items()},
                             "by_example": t.get("verdict_by"),
                             "flags": [f["name"] for f in r.get("flags", [])]}
                else:
                    PHASE_TIMES.clear()
                    run = peer(lib, model, threat, eps, a)
                    x_all, y_all = test.x[:a.n_test], test.y[:a.n_test]
                    logits = []
                    for i in range(0, a.n_test, a.batch_size):
                        x, y = x_all[i:i + a.batch_size], y_all[i:i + a.batch_size]
                        adv = run(x, y).detach().float()
                        d = (adv - x).flatten(1)
                        size = d.abs().amax(1) if threat == "linf" else d.norm(dim=1)
                        assert float(size.max()) <= eps * (1 + 1e-4) + 1e-5, (lib, float(size.max()))
                        assert float(adv.min()) >= -1e-6 and float(adv.max()) <= 1 + 1e-6, lib
                        with torch.no_grad():
                            logits.append(model(adv).float())
                    wall = time.perf_counter() - t0
                    lg = torch.cat(logits)
                    wrong, conf = lg.argmax(1) != y_all, confidence(lg)
                    extra = {"key": worst_case_key(lg, y_all)}
                    if PHASE_TIMES:
                        extra["phase_time_s"] = {k: round(v, 1) for k, v in PHASE_TIMES.items()}
                res[lib] = {"wrong": wrong, "conf": conf, "time_s": wall, **extra}
                print(f"  {key} {threat} {lib}: {wall:.1f}s", flush=True)
            if base is None:
                raise SystemExit("the robustlab library must be in --libraries")
            tau = base["clean"]["tau"][f"{TPR:g}"]
            clean_wrong = torch.tensor(base["clean"]["wrong"])
            clean_conf = torch.tensor(base["clean"]["conf"])
            peers = [lib for lib in libs if lib not in ("robustlab",) + EXTRA_LIBRARIES]
            if peers:  # per-example worst case over the peers (spec §2 key)
                keys_ = torch.stack([res[p]["key"] for p in peers])
                pick = keys_.argmax(0)
                ens_wrong = torch.stack([res[p]["wrong"] for p in peers]).gather(
                    0, pick[None]).squeeze(0)
                ens_conf = torch.stack([res[p]["conf"] for p in peers]).gather(
                    0, pick[None]).squeeze(0)
                res["peers' ensemble"] = {"wrong": ens_wrong, "conf": ens_conf, "time_s": sum(
                    res[p]["time_s"] for p in peers)}
            mine = scored(res["robustlab"]["wrong"], res["robustlab"]["conf"], clean_wrong,
                          clean_conf, tau)
            for lib, v in res.items():
                s = scored(v["wrong"], v["conf"], clean_wrong, clean_conf, tau)
                row = {"model": key, "threat": threat, "eps": eps, "library": lib,
                       "n": a.n_test, "tau": tau, "clean_err": float(clean_wrong.float().mean()),
                       "rerr": s["rerr"], "rerr_at_99": s["rerr_at"], "time_s": round(v["time_s"], 1),
                       "breaks_not_robustlab": int((s["broken"] & ~mine["broken"]).sum()),
                       "breaks_not_robustlab_at_99": int((s["broken_at"] & ~mine["broken_at"]).sum())}
                for extra in ("by_attack", "flags", "phase_time_s"):
                    if extra in v:
                        row[extra] = v[extra]
                rows.append(row)
            aa = next((r for r in rows[-len(res):] if r["library"] == "ta-autoattack"), None)
            ens = next((r for r in rows[-len(res):] if r["library"] == "peers' ensemble"), None)
            me = next(r for r in rows[-len(res):] if r["library"] == "robustlab")
            if ens:
                me["margin_rerr"] = me["rerr"] - ens["rerr"]
                me["margin_rerr_at_99"] = me["rerr_at_99"] - ens["rerr_at_99"]
            if aa:
                me["time_vs_autoattack"] = me["time_s"] / max(aa["time_s"], 1e-9)
            print_rows(rows[-len(res):], a)  # each model and threat as soon as it is done
            me["missed"] = per_example(res, mine, clean_wrong, clean_conf, tau)
            atomic_write_json(a.out, {"benchmark": "attack_strength", "config": vars(a),
                                      "rows": rows, "versions": versions()})
    print_rows(rows, a)
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
