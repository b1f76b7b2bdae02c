"""Datasets as in-memory tensors: N×C×H×W float32 in [0, 1] and int64 labels.

`load(name)` returns `(train, test)`. Registered names: fashion-mnist, mnist, cifar10, svhn (files,
searched for and checksummed by `robustlab.data_files`), digits (scikit-learn, always available),
synthetic (seeded, tiny), or a path: a `.npz` file (`x`, `y`, optional `x_test`, `y_test`) or a
folder holding one of the file layouts. `load_default()` is fashion-mnist when it is installed and
otherwise digits upsampled to 28×28.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustlab import data_files as files
from robustlab.data_files import ChecksumError, DatasetNotFound, search_dirs
from robustlab.errors import UserError

__all__ = ["ChecksumError", "Dataset", "DatasetNotFound", "LOADERS", "cifar10", "digits",
           "fashion_mnist", "info", "load", "load_default", "load_folder", "load_npz",
           "load_splits", "mnist", "names", "search_dirs", "split", "svhn", "synthetic"]

log = logging.getLogger("robustlab.data")

MAX_CLASSES = 100_000  # more classes than any image benchmark (ImageNet-21k has 21841)


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
        check_classes(self.num_classes, self.source or self.name)
        if min(self.x.shape[1:]) < 1:
            c, h, w = self.x.shape[1:]
            raise UserError(f"{self.source or self.name}: images are {c}×{h}×{w}; every image "
                            f"needs at least one channel and one pixel")
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


def check_classes(k: object, source: str) -> int:
    """A class count must be an integer in 1..MAX_CLASSES (checked before anything is sized by it)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_CLASSES:
        raise UserError(f"{source}: {k!r} classes; a dataset needs 1..{MAX_CLASSES} classes "
                        f"(labels 0..K-1)")
    return int(k)


def split(ds: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Deterministically split off `fraction` of `ds` (a seeded permutation) → (rest, part).

    A fraction > 0 must leave at least one example on each side.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"split fraction {fraction} must be in [0, 1)")
    n = len(ds)
    k = int(round(n * fraction))
    if fraction > 0 and (k == 0 or k == n):
        raise UserError(f"split fraction {fraction} of the {n} examples of {ds.name} leaves "
                        f"{n - k} for training and {k} held out; both parts need at least one "
                        f"example (use more examples or another fraction)")
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


def _float_images(x: np.ndarray) -> torch.Tensor:
    """uint8 N×C×H×W → float32 in [0, 1] (one copy, exact division by 255)."""
    out = np.ascontiguousarray(x, dtype=np.float32)
    out /= 255.0
    return torch.from_numpy(out)


def _make(name: str, x: np.ndarray | torch.Tensor, y: np.ndarray, classes: list[str],
          source: str, num_classes: int | None = None) -> Dataset:
    xt = x if isinstance(x, torch.Tensor) else _float_images(x)
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    k = num_classes if num_classes is not None else (
        len(classes) or (int(yt.max()) + 1 if len(yt) else 0))
    check_classes(k, source)
    if len(yt) and (int(yt.min()) < 0 or int(yt.max()) >= k):
        raise UserError(f"{source}: labels must be in 0..{k - 1}, found "
                        f"{int(yt.min())}..{int(yt.max())}")
    return Dataset(name, xt, yt, k, list(classes), source)


def _from_arrays(name: str, a: files.Arrays, source: str) -> tuple[Dataset, Dataset]:
    k = len(a.classes) or int(max(a.y_train.max(initial=-1), a.y_test.max(initial=-1))) + 1
    _check_not_empty(len(a.y_train), len(a.y_test), source)
    return (_make(name, a.x_train, a.y_train, a.classes, source, k),
            _make(name, a.x_test, a.y_test, a.classes, source, k))


def _file_loader(name: str, doc: str) -> Callable[..., tuple[Dataset, Dataset]]:
    """The loader of a file dataset `name`: `(data_dir=None, *, verify=True, download=False)`."""

    def load(data_dir: str | Path | None = None, *, verify: bool = True,
             download: bool = False) -> tuple[Dataset, Dataset]:
        arrays, loc = files.read_dataset(name, data_dir, verify=verify, download=download)
        return _from_arrays(name, arrays, str(loc.archive or loc.root))

    load.__name__ = load.__qualname__ = name.replace("-", "_")
    load.__doc__ = doc
    return load


fashion_mnist = _file_loader("fashion-mnist", "Fashion-MNIST (60000 + 10000 gray 28×28) from IDX "
                             "files, gzipped or not.")
mnist = _file_loader("mnist", "MNIST (60000 + 10000 gray 28×28) from IDX files, gzipped or not.")
cifar10 = _file_loader("cifar10", "CIFAR-10 (50000 + 10000 color 32×32) from the python batches "
                       "or their tar.gz archive.")
svhn = _file_loader("svhn", "SVHN cropped digits (73257 + 26032 color 32×32) from "
                    "train/test_32x32.mat; label 10 → 0.")


def load_npz(path: str | Path, *, test_fraction: float = 0.2, seed: int = 0
             ) -> tuple[Dataset, Dataset]:
    """A user `.npz`: `x`, `y`, optional `x_test`, `y_test`, `classes` (strings), `num_classes`.

    Images may be N×C×H×W, N×H×W×C or N×H×W, uint8 (0..255) or float in [0, 1]. Without
    `x_test` a seeded `test_fraction` of the examples becomes the test set (`split`).
    """
    path = Path(path).expanduser()
    z = files.read_npz(path)
    src = str(path)
    if "x" not in z or "y" not in z:
        raise UserError(f"{src}: an npz dataset needs arrays 'x' and 'y' (found "
                        f"{', '.join(sorted(z)) or 'none'})")
    if ("x_test" in z) != ("y_test" in z):
        raise UserError(f"{src}: give both 'x_test' and 'y_test', or neither")
    x = files.images_from_array(z["x"], f"{src}:x")
    _check_image_shape(x.shape, f"{src}:x")
    y = files.labels_from_array(z["y"], len(x), f"{src}:y")
    classes = [str(c) for c in z["classes"].reshape(-1)] if "classes" in z else []
    k = _npz_num_classes(z, src) if "num_classes" in z else len(classes) or None
    name = path.stem
    if "x_test" in z:
        xt = files.images_from_array(z["x_test"], f"{src}:x_test")
        yt = files.labels_from_array(z["y_test"], len(xt), f"{src}:y_test")
        if xt.shape[1:] != x.shape[1:]:
            raise UserError(f"{src}: x_test images are {xt.shape[1:]}, x images {x.shape[1:]}")
        _check_not_empty(len(y), len(yt), src)
        k = k or _inferred_classes(max(y.max(initial=-1), yt.max(initial=-1)), len(y) + len(yt), src)
        return (_make(name, torch.from_numpy(x), y, classes, src, k),
                _make(name, torch.from_numpy(xt), yt, classes, src, k))
    if len(y) < 2:
        raise UserError(f"{src}: {len(y)} example(s) in 'x' and no 'x_test'; a test split needs "
                        f"at least 2 examples (or give x_test and y_test)")
    k = k or _inferred_classes(y.max(initial=-1), len(y), src)
    full = _make(name, torch.from_numpy(x), y, classes, src, k)
    train, test = split(full, test_fraction, seed)
    test.name = name
    return train, test


def _check_not_empty(n_train: int, n_test: int, source: str) -> None:
    if n_train == 0 or n_test == 0:
        raise UserError(f"{source}: {n_train} training and {n_test} test examples; both sets need "
                        f"at least one example")


def _check_image_shape(shape: tuple[int, ...], source: str) -> None:
    if len(shape) == 4 and min(shape[1:]) < 1:
        raise UserError(f"{source}: images are {shape[1]}×{shape[2]}×{shape[3]}; every image needs "
                        f"at least one channel and one pixel")


def _npz_num_classes(z: dict[str, np.ndarray], src: str) -> int:
    v = np.asarray(z["num_classes"])
    if v.size != 1 or not (np.issubdtype(v.dtype, np.integer)
                           or (np.issubdtype(v.dtype, np.floating) and np.isfinite(v).all()
                               and float(v.reshape(-1)[0]).is_integer())):
        raise UserError(f"{src}: num_classes must be one integer, got {v.reshape(-1)[:3].tolist()}")
    return check_classes(int(v.reshape(-1)[0]), f"{src}: num_classes")


def _inferred_classes(max_label: int, n: int, src: str) -> int:
    """K = max label + 1 when the file does not say; labels far beyond the number of examples
    (e.g. up to 1e9 for 5 images) are refused before anything is sized by them."""
    k = int(max_label) + 1
    if k > MAX_CLASSES:
        raise UserError(f"{src}: labels go up to {int(max_label)}, which would make {k} classes; at "
                        f"most {MAX_CLASSES} are supported (relabel to 0..K-1 or store num_classes)")
    return k


def load_folder(path: str | Path, *, verify: bool = True) -> tuple[Dataset, Dataset]:
    """A folder holding IDX files, CIFAR batches (or archive) or SVHN .mat files.

    A folder named like a registered dataset (e.g. `.../fashion-mnist`) is read as that dataset,
    with its class names and checksums; any other folder by its layout, unverified.
    """
    path = Path(path).expanduser()
    key = canonical(path.name)
    spec = files.FILE_DATASETS.get(key)
    if spec is not None:
        loc = files.FORMATS[spec.format].locate(path)
        if loc is not None:
            arrays = files.FORMATS[spec.format].read(loc, spec, verify)
            return _from_arrays(key, arrays, str(loc.archive or loc.root))
    found = files.detect(path)
    if found is None:
        raise UserError(f"{path}: no dataset files found (expected IDX files such as "
                        f"train-images-idx3-ubyte[.gz], CIFAR-10 python batches or "
                        f"cifar-10-python.tar.gz, or SVHN train_32x32.mat/test_32x32.mat)")
    kind, loc = found
    arrays = files.FORMATS[kind].read(loc, None, verify=False)
    return _from_arrays(path.name, arrays, str(loc.archive or loc.root))


Loader = Callable[..., tuple[Dataset, Dataset]]
LOADERS: dict[str, Loader] = {"synthetic": synthetic, "digits": digits,
                              "fashion-mnist": fashion_mnist, "mnist": mnist,
                              "cifar10": cifar10, "svhn": svhn}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar_10": "cifar10"}


def canonical(name: str) -> str:
    """Registry key for a dataset name (case-insensitive; a few common spellings)."""
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def names() -> list[str]:
    return sorted(LOADERS)


def load(name: str, data_dir: str | Path | None = None, **kwargs: Any
         ) -> tuple[Dataset, Dataset]:
    """Load a registered dataset, a `.npz` file or a dataset folder → (train, test).

    File datasets (fashion-mnist, mnist, cifar10, svhn) are searched for in `data_dir`,
    `$ROBUSTLAB_DATA`, `~/.cache/robustlab/<name>`, `/usr/share/datasets/<name>` and checked
    against published checksums (`verify=False` skips that; `download=True` fetches missing
    files where the network allows). Other keyword arguments go to the loader.
    """
    key = canonical(name)
    if not kwargs.get("download"):  # a download creates its target folder
        check_data_dir(data_dir)
    if key in LOADERS:
        if key in files.FILE_DATASETS:
            return LOADERS[key](data_dir, **kwargs)
        return LOADERS[key](**kwargs)
    path = Path(name).expanduser()
    if name.endswith(".npz"):
        return load_npz(path, **kwargs)
    if path.is_dir():
        return load_folder(path, **kwargs)
    raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(names())}, a .npz "
                    f"file or a folder of dataset files")


def check_data_dir(data_dir: str | Path | None) -> None:
    """A given data folder must exist (no silent fall back to the other search folders)."""
    if data_dir is None:
        return
    if not str(data_dir).strip():
        raise UserError("--data-dir '' is empty; give a folder or leave the option out")
    if not Path(data_dir).expanduser().is_dir():
        raise UserError(f"--data-dir {data_dir} does not exist or is not a folder")


def load_splits(name: str, val_fraction: float = 0.1, seed: int = 0,
                data_dir: str | Path | None = None, **kwargs: Any
                ) -> tuple[Dataset, Dataset, Dataset]:
    """(train, val, test): `load` then a seeded `split` of `val_fraction` of the training set."""
    train, test = load(name, data_dir, **kwargs)
    train, val = split(train, val_fraction, seed)
    return train, val, test


def load_default(prefer: str = "fashion-mnist", data_dir: str | Path | None = None, *,
                 verify: bool = True) -> tuple[Dataset, Dataset]:
    """`prefer` when its files are found, else scikit-learn digits upsampled to 28×28 (32×32
    when `prefer` is a 32×32 dataset), with a logged warning saying so."""
    key = canonical(prefer)
    check_data_dir(data_dir)
    if key not in files.FILE_DATASETS:
        return load(prefer, data_dir)
    try:
        return load(key, data_dir, verify=verify)
    except DatasetNotFound:
        size = 32 if key in ("cifar10", "svhn") else 28
        log.warning("%s not found (%s); using scikit-learn digits upsampled to %d×%d instead",
                    key, files.FILE_DATASETS[key].hint.split(",")[0], size, size)
        train, test = digits(size=size)
        for d in (train, test):
            d.source = f"scikit-learn (fallback: {key} not found)"
        return train, test


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def info(name: str, data_dir: str | Path | None = None, *, verify: bool = True
         ) -> dict[str, Any]:
    """What is known about a dataset without training on it: where it was found (or where it was
    looked for), sizes, image shape, classes, bytes on disk and the checksum status."""
    key = canonical(name)
    out: dict[str, Any] = {"name": key if key in LOADERS else name}
    try:
        if key in files.FILE_DATASETS:
            spec = files.FILE_DATASETS[key]
            out["kind"] = "files"
            loc = files.locate(key, data_dir)
            if loc is None:
                out.update(status="missing",
                           searched=[str(d) for d in search_dirs(key, data_dir)],
                           hint=spec.hint)
                return out
            out.update(status="found", location=str(loc.archive or loc.root),
                       files=[str(p) for p in loc.paths()], bytes=loc.nbytes())
            fmt = files.FORMATS[spec.format]
            if verify:
                a = fmt.read(loc, spec, verify=True)
                n_train, n_test, shape = len(a.y_train), len(a.y_test), a.x_train.shape[1:]
                out["checksums"] = a.checksums
            else:
                n_train, n_test, shape = fmt.sizes(loc)
                out["checksums"] = "not checked"
            out.update(train=int(n_train), test=int(n_test), shape=[int(s) for s in shape],
                       num_classes=len(spec.classes))
            return out
        if key in LOADERS:
            train, test = LOADERS[key]()
            out.update(kind="built-in", status="built-in",
                       location=train.source)
        else:
            train, test = load(name)
            path = Path(name).expanduser()
            paths = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
            out.update(kind="npz" if path.is_file() else "folder", status="found",
                       location=str(path), bytes=sum(p.stat().st_size for p in paths),
                       checksums="unverified")
        out.update(train=len(train), test=len(test), shape=list(train.shape),
                   num_classes=train.num_classes)
    except (UserError, TypeError) as e:  # TypeError: a registered loader that needs arguments
        out.update(status="error", error=str(e))
    return out


def format_size(nbytes: int | None) -> str:
    """Bytes as a short human-readable size (`30.9 MB`)."""
    return "-" if nbytes is None else _human(int(nbytes))
