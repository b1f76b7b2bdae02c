"""Adversarial bit errors on quantized weights (spec §8): the projected attack and BFA.

Both attacks act on the integer codes of a `robustlab.quant.Quantized` model (a flat `uint8`
buffer) and keep the threat model of at most `budget` flipped bits in total and at most one flipped
bit per weight. Only the m low bits of a code are ever flipped.

**Projected attack.** Codes are handled in offset binary c′ (the code itself, or the code with its
top bit inverted for two's complement), in which the dequantized value is affine and increasing.
A continuous iterate u (in code units) takes normalized gradient ascent steps
u += η·2^{m−1}·ĝ (clamped to the code range), with ĝ the loss gradient w.r.t. the dequantized
weights times the tensor's step Δ, divided by its largest magnitude (η = `step_size`, default 1:
the weight with the largest gradient moves by half the code range per step). Every iterate is
projected onto the feasible set (at most k weights differ from the clean c′₀, each by one bit):

- "gain" (default): every weight's candidate is the largest one-bit move in the direction u moved
  (set its highest 0 bit when u went up, clear its highest 1 bit when u went down: the most
  significant differing bit towards the end of the code range); the k weights with the largest
  first-order gain |u − c′₀|·|move| are kept.
- "round" (the original rule): the target is round(u); of the weights whose target differs from
  c′₀, the k whose u moved most are kept, each flipping the most significant bit of target ⊕ c′₀.

Gradients are taken at the projected codes. The budget schedule is "fixed" (k = budget at every
step) or "grow" (k rises linearly from the start's flips to the budget over the steps, so early
flips are committed before later ones are chosen, as in a progressive search). Starts: the clean
codes (fixed), a given feasible `init` such as the result of a smaller budget (grow), the clean
codes (grow), then random feasible flips. The best projected codes are returned, ranked by the
number of attack-set examples the attack succeeds on (misclassified; targeted: classified as the
target), then by the loss.

**BFA** (progressive bit search, Rakin et al. 2019). Per iteration: the first-order loss gain of
flipping each bit, g·(deq(c ⊕ 2^j) − deq(c)), picks the best bit of every tensor (in-layer
search); each tensor's candidate flip is evaluated exactly and the one with the highest loss is
committed (cross-layer search). One bit per iteration, so the flips at budget b are a prefix of
those at b′ > b. Weights already flipped are excluded (at most one flip per weight, as above).

Targeted variants minimize the cross-entropy to `target` instead of maximizing it to the label.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from robustlab.errors import UserError
from robustlab.models import Predictor
from robustlab.quant import Quantized, popcount
from robustlab.weights.ball import SELECTIONS, select

__all__ = ["PROJECTIONS", "SELECTIONS", "STEPS", "STEP_SIZE", "BitAttackResult", "CodeObjective",
           "attack_codes", "bfa", "bit_attack", "check_budget", "msb", "popcount", "project_codes",
           "random_flips", "tensor_mask"]

PROJECTIONS = ("gain", "round")
STEPS = 20        # iterations per start of the projected attack
STEP_SIZE = 1.0   # in units of half the code range, for the largest gradient entry


def check_budget(budget: int) -> int:
    if isinstance(budget, bool) or int(budget) != budget or budget < 0:
        raise UserError(f"bit budget {budget!r} must be an integer >= 0")
    return int(budget)


def msb(x: torch.Tensor) -> torch.Tensor:
    """The most significant set bit of every entry of an int64 tensor (0 for 0)."""
    out = torch.zeros_like(x)
    for j in range(8):
        out = torch.where(((x >> j) & 1).bool(), torch.full_like(x, 1 << j), out)
    return out


class CodeObjective:
    """Attack loss of `model` on (x, y) at given codes of `q`, in eval mode; larger is better for
    the attacker: cross-entropy to the labels, or minus cross-entropy to `target`."""

    def __init__(self, model: nn.Module, q: Quantized, x: torch.Tensor, y: torch.Tensor, *,
                 target: int | None = None, batch_size: int = 512) -> None:
        self.model, self.q = model, q
        dev = q.device
        self.x, self.y = x.to(dev), y.to(dev)
        self.target = target
        self.batch_size = int(batch_size)
        self.sign = 1.0 if target is None else -1.0
        self.labels = self.y if target is None else torch.full_like(self.y, int(target))

    def _params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = self.q.split(flat)
        return {n: v if v.dtype == dt else v.to(dt)
                for (n, v), dt in zip(parts.items(), self.q.dtypes)}

    def _chunks(self):
        for s in range(0, self.x.shape[0], self.batch_size):
            yield self.x[s:s + self.batch_size], self.labels[s:s + self.batch_size]

    def value(self, codes: torch.Tensor) -> torch.Tensor:
        """The attack loss at `codes` (no gradient), through the predictor core."""
        pred = Predictor(self.model, self._params(self.q.dequantize_flat(codes)), quant=False)
        total = pred.sweep(self._chunks(), loss=True).loss
        return (self.sign * total / self.x.shape[0]).float()

    def evaluate(self, codes: torch.Tensor, grad: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Loss, the number of attack successes (examples misclassified; for a targeted attack,
        classified as the target) and, with `grad`, the loss gradient w.r.t. the flat dequantized
        weights. Device tensors (no host sync)."""
        flat = self.q.dequantize_flat(codes).detach().requires_grad_(grad)
        pred = Predictor(self.model, self._params(flat), quant=False)
        n = self.x.shape[0]
        total, grads, agree = pred.loss_and_grad(self._chunks(), [flat], n=n, sign=self.sign,
                                                 grad=grad)
        hits = agree if self.target is not None else n - agree
        return total.float(), hits, grads[0] if grads is not None else None

    def value_and_grad(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and its gradient w.r.t. the flat dequantized weights."""
        loss, _, grad = self.evaluate(codes, grad=True)
        assert grad is not None
        return loss, grad


@dataclasses.dataclass
class BitAttackResult:
    codes: torch.Tensor     # perturbed flat codes
    loss: float             # attack loss at `codes` on the attack set
    flips: int              # flipped bits (≤ budget)
    hits: int | None = None  # attack-set examples misclassified (targeted: classified as target)


def tensor_mask(q: Quantized, names: Sequence[str]) -> torch.Tensor:
    """Bool vector over the flat codes of `q`: True on the weights of the tensors `names`."""
    allowed = torch.zeros(q.numel, dtype=torch.bool, device=q.device)
    for n, off, size in zip(q.names, q.offsets, q.sizes):
        if n in set(names):
            allowed[off:off + size] = True
    return allowed


def _per_weight(q: Quantized, values: torch.Tensor) -> torch.Tensor:
    """Expand a per-tensor vector to one entry per weight."""
    return torch.repeat_interleave(values, torch.tensor(q.sizes, device=q.device))


def _offset_binary(q: Quantized, codes: torch.Tensor) -> torch.Tensor:
    top = q.scheme.top if q.scheme.mode == "symmetric_signed" else 0
    return (codes.long() & (2 ** q.scheme.bits - 1)) ^ top


def _from_offset_binary(q: Quantized, c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Codes with the low bits taken from offset-binary c (high bits kept from `like`)."""
    top = q.scheme.top if q.scheme.mode == "symmetric_signed" else 0
    low = 2 ** q.scheme.bits - 1
    return ((like.long() & ~low) | ((c ^ top) & low)).to(torch.uint8)


def project_codes(q: Quantized, u: torch.Tensor, c0: torch.Tensor, allowed: torch.Tensor,
                  budget: int, projection: str = "round") -> torch.Tensor:
    """Feasible offset-binary codes for the continuous iterate u: at most `budget` weights change,
    each by one bit (module docstring). "round": target round(u), keep the weights whose u moved
    most from c0, flip the most significant bit of target ⊕ c0. "gain": target the end of the
    code range in the direction u moved (the largest one-bit move that way), keep the weights with
    the largest |u − c0|·(size of that move)."""
    if projection not in PROJECTIONS:
        raise UserError(f"projection {projection!r} must be one of {', '.join(PROJECTIONS)}")
    top_code = 2 ** q.scheme.bits - 1
    d = u - c0.to(u.dtype)
    if projection == "round":
        diff = (u.round().long().clamp(0, top_code) ^ c0) & top_code
        flip = msb(diff)
        score = d.abs()
    else:
        flip = torch.where(d > 0, msb(~c0 & top_code), msb(c0))
        flip = torch.where(d != 0, flip, torch.zeros_like(flip))
        score = d.abs() * flip.to(d.dtype)
    score = torch.where((flip != 0) & allowed, score, torch.full_like(u, -1.0))
    k = min(int(budget), int(score.numel()))
    out = c0.clone()
    if k == 0:
        return out
    top = score.topk(k)
    idx = top.indices[top.values >= 0]
    out[idx] = c0[idx] ^ flip[idx]
    return out


def random_flips(q: Quantized, budget: int, generator: torch.Generator,
                 allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Codes with `budget` random bits flipped, at most one per weight, among `allowed`."""
    budget = check_budget(budget)
    cand = torch.arange(q.numel) if allowed is None else allowed.cpu().nonzero().squeeze(1)
    k = min(budget, int(cand.numel()))
    pick = cand[torch.randperm(cand.numel(), generator=generator)[:k]]
    bits = torch.randint(q.scheme.bits, (k,), generator=generator)
    mask = torch.zeros(q.numel, dtype=torch.uint8)
    mask[pick] = (1 << bits).to(torch.uint8)
    return torch.bitwise_xor(q.codes, mask.to(q.device))


def _plan(restarts: int, warm: bool) -> list[tuple[str, str]]:
    """(start, budget schedule) of each restart of the projected attack."""
    plan = [("clean", "fixed"), ("warm", "grow") if warm else ("clean", "grow"),
            ("clean", "grow")]
    if not warm:
        plan = plan[:2]
    return (plan + [("random", "fixed")] * restarts)[:restarts]


def attack_codes(model: nn.Module, q: Quantized, x: torch.Tensor, y: torch.Tensor, *,
               budget: int, steps: int = STEPS, step_size: float = STEP_SIZE, restarts: int = 1,
               target: int | None = None, selection: str | Sequence[str] = "all",
               generator: torch.Generator | None = None, batch_size: int = 512,
               progress: bool | None = None, init: torch.Tensor | None = None,
               projection: str = "gain") -> BitAttackResult:
    """The projected adversarial bit error attack (module docstring) with `budget` bits.

    Restarts, in order: the clean codes with the full budget at every step; `init` (feasible
    codes, e.g. the result of a smaller budget) with the budget growing from its flips to `budget`
    over the steps, or without `init` the clean codes with the budget growing from 1; the clean
    codes with the growing budget (only with `init`); then random feasible flips. The best
    iterate ranks by attack successes, then loss; `init` itself is a candidate."""
    budget = check_budget(budget)
    if int(steps) != steps or steps < 0:
        raise UserError(f"steps={steps} must be an integer >= 0")
    if int(restarts) != restarts or restarts < 1:
        raise UserError(f"restarts={restarts} must be an integer >= 1")
    if not step_size > 0:
        raise UserError(f"step size {step_size} must be > 0")
    if projection not in PROJECTIONS:
        raise UserError(f"projection {projection!r} must be one of {', '.join(PROJECTIONS)}")
    generator = generator or torch.Generator().manual_seed(0)
    obj = CodeObjective(model, q, x, y, target=target, batch_size=batch_size)
    names = select(model, selection, among=q.names)
    allowed = tensor_mask(q, names)
    c0 = _offset_binary(q, q.codes)
    delta = _per_weight(q, q.delta.float())
    half = float(2 ** (q.scheme.bits - 1))
    best_codes = q.codes.clone()
    best_loss, best_hits, _ = obj.evaluate(best_codes, grad=False)
    init_flips = 0
    if init is not None:
        init = init.to(q.device)
        if init.shape != q.codes.shape or init.dtype != torch.uint8:
            raise UserError(f"init must be uint8 codes of shape {tuple(q.codes.shape)}")
        per_weight = popcount(torch.bitwise_xor(init, q.codes))
        init_flips = int(per_weight.sum())
        if int(per_weight.max()) > 1 or init_flips > budget \
                or bool((per_weight.bool() & ~allowed).any()):
            raise UserError(f"init flips {init_flips} bits; it must flip at most budget={budget} "
                            "bits, at most one per weight, only in the attacked tensors")

    def consider(codes: torch.Tensor, loss: torch.Tensor, hits: torch.Tensor) -> None:
        nonlocal best_codes, best_loss, best_hits  # kept on the device (no host sync)
        better = (hits > best_hits) | ((hits == best_hits) & (loss > best_loss))
        best_codes = torch.where(better, codes, best_codes)
        best_loss = torch.where(better, loss, best_loss)
        best_hits = torch.where(better, hits, best_hits)

    if init is not None:
        loss, hits, _ = obj.evaluate(init, grad=False)
        consider(init, loss, hits)
    plan = _plan(int(restarts), init is not None) if budget > 0 else []
    bar = tqdm(total=len(plan) * (steps + 1), desc=f"bit attack ({budget} bits)", leave=False,
               disable=True if progress is False else None)
    for start, schedule in plan:
        if start == "warm":
            assert init is not None
            c, lo = _offset_binary(q, init), init_flips
        elif start == "random":
            c, lo = _offset_binary(q, random_flips(q, budget, generator, allowed)), budget
        else:
            c, lo = c0.clone(), 0
        u = c.float()
        for t in range(steps + 1):
            codes = _from_offset_binary(q, c, q.codes)
            loss, hits, g = obj.evaluate(codes, grad=t < steps)
            consider(codes, loss, hits)
            bar.update(1)
            if g is None:
                break
            gc = torch.where(allowed, g * delta, torch.zeros_like(g))
            u = (u + step_size * half * gc / gc.abs().max().clamp_min(1e-30)).clamp(0, 2 * half - 1)
            k = budget if schedule == "fixed" else \
                max(1, lo + math.ceil((budget - lo) * (t + 1) / steps))
            c = project_codes(q, u, c0, allowed, k, projection)
    bar.close()
    flips = int(popcount(torch.bitwise_xor(best_codes, q.codes)).sum())
    return BitAttackResult(best_codes, float(best_loss), flips, int(best_hits))


def bfa(model: nn.Module, q: Quantized, x: torch.Tensor, y: torch.Tensor, *,
        budgets: Sequence[int], target: int | None = None,
        selection: str | Sequence[str] = "all", batch_size: int = 512,
        progress: bool | None = None) -> dict[int, BitAttackResult]:
    """Progressive bit search up to max(budgets) flips; the codes after each budget."""
    budgets = sorted({check_budget(b) for b in budgets})
    obj = CodeObjective(model, q, x, y, target=target, batch_size=batch_size)
    names = select(model, selection, among=q.names)
    allowed = tensor_mask(q, names)
    segments = [(off, size) for n, off, size in zip(q.names, q.offsets, q.sizes) if n in names]
    codes = q.codes.clone()
    touched = torch.zeros_like(allowed)
    out: dict[int, BitAttackResult] = {}
    loss = obj.value(codes)
    if 0 in budgets:
        out[0] = BitAttackResult(codes.clone(), float(loss), 0)
    neg = torch.tensor(float("-inf"), device=q.device)
    for it in tqdm(range(budgets[-1]), desc="BFA", leave=False,
                   disable=True if progress is False else None):
        _, g = obj.value_and_grad(codes)
        v = q.dequantize_flat(codes)
        best_gain = torch.full_like(v, float("-inf"))
        best_bit = torch.zeros(q.numel, dtype=torch.uint8, device=q.device)
        for j in range(q.scheme.bits):
            gain = g * (q.dequantize_flat(codes ^ (1 << j)) - v)
            better = gain > best_gain
            best_gain = torch.where(better, gain, best_gain)
            best_bit = torch.where(better, torch.full_like(best_bit, 1 << j), best_bit)
        best_gain = torch.where(allowed & ~touched, best_gain, neg)
        # in-layer search: the best bit of every tensor (device tensors, no host sync)
        segs = [best_gain[off:off + size] for off, size in segments]
        cand = torch.stack([off + s.argmax() for (off, _), s in zip(segments, segs)])
        valid = torch.stack([s.max() for s in segs]) > neg
        # cross-layer search: the candidate flip with the highest loss
        trial = []
        for i in cand.split(1):  # 1-element index tensors: indexing without a host sync
            codes[i] ^= best_bit[i]
            trial.append(obj.value(codes))
            codes[i] ^= best_bit[i]
        trial_t = torch.where(valid, torch.stack(trial), neg)
        k = trial_t.argmax().view(1)
        i, ok = cand.index_select(0, k), valid.index_select(0, k)
        codes[i] = torch.where(ok, codes[i] ^ best_bit[i], codes[i])
        touched[i] = touched[i] | ok
        loss = torch.where(ok, trial_t.index_select(0, k), loss.view(1)).view(())
        if it + 1 in budgets:
            flips = int(popcount(torch.bitwise_xor(codes, q.codes)).sum())
            out[it + 1] = BitAttackResult(codes.clone(), float(loss), flips)
    return out


#: Deprecated name of `attack_codes` (it collided with `robustlab.evaluate.bit_attack`, which
#: evaluates a model per budget); kept for one release.
bit_attack = attack_codes
