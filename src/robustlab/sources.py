"""Data as users hold it: one adapter that every entry point calls first.

`as_data(data)` accepts

- a robustlab `Dataset` (returned as is),
- an `(x, y)` pair of tensors or NumPy arrays (N×C×H×W floats, N integer labels) → a `Dataset`,
- a `torch.utils.data.Dataset` (map-style or iterable) yielding `(image, label)` pairs, or
- a `torch.utils.data.DataLoader` yielding `(images, labels)` batches → a `Stream`.

A `Stream` never holds the data: `batches(batch_size)` reads it again on every pass, re-chunked
to exactly `batch_size` examples (so results do not depend on the loader's own batch size), and
checks every batch's shape, dtype and (optionally) value range. It offers the parts of the
`Dataset` interface evaluators use: `len`, `shape`, `num_classes`, `classes`, `subset(slice)`,
and `x`/`y` views whose slices (`stream.x[:n]`) read only the rows asked for.

`check_bounds(x, bounds)` is the one input-range check: values outside `bounds` raise a one-line
`UserError` naming the range found (never a silent clamp).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
)
from torch.utils.data import Dataset as TorchDataset

from robustlab.data import Dataset
from robustlab.errors import UserError

__all__ = ["Stream", "as_data", "check_bounds", "check_bounds_arg", "materialize"]

Bounds = tuple[float, float]
DEFAULT_BOUNDS: Bounds = (0.0, 1.0)


def check_bounds_arg(bounds: Sequence[float] | None) -> Bounds:
    """`bounds` as a (lo, hi) pair of floats with lo < hi (None → (0, 1))."""
    return DEFAULT_BOUNDS if bounds is None else check_bounds(torch.zeros(0), tuple(bounds))


def check_bounds(x: torch.Tensor, bounds: Sequence[float] | None = DEFAULT_BOUNDS,
                 what: str = "inputs") -> Bounds:
    """Validate the box `bounds` = (lo, hi) (None → [0, 1]) and that every entry of `x` lies in
    it; returns (lo, hi). A bad box or an input outside it is a one-line `UserError` naming the
    range found, with `what` naming the data (attacks never clamp a user's inputs silently; they
    make this same check through `robustlab.attacks.base.check_bounds`).

    Example:
        >>> import torch, robustlab as rl
        >>> rl.sources.check_bounds(torch.rand(2, 1, 4, 4))            # fine
        >>> try:
        ...     rl.sources.check_bounds(torch.full((1, 1, 2, 2), 2.0))
        ... except rl.UserError as e:
        ...     print(e)  # doctest: +ELLIPSIS
        inputs lie in [2, 2], outside the bounds [0, 1]; ...
    """
    if bounds is None:
        bounds = DEFAULT_BOUNDS
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise UserError(f"bounds {bounds!r} are invalid; give two numbers (lo, hi)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UserError(f"bounds ({lo:g}, {hi:g}) are invalid; they must be finite with lo < hi")
    if x.numel() == 0:
        return lo, hi
    mn, mx = torch.aminmax(x.detach().float())
    mn_f, mx_f = float(mn), float(mx)
    if not (math.isfinite(mn_f) and math.isfinite(mx_f)):
        raise UserError(f"{what} contain NaN or infinite values; attacks need finite inputs")
    if mn_f < lo or mx_f > hi:
        raise UserError(f"{what} lie in [{mn_f:.3g}, {mx_f:.3g}], outside the bounds [{lo:g}, {hi:g}]; "
                        "normalize inside the model (rl.models.Normalized) or pass bounds=")
    return lo, hi


def _as_tensor(v: Any, what: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            raise UserError(f"{what} is a NumPy array of objects; give numbers")
        return torch.from_numpy(np.ascontiguousarray(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return torch.tensor(v)
    raise UserError(f"{what} must be a tensor or NumPy array, got {type(v).__name__}"
                    + ("; add a ToTensor() transform" if type(v).__name__ == "Image" else ""))


def _images(x: Any, what: str = "images") -> torch.Tensor:
    x = _as_tensor(x, what)
    if not torch.is_floating_point(x):
        raise UserError(f"{what} have dtype {str(x.dtype).removeprefix('torch.')}; give floats in "
                        f"[0, 1] (e.g. x.float() / 255)")
    if x.ndim != 4:
        raise UserError(f"{what} have shape {tuple(x.shape)}; expected N×C×H×W")
    return x if x.dtype == torch.float32 else x.float()


def _labels(y: Any, n: int, what: str = "labels") -> torch.Tensor:
    y = _as_tensor(y, what)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype == torch.bool or torch.is_floating_point(y) or torch.is_complex(y):
        raise UserError(f"{what} have dtype {str(y.dtype).removeprefix('torch.')}; give integer "
                        f"class indices")
    if y.ndim != 1 or y.shape[0] != n:
        raise UserError(f"{what} have shape {tuple(y.shape)}; expected ({n},) for {n} images")
    if n and int(y.min()) < 0:
        raise UserError(f"{what} contain {int(y.min())}; class indices must be ≥ 0")
    return y.long()


def _classes_of(obj: Any) -> list[str] | None:
    c = getattr(obj, "classes", None)
    if isinstance(c, (list, tuple)) and c:
        return [str(v) for v in c]
    return None


def as_data(data: Any, *, name: str | None = None, num_classes: int | None = None,
            classes: Sequence[str] | None = None,
            bounds: Sequence[float] | None = None) -> Dataset | Stream:
    """The one adapter every entry point calls first (see the module docstring).

    Tensors become an in-memory `Dataset` (checked once against `bounds` when given); a torch
    `Dataset` or `DataLoader` becomes a `Stream` (each batch checked as it is read). `num_classes`
    defaults to the length of the data's `classes` attribute, else the largest label + 1 (tensors)
    or, for streams, the model's number of outputs where an evaluator needs it.

    Example:
        >>> import torch, robustlab as rl
        >>> x, y = torch.rand(10, 1, 8, 8), torch.arange(10) % 3
        >>> rl.sources.as_data((x, y)).num_classes
        3
        >>> loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
        >>> s = rl.sources.as_data(loader)
        >>> len(s), s.shape, [xb.shape[0] for xb, _ in s.batches(3)]
        (10, (1, 8, 8), [3, 3, 3, 1])
    """
    if isinstance(data, Dataset):
        if bounds is not None:
            check_bounds(data.x, bounds, f"dataset {data.name!r}")
        return data
    if isinstance(data, Stream):
        if bounds is not None:
            data.bounds = check_bounds_arg(bounds)
        return data
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise UserError(f"data given as a {type(data).__name__} of {len(data)} items; give "
                            f"(x, y): images N×C×H×W and N integer labels")
        x = _images(data[0])
        y = _labels(data[1], x.shape[0])
        if num_classes is None:
            num_classes = len(classes) if classes else (int(y.max()) + 1 if len(y) else 1)
        elif len(y) and int(y.max()) >= num_classes:
            raise UserError(f"labels contain {int(y.max())}, but num_classes is {num_classes}")
        ds = Dataset(name or "tensors", x, y, int(num_classes), list(classes or []), "tensors")
        if bounds is not None:
            check_bounds(x, bounds)
        return ds
    if isinstance(data, (DataLoader, TorchDataset)):
        return Stream(data, name=name, num_classes=num_classes, classes=classes, bounds=bounds)
    if isinstance(data, torch.Tensor):
        raise UserError("data is a single tensor; give (x, y): images and labels")
    raise UserError(f"cannot use {type(data).__name__} as data; give a robustlab Dataset, an (x, y) "
                    f"pair of tensors, a torch.utils.data.Dataset or a DataLoader")


def materialize(data: Any, n: int | None = None, **kwargs: Any) -> Dataset:
    """`as_data(data)` as an in-memory `Dataset` of its first `n` examples (all by default)."""
    d = as_data(data, **kwargs)
    if isinstance(d, Dataset):
        return d if n is None or n >= len(d) else d.subset(slice(0, n))
    return d.materialize(n)


class _Rows:
    """`stream.x` / `stream.y`: slicing reads only the rows asked for (`stream.x[:n]`)."""

    def __init__(self, stream: Stream, which: int):
        self.stream, self.which = stream, which

    def __len__(self) -> int:
        return len(self.stream)

    @property
    def shape(self) -> tuple[int, ...]:
        n = len(self.stream)
        return (n, *self.stream.shape) if self.which == 0 else (n,)

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, slice) and index.step in (None, 1):
            a, b, _ = index.indices(len(self.stream))
            return self.stream.rows(a, max(a, b))[self.which]
        if isinstance(index, int):
            i = index + len(self.stream) if index < 0 else index
            return self.stream.rows(i, i + 1)[self.which][0]
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        return torch.stack([self[int(i)] for i in idx.flatten()]) if idx.numel() else \
            self.stream.rows(0, 0)[self.which]

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """All rows as one tensor (this reads the whole data once; labels are small)."""
        return self[:].to(*args, **kwargs)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for xb, yb in self.stream.batches(256):
            yield from (xb if self.which == 0 else yb)


class Stream:
    """A labelled image set read batch by batch from a torch `Dataset` or `DataLoader`.

    Nothing is cached but the image shape, the length and (after a full read) the labels.
    `bounds`, when set, is checked on every batch read.
    """

    def __init__(self, data: DataLoader | TorchDataset, *, name: str | None = None,
                 num_classes: int | None = None, classes: Sequence[str] | None = None,
                 bounds: Sequence[float] | None = None, head: int | None = None,
                 start: int = 0) -> None:
        self.source = data
        self.loader = data if isinstance(data, DataLoader) else None
        ds = data.dataset if isinstance(data, DataLoader) else data
        self.dataset = ds
        # a loader's own order (shuffle=True) is ignored: evaluations read in index order and
        # training shuffles with the run's seed; other samplers (subsets, weights) are kept
        sequential = self.loader is None or type(self.loader.sampler) in (SequentialSampler,
                                                                          RandomSampler)
        self.map_style = (not isinstance(ds, IterableDataset) and hasattr(ds, "__getitem__")
                          and _has_len(ds) and sequential)
        self.name = name or type(ds).__name__
        self.classes = list(classes) if classes else (_classes_of(ds) or [])
        self._num_classes = num_classes if num_classes is not None else (
            len(self.classes) if self.classes else getattr(ds, "num_classes", None))
        if self._num_classes is not None:
            self._num_classes = int(self._num_classes)
            if not self.classes:
                self.classes = [str(k) for k in range(self._num_classes)]
        self.bounds = check_bounds_arg(bounds) if bounds is not None else None
        self._start, self._head = int(start), head
        self._len: int | None = None
        self._shape: tuple[int, int, int] | None = None
        self._rows_cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- Dataset-like interface --------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            y = self.y[:]
            self._num_classes = int(y.max()) + 1 if len(y) else 1
            self.classes = self.classes or [str(k) for k in range(self._num_classes)]
        return self._num_classes

    @num_classes.setter
    def num_classes(self, value: int) -> None:
        self._num_classes = int(value)
        if len(self.classes) != self._num_classes:
            self.classes = [str(k) for k in range(self._num_classes)]

    def known_num_classes(self) -> int | None:
        """The number of classes if known without reading the data, else None."""
        return self._num_classes

    def _full_len(self) -> int | None:
        """The number of examples of the source, if known without reading it."""
        if self.map_style:
            return len(self.dataset)  # type: ignore[arg-type]
        if self.loader is not None and self.loader.drop_last:
            return None
        if self.loader is not None and not isinstance(self.dataset, IterableDataset):
            smp = self.loader.sampler
            return len(smp) if _has_len(smp) else None  # type: ignore[arg-type]
        return len(self.dataset) if _has_len(self.dataset) else None  # type: ignore[arg-type]

    def __len__(self) -> int:
        if self._len is None:
            n = self._full_len()
            if n is None:  # an iterable without a length: count once
                n = sum(int(yb.shape[0]) for _, yb in self._raw_batches(check=False))
                n += self._start
            n = max(0, n - self._start)
            self._len = n if self._head is None else min(n, self._head)
        return self._len

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape C×H×W (read from the first example)."""
        if self._shape is None:
            xb, _ = next(self._raw_batches(check=False, batch_size=1), (None, None))
            if xb is None:
                raise UserError(f"data {self.name!r} is empty")
            self._shape = tuple(_images(xb).shape[1:])  # type: ignore[assignment]
        return self._shape  # type: ignore[return-value]

    @property
    def x(self) -> _Rows:
        return _Rows(self, 0)

    @property
    def y(self) -> _Rows:
        """Labels; `stream.y[:]` reads all of them (the images are read and dropped)."""
        return _Rows(self, 1)

    def subset(self, index: slice, name: str | None = None) -> Stream | Dataset:
        """A contiguous `slice(a, b)` stays a stream; any other index reads those rows."""
        if isinstance(index, slice) and index.step in (None, 1):
            a, b, _ = index.indices(len(self))
            s = Stream(self.source, name=name or self.name, num_classes=self._num_classes,
                       classes=self.classes or None, bounds=self.bounds, start=self._start + a,
                       head=max(0, b - a))
            s._shape = self._shape
            return s
        idx = torch.as_tensor(index)
        return Dataset(name or self.name, self.x[idx], self.y[idx], self.num_classes,
                       list(self.classes), "stream")

    def materialize(self, n: int | None = None) -> Dataset:
        """The first `n` examples (all by default) as an in-memory `Dataset`."""
        n = len(self) if n is None else min(int(n), len(self))
        x, y = self.rows(0, n)
        return Dataset(self.name, x, y, self.num_classes, list(self.classes), "stream")

    # -- reading -------------------------------------------------------------------------------
    def _raw_batches(self, *, check: bool = True, batch_size: int | None = None,
                     order: torch.Tensor | None = None, start: int | None = None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The source's own batches from example `start` (default: this stream's start)."""
        start = self._start if start is None else start
        if order is not None or (self.map_style and (start > 0 or batch_size is not None)):
            stop = (self._full_len() or 0) if self._head is None else \
                min(self._full_len() or 0, self._start + self._head)
            idx = order if order is not None else range(start, stop)
            sub = Subset(self.dataset, [int(i) for i in idx])  # type: ignore[arg-type]
            ld = self.loader
            loader: Any = DataLoader(sub, batch_size=batch_size or (ld.batch_size if ld else None)
                                     or 256, shuffle=False,
                                     num_workers=ld.num_workers if ld else 0,
                                     collate_fn=ld.collate_fn if ld else None)
            skip = 0
        else:
            loader = self.loader if self.loader is not None else DataLoader(
                self.dataset, batch_size=batch_size or 256)
            skip = start
        for batch in _collated(loader, self.name):
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                what = (f"a dict with keys {sorted(batch)}" if isinstance(batch, dict)
                        else f"a {type(batch).__name__}")
                raise UserError(f"data {self.name!r} yields {what}; each batch must be "
                                f"(images, labels)")
            xb, yb = batch
            if skip:
                k = min(skip, int(len(yb)))
                xb, yb, skip = xb[k:], yb[k:], skip - k
                if not len(yb):
                    continue
            if check:
                xb = _images(xb, f"images of {self.name!r}")
                yb = _labels(yb, xb.shape[0], f"labels of {self.name!r}")
            yield xb, yb

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None,
                device: torch.device | str | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield checked (x, y) batches of exactly `batch_size` (the last may be smaller).

        Shuffling (training) draws a permutation from `generator` and needs a map-style dataset.
        """
        batch_size = int(batch_size)
        order = None
        if shuffle:
            if generator is None:
                raise ValueError("shuffle=True needs an explicit torch.Generator")
            if not self.map_style:
                raise UserError(f"data {self.name!r} is an iterable without indexing; training "
                                f"needs a map-style Dataset (with __len__ and __getitem__)")
            order = torch.randperm(len(self), generator=generator) + self._start
        remaining = len(self) if self._head is not None else None
        pending_x: list[torch.Tensor] = []
        pending_y: list[torch.Tensor] = []
        have = 0
        raw = self._raw_batches(order=order, batch_size=batch_size if self.map_style else None)

        def emit(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if self._shape is None:
                self._shape = tuple(xb.shape[1:])  # type: ignore[assignment]
            elif tuple(xb.shape[1:]) != self._shape:
                raise UserError(f"images of {self.name!r} have shape {tuple(xb.shape[1:])} after "
                                f"{self._shape}; every image must have the same shape")
            if self.bounds is not None:
                check_bounds(xb, self.bounds, f"images of {self.name!r}")
            if device is not None:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            return xb, yb

        for xb, yb in raw:
            if remaining is not None:
                if remaining <= 0:
                    break
                xb, yb = xb[:remaining], yb[:remaining]
                remaining -= len(yb)
            if not pending_x and len(yb) == batch_size:
                yield emit(xb, yb)
                continue
            pending_x.append(xb)
            pending_y.append(yb)
            have += len(yb)
            while have >= batch_size:
                xs, ys = torch.cat(pending_x), torch.cat(pending_y)
                yield emit(xs[:batch_size], ys[:batch_size])
                pending_x, pending_y = [xs[batch_size:]], [ys[batch_size:]]
                have -= batch_size
                if not have:
                    pending_x, pending_y = [], []
        if have:
            yield emit(torch.cat(pending_x), torch.cat(pending_y))

    def rows(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples a..b−1 (of this stream) as tensors; reads only those rows where it can."""
        n = len(self)
        a, b = max(0, min(a, n)), max(0, min(b, n))
        if b <= a:
            return torch.zeros(0, *self.shape), torch.zeros(0, dtype=torch.long)
        if (a, b) in self._rows_cache:  # x[a:b] then y[a:b] read the rows once
            return self._rows_cache[(a, b)]
        part = self.subset(slice(a, b))
        assert isinstance(part, Stream)
        xs, ys = zip(*part.batches(min(b - a, 1024)))
        out = torch.cat(xs), torch.cat(ys)
        if len(self._rows_cache) >= 2:
            self._rows_cache.pop(next(iter(self._rows_cache)))
        self._rows_cache[(a, b)] = out
        return out

    def __repr__(self) -> str:
        return f"Stream({self.name!r}, n={len(self)}, source={type(self.source).__name__})"


def _collated(loader: Any, name: str) -> Iterator[Any]:
    """Iterate `loader`; PyTorch's collate error about non-tensor examples becomes one line."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except TypeError as e:
            msg = str(e)
            if not msg.startswith("default_collate"):
                raise
            found = msg.rsplit("found", 1)[-1].strip(" ;.") if "found" in msg else "other objects"
            raise UserError(f"data {name!r} yields examples holding {found}; each example must be "
                            f"(image tensor, label), e.g. add a ToTensor() transform") from None
        yield batch


def _has_len(obj: Any) -> bool:
    try:
        len(obj)
    except TypeError:
        return False
    return True


def batches_of(data: Dataset | Stream, batch_size: int, device: torch.device | str | None = None,
               bounds: Sequence[float] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`data.batches(batch_size, device=device)`, each batch checked against `bounds` if given."""
    for xb, yb in data.batches(batch_size, device=device):
        if bounds is not None:
            check_bounds(xb, bounds, f"images of {data.name!r}")
        yield xb, yb


def model_device(model: Any) -> torch.device:
    """Where `model`'s first parameter (or buffer) lives; CPU for a parameterless callable."""
    if isinstance(model, torch.nn.Module):
        for t in itertools.chain(model.parameters(), model.buffers()):
            return t.device
    return torch.device("cpu")


def eval_mode(model: Any) -> Callable[[], None]:
    """Put `model` (if a module) in eval mode; returns a function restoring every submodule's
    previous train/eval flag."""
    if not isinstance(model, torch.nn.Module):
        return lambda: None
    modes = [(m, m.training) for m in model.modules()]
    model.eval()

    def restore() -> None:
        for m, t in modes:
            m.training = t
    return restore
