"""`robustlab attack RUN`: adversarial evaluation suite with confidence thresholding.

Under `torchrun` the attacked examples are split across ranks; rank 0 writes the results.
"""

from __future__ import annotations

import argparse
import math
import sys

from robustlab.cli import add_device, add_speed, list_of, nonneg_int, positive_int, seed_int


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; it must be in (0, 1)") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"{text} is out of range; it must be in (0, 1)")
    return v


def _tpr(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"TPR {text!r} is not a number; it must be in (0, 1]") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"TPR {text} is out of range; it must be in (0, 1]")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    from robustlab.evaluate.adversarial import DEFAULT_SUITE

    p = sub.add_parser(
        "attack", help="adversarial evaluation (Lp, frames, patches, distal, corruptions)",
        description="Attack the first --n-test test images of a run's model with every threat "
        "model of --suite and report Err, RErr, the confidence threshold τ at each TPR (from the "
        "last --holdout fraction of the test set), RErr@τ, FPR@τ and ROC AUC. Writes "
        "RUN/results/NAME.json, example images and figures beside it.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--suite", default=DEFAULT_SUITE,
                   help="comma list of linf, l2, l1, l0, frames, patch, distal, corrupt; an item "
                   "may carry a radius/width/side/severity, e.g. linf:0.2 (default: %(default)s)")
    p.add_argument("--eps", default=None, metavar="NORM=R,…",
                   help="radii replacing the defaults, e.g. linf=0.2,l2=3 (default: the spec's "
                   "for the image size: 0.1/1.5/10/15 on 28×28 gray)")
    p.add_argument("--attacks", default="standard",
                   help="optimizers of the Lp threats: standard (APGD-CE, APGD-T, APGD-conf and "
                   "Square in sequence, the worst case per example), pgd (a quick look: PGD with "
                   "each of --objectives), or a comma list of apgd-ce, apgd-dlr, apgd-t, "
                   "apgd-conf, square, pgd (default: %(default)s)")
    p.add_argument("--restarts", type=positive_int, default=1,
                   help="APGD restarts; PGD: runs per objective, one from zero, the rest random")
    p.add_argument("--steps", type=nonneg_int, default=None,
                   help="iterations per attack (default: APGD 100, PGD 40, patches 100)")
    p.add_argument("--queries", type=positive_int, default=None,
                   help="Square queries (default 5000; 50 × --steps when --steps is given)")
    p.add_argument("--targets", type=positive_int, default=9,
                   help="APGD-T target classes (the most likely non-true ones; default 9)")
    p.add_argument("--patch-steps", type=nonneg_int, default=None, help="iterations for patches")
    p.add_argument("--objectives", type=list_of(str), default=["ce", "conf"],
                   help="PGD objectives (--attacks pgd, L0, frames, patches), each run "
                   "separately (ce, conf, dlr; default ce,conf)")
    p.add_argument("--n-test", type=positive_int, default=1000, help="test images to attack")
    p.add_argument("--holdout", type=_fraction, default=0.1,
                   help="fraction at the end of the test set that calibrates τ")
    p.add_argument("--tpr", type=list_of(_tpr), default=[0.99, 0.98],
                   help="true positive rates for τ (default 0.99,0.98)")
    p.add_argument("--severity", type=list_of(positive_int), default=[3],
                   help="corruption severities 1..5 (default 3)")
    p.add_argument("--corruptions", type=list_of(str), default=None, help="corruption names "
                   "(default: all)")
    p.add_argument("--momentum", type=float, default=0.9, help="PGD momentum β (0 = off)")
    p.add_argument("--no-backtrack", action="store_true", help="fixed PGD step sizes")
    p.add_argument("--no-early-exit", action="store_true",
                   help="inside an attack, keep attacking examples that are already adversarial "
                   "with c ≥ the largest τ (the verdicts are the same)")
    p.add_argument("--no-sanity", action="store_true", help="skip the sanity checks (flags)")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--best", action="store_true", help="evaluate the best snapshot, not the last")
    p.add_argument("--data-dir", default=None, help="where the run's dataset files are")
    p.add_argument("--name", default="attack", help="result name (default: %(default)s)")
    p.add_argument("--no-figures", action="store_true", help="write no PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device(p)
    add_speed(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from robustlab import distributed
    from robustlab.attacks import corruptions
    from robustlab.errors import UserError
    from robustlab.evaluate.adversarial import adversarial, parse_attacks, parse_eps, parse_suite
    from robustlab.io import write_result
    from robustlab.runs import open_run

    # Validate the cheap things before loading anything.
    parse_suite(args.suite)
    parse_eps(args.eps)
    parse_attacks(args.attacks)
    if not 0 <= args.momentum < 1:
        raise UserError(f"momentum {args.momentum} is invalid; it must be in [0, 1)")
    for s in args.severity:
        if s not in corruptions.SEVERITIES:
            raise UserError(f"corruption severity {s} is invalid; it must be one of 1..5")
    if not args.name.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"result name {args.name!r} must be letters, digits, - or _")
    device = distributed.init(args.device)  # joins the process group under torchrun
    r = open_run(args.run, device=device, data_dir=args.data_dir, best=args.best)
    if args.channels_last:
        r.model.to(memory_format=torch.channels_last)
    results_dir = r.path / "results"
    res = adversarial(
        r.predictor(), r.test, args.suite, eps=args.eps, n=args.n_test, holdout=args.holdout,
        tprs=args.tpr, attacks=args.attacks, steps=args.steps, patch_steps=args.patch_steps,
        queries=args.queries, targets=args.targets, restarts=args.restarts,
        objectives=args.objectives, momentum=args.momentum, backtrack=not args.no_backtrack,
        early_stop=not args.no_early_exit, sanity=not args.no_sanity, severities=args.severity,
        corruptions=args.corruptions, batch_size=args.batch_size, seed=args.seed, device=r.device,
        bf16=args.bf16, channels_last=True if args.channels_last else None,
        examples_path=results_dir / f"{args.name}_examples.safetensors",
        dataset=r.meta["data"]["name"], progress=False if args.quiet else None)
    out = {"run": str(r.path), "snapshot": "best" if args.best else "last", **res}
    if not distributed.is_main():
        return 0
    path = write_result(r.path, args.name, out)
    print(summary_table(res))
    for line in flag_lines(res):
        print(line, file=sys.stderr)
    print(f"written to {path}")
    if not args.no_figures:
        from robustlab.report import adversarial_plots as plots

        figs = [plots.plot_rerr_bars(out, results_dir / f"{args.name}_rerr.png", title=r.path.name)]
        if any(t.get("adv_conf") is not None or t.get("threat") == "distal"
               for t in res["threats"].values()):
            figs.append(plots.plot_confidence_histograms(
                out, results_dir / f"{args.name}_confidence.png", title=r.path.name))
        if res.get("examples_file"):
            figs.append(plots.plot_examples(results_dir / res["examples_file"],
                                            results_dir / f"{args.name}_examples.png",
                                            title=r.path.name))
        print("figures: " + ", ".join(str(f) for f in figs))
    return 0


def _p(v: float | None) -> str:
    return "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"


def summary_table(res: dict) -> str:
    """A plain-text table: one row per threat model, errors in %."""
    keys = list(res["clean"]["tau"])
    head = f"{'threat':<12} {'radius':>7} {'RErr':>5}"
    for k in keys:
        pct = f"{100 * float(k):g}%"
        head += f" {'RErr@' + pct:>10} {'FPR@' + pct:>9}"
    head += f" {'AUC':>5}"
    lines = [f"clean Err {100 * res['clean']['err']:.2f}% on {res['config']['n']} images; τ: "
             + ", ".join(f"{100 * float(k):g}% TPR → {v:.4f}" for k, v in res["clean"]["tau"].items()),
             head]
    for name, t in res["threats"].items():
        radius = t.get("eps", t.get("width", t.get("size", [None])[0] if t.get("size") else None))
        rad = f"{radius:7.4g}" if isinstance(radius, (int, float)) else f"{'':>7}"
        at = t.get("at", {})
        if t["threat"] == "distal":
            row = f"{name:<12} {rad} {'':>5}" + "".join(
                f" {'':>10} {_p(at.get(k, {}).get('fpr')):>9}" for k in keys) + f" {'':>5}"
        elif t["threat"] == "corrupt":
            row = f"{name:<12} {rad} {_p(t.get('mean_err')):>5}" + "".join(
                f" {_p(at.get(k, {}).get('err')):>10} {'':>9}" for k in keys) + f" {'':>5}"
        else:
            auc = t.get("auc")
            row = f"{name:<12} {rad} {_p(t.get('rerr')):>5}" + "".join(
                f" {_p(at.get(k, {}).get('rerr')):>10} {_p(at.get(k, {}).get('fpr')):>9}"
                for k in keys) + (f" {auc:5.3f}" if isinstance(auc, float) and not math.isnan(auc)
                                  else f" {'-':>5}")
        lines.append(row)
    lines.append("(distal: FPR@τ of noise-started inputs; corrupt: mean Err and Err@τ)")
    for name, t in res["threats"].items():
        if t.get("by_attack"):
            lines.append(f"{name}: examples broken by each attack: " + ", ".join(
                f"{a} +{v['added']}" for a, v in t["by_attack"].items()))
    return "\n".join(lines)


def flag_lines(res: dict) -> list[str]:
    """One 'warning: …' line per sanity flag of a result."""
    return [f"warning: {f['message']}" for f in res.get("flags", [])]
