"""Adversarial evaluation suites with confidence thresholding (spec §2–§3).

Protocol: the last `holdout` fraction (default 10%) of the test set calibrates the confidence
threshold τ at each TPR on its correctly classified clean examples; the first `n` examples
(default 1000) are attacked. For every threat model of the suite several attacks run (objectives
`ce` and `conf`, each from a zero start plus `restarts − 1` random starts) and the per-example
worst case (highest wrong-class confidence, misclassified first) is scored: Err, RErr, RErr@τ,
FPR@τ and ROC AUC. Distal inputs report FPR@τ, corruptions Err and Err@τ.

Suite items: `linf`, `l2`, `l1`, `l0`, `frames`, `patch`, `distal`, `corrupt`; an item may carry
a parameter after a colon: a radius (`linf:0.2`, `distal:0.3`), a frame width (`frames:3`), a
patch side (`patch:5`) or a severity (`corrupt:5`).

Early exit (on by default) stops attacking an example once it is misclassified with confidence
≥ the largest τ; that example counts as an error at every reported threshold, so Err, RErr,
RErr@τ and FPR@τ are unchanged, while mean adversarial confidences and the AUC are those of
the first sufficient iterate (turn it off for confidence histograms of fully optimized attacks).

Randomness: batch b of a suite item draws from a generator seeded with the item's seed + b, so
every batch is reproducible on its own. Under `torchrun` the batches of the attacked (and distal)
examples are split across ranks and the per-example results gathered in order: every rank
returns the single-process result; rank 0 saves the example images.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from robustlab import distributed, sources
from robustlab.attacks import corruptions as corr
from robustlab.attacks.base import AttackResult, confidence, evaluate_logits, worst_case
from robustlab.attacks.distal import distal
from robustlab.attacks.frames import frame_mask, frames
from robustlab.attacks.patches import check_size, patch_attack
from robustlab.attacks.pgd import OBJECTIVES, pgd
from robustlab.attacks.threat import DISTAL_EPS, NORMS, THREATS, default_eps, frame_width, patch_size
from robustlab.data import Dataset
from robustlab.errors import UserError
from robustlab.evaluate import metrics as M
from robustlab.models import with_quant

DEFAULT_SUITE = "linf,l2,l1,l0,frames,patch,distal,corrupt"
Model = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class SuiteItem:
    key: str          # as written in the suite, e.g. "linf:0.2"
    threat: str       # one of THREATS
    param: float | None  # radius / width / side / severity (None: the default)


def _number(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UserError(f"{what} {text!r} is not a number") from None
    if not v >= 0 or math.isinf(v):
        raise UserError(f"{what} {text} is invalid; it must be a finite number ≥ 0")
    return v


def parse_suite(suite: str | Sequence[str]) -> list[SuiteItem]:
    """Suite items from 'linf,l2:3,patch' (or a list of such strings)."""
    parts = [p.strip() for p in (suite.split(",") if isinstance(suite, str) else suite) if p.strip()]
    if not parts:
        raise UserError(f"empty suite; choose from {', '.join(THREATS)}")
    items, seen = [], set()
    for part in parts:
        name, _, arg = part.partition(":")
        name = name.strip().lower()
        if name not in THREATS:
            raise UserError(f"unknown suite item {part!r}; choose from {', '.join(THREATS)} "
                            "(optionally with :PARAMETER, e.g. linf:0.2)")
        param = _number(arg, f"parameter of {name}") if arg else None
        if name in ("frames", "patch") and param is not None and (param < 1 or param != int(param)):
            raise UserError(f"{part!r}: the {'frame width' if name == 'frames' else 'patch side'} "
                            "must be an integer ≥ 1")
        if name == "corrupt" and param is not None and param not in corr.SEVERITIES:
            raise UserError(f"{part!r}: the corruption severity must be one of 1..5")
        if part in seen:
            continue
        seen.add(part)
        items.append(SuiteItem(part, name, param))
    return items


def parse_eps(text: str | dict[str, float] | None) -> dict[str, float]:
    """Radius overrides 'linf=0.2,l2=3' → {'linf': 0.2, 'l2': 3.0}."""
    if text is None:
        return {}
    if isinstance(text, dict):
        pairs = [(k, str(v)) for k, v in text.items()]
    else:
        pairs = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            k, sep, v = part.partition("=")
            if not sep:
                raise UserError(f"--eps item {part!r} must look like NORM=RADIUS, e.g. linf=0.2")
            pairs.append((k.strip(), v.strip()))
    out = {}
    for k, v in pairs:
        if k not in NORMS + ("distal",):
            raise UserError(f"unknown norm {k!r} in --eps; choose one of {', '.join(NORMS)}, distal")
        out[k] = _number(v, f"eps for {k}")
    return out


def _tpr_key(tpr: float) -> str:
    return f"{tpr:g}"


def _item_seed(seed: int, key: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (2 ** 63)


def _batch_generators(item_seed: int, n: int, batch_size: int) -> list[tuple[int, torch.Generator]]:
    """(start, generator) of this rank's batches of n examples; batch b's seed is item_seed + b."""
    return [(i, torch.Generator().manual_seed((item_seed + i // batch_size) % (2 ** 63)))
            for i in distributed.shard(range(0, n, batch_size))]


@dataclasses.dataclass
class _Settings:
    steps: int
    patch_steps: int
    restarts: int
    objectives: tuple[str, ...]
    momentum: float
    backtrack: bool
    early_stop: float | None
    bf16: bool
    channels_last: bool


def _lp_attacks(model: Model, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float,
                s: _Settings, g: torch.Generator, mask_kind: str | None = None,
                width: int | None = None) -> tuple[AttackResult, list[str]]:
    results, names = [], []
    for obj in s.objectives:
        for init, restarts in (("zero", 1), ("box" if mask_kind else "norm", s.restarts - 1)):
            if restarts < 1:
                continue
            kw = dict(steps=s.steps, objective=obj, init=init, restarts=restarts,
                      momentum=s.momentum, backtrack=s.backtrack, early_stop=s.early_stop,
                      generator=g, bf16=s.bf16, channels_last=s.channels_last)
            if mask_kind == "frames":
                results.append(frames(model, x, y, width=width, **kw))
            else:
                results.append(pgd(model, x, y, norm=norm, eps=eps, **kw))
            names.append(f"{obj}/{init}×{restarts}")
    return worst_case(results), names


def _patch_attacks(model: Model, x: torch.Tensor, y: torch.Tensor, size: tuple[int, int],
                   s: _Settings, g: torch.Generator) -> tuple[AttackResult, list[str]]:
    results, names = [], []
    for obj in s.objectives:
        results.append(patch_attack(model, x, y, size=size, steps=s.patch_steps, step_size=0.05,
                                    location="optimized-full", restarts=s.restarts, objective=obj,
                                    early_stop=s.early_stop, generator=g, bf16=s.bf16,
                                    channels_last=s.channels_last))
        names.append(f"{obj}/optimized-full×{s.restarts}")
    return worst_case(results), names


def _examples(x: torch.Tensor, res: AttackResult, k: int) -> dict[str, torch.Tensor]:
    k = min(k, x.shape[0])
    return {"clean": x[:k].cpu(), "adv": res.x_adv[:k].detach().cpu(),
            "pred": res.pred[:k].cpu(), "conf": res.conf[:k].cpu()}


def _rounded(t: torch.Tensor, digits: int = 6) -> list[float]:
    return [round(v, digits) for v in t.double().tolist()]


def save_examples(path: str | Path, examples: dict[str, dict[str, torch.Tensor]],
                  classes: Sequence[str]) -> str:
    """Write example images per threat (safetensors); returns the file name."""
    from safetensors.torch import save_file

    from robustlab.io import atomic_write

    tensors = {f"{key}/{part}": t.detach().cpu().clone().contiguous()
               for key, parts in examples.items() for part, t in parts.items()}
    meta = {"threats": json.dumps(list(examples)), "classes": json.dumps(list(classes))}
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path.name


def load_examples(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Inverse of `save_examples`: ({threat: {part: tensor}}, class names)."""
    from safetensors import safe_open

    out: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        for name in f.keys():
            key, _, part = name.rpartition("/")
            out.setdefault(key, {})[part] = f.get_tensor(name)
    order = json.loads(meta.get("threats", "[]"))
    out = {k: out[k] for k in order if k in out} | {k: v for k, v in out.items() if k not in order}
    return out, json.loads(meta.get("classes", "[]"))


def _model_device(model: Model) -> torch.device:
    if isinstance(model, torch.nn.Module):
        p = next(iter(model.parameters()), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def adversarial(model: Model, test: Dataset, suite: str | Sequence[str] = DEFAULT_SUITE, *,
                eps: str | dict[str, float] | None = None, n: int = 1000, holdout: float = 0.1,
                tprs: Sequence[float] = (0.99, 0.98), steps: int | None = None,
                patch_steps: int | None = None, restarts: int = 1,
                objectives: Sequence[str] = ("ce", "conf"), momentum: float = 0.9,
                backtrack: bool = True, early_stop: bool = True, severities: Sequence[int] = (3,),
                corruptions: Sequence[str] | None = None, batch_size: int = 500, seed: int = 0,
                device: torch.device | str | None = None, bf16: bool = False,
                channels_last: bool = False, n_examples: int = 8,
                examples_path: str | Path | None = None, dataset: str | None = None,
                progress: bool | None = None) -> dict[str, Any]:
    """Run an evaluation suite on the first `n` test examples; returns a JSON-able dict.

    `steps` defaults to 40 (100 for patches). With `examples_path`, the first `n_examples`
    clean and adversarial images of every threat model are saved there (safetensors; keys
    `<threat>/clean|adv|pred|conf|y`) and the result names the file in `examples_file` (a path
    relative to the result's folder when the file is saved beside it).
    """
    test = sources.as_data(test)  # tensors, torch Dataset, DataLoader: rows read only as sliced
    model = with_quant(model)  # a quantization-aware fit's model: at its dequantized weights
    items = parse_suite(suite)
    eps_over = parse_eps(eps)
    if restarts < 1:
        raise UserError(f"restarts {restarts} is invalid; it must be an integer ≥ 1")
    if steps is not None and steps < 0:
        raise UserError(f"steps {steps} is invalid; it must be an integer ≥ 0")
    bad = [o for o in objectives if o not in OBJECTIVES or o == "distal"]
    if bad or not objectives:
        raise UserError(f"unknown objective {bad[0] if bad else ''!r}; choose from ce, conf, dlr")
    if not 0 < holdout < 1:
        raise UserError(f"held-out fraction {holdout} is invalid; it must be in (0, 1)")
    if n < 1 or batch_size < 1:
        raise UserError("n and batch size must be integers ≥ 1")
    for t in tprs:
        if not 0 < t <= 1:
            raise UserError(f"TPR {t} is invalid; it must be in (0, 1]")
    names = list(corruptions) if corruptions is not None else corr.names()
    for c in names:
        if c not in corr.CORRUPTIONS:
            raise UserError(f"unknown corruption {c!r}; choose from {', '.join(corr.names())}")
    shape = tuple(test.shape)
    for item in items:  # fail on impossible frames/patches before any attack runs
        if item.threat == "frames":
            frame_mask(shape, int(item.param) if item.param is not None else None)
        elif item.threat == "patch":
            check_size(shape[-2:], (int(item.param),) * 2 if item.param is not None
                       else patch_size(shape))
    dev = torch.device(device) if device is not None else _model_device(model)
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
        if channels_last:
            model.to(memory_format=torch.channels_last)
    n_total = len(test)
    n_hold = max(1, int(round(holdout * n_total)))
    n_att = min(n, n_total - n_hold)
    if n_att < 1:
        raise UserError(f"test set of {n_total} images is too small for a {holdout:g} held-out split")

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([evaluate_logits(model, x[i:i + batch_size].to(dev)).cpu()
                          for i in range(0, x.shape[0], batch_size)])

    try:
        t0 = time.perf_counter()
        hold_x, hold_y = test.x[n_total - n_hold:], test.y[n_total - n_hold:]
        hold_logits = logits_of(hold_x)
        hold_ok = hold_logits.argmax(1) == hold_y
        hold_conf = confidence(hold_logits)
        taus = {_tpr_key(t): M.threshold_at_tpr(hold_conf[hold_ok], t) for t in tprs}
        x_att, y_att = test.x[:n_att], test.y[:n_att]
        clean_logits = logits_of(x_att)
        clean_wrong = clean_logits.argmax(1) != y_att
        clean_conf = confidence(clean_logits)
        stop = max(taus.values()) if early_stop else None
        s = _Settings(40 if steps is None else int(steps),
                      100 if patch_steps is None and steps is None else
                      int(patch_steps if patch_steps is not None else steps),
                      int(restarts), tuple(objectives), momentum, backtrack, stop, bf16, channels_last)
        out: dict[str, Any] = {
            "config": {"suite": [i.key for i in items], "eps": eps_over, "n": n_att,
                       "holdout": n_hold, "tprs": list(tprs), "steps": s.steps,
                       "patch_steps": s.patch_steps, "restarts": s.restarts,
                       "objectives": list(objectives), "momentum": momentum, "backtrack": backtrack,
                       "early_stop": early_stop, "severities": list(severities),
                       "corruptions": names, "seed": seed, "bf16": bf16,
                       "channels_last": channels_last, "device": str(dev)},
            "data": {"name": dataset or test.name, "n_test": n_total, "attacked": [0, n_att],
                     "holdout": [n_total - n_hold, n_total], "shape": list(shape)},
            "clean": {"err": M.err(clean_wrong), "err_holdout": M.err(~hold_ok),
                      "tau": taus, "conf": _rounded(clean_conf),
                      "wrong": clean_wrong.tolist(), "time_s": 0.0},
            "threats": {}, "classes": list(test.classes)}
        examples: dict[str, dict[str, torch.Tensor]] = {}
        out["clean"]["time_s"] = round(time.perf_counter() - t0, 3)
        batches = range(0, n_att, batch_size)
        bar = tqdm(total=len(items) * len(distributed.shard(batches)), desc="attacks", unit="batch",
                   leave=False, disable=not distributed.is_main() or (
                       None if progress is None else not progress))
        for item in items:
            g = torch.Generator().manual_seed(_item_seed(seed, item.key))
            t1 = time.perf_counter()
            if item.threat == "distal":
                r = _run_distal(model, item, eps_over, n_att, shape, s, _item_seed(seed, item.key), dev,
                                taus, batch_size, bar)
            elif item.threat == "corrupt":
                r = _run_corrupt(logits_of, item, x_att, y_att, taus, severities, names, g,
                                 len(batches), bar)
            else:
                r, ex = _run_attack(model, item, eps_over, x_att, y_att, clean_wrong, clean_conf,
                                    taus, s, _item_seed(seed, item.key), dev, batch_size, shape,
                                    dataset or test.name, bar, n_examples)
                examples[item.key] = ex
            r["time_s"] = round(time.perf_counter() - t1, 3)
            out["threats"][item.key] = r
        bar.close()
        if examples_path is not None and examples:
            out["examples_file"] = (save_examples(examples_path, examples, list(test.classes))
                                    if distributed.is_main() else Path(examples_path).name)
        return out
    finally:
        if was_training:
            model.train()


def _run_attack(model: Model, item: SuiteItem, eps_over: dict[str, float], x_att: torch.Tensor,
                y_att: torch.Tensor, clean_wrong: torch.Tensor, clean_conf: torch.Tensor,
                taus: dict[str, float], s: _Settings, item_seed: int, dev: torch.device,
                batch_size: int, shape: tuple[int, ...], dataset: str, bar: tqdm, n_examples: int
                ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    info: dict[str, Any] = {"threat": item.threat}
    adv_logits, names, first = [], [], None
    if item.threat in NORMS:
        eps = item.param if item.param is not None else eps_over.get(
            item.threat, default_eps(item.threat, shape, dataset))
        info["eps"] = eps
    elif item.threat == "frames":
        width = int(item.param) if item.param is not None else frame_width(shape[-2])
        info["width"] = width
    else:
        size = (int(item.param),) * 2 if item.param is not None else patch_size(shape)
        info["size"] = list(size)
    for i, g in _batch_generators(item_seed, x_att.shape[0], batch_size):
        x, y = x_att[i:i + batch_size].to(dev), y_att[i:i + batch_size].to(dev)
        if item.threat in NORMS:
            res, names = _lp_attacks(model, x, y, item.threat, eps, s, g)
        elif item.threat == "frames":
            res, names = _lp_attacks(model, x, y, "linf", 1.0, s, g, "frames", width)
        else:
            res, names = _patch_attacks(model, x, y, size, s, g)
        if first is None:
            first = _examples(x, res, n_examples)
        adv_logits.append(res.logits.cpu())
        bar.update(1)
    logits = distributed.gather_batches(adv_logits, x_att.shape[0])
    adv_wrong = logits.argmax(1) != y_att
    adv_conf = confidence(logits)
    info["attacks"] = names
    info.update(M.adversarial_metrics(clean_wrong, clean_conf, adv_wrong, adv_conf, taus))
    info["adv_conf"] = _rounded(adv_conf)
    info["adv_wrong"] = adv_wrong.tolist()
    if first is None:  # this rank had no batch (more ranks than batches)
        return info, {}
    first["y"] = y_att[:first["clean"].shape[0]]
    return info, first


def _run_distal(model: Model, item: SuiteItem, eps_over: dict[str, float], n: int,
                shape: tuple[int, ...], s: _Settings, item_seed: int, dev: torch.device,
                taus: dict[str, float], batch_size: int, bar: tqdm) -> dict[str, Any]:
    eps = item.param if item.param is not None else eps_over.get("distal", DISTAL_EPS)
    confs = []
    for i, g in _batch_generators(item_seed, n, batch_size):
        m = min(batch_size, n - i)
        res = distal(model, m, shape, eps=eps, steps=s.steps, init="zero", restarts=s.restarts,
                     momentum=s.momentum, backtrack=s.backtrack, early_stop=s.early_stop,
                     generator=g, device=dev, bf16=s.bf16, channels_last=s.channels_last)
        confs.append(res.conf.cpu())
        bar.update(1)
    conf = distributed.gather_batches(confs, n)
    return {"threat": "distal", "eps": eps, "n": n,
            "mean_conf": float(conf.double().mean()),
            "at": {k: {"tau": t, "fpr": M.distal_fpr(t, conf)} for k, t in taus.items()},
            "conf": _rounded(conf)}


def _run_corrupt(logits_of: Callable[[torch.Tensor], torch.Tensor], item: SuiteItem,
                 x_att: torch.Tensor, y_att: torch.Tensor, taus: dict[str, float],
                 severities: Sequence[int], names: Sequence[str], g: torch.Generator,
                 n_batches: int, bar: tqdm) -> dict[str, Any]:
    sevs = [int(item.param)] if item.param is not None else [int(v) for v in severities]
    per: dict[str, Any] = {}
    for name in names:
        for sev in sevs:
            xc = corr.corrupt(x_att, name, sev, generator=g)
            logits = logits_of(xc)
            wrong = logits.argmax(1) != y_att
            conf = confidence(logits)
            per[f"{name}/{sev}"] = {"err": M.err(wrong),
                                    "at": {k: {"tau": t, "err": M.err_at(t, wrong, conf),
                                               "tpr": M.tpr_at(conf, t)} for k, t in taus.items()}}
    bar.update(n_batches)

    def mean(vals: list[float]) -> float:
        vals = [v for v in vals if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else math.nan

    return {"threat": "corrupt", "severities": sevs, "corruptions": per,
            "mean_err": mean([v["err"] for v in per.values()]),
            "at": {k: {"tau": t, "err": mean([v["at"][k]["err"] for v in per.values()])}
                   for k, t in taus.items()}}
