"""Adversarial evaluation suites with confidence thresholding (spec §2–§3).

Protocol: the last `holdout` fraction (default 10%) of the test set calibrates the confidence
threshold τ at each TPR on its correctly classified clean examples; the first `n` examples
(default 1000) are attacked. Err, RErr, RErr@τ, FPR@τ and ROC AUC are scored on the per-example
worst case (misclassified first, then the highest wrong-class confidence; spec §2). Distal inputs
report FPR@τ, corruptions Err and Err@τ.

Suite items: `linf`, `l2`, `l1`, `l0`, `frames`, `patch`, `distal`, `corrupt`; an item may carry
a parameter after a colon: a radius (`linf:0.2`, `distal:0.3`), a frame width (`frames:3`), a
patch side (`patch:5`) or a severity (`corrupt:5`). Each item names a registered `SuiteThreat`
(`SUITE_THREATS`: one `LpThreat` per registered norm, frames, patch, distal, corrupt) that holds
its defaults, validates its parameter and runs its attacks; the suite is a loop over them.

Attacks (spec §3a): the default `standard` runs, per L∞/L2 threat, APGD-CE, APGD-T (the top-9
non-true classes as targets), APGD-conf, FAB-T and Square in sequence; L1 runs the three APGD attacks
(Square has no L1 version); L0, frames and patches run PGD with each of `objectives`. `pgd` is the
quick PGD suite of each objective (zero start plus `restarts − 1` random starts, momentum and
backtracking). Each attack runs only on the examples not yet *decided* (AutoAttack's protocol),
and per example the most damaging input so far is kept. An example is decided once no later
attack could change any reported metric for it: misclassified with confidence ≥ the largest τ.
The result records, per threat, which attack produced each example's verdict and what each
attack added.

Early exit (on by default) additionally stops attacking an example inside an attack once it is
decided; the verdicts (Err, RErr, RErr@τ, FPR@τ) are those of a run without it, while mean
adversarial confidences and the AUC are those of the first sufficient iterate (turn it off for
confidence histograms of fully optimized attacks).

Sanity flags (`flags` in the result; warnings, never errors): a non-deterministic model, outputs
that already are probabilities, many zero input gradients, Square breaking examples that every
gradient attack left correct, RErr decreasing as the radius of one norm grows, and a very large
radius that does not reach ≈ 100% RErr.

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
from robustlab.attacks.base import AttackResult, confidence, evaluate_logits, merge_into
from robustlab.attacks.distal import distal
from robustlab.attacks.fab import FAB_NORMS
from robustlab.attacks.frames import frame_mask, frames
from robustlab.attacks.norms import NORMS as NORM_OBJECTS
from robustlab.attacks.patches import check_size, patch_attack
from robustlab.attacks.pgd import OBJECTIVES, pgd
from robustlab.attacks.threat import DISTAL_EPS, NORMS, default_eps, frame_width, patch_size
from robustlab.data import Dataset
from robustlab.errors import UNSET, UserError, renamed
from robustlab.evaluate import metrics as M
from robustlab.models import with_quant

DEFAULT_SUITE = "linf,l2,l1,l0,frames,patch,distal,corrupt"
Model = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class SuiteItem:
    key: str          # as written in the suite, e.g. "linf:0.2"
    threat: str       # a key of SUITE_THREATS
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
    names = threat_names()
    if not parts:
        raise UserError(f"empty suite; choose from {', '.join(names)}")
    items, seen = [], set()
    for part in parts:
        name, _, arg = part.partition(":")
        name = name.strip().lower()
        if name not in names:
            raise UserError(f"unknown suite item {part!r}; choose from {', '.join(names)} "
                            "(optionally with :PARAMETER, e.g. linf:0.2)")
        param = _number(arg, f"parameter of {name}") if arg else None
        if param is not None:
            SUITE_THREATS[name].check_param(part, param)
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
    keys = [t.eps_key for t in SUITE_THREATS.values() if t.eps_key is not None]
    out = {}
    for k, v in pairs:
        if k not in keys:
            raise UserError(f"unknown norm {k!r} in --eps; choose one of {', '.join(keys)}")
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


ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "apgd-conf", "fab-t", "square", "pgd")
STANDARD = ("apgd-ce", "apgd-t", "apgd-conf", "fab-t", "square")
# FAB-T runs in the suite for every norm it has (`FAB_NORMS`: L∞, L2), so the suite holds all of
# AutoAttack's attacks: on the AT benchmark model it closes the L2 gap to the peers (+40 examples
# of 500); at L∞ it adds few examples (0–1 of 500 and 1 of 100 in three runs) at about the time
# of the other attacks together
GRADIENT_FREE = ("square",)


def parse_attacks(attacks: str | Sequence[str]) -> tuple[str, ...]:
    """Attack names from 'standard', 'pgd' or a comma list such as 'apgd-ce,apgd-t,square'."""
    parts = [p.strip().lower() for p in (attacks.split(",") if isinstance(attacks, str) else attacks)
             if p.strip()]
    out: list[str] = []
    for part in parts:
        names = STANDARD if part == "standard" else (part,)
        for name in names:
            if name not in ATTACKS:
                raise UserError(f"unknown attack {part!r}; choose from standard, {', '.join(ATTACKS)}")
            if name not in out:
                out.append(name)
    if not out:
        raise UserError(f"no attack given; choose from standard, {', '.join(ATTACKS)}")
    return tuple(out)


@dataclasses.dataclass
class _Settings:
    attacks: tuple[str, ...]
    steps: int           # PGD iterations (L0, frames, distal, `pgd`)
    apgd_steps: int
    patch_steps: int
    queries: int
    targets: int
    restarts: int
    objectives: tuple[str, ...]
    momentum: float
    backtrack: bool
    early_stop: float | None  # the stop confidence inside attacks (None: off)
    decide: float             # an example is decided once wrong with confidence ≥ this
    bf16: bool
    channels_last: bool | None


Step = tuple[str, Callable[[torch.Tensor, torch.Tensor, torch.Generator], AttackResult]]


def _decided(logits: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Misclassified with confidence ≥ τ: no later attack can change a reported metric."""
    return (logits.argmax(1) != y) & (confidence(logits) >= tau)


def _attack_seed(batch_seed: int, name: str) -> int:
    return (batch_seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63)


def _sequence(steps: list[Step], x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor,
              decide: float, batch_seed: int, times: list[float]
              ) -> tuple[AttackResult, dict[str, torch.Tensor]]:
    """Run the attacks one after another on the undecided examples; keep the worst case.

    Returns the worst case (starting from the clean input itself) and per-example records:
    `by` (index of the attack whose input is kept, −1: the clean input), `broken_by` (the attack
    after which the example was first misclassified, −1: clean, −2: never), `attacked` (number of
    attacks that ran on it) and `masked` (misclassified by a gradient-free attack only, after
    every gradient attack left it correct).
    """
    n = x.shape[0]
    best = AttackResult(x.clone(), clean_logits.to(x.device).float(), y)
    by = torch.full((n,), -1, dtype=torch.long)
    wrong = (best.pred != y).cpu()
    broken_by = torch.where(wrong, torch.tensor(-1), torch.tensor(-2))
    attacked = torch.zeros(n, dtype=torch.long)
    gradient_ran = False
    masked = torch.zeros(n, dtype=torch.long)
    for j, (name, run) in enumerate(steps):
        idx = (~_decided(best.logits, y, decide)).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(_attack_seed(batch_seed, name))
        part = run(x[idx], y[idx], g)
        times[j] += time.perf_counter() - t0
        part = AttackResult(part.x_adv, part.logits.float(), y[idx], part.info)
        before_wrong = (best.pred != y).cpu()
        take = (part.key() > best.key()[idx]).cpu()
        best = merge_into(best, idx, part)
        idx_c = idx.cpu()
        by[idx_c[take]] = j
        attacked[idx_c] += 1
        now_wrong = (best.pred != y).cpu()
        new = now_wrong & ~before_wrong
        broken_by[new] = j
        if name in GRADIENT_FREE:
            if gradient_ran:
                masked |= new.long()
        else:
            gradient_ran = True
    best.info = {}
    return best, {"by": by, "broken_by": broken_by, "attacked": attacked, "masked": masked}


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
                eps: str | dict[str, float] | None = None, n_test: int = 1000, holdout: float = 0.1,
                tprs: Sequence[float] = (0.99, 0.98), attacks: str | Sequence[str] = "standard",
                steps: int | None = None, patch_steps: int | None = None,
                queries: int | None = None, targets: int = 9, restarts: int = 1,
                objectives: Sequence[str] = ("ce", "conf"), momentum: float = 0.9,
                backtrack: bool = True, early_stop: bool = True, sanity: bool = True,
                severities: Sequence[int] = (3,),
                corruptions: Sequence[str] | None = None, batch_size: int = 500, seed: int = 0,
                device: torch.device | str | None = None, bf16: bool = False,
                channels_last: bool | None = None, n_examples: int = 8,
                examples_path: str | Path | None = None, dataset: str | None = None,
                progress: bool | None = None, n: Any = UNSET) -> dict[str, Any]:
    """Run an evaluation suite on the first `n_test` test examples; returns a JSON-able dict.

    `attacks` selects the optimizers of the Lp threats: `standard` (APGD-CE, APGD-T with
    `targets` target classes, APGD-conf, FAB-T (L∞, L2), Square), `pgd` (the quick PGD suite of
    `objectives`) or a comma list of `apgd-ce`, `apgd-dlr`, `apgd-t`, `apgd-conf`, `fab-t`,
    `square`, `pgd`. `steps`
    defaults to 100 for APGD and 40 for PGD (100 for patches); `queries` (Square) to 5000, or
    50·`steps` (at most 5000) when `steps` is given. `channels_last=None` lets the attacks
    choose (on for 4-D inputs on the CPU). `sanity` adds the sanity flags (`flags`).
    `tprs=()` reports no confidence thresholding (no τ, RErr@τ, FPR@τ): an example is then
    decided, and left alone by later attacks, as soon as it is misclassified (AutoAttack's
    rule), which is faster when only Err and RErr matter.
    With `examples_path`, the first `n_examples`
    clean and adversarial images of every threat model are saved there (safetensors; keys
    `<threat>/clean|adv|pred|conf|y`) and the result names the file in `examples_file` (a path
    relative to the result's folder when the file is saved beside it).
    """
    n = renamed("adversarial", "n", n, "n_test", n_test)  # `n=`: the old keyword
    test = sources.as_data(test, bounds=(0.0, 1.0))  # any data; rows read only as sliced
    model = with_quant(model)  # a quantization-aware fit's model: at its dequantized weights
    items = parse_suite(suite)
    eps_over = parse_eps(eps)
    attack_names = parse_attacks(attacks)
    if queries is not None and queries < 1:
        raise UserError(f"queries {queries} is invalid; it must be an integer ≥ 1")
    if targets < 1:
        raise UserError(f"targets {targets} is invalid; it must be an integer ≥ 1")
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
    for item in items:  # fail on impossible items (frames, patches) before any attack runs
        SUITE_THREATS[item.threat].check(item.param, shape)
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
        # the largest τ reported: a decided example stays decided; without τ (`tprs=()`, RErr
        # only) an example is decided once misclassified, as in AutoAttack
        decide = max(taus.values(), default=0.0)
        n_queries = int(queries) if queries is not None else (
            5000 if steps is None else max(1, min(5000, 50 * int(steps))))
        s = _Settings(attack_names, 40 if steps is None else int(steps),
                      100 if steps is None else int(steps),
                      100 if patch_steps is None and steps is None else
                      int(patch_steps if patch_steps is not None else steps),
                      n_queries, int(targets), int(restarts), tuple(objectives), momentum,
                      backtrack, decide if early_stop else None, decide, bf16, channels_last)
        out: dict[str, Any] = {
            "config": {"suite": [i.key for i in items], "eps": eps_over, "n": n_att,
                       "holdout": n_hold, "tprs": list(tprs), "attacks": list(attack_names),
                       "steps": s.steps, "apgd_steps": s.apgd_steps, "queries": s.queries,
                       "targets": s.targets,
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
        flags: list[dict[str, Any]] = []
        if sanity:
            m = min(SANITY_N, n_att)
            flags = model_flags(model, x_att[:m].to(dev), y_att[:m].to(dev))
        batches = range(0, n_att, batch_size)
        bar = tqdm(total=len(items) * len(distributed.shard(batches)), desc="attacks", unit="batch",
                   leave=False, disable=not distributed.is_main() or (
                       None if progress is None else not progress))
        ctx = SuiteContext(model, eps_over, x_att, y_att, clean_logits, taus, s, dev, batch_size,
                           shape, dataset or test.name, bar, n_examples, logits_of, severities,
                           names)
        for item in items:
            t1 = time.perf_counter()
            r, ex = SUITE_THREATS[item.threat].run(item, ctx, _item_seed(seed, item.key))
            if ex is not None:
                examples[item.key] = ex
            r["time_s"] = round(time.perf_counter() - t1, 3)
            out["threats"][item.key] = r
        bar.close()
        if sanity:
            flags += result_flags(out["threats"])
            out["flags"] = flags
        if examples_path is not None and examples:
            out["examples_file"] = (save_examples(examples_path, examples, list(test.classes))
                                    if distributed.is_main() else Path(examples_path).name)
        return out
    finally:
        if was_training:
            model.train()


# ---------------------------------------------------------------- suite threats (registered)

@dataclasses.dataclass
class SuiteContext:
    """Everything a suite threat's run needs from one `adversarial` call."""

    model: Model
    eps_over: dict[str, float]      # radius overrides (`--eps`)
    x_att: torch.Tensor             # the attacked examples (CPU)
    y_att: torch.Tensor
    clean_logits: torch.Tensor
    taus: dict[str, float]          # τ per TPR key
    settings: _Settings
    device: torch.device
    batch_size: int
    shape: tuple[int, ...]
    dataset: str
    bar: tqdm
    n_examples: int                 # example images kept per threat
    logits_of: Callable[[torch.Tensor], torch.Tensor]  # batched float32 logits, on the CPU
    severities: Sequence[int]
    corruptions: Sequence[str]


class SuiteThreat:
    """One threat model of the suite: its defaults, its validation and how it is attacked.

    Subclasses set `name` (the suite item, e.g. `linf`), optionally `eps_key` (the `--eps` key
    that overrides its radius) and implement `run`. Register an instance in `SUITE_THREATS`;
    `parse_suite`, `parse_eps` and `adversarial` then know it. Adding a threat = one class.
    """

    name: str = ""
    eps_key: str | None = None

    def check_param(self, part: str, param: float) -> None:
        """Validate the item's `:PARAMETER` (already a finite number ≥ 0); `part` is the item."""

    def check(self, param: float | None, shape: tuple[int, ...]) -> None:
        """Fail on an impossible item for images of `shape` before any attack runs."""

    def run(self, item: SuiteItem, ctx: SuiteContext, item_seed: int
            ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
        """Attack and score; returns the threat's result and its example images (or None)."""
        raise NotImplementedError

    def label(self, t: dict[str, Any]) -> str:
        """The threat as reports name it ('L∞ ε=0.1', 'patch 7×7'), from its result `t`."""
        return self.name


def _eps_label(t: dict[str, Any]) -> str:
    eps = t.get("eps")
    return f" ε={eps:.3g}" if isinstance(eps, (int, float)) and not isinstance(eps, bool) else ""


def _integer_param(part: str, param: float, what: str) -> None:
    if param < 1 or param != int(param):
        raise UserError(f"{part!r}: the {what} must be an integer ≥ 1")


def _pgd_steps(s: _Settings, start: str, attack: Callable[..., AttackResult]) -> list[Step]:
    """PGD with each objective: a zero start, then `restarts − 1` random starts of kind `start`.

    `attack(x, y, **pgd_options)` runs PGD on the threat's set."""
    out: list[Step] = []
    for obj in s.objectives:
        for init, restarts in (("zero", 1), (start, s.restarts - 1)):
            if restarts >= 1:
                out.append(_pgd_step(s, obj, init, restarts, attack))
    return out


def _pgd_step(s: _Settings, obj: str, init: str, restarts: int,
              attack: Callable[..., AttackResult]) -> Step:
    def run(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> AttackResult:
        return attack(x, y, steps=s.steps, objective=obj, init=init, restarts=restarts,
                      momentum=s.momentum, backtrack=s.backtrack, generator=g,
                      channels_last=s.channels_last, early_stop=s.early_stop, bf16=s.bf16)
    return f"{obj}/{init}×{restarts}", run


class AttackedThreat(SuiteThreat):
    """A threat whose attacks run in sequence on the test examples (`_sequence`), scored by the
    per-example worst case. Subclasses give `settings` (the item's JSON-able parameters, e.g.
    the radius) and `plan` (the attacks, and notes on those skipped)."""

    def settings(self, param: float | None, ctx: SuiteContext) -> dict[str, Any]:
        raise NotImplementedError

    def plan(self, model: Model, settings: dict[str, Any], s: _Settings, num_classes: int
             ) -> tuple[list[Step], list[str]]:
        raise NotImplementedError

    def run(self, item: SuiteItem, ctx: SuiteContext, item_seed: int
            ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
        s = ctx.settings
        settings = self.settings(item.param, ctx)
        info: dict[str, Any] = {"threat": item.threat, **settings}
        plan, notes = self.plan(ctx.model, settings, s, int(ctx.clean_logits.shape[1]))
        names = [name for name, _ in plan]
        times = [0.0] * len(plan)
        adv_logits: list[torch.Tensor] = []
        records: dict[str, list[torch.Tensor]] = {"by": [], "broken_by": [], "attacked": [],
                                                  "masked": []}
        first = None
        bs = ctx.batch_size
        for i in distributed.shard(range(0, ctx.x_att.shape[0], bs)):
            x, y = ctx.x_att[i:i + bs].to(ctx.device), ctx.y_att[i:i + bs].to(ctx.device)
            res, rec = _sequence(plan, x, y, ctx.clean_logits[i:i + bs], s.decide,
                                 (item_seed + i // bs) % (2 ** 63), times)
            if first is None:
                first = _examples(x, res, ctx.n_examples)
            adv_logits.append(res.logits.cpu())
            for k, v in rec.items():
                records[k].append(v)
            ctx.bar.update(1)
        n = ctx.x_att.shape[0]
        logits = distributed.gather_batches(adv_logits, n)
        rec = {k: distributed.gather_batches(v, n) for k, v in records.items()}
        adv_wrong = logits.argmax(1) != ctx.y_att
        adv_conf = confidence(logits)
        clean_wrong = ctx.clean_logits.argmax(1) != ctx.y_att
        info["attacks"] = names
        if notes:
            info["notes"] = notes
        by = rec["by"].long()
        broken = rec["broken_by"].long()
        attacked = rec["attacked"].long()
        info["by_attack"] = {
            name: {"attacked": int((attacked > j).sum()), "added": int((broken == j).sum()),
                   "kept": int((by == j).sum()), "time_s": round(times[j], 3)}
            for j, name in enumerate(names)}
        info["verdict_by"] = [names[j] if j >= 0 else "clean" for j in by.tolist()]
        info["masked"] = int((rec["masked"] > 0).sum())
        info.update(M.adversarial_metrics(clean_wrong, confidence(ctx.clean_logits), adv_wrong,
                                          adv_conf, ctx.taus))
        info["adv_conf"] = _rounded(adv_conf)
        info["adv_wrong"] = adv_wrong.tolist()
        if first is None:  # this rank had no batch (more ranks than batches)
            return info, {}
        first["y"] = ctx.y_att[:first["clean"].shape[0]]
        return info, first


_APGD_LOSSES = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-t", "apgd-conf": "conf"}
_MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}  # DLR needs 3 classes, targeted DLR 4


class LpThreat(AttackedThreat):
    """The ball of a registered norm (`robustlab.attacks.norms.NORMS`), radius `:EPS`.

    Norms APGD supports run the selected attacks (`--attacks`): APGD-CE/DLR/T/conf, Square where
    it has a version of the norm, the quick PGD suite; the others (L0) run PGD."""

    def __init__(self, norm: str) -> None:
        self.norm = self.name = self.eps_key = norm

    def label(self, t: dict[str, Any]) -> str:
        return "L" + ("∞" if self.norm == "linf" else self.norm[1:]) + _eps_label(t)

    def settings(self, param: float | None, ctx: SuiteContext) -> dict[str, Any]:
        eps = param if param is not None else ctx.eps_over.get(
            self.norm, default_eps(self.norm, ctx.shape, ctx.dataset))
        return {"eps": eps}

    def plan(self, model: Model, settings: dict[str, Any], s: _Settings, num_classes: int
             ) -> tuple[list[Step], list[str]]:
        from robustlab.attacks import apgd, square
        from robustlab.attacks.fab import fab
        from robustlab.attacks.square import SQUARE_NORMS

        norm, eps = self.norm, settings["eps"]

        def attack(x: torch.Tensor, y: torch.Tensor, **kw: Any) -> AttackResult:
            return pgd(model, x, y, norm=norm, eps=eps, **kw)

        if not NORM_OBJECTS[norm].apgd:
            return _pgd_steps(s, "norm", attack), []
        steps: list[Step] = []
        notes: list[str] = []
        for name in s.attacks:
            if name == "pgd":
                steps.extend(_pgd_steps(s, "norm", attack))
            elif name == "square":
                if norm in SQUARE_NORMS:
                    def run_square(x: torch.Tensor, y: torch.Tensor, g: torch.Generator
                                   ) -> AttackResult:
                        return square(model, x, y, norm=norm, eps=eps, queries=s.queries,
                                      generator=g, early_stop=s.early_stop)
                    steps.append(("square", run_square))
                else:
                    notes.append(f"square skipped: no {norm} version")
            elif name == "fab-t":
                if norm in FAB_NORMS:
                    def run_fab(x: torch.Tensor, y: torch.Tensor, g: torch.Generator
                                ) -> AttackResult:
                        return fab(model, x, y, norm=norm, eps=eps, targets=s.targets,
                                   steps=s.apgd_steps, restarts=s.restarts, generator=g,
                                   early_stop=s.early_stop)
                    steps.append(("fab-t", run_fab))
                elif not set(STANDARD) <= set(s.attacks):  # chosen on its own: say why not
                    notes.append(f"fab-t skipped: no {norm} version")
            elif num_classes < _MIN_CLASSES.get(name, 0):
                notes.append(f"{name} skipped: its DLR loss needs at least "
                             f"{_MIN_CLASSES[name]} classes (the model has {num_classes})")
            else:
                def run_apgd(x: torch.Tensor, y: torch.Tensor, g: torch.Generator,
                             loss: str = _APGD_LOSSES[name]) -> AttackResult:
                    return apgd(model, x, y, norm=norm, eps=eps, loss=loss, targets=s.targets,
                                steps=s.apgd_steps, restarts=s.restarts, generator=g,
                                channels_last=s.channels_last, early_stop=s.early_stop,
                                bf16=s.bf16)
                steps.append((name, run_apgd))
        if not steps:
            notes.append("no selected attack has this norm: PGD ran instead")
            steps = _pgd_steps(s, "norm", attack)
        return steps, notes


class FramesThreat(AttackedThreat):
    """Adversarial frames (spec §3): a border of width `:WIDTH` (default ⌊0.1·H⌋), PGD."""

    name = "frames"

    def label(self, t: dict[str, Any]) -> str:
        return "frames" + (f" w={t['width']}" if t.get("width") is not None else "")

    def check_param(self, part: str, param: float) -> None:
        _integer_param(part, param, "frame width")

    def check(self, param: float | None, shape: tuple[int, ...]) -> None:
        frame_mask(shape, int(param) if param is not None else None)

    def settings(self, param: float | None, ctx: SuiteContext) -> dict[str, Any]:
        return {"width": int(param) if param is not None else frame_width(ctx.shape[-2])}

    def plan(self, model: Model, settings: dict[str, Any], s: _Settings, num_classes: int
             ) -> tuple[list[Step], list[str]]:
        width = settings["width"]

        def attack(x: torch.Tensor, y: torch.Tensor, **kw: Any) -> AttackResult:
            return frames(model, x, y, width=width, **kw)

        return _pgd_steps(s, "box", attack), []


class PatchThreat(AttackedThreat):
    """Location-optimized patches (spec §3) of side `:SIDE` (default a quarter of the image)."""

    name = "patch"

    def label(self, t: dict[str, Any]) -> str:
        size = t.get("size")
        return "patch" + (f" {size[0]}×{size[1]}" if isinstance(size, list) and len(size) == 2
                          else "")

    def check_param(self, part: str, param: float) -> None:
        _integer_param(part, param, "patch side")

    def _size(self, param: float | None, shape: tuple[int, ...]) -> tuple[int, int]:
        return (int(param),) * 2 if param is not None else patch_size(shape)  # type: ignore[return-value]

    def check(self, param: float | None, shape: tuple[int, ...]) -> None:
        check_size(shape[-2:], self._size(param, shape))

    def settings(self, param: float | None, ctx: SuiteContext) -> dict[str, Any]:
        return {"size": list(self._size(param, ctx.shape))}

    def plan(self, model: Model, settings: dict[str, Any], s: _Settings, num_classes: int
             ) -> tuple[list[Step], list[str]]:
        size = tuple(settings["size"])
        steps: list[Step] = []
        for obj in s.objectives:
            def run(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, obj: str = obj
                    ) -> AttackResult:
                return patch_attack(model, x, y, size=size, steps=s.patch_steps, step_size=0.05,
                                    location="optimized-full", restarts=s.restarts, objective=obj,
                                    generator=g, channels_last=s.channels_last,
                                    early_stop=s.early_stop, bf16=s.bf16)
            steps.append((f"{obj}/optimized-full×{s.restarts}", run))
        return steps, []


class DistalThreat(SuiteThreat):
    """Distal inputs (spec §3): PGD from noise images within an L∞ ball of `:EPS`; FPR@τ."""

    name = "distal"
    eps_key = "distal"

    def label(self, t: dict[str, Any]) -> str:
        return "distal" + _eps_label(t)

    def run(self, item: SuiteItem, ctx: SuiteContext, item_seed: int
            ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
        s = ctx.settings
        eps = item.param if item.param is not None else ctx.eps_over.get("distal", DISTAL_EPS)
        n = ctx.x_att.shape[0]
        confs = []
        for i, g in _batch_generators(item_seed, n, ctx.batch_size):
            m = min(ctx.batch_size, n - i)
            res = distal(ctx.model, m, ctx.shape, eps=eps, steps=s.steps, init="zero",
                         restarts=s.restarts, momentum=s.momentum, backtrack=s.backtrack,
                         early_stop=s.early_stop, generator=g, device=ctx.device, bf16=s.bf16,
                         channels_last=s.channels_last)
            confs.append(res.conf.cpu())
            ctx.bar.update(1)
        conf = distributed.gather_batches(confs, n)
        return {"threat": "distal", "eps": eps, "n": n,
                "mean_conf": float(conf.double().mean()),
                "at": {k: {"tau": t, "fpr": M.distal_fpr(t, conf)} for k, t in ctx.taus.items()},
                "conf": _rounded(conf)}, None


class CorruptThreat(SuiteThreat):
    """Corruptions (spec §3) at severity `:SEVERITY` (default the `severities`): Err and Err@τ."""

    name = "corrupt"

    def label(self, t: dict[str, Any]) -> str:
        kinds = len({c.split("/")[0] for c in t.get("corruptions") or {}})
        return f"corruptions ({kinds} kind{'' if kinds == 1 else 's'})" if kinds else "corruptions"

    def check_param(self, part: str, param: float) -> None:
        if param not in corr.SEVERITIES:
            raise UserError(f"{part!r}: the corruption severity must be one of 1..5")

    def run(self, item: SuiteItem, ctx: SuiteContext, item_seed: int
            ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
        g = torch.Generator().manual_seed(item_seed)
        sevs = [int(item.param)] if item.param is not None else [int(v) for v in ctx.severities]
        per: dict[str, Any] = {}
        for name in ctx.corruptions:
            for sev in sevs:
                xc = corr.corrupt(ctx.x_att, name, sev, generator=g)
                logits = ctx.logits_of(xc)
                wrong = logits.argmax(1) != ctx.y_att
                conf = confidence(logits)
                per[f"{name}/{sev}"] = {
                    "err": M.err(wrong),
                    "at": {k: {"tau": t, "err": M.err_at(t, wrong, conf), "tpr": M.tpr_at(conf, t)}
                           for k, t in ctx.taus.items()}}
        ctx.bar.update(len(range(0, ctx.x_att.shape[0], ctx.batch_size)))

        def mean(vals: list[float]) -> float:
            vals = [v for v in vals if not math.isnan(v)]
            return sum(vals) / len(vals) if vals else math.nan

        return {"threat": "corrupt", "severities": sevs, "corruptions": per,
                "mean_err": mean([v["err"] for v in per.values()]),
                "at": {k: {"tau": t, "err": mean([v["at"][k]["err"] for v in per.values()])}
                       for k, t in ctx.taus.items()}}, None


SUITE_THREATS: dict[str, SuiteThreat] = {
    **{norm: LpThreat(norm) for norm in NORM_OBJECTS},
    "frames": FramesThreat(), "patch": PatchThreat(), "distal": DistalThreat(),
    "corrupt": CorruptThreat()}
"""The suite's threats by item name; register a `SuiteThreat` here to add one."""


def threat_names() -> tuple[str, ...]:
    """The names a suite item may have (the registered threats)."""
    return tuple(SUITE_THREATS)


# ---------------------------------------------------------------- sanity flags

SANITY_N = 200           # examples the model checks look at
UNBOUNDED_N = 64         # examples of the unbounded attack
UNBOUNDED_EPS = 1.0      # L∞ radius 1 contains every image
UNBOUNDED_STEPS = 10
UNBOUNDED_RERR = 0.95    # below this, the unbounded attack "failed"
ZERO_GRAD_ENTRIES = 0.5  # fraction of exactly zero input-gradient entries that raises the flag
ZERO_GRAD_EXAMPLES = 0.1  # fraction of examples with an all-zero input gradient that raises it
MASKED_FRACTION = 0.005  # Square may add this fraction of the attacked examples before a flag


def _flag(name: str, message: str, **numbers: float | int) -> dict[str, Any]:
    return {"name": name, "message": message, "numbers": numbers}


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{k≠y} z_k − z_y: a loss that does not saturate like the softmax does."""
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    return logits.scatter(1, y.view(-1, 1), float("-inf")).amax(1) - z_y


def model_flags(model: Model, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    """Sanity flags about the model itself on a few examples (x, y on the model's device).

    Non-deterministic outputs (two forward passes differ), outputs that already are probabilities,
    many exactly zero input gradients (of the logit margin, which does not saturate), and a very
    large L∞ radius (1.0: every image is inside) that PGD cannot use to reach ≈ 100% RErr.
    """
    flags = []
    a, b = evaluate_logits(model, x), evaluate_logits(model, x)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = 1.0 + float(a.abs().max()) if a.numel() else 1.0
    if not math.isfinite(diff) or diff > 1e-4 * scale:
        changed = float((a.argmax(1) != b.argmax(1)).float().mean())
        flags.append(_flag(
            "nondeterministic", f"the model is not deterministic: two forward passes of the same "
            f"{x.shape[0]} inputs differ (max |Δ logit| {diff:.3g}, {100 * changed:.1f}% of the "
            "predictions change); attacks and reported errors are then noisy (evaluate the "
            "expectation, e.g. average the logits over several passes)",
            max_abs_diff=diff, changed_predictions=changed, n=int(x.shape[0])))
    rows_ok = ((a >= -1e-6) & (a <= 1 + 1e-6)).all(1) & ((a.sum(1) - 1).abs() < 1e-4)
    frac = float(rows_ok.float().mean()) if a.numel() else 0.0
    if frac >= 0.99:
        flags.append(_flag(
            "probabilities", f"the model's outputs look like probabilities ({100 * frac:.1f}% of "
            "rows are in [0, 1] and sum to 1); attacks and confidences treat outputs as logits, "
            "so return logits (remove the final softmax)", fraction_of_rows=frac))
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        (g,) = torch.autograd.grad(_margin(model(xg).float(), y).sum(), xg)
    zero = g.flatten(1) == 0
    entries = float(zero.float().mean())
    examples = float(zero.all(1).float().mean())
    if entries >= ZERO_GRAD_ENTRIES or examples >= ZERO_GRAD_EXAMPLES:
        flags.append(_flag(
            "zero_gradients", f"{100 * entries:.1f}% of the input-gradient entries and "
            f"{100 * examples:.1f}% of the examples' whole input gradients are exactly zero "
            "(possible gradient masking, e.g. a non-differentiable input quantization); "
            "gradient attacks are then unreliable", zero_entries=entries, zero_examples=examples))
    m = min(UNBOUNDED_N, x.shape[0])
    if m:
        res = pgd(model, x[:m], y[:m], norm="linf", eps=UNBOUNDED_EPS, steps=UNBOUNDED_STEPS,
                  objective=_margin, init="zero", generator=torch.Generator().manual_seed(0))
        rerr = float(res.success.float().mean())
        if rerr < UNBOUNDED_RERR:
            flags.append(_flag(
                "unbounded", f"an attack with L∞ radius {UNBOUNDED_EPS:g} (every image is "
                f"inside) reaches only {100 * rerr:.1f}% RErr on {m} examples "
                f"({UNBOUNDED_STEPS} PGD steps) instead of ≈ 100%: the gradients do not lead the "
                "attacks anywhere (gradient masking?)", rerr=rerr, n=m, eps=UNBOUNDED_EPS,
                steps=UNBOUNDED_STEPS))
    return flags


def result_flags(threats: dict[str, Any]) -> list[dict[str, Any]]:
    """Sanity flags from the scored threats: Square breaking what every gradient attack left
    correct, and RErr decreasing as the radius of one norm grows."""
    flags = []
    for key, t in threats.items():
        k, n = int(t.get("masked", 0)), len(t.get("adv_wrong", ()))
        if n and k >= max(1, math.ceil(MASKED_FRACTION * n)):
            flags.append(_flag(
                "square_breaks_more", f"{key}: Square (gradient-free) misclassified {k} of {n} "
                "examples that every gradient attack left correct: possible gradient masking, "
                "trust the gradient attacks less", threat=key, examples=k, n=n))
    by_norm: dict[str, list[tuple[float, str, float]]] = {}
    for key, t in threats.items():
        if t.get("threat") in NORMS and "rerr" in t and "eps" in t:
            by_norm.setdefault(t["threat"], []).append((float(t["eps"]), key, float(t["rerr"])))
    for norm, rows in by_norm.items():
        rows.sort()
        for (e0, k0, r0), (e1, k1, r1) in zip(rows, rows[1:]):
            if e1 > e0 and r1 < r0:
                flags.append(_flag(
                    "rerr_not_monotone", f"{norm}: RErr falls from {100 * r0:.1f}% at radius "
                    f"{e0:g} ({k0}) to {100 * r1:.1f}% at the larger radius {e1:g} ({k1}); a "
                    "larger ball contains the smaller one, so the attack at the larger radius is "
                    "too weak", norm=norm, eps_small=e0, rerr_small=r0, eps_large=e1,
                    rerr_large=r1))
    return flags
