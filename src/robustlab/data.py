"""Datasets as in-memory tensors: N×C×H×W float32 in [0, 1] and int64 labels.

`load(name)` returns `(train, test)`. Registered names: fashion-mnist, mnist, cifar10, svhn,
digits (scikit-learn, always available), synthetic (seeded, tiny), or a path to a `.npz` file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from robustlab.errors import UserError


@dataclass
class Dataset:
    """An in-memory labelled image set."""

    name: str
    x: torch.Tensor  # N×C×H×W float32 in [0, 1]
    y: torch.Tensor  # N int64
    num_classes: int
    classes: list[str] = field(default_factory=list)
    source: str = ""  # where the files were found

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"dataset {self.name}: x must be N×C×H×W with N labels")
        if not self.classes:
            self.classes = [str(k) for k in range(self.num_classes)]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape C×H×W."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor | slice, name: str | None = None) -> Dataset:
        return Dataset(name or self.name, self.x[index], self.y[index], self.num_classes,
                       list(self.classes), self.source)

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, y) batches; shuffling draws from `generator` (required when shuffling)."""
        n = len(self)
        if shuffle:
            if generator is None:
                raise ValueError("shuffle=True needs an explicit torch.Generator")
            order = torch.randperm(n, generator=generator)
        else:
            order = None
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
            xb, yb = self.x[idx], self.y[idx]
            if device is not None:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            yield xb, yb


def split(ds: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Deterministically split off `fraction` of `ds` (a seeded permutation) → (rest, part)."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"split fraction {fraction} must be in [0, 1)")
    n = len(ds)
    k = int(round(n * fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return ds.subset(perm[k:].sort().values), ds.subset(perm[:k].sort().values, f"{ds.name}-val")


def synthetic(n_train: int = 512, n_test: int = 256, *, shape: tuple[int, int, int] = (1, 8, 8),
              num_classes: int = 4, seed: int = 0) -> tuple[Dataset, Dataset]:
    """A seeded, linearly separable-ish toy problem: class prototypes plus noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, *shape, generator=g)

    def make(n: int) -> Dataset:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = (protos[y] + 0.15 * torch.randn(n, *shape, generator=g)).clamp(0, 1)
        return Dataset("synthetic", x, y, num_classes, source="generated")

    return make(n_train), make(n_test)


def digits(*, size: int = 8, test_fraction: float = 0.2) -> tuple[Dataset, Dataset]:
    """scikit-learn's 8×8 digits (1797 images), optionally upsampled to `size`×`size`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            align_corners=False).clamp(0, 1)
    y = torch.tensor(d.target, dtype=torch.int64)
    full = Dataset("digits", x, y, 10, source="scikit-learn")
    train, test = split(full, test_fraction, seed=0)
    test.name = "digits"
    return train, test


Loader = Callable[..., tuple[Dataset, Dataset]]
LOADERS: dict[str, Loader] = {"synthetic": synthetic, "digits": digits}


def names() -> list[str]:
    return sorted(LOADERS)


def load(name: str, **kwargs) -> tuple[Dataset, Dataset]:
    """Load a registered dataset by name, or a user `.npz` file by path → (train, test)."""
    if name in LOADERS:
        return LOADERS[name](**kwargs)
    if name.endswith(".npz"):
        from robustlab.data_files import load_npz  # noqa: PLC0415

        return load_npz(name)
    raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(names())} or a .npz path")
