"""Process groups for `torchrun`: rank and world size, sharding of independent work, exact gathers.

Everything here is a no-op in a single process (no process group, or a group of one), so code
can call these helpers unconditionally. A process group is created by `init()` from the
environment variables `torchrun` sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):
gloo on CPU, nccl on CUDA.

Sharding is contiguous: item i of n belongs to the rank r with start(r) ≤ i < start(r+1),
start(r) = r·⌊n/W⌋ + min(r, n mod W) (the first n mod W ranks hold one item more, so rank 0 holds
the first item whenever there is one). `gather` concatenates the ranks' per-item results in rank
order, which is the original item order, so statistics computed from the gathered tensor are
exactly those of a single-process run.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from robustlab.errors import UserError

_MASK63 = (1 << 63) - 1


# ---- the process group ---------------------------------------------------------------------

def env_world_size() -> int:
    """World size announced by the launcher (`torchrun` sets WORLD_SIZE); 1 without one."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(device: str | torch.device = "auto", *, timeout_s: float = 1800) -> torch.device:
    """Join the process group described by the environment, when there is one; returns the
    device this rank computes on (`cuda:LOCAL_RANK` on CUDA). Without a launcher (WORLD_SIZE
    unset or 1) nothing happens and the resolved device is returned."""
    from robustlab.device import resolve_device

    dev = resolve_device(device)
    if env_world_size() <= 1 and not is_initialized():
        return dev
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank() % max(torch.cuda.device_count(), 1))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise UserError(f"WORLD_SIZE={env_world_size()} but {missing[0]} is not set; start "
                            "distributed runs with torchrun (see docs/distributed.md)")
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://",
                                timeout=datetime.timedelta(seconds=timeout_s))
        atexit.register(destroy)
    return dev


def destroy() -> None:
    """Leave the process group (if any)."""
    if is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """Index of this process on its node (LOCAL_RANK from the launcher), for picking a GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and prints."""
    return rank() == 0


def active() -> bool:
    """True when more than one process works together."""
    return world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if active():
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collectives need their tensors: the current GPU for nccl, else the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---- seeds ---------------------------------------------------------------------------------

def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (SplitMix64 finalizer): distinct inputs give unrelated
    streams; the same inputs give the same seed on every machine."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & _MASK63


# ---- sharding ------------------------------------------------------------------------------

def shard_bounds(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of n items (module docstring)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    q, extra = divmod(n, w)
    return r * q + min(r, extra), (r + 1) * q + min(r + 1, extra)


def shard(items: Sequence[Any] | int, rank_: int | None = None, world: int | None = None) -> Any:
    """This rank's contiguous share of a sequence (a list, range or tensor), or of range(n)."""
    if isinstance(items, int):
        items = range(items)
    start, stop = shard_bounds(len(items), rank_, world)
    return items[start:stop]


def split_batch(index: torch.Tensor, rank_: int | None = None, world: int | None = None
                ) -> torch.Tensor:
    """This rank's share of one global batch of example indices (contiguous, sizes differ by ≤ 1)."""
    return shard(index, rank_, world)


# ---- collectives ---------------------------------------------------------------------------

def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks, in place and returned (identity in a single process)."""
    if not active():
        return t
    dev = _comm_device()
    buf = t if t.device == dev else t.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not t:
        t.copy_(buf)
    return t


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj` (JSON-like values), in rank order; `[obj]` in a single process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather(local: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Concatenate every rank's per-item results (first dimension) in rank order, on every rank.

    Ranks may hold different numbers of items (as `shard` gives them), none included (then the
    trailing shape and dtype of `local` do not matter); with `n` the total is checked. The result
    is bit-identical to computing all items in one process, provided each item's result does not
    depend on which other items were computed with it.
    """
    if not active():
        out = local
    else:
        info = all_gather_object((local.shape[0], tuple(local.shape[1:]), str(local.dtype)))
        counts = [c for c, _, _ in info]
        _, tail, dtype_name = next((i for i in info if i[0] > 0), info[0])
        dtype = getattr(torch, dtype_name.removeprefix("torch."))
        if local.shape[0] == 0:
            local = torch.empty((0, *tail), dtype=dtype, device=local.device)
        dev = _comm_device()
        wire_dtype = torch.uint8 if dtype == torch.bool else dtype
        pad = torch.zeros((max(max(counts), 1), *tail), dtype=wire_dtype, device=dev)
        pad[:local.shape[0]] = local.to(dev, wire_dtype)
        parts = [torch.empty_like(pad) for _ in counts]
        dist.all_gather(parts, pad)
        out = torch.cat([p[:c] for p, c in zip(parts, counts)]).to(local.device, dtype)
    if n is not None and out.shape[0] != n:
        raise RuntimeError(f"gathered {out.shape[0]} items, expected {n}")
    return out


def gather_batches(parts: Sequence[torch.Tensor], n: int | None = None) -> torch.Tensor:
    """`gather` of this rank's per-batch results concatenated (a rank may have no batch)."""
    return gather(torch.cat(list(parts)) if len(parts) else torch.empty(0), n)


def gather_tree(local: Any, n: int | None = None) -> Any:
    """`gather` applied to every tensor of a dict/list/tuple of per-item tensors."""
    if isinstance(local, torch.Tensor):
        return gather(local, n)
    if isinstance(local, dict):
        return {k: gather_tree(v, n) for k, v in local.items()}
    if isinstance(local, (list, tuple)):
        return type(local)(gather_tree(v, n) for v in local)
    raise TypeError(f"gather_tree: cannot gather a {type(local).__name__}")


def sharded_map(fn: Any, items: Sequence[Any]) -> list[Any]:
    """`[fn(item) for item in items]` with the items dealt round-robin to the ranks (item i to rank
    i mod W, which balances items of different cost) and the results returned in item order on
    every rank. Results must be picklable (numbers, dicts, CPU tensors); `fn` must not depend on
    which other items the rank computes."""
    r, w = rank(), world_size()
    mine = [(i, fn(items[i])) for i in range(r, len(items), w)]
    if w == 1:
        return [v for _, v in mine]
    return [v for _, v in sorted((p for part in all_gather_object(mine) for p in part),
                                 key=lambda p: p[0])]


# ---- training helpers ----------------------------------------------------------------------

@torch.no_grad()
def broadcast_module(model: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers to every rank."""
    if not active():
        return
    dev = _comm_device()
    for t in [*model.parameters(), *model.buffers()]:
        buf = t.data if t.device == dev else t.data.to(dev)
        dist.broadcast(buf, src=src)
        if buf is not t.data:
            t.data.copy_(buf)


@torch.no_grad()
def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s floating-point buffers (e.g. BatchNorm running statistics) to every rank,
    as DistributedDataParallel does before each forward."""
    bufs = [b for b in model.buffers() if b.is_floating_point()]
    if not active() or not bufs:
        return
    dev = _comm_device()
    flat = torch.cat([b.reshape(-1).to(dev) for b in bufs])
    dist.broadcast(flat, src=src)
    for b, v in zip(bufs, flat.split([b.numel() for b in bufs])):
        b.copy_(v.view_as(b))


@torch.no_grad()
def reduce_gradients(params: Iterable[torch.Tensor], weight: float) -> None:
    """Replace every `.grad` by Σ_ranks weight_r · grad_r in one all-reduce.

    With weight_r = (local batch size) / (global batch size) and gradients of a per-example mean
    loss, this is the gradient of the mean loss over the global batch. A parameter keeps
    `grad=None` only when it has no gradient on any rank (as the optimizer then skips it).
    """
    params = list(params)
    if not active() or not params:
        return
    dev = _comm_device()
    parts = [(p.grad * weight if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dev)
             for p in params]
    present = torch.tensor([p.grad is not None for p in params], dtype=parts[0].dtype, device=dev)
    flat = torch.cat([*parts, present])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    sizes = [p.numel() for p in params]
    *grads, has = flat.split([*sizes, len(params)])
    for p, g, h in zip(params, grads, has.tolist()):
        p.grad = g.view_as(p).to(p.device) if h > 0 else None
