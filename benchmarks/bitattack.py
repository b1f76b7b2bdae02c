"""Adversarial bit errors (spec §3a, §8, §9.2): RErr against the number of flipped bits.

For every architecture of --archs (default lenet, mlp), trains with their `TrainSpec`s the
8-bit models of configs/bit-errors.yaml (its data and training settings at --scale):

    normal     plain float training, attacked at RQuant (8 bit) after training (defined here)
    rquant     quantization-aware (RQuant 8 bit): the preset's `rquant`
    clipping   + weight clipping (w_max 0.1; --clip): the preset's `clip`
    randbet    + clipping + random bit error training (p = 2%; --randbet-p): the preset's `randbet`
    advbet     + clipping + adversarial bit error training (--advbet-budget bits per batch; opt-in,
               defined here)

into --cache (a finished run with the same settings is reused), and attacks each with the
`bitattack` spec (`robustlab.tasks.bitattack.BitAttack`): the projected adversarial bit error
attack (its defaults: --steps, --restarts) and BFA (progressive bit search), plus random flips of
the same budget as a reference. The attacks are computed on --n-attack training images; RErr
(wrong clean or wrong with the flips) is measured on --n-test test images. Prints, per model, the
projected attack, BFA, their per-budget worst case with the attack that found it, and the
envelope max_{b′ ≤ b} RErr(b′); then whether the projected attack alone is ≥ BFA at every budget.
Writes benchmarks/results/bitattack.json and bitattack.png.

    python benchmarks/bitattack.py --device cuda --scale full  # the real benchmark (GPU)
    python benchmarks/bitattack.py --smoke --device cpu        # tiny synthetic check

Defaults: the preset at its default scale (small: 12000 training images, 5 epochs, batch 128,
SGD lr 0.05; --scale full: all images, 30 epochs), budgets 10..320, 512 attack and 2000 test
images.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

from common import (
    add_preset_options,
    add_run_overrides,
    bench_preset,
    bench_run,
    bench_workspace,
    choose,
    override_runs,
    timed_eval,
)

from robustlab.io import atomic_write_json, read_json, versions
from robustlab.report.flatness_plots import plot_bit_attack
from robustlab.tasks.bitattack import BitAttack
from robustlab.values import list_of, nonneg_int

MODELS = ("normal", "rquant", "clipping", "randbet", "advbet")
DEFAULT_MODELS = "normal,rquant,clipping,randbet"
FROM_PRESET = {"rquant": "rquant", "clipping": "clip", "randbet": "randbet"}  # bit-errors.yaml


def bench_runs(preset: dict[str, Any], names: list[str], arch: str, a: argparse.Namespace
               ) -> dict[str, Any]:
    """The preset for `arch` whose runs are `names`: rquant, clipping, randbet from the preset;
    normal (float training) and advbet (clipping's settings + AdvBET) defined here."""
    p = copy.deepcopy(preset)
    runs = p["runs"]
    own = {"normal": {"label": "Normal (float)"},
           "advbet": {"label": "RQuant+Clip+AdvBET", "method": "advbet",
                      "options": {"bit_budget": a.advbet_budget,
                                  "bit_attack_steps": a.advbet_steps},
                      "train": dict(runs["clip"]["train"])}}
    p["runs"] = {n: runs[FROM_PRESET[n]] if n in FROM_PRESET else own[n] for n in names}
    p["model"] = {"name": arch}  # the preset's width and norm belong to its own model
    return override_runs(p, a)


def pct(v: float) -> str:
    return f"{100 * v:5.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_preset_options(ap, "bit-errors")
    add_run_overrides(ap)
    ap.set_defaults(out="benchmarks/results/bitattack.json")
    ap.add_argument("--models", default=None, help=f"subset of {', '.join(MODELS)} (default: "
                    f"{DEFAULT_MODELS}; also --runs)")
    ap.add_argument("--archs", default="lenet,mlp", help="architectures, comma-separated "
                    "(also --model)")
    ap.add_argument("--advbet-budget", type=int, default=160)
    ap.add_argument("--advbet-steps", type=int, default=5)
    ap.add_argument("--budgets", type=list_of(nonneg_int), default=None,
                    help="numbers of flipped bits (default: 10,20,40,80,160,320)")
    ap.add_argument("--methods", default=None, help="default: attack,bfa,random")
    ap.add_argument("--steps", type=int, default=None, help="iterations of the projected attack")
    ap.add_argument("--restarts", type=int, default=None)
    ap.add_argument("--n-attack", type=int, default=None, help="default: 512")
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--merge", default=None, metavar="JSON,...",
                    help="no runs: print the tables of these result files and merge them to --out")
    a = ap.parse_args()
    if a.merge:
        return merge(a)
    if a.smoke:
        a.n_attack, a.n_test, a.steps, a.archs = 64, 128, 3, "mlp"
        a.advbet_budget, a.advbet_steps = 8, 1
        a.budgets = [b for b in a.budgets or [10, 20, 40] if b <= 20] or [4]
    names = choose(a.models or a.runs or DEFAULT_MODELS, MODELS, "model")
    archs = [s.strip() for s in (a.model or a.archs).split(",") if s.strip()]
    a.models, a.archs = ",".join(names), ",".join(archs)  # recorded in the JSON's config
    a.runs = a.model = None  # the runs and models are chosen here, not by bench_preset
    preset = bench_preset("bit-errors", a)
    spec = BitAttack.from_settings({k: v for k, v in (
        ("budgets", a.budgets), ("methods", a.methods), ("steps", a.steps),
        ("restarts", a.restarts), ("n_attack", a.n_attack), ("n_test", a.n_test),
        ("seed", a.seed)) if v is not None}, "benchmarks/bitattack.py")
    spec.check()
    budgets = list(spec.budgets)
    results: dict[str, Any] = {}
    t0, first = time.perf_counter(), None
    for arch in archs:
        ws = bench_workspace(bench_runs(preset, names, arch, a), a)
        for name in names:
            key = f"{arch}/{name}"
            run, t_train = bench_run(ws, name)
            if first is None:
                first = run
                print(f"data {run.train.name}: {len(run.train)} train, {len(run.test)} test; "
                      f"device {run.device}; runs in {a.cache}")
            res, t_attack = timed_eval(spec, run, progress=False if a.quiet else None)
            res["train_time_s"], res["attack_time_s"] = t_train, t_attack
            results[key] = res
            print(f"{key}: clean Err {100 * res['clean_err']:.2f}% "
                  f"(train {t_train:.0f}s, attacks {t_attack:.0f}s)", flush=True)
            save(a, budgets, first, results, t0, partial=True)  # survives interruption
    verdict = table(results, budgets, results[key]["n_test"], spec.n_attack)
    png = plot_bit_attack(list(results.values()), a.out.replace(".json", ".png"),
                          labels=list(results))
    save(a, budgets, first, results, t0, verdict=verdict)
    print(f"written to {a.out} and {png}")


def table(results: dict, budgets: list[int], n_test: int, n_attack: int) -> dict:
    """Print the per-model table (methods, worst case, envelope, who found it, as text and as
    Markdown); returns {model: budgets at which the projected attack is behind BFA}."""
    print(f"\nRErr (%) by flipped bits on {n_test} test images "
          f"(attacks computed on {n_attack} training images)")
    print(f"{'model':<16} {'':<10} {'clean':>5} " + " ".join(f"{b:>5}" for b in budgets))
    verdict, md = {}, []
    short = {"attack": "proj", "bfa": "bfa", "attack+bfa": "both"}
    for key, res in results.items():
        r = res["results"]
        rows = [(m, r[m]["rerr"]) for m in res["methods"]]
        if "worst" in r:
            rows += [("worst", r["worst"]["rerr"]), ("envelope", r["worst"]["rerr_env"])]
        for i, (m, vals) in enumerate(rows):
            print(f"{key if i == 0 else '':<16} {m:<10} {pct(res['clean_err'])} "
                  + " ".join(pct(v) for v in vals))
        if "worst" in r:
            found = [short.get(f, f) for f in r["worst"]["found_by"]]
            print(f"{'':<16} {'found by':<10} {'':>5} " + " ".join(f"{f:>5}" for f in found))
            w = r["worst"]
            md.append(f"| {key} | projected | {pct(res['clean_err']).strip()} | "
                      + " | ".join(pct(v).strip() for v in r["attack"]["rerr"]) + " |"
                      if "attack" in r else None)
            md.append("| | BFA | | " + " | ".join(pct(v).strip() for v in r["bfa"]["rerr"]) + " |"
                      if "bfa" in r else None)
            md.append("| | worst (by) | | " + " | ".join(
                f"{pct(v).strip()} ({f})" for v, f in zip(w["rerr"], found)) + " |")
            md.append("| | envelope | | " + " | ".join(pct(v).strip() for v in w["rerr_env"])
                      + " |")
        if "attack" in r and "bfa" in r:
            verdict[key] = [b for b, x, y in zip(budgets, r["attack"]["rerr"], r["bfa"]["rerr"])
                            if x < y]
    if verdict:
        print("\nprojected attack >= BFA at every budget:")
        for key, behind in verdict.items():
            print(f"  {key:<16} " + ("yes" if not behind else
                                     f"no (behind at {', '.join(map(str, behind))} bits)"))
    md = [line for line in md if line]
    if md:
        print("\n| model | attack | clean | " + " | ".join(str(b) for b in budgets) + " |")
        print("|---" * (len(budgets) + 3) + "|")
        print("\n".join(md))
    return verdict


def merge(a: argparse.Namespace) -> None:
    """--merge: print the table of earlier runs' JSON files and write them as one file."""
    results, files = {}, [f.strip() for f in a.merge.split(",") if f.strip()]
    docs = [read_json(f) for f in files]
    for d in docs:
        for key, res in d["models"].items():
            results.setdefault(key, res)
    budgets = docs[0]["config"]["budgets"]
    first = next(iter(results.values()))
    verdict = table(results, budgets, first["n_test"], first["n_attack"])
    png = plot_bit_attack(list(results.values()), a.out.replace(".json", ".png"),
                          labels=list(results))
    atomic_write_json(a.out, {"benchmark": "bitattack", "merged_from": files,
                              "configs": [d["config"] for d in docs], "data": docs[0]["data"],
                              "device": docs[0]["device"], "models": results,
                              "projected_behind_bfa": verdict,
                              "total_time_s": sum(d["total_time_s"] for d in docs),
                              "versions": versions()})
    print(f"written to {a.out} and {png}")


def save(a: argparse.Namespace, budgets: list[int], run: Any, results: dict, t0: float,
         verdict: dict | None = None, partial: bool = False) -> None:
    atomic_write_json(a.out, {"benchmark": "bitattack", "config": {**vars(a), "budgets": budgets},
                              "data": run.train.name, "device": str(run.device), "models": results,
                              "projected_behind_bfa": verdict, "partial": partial,
                              "total_time_s": round(time.perf_counter() - t0, 1),
                              "versions": versions()})


if __name__ == "__main__":
    main()
