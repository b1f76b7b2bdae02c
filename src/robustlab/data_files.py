"""On-disk dataset formats, file search, checksums and downloads (numpy level).

Readers return uint8 image arrays N×C×H×W and int64 label arrays; `robustlab.data` turns them
into float `Dataset`s. Formats: IDX (MNIST, Fashion-MNIST; gzipped or not), CIFAR-10 python
batches (read with a restricted unpickler that only rebuilds numpy arrays), SVHN `.mat` (MAT v5)
and user `.npz` files.

Search order for a dataset `<name>`: `data_dir` (the folder itself or `data_dir/<name>`),
`$ROBUSTLAB_DATA` (likewise; several folders may be joined with `os.pathsep`),
`~/.cache/robustlab/<name>`, `/usr/share/datasets/<name>`.

Checksums: a file's *content* (the decompressed payload for `.gz` IDX files, the file itself
otherwise) is compared with the published MD5 where one is known, so a recompressed copy (Debian
recompresses Fashion-MNIST) still verifies. MNIST publishes only the `.gz` digests: a MNIST file
that is not byte-identical to the published `.gz` is loaded but reported as "unverified".
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robustlab.errors import UserError

SYSTEM_DIR = Path("/usr/share/datasets")  # Debian's dataset-* packages install here
ENV_VAR = "ROBUSTLAB_DATA"


class DatasetNotFound(UserError):
    """The files of a dataset are in none of the searched folders."""


class ChecksumError(UserError):
    """A known file does not match its published checksum."""


# ---------------------------------------------------------------------------------------------
# checksums


@dataclass(frozen=True)
class Known:
    """Published digests of one file: of the file as distributed and of its decoded content."""

    md5: str | None = None  # of the distributed file (e.g. the .gz)
    content_md5: str | None = None  # of the payload (decompressed); same as md5 if uncompressed


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) → status, per process


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def check(path: Path, raw: bytes, content: bytes, known: Known | None, dataset: str) -> str:
    """Compare a file with its published digests → "ok" or "unverified"; raise on a mismatch.

    `raw` is the file as stored, `content` its decoded payload (the same object if uncompressed).
    """
    if known is None:
        return "unverified"
    key = _stat_key(path)
    if key in _VERIFIED:
        return _VERIFIED[key]
    status = "unverified"
    if known.md5 is not None and raw is not content and md5_bytes(raw) == known.md5:
        status = "ok"
    elif known.content_md5 is not None:
        _require(md5_bytes(content), known.content_md5, str(path), dataset)
        status = "ok"
    _VERIFIED[key] = status
    return status


def _require(got: str, want: str, what: str, dataset: str) -> None:
    if got != want:
        raise ChecksumError(
            f"{dataset}: {what} has MD5 {got} but the published file has {want}; it is corrupt "
            f"or not the official file - delete it and fetch it again, or skip the check with "
            f"verify=False (CLI: --no-verify)")


def _combine(statuses: list[str]) -> str:
    if not statuses:
        return "unverified"
    return "ok" if all(s == "ok" for s in statuses) else "unverified"


# ---------------------------------------------------------------------------------------------
# IDX


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_maybe_gz(path: Path) -> tuple[bytes, bytes]:
    """(file bytes, payload): gzip is recognised by its magic bytes, not the file name."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return raw, gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise UserError(f"{path}: broken gzip file ({e})") from None
    return raw, raw


def parse_idx(content: bytes, source: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes (magic 0x0000, type, ndim; big-endian uint32 dims; data) → array."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] not in _IDX_DTYPES:
        raise UserError(f"{source}: not an IDX file (bad magic number)")
    ndim = content[3]
    offset = 4 + 4 * ndim
    if ndim == 0 or len(content) < offset:
        raise UserError(f"{source}: not an IDX file (bad header)")
    dims = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[content[2]])
    count = int(np.prod(dims, dtype=np.int64))
    if len(content) != offset + count * dtype.itemsize:
        raise UserError(f"{source}: IDX header says {dims} but the file holds "
                        f"{len(content) - offset} data bytes (truncated or corrupt)")
    arr = np.frombuffer(content, dtype=dtype, count=count, offset=offset).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def idx_header(path: Path) -> tuple[int, ...]:
    """Dimensions from an IDX file's header, reading only its first bytes."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES:
            raise UserError(f"{path}: not an IDX file (bad magic number)")
        dims = f.read(4 * head[3])
    return tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))


def read_idx(path: Path, known: Known | None = None, dataset: str = "",
             verify: bool = True) -> tuple[np.ndarray, str]:
    """Read an IDX file (gzipped or not) → (array, checksum status)."""
    raw, content = _read_maybe_gz(path)
    status = check(path, raw, content, known, dataset) if verify else "not checked"
    return parse_idx(content, str(path)), status


def _images_nchw(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:
        return arr
    raise UserError(f"{source}: images must be N×H×W or N×C×H×W, got shape {arr.shape}")


# ---------------------------------------------------------------------------------------------
# restricted unpickling (CIFAR-10 python batches)


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _Refused(pickle.UnpicklingError):
    pass


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, bytes, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def safe_unpickle(data: bytes, source: str = "pickle") -> Any:
    """Unpickle `data` allowing only numpy array reconstruction; anything else is a UserError."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as e:
        raise UserError(f"{source}: refused to unpickle the global {e} (only numpy arrays, "
                        f"lists, dicts, numbers and bytes are allowed)") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad user file
        raise UserError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None


def _get(d: dict, key: str) -> Any:
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def parse_cifar_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 batch (dict with b'data' uint8 N×3072, b'labels') → (N×3×32×32 uint8, N)."""
    d = safe_unpickle(data, source)
    if not isinstance(d, dict):
        raise UserError(f"{source}: not a CIFAR-10 batch (expected a dict, got {type(d).__name__})")
    x, y = _get(d, "data"), _get(d, "labels")
    if (not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2
            or x.shape[1] != 3072):
        raise UserError(f"{source}: 'data' must be a uint8 N×3072 array")
    try:
        y = np.asarray(y, dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError(f"{source}: 'labels' must be a list of integers") from None
    if y.shape != (x.shape[0],):
        raise UserError(f"{source}: {x.shape[0]} images but labels of shape {y.shape}")
    return x.reshape(-1, 3, 32, 32), y


def parse_cifar_meta(data: bytes, source: str) -> list[str]:
    d = safe_unpickle(data, source)
    names = _get(d, "label_names") if isinstance(d, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise UserError(f"{source}: batches.meta must be a dict with a 'label_names' list")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


# ---------------------------------------------------------------------------------------------
# dataset layouts


@dataclass
class Located:
    """Where a dataset's files were found: `root` and the role → path map (or an archive)."""

    root: Path
    files: dict[str, Path]
    archive: Path | None = None

    def paths(self) -> list[Path]:
        return [self.archive] if self.archive is not None else list(self.files.values())

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths())


@dataclass
class Arrays:
    """A dataset at the numpy level: uint8 images N×C×H×W, int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    checksums: str = "not checked"


class Format:
    """One on-disk layout: find it in a folder, read it, report sizes cheaply."""

    kind = ""

    def locate(self, folder: Path) -> Located | None:
        raise NotImplementedError

    def read(self, loc: Located, spec: FileDataset | None, verify: bool) -> Arrays:
        raise NotImplementedError

    def sizes(self, loc: Located) -> tuple[int, int, tuple[int, ...]]:
        """(n_train, n_test, image shape C×H×W) without decoding everything where possible."""
        a = self.read(loc, None, verify=False)
        return len(a.y_train), len(a.y_test), tuple(a.x_train.shape[1:])


IDX_ROLES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


class IdxFormat(Format):
    """Four IDX files, each gzipped (`.gz`) or not; `train-images.idx3-ubyte` also accepted."""

    kind = "idx"

    def locate(self, folder: Path) -> Located | None:
        files = {}
        for role, base in IDX_ROLES.items():
            alt = base.replace("-idx", ".idx")
            for cand in (base + ".gz", base, alt + ".gz", alt):
                if (folder / cand).is_file():
                    files[role] = folder / cand
                    break
            else:
                return None
        return Located(folder, files)

    def read(self, loc: Located, spec: FileDataset | None, verify: bool) -> Arrays:
        arrays, statuses = {}, []
        for role, path in loc.files.items():
            known = spec.known.get(IDX_ROLES[role]) if spec is not None else None
            arrays[role], st = read_idx(path, known, spec.name if spec else "", verify)
            statuses.append(st)
        xs = [_images_nchw(arrays[f"{s}_images"], str(loc.files[f"{s}_images"]))
              for s in ("train", "test")]
        ys = [arrays[f"{s}_labels"] for s in ("train", "test")]
        for s, x, y in zip(("train", "test"), xs, ys):
            if y.ndim != 1 or len(y) != len(x):
                raise UserError(f"{loc.files[f'{s}_labels']}: {len(y)} labels for "
                                f"{len(x)} images")
            if x.dtype != np.uint8:
                raise UserError(f"{loc.files[f'{s}_images']}: images must be unsigned bytes")
        classes = list(spec.classes) if spec and spec.classes else []
        return Arrays(xs[0], ys[0].astype(np.int64), xs[1], ys[1].astype(np.int64), classes,
                      _combine(statuses) if verify else "not checked")

    def sizes(self, loc: Located) -> tuple[int, int, tuple[int, ...]]:
        tr, te = idx_header(loc.files["train_images"]), idx_header(loc.files["test_images"])
        shape = (1, *tr[1:]) if len(tr) == 3 else tuple(tr[1:])
        return tr[0], te[0], shape


CIFAR_DIR = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_ALL = [*CIFAR_TRAIN, "test_batch"]


class CifarFormat(Format):
    """CIFAR-10 python batches: a `cifar-10-batches-py/` folder (or the batches loose), or the
    `cifar-10-python.tar.gz` archive, read in place without extracting it."""

    kind = "cifar"

    def locate(self, folder: Path) -> Located | None:
        for d in (folder / CIFAR_DIR, folder):
            if all((d / b).is_file() for b in CIFAR_ALL):
                files = {b: d / b for b in CIFAR_ALL}
                if (d / "batches.meta").is_file():
                    files["batches.meta"] = d / "batches.meta"
                return Located(d, files)
        if (folder / CIFAR_ARCHIVE).is_file():
            return Located(folder, {}, archive=folder / CIFAR_ARCHIVE)
        return None

    def _members(self, loc: Located) -> dict[str, bytes]:
        if loc.archive is None:
            return {name: path.read_bytes() for name, path in loc.files.items()}
        out = {}
        try:
            with tarfile.open(loc.archive, "r:*") as tar:
                for m in tar.getmembers():
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in (*CIFAR_ALL, "batches.meta"):
                        f = tar.extractfile(m)
                        if f is not None:
                            out[base] = f.read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"{loc.archive}: unreadable archive ({e})") from None
        missing = [b for b in CIFAR_ALL if b not in out]
        if missing:
            raise UserError(f"{loc.archive}: archive lacks {', '.join(missing)}")
        return out

    def read(self, loc: Located, spec: FileDataset | None, verify: bool) -> Arrays:
        members = self._members(loc)
        statuses = []
        dataset = spec.name if spec is not None else ""
        for name, data in members.items():
            if not verify:
                continue
            known = spec.known.get(name) if spec is not None else None
            if loc.archive is None:
                statuses.append(check(loc.files[name], data, data, known, dataset))
            elif known is None or known.content_md5 is None:
                statuses.append("unverified")
            else:  # a member of the archive: compare its content (no per-file stat cache)
                _require(md5_bytes(data), known.content_md5, f"{name} in {loc.archive}", dataset)
                statuses.append("ok")
        src = str(loc.archive or loc.root)
        train = [parse_cifar_batch(members[b], f"{src}/{b}") for b in CIFAR_TRAIN]
        x_test, y_test = parse_cifar_batch(members["test_batch"], f"{src}/test_batch")
        if "batches.meta" in members:
            classes = parse_cifar_meta(members["batches.meta"], f"{src}/batches.meta")
        else:
            classes = list(spec.classes) if spec and spec.classes else []
        return Arrays(np.concatenate([t[0] for t in train]),
                      np.concatenate([t[1] for t in train]), x_test, y_test, classes,
                      _combine(statuses) if verify else "not checked")


SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def parse_svhn_mat(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits: X is H×W×C×N uint8, y is N×1 in 1..10 (10 = digit 0)."""
    from scipy.io import loadmat  # noqa: PLC0415 - scipy is slow to import

    try:
        m = loadmat(io.BytesIO(data), variable_names=("X", "y"))
    except NotImplementedError:
        raise UserError(f"{source}: MAT v7.3 (HDF5) files are not supported; save it as "
                        f"MAT v5 (savemat format='5')") from None
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{source}: not a readable .mat file ({e})") from None
    if "X" not in m or "y" not in m:
        raise UserError(f"{source}: .mat file must hold variables X and y")
    x, y = m["X"], np.asarray(m["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] not in (1, 3) or x.shape[3] != len(y):
        raise UserError(f"{source}: X must be H×W×C×N with N = len(y), got {x.shape} "
                        f"and {len(y)} labels")
    if x.dtype != np.uint8:
        raise UserError(f"{source}: X must be uint8, got {x.dtype}")
    if not np.all((y >= 1) & (y <= 10) & (y == np.round(y))):
        raise UserError(f"{source}: y must hold integers 1..10 (10 stands for digit 0)")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y.astype(np.int64) % 10


class SvhnFormat(Format):
    kind = "svhn"

    def locate(self, folder: Path) -> Located | None:
        files = {role: folder / f for role, f in SVHN_FILES.items()}
        return Located(folder, files) if all(p.is_file() for p in files.values()) else None

    def read(self, loc: Located, spec: FileDataset | None, verify: bool) -> Arrays:
        out, statuses = {}, []
        for role, path in loc.files.items():
            data = path.read_bytes()
            if verify:
                known = spec.known.get(path.name) if spec is not None else None
                statuses.append(check(path, data, data, known, spec.name if spec else ""))
            out[role] = parse_svhn_mat(data, str(path))
        classes = list(spec.classes) if spec and spec.classes else [str(k) for k in range(10)]
        return Arrays(*out["train"], *out["test"], classes,
                      _combine(statuses) if verify else "not checked")

    def sizes(self, loc: Located) -> tuple[int, int, tuple[int, ...]]:
        from scipy.io import whosmat  # noqa: PLC0415

        shapes = []
        for path in loc.files.values():
            try:
                shape = dict((n, s) for n, s, _ in whosmat(str(path)))["X"]
            except Exception:  # noqa: BLE001
                raise UserError(f"{path}: not a readable SVHN .mat file") from None
            shapes.append(shape)
        return shapes[0][3], shapes[1][3], (shapes[0][2], shapes[0][0], shapes[0][1])


FORMATS: dict[str, Format] = {"idx": IdxFormat(), "cifar": CifarFormat(), "svhn": SvhnFormat()}


# ---------------------------------------------------------------------------------------------
# registered file datasets


@dataclass(frozen=True)
class FileDataset:
    """A named dataset that lives in files: its layout, digests, sources and how to get it."""

    name: str
    format: str
    classes: tuple[str, ...]
    known: dict[str, Known]
    downloads: tuple[str, ...]  # file names fetched by `download`
    mirrors: tuple[str, ...]  # base URLs, tried in order
    hint: str  # how to get the files
    download_md5: dict[str, str] = field(default_factory=dict)  # digest of each download


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")

_IDX_FILES = tuple(f"{b}.gz" for b in IDX_ROLES.values())

FILE_DATASETS: dict[str, FileDataset] = {
    "fashion-mnist": FileDataset(
        "fashion-mnist", "idx", FASHION_CLASSES,
        known={  # md5 = published .gz; content_md5 = the decompressed IDX payload
            "train-images-idx3-ubyte": Known("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                             "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            "train-labels-idx1-ubyte": Known("25c81989df183df01b3e8a0aad5dffbe",
                                             "9018921c3c673c538a1fc5bad174d6f9"),
            "t10k-images-idx3-ubyte": Known("bef4ecab320f06d8554ea6380940ec79",
                                            "8181f5470baa50b63fa0f6fddb340f0a"),
            "t10k-labels-idx1-ubyte": Known("bb300cfdad3c16e7a12a480ee83cd310",
                                            "15d484375f8d13e6eb1aabb0c3f46965"),
        },
        downloads=_IDX_FILES,
        mirrors=("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/"
                 "fashion/", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
        hint="install it with `apt-get install dataset-fashion-mnist`, run `robustlab data "
             "--download fashion-mnist`, or put train-images-idx3-ubyte.gz, "
             "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
             "(gzipped or not) in one of those folders",
        download_md5={"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                      "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                      "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    ),
    "mnist": FileDataset(
        "mnist", "idx", tuple(str(k) for k in range(10)),
        known={  # only the .gz digests are published
            "train-images-idx3-ubyte": Known("f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "train-labels-idx1-ubyte": Known("d53e105ee54ea40749a09fcbcd1e9432"),
            "t10k-images-idx3-ubyte": Known("9fb629c4189551a2d022fa330f9573f3"),
            "t10k-labels-idx1-ubyte": Known("ec29112dd5afa0611ce80d1b7f02629c"),
        },
        downloads=_IDX_FILES,
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        hint="run `robustlab data --download mnist`, or put train-images-idx3-ubyte.gz, "
             "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
             "(gzipped or not) in one of those folders",
        download_md5={"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                      "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                      "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                      "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    ),
    "cifar10": FileDataset(
        "cifar10", "cifar", CIFAR10_CLASSES,
        known={name: Known(d, d) for name, d in {
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        }.items()},
        downloads=(CIFAR_ARCHIVE,),
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        hint="run `robustlab data --download cifar10`, or put cifar-10-python.tar.gz (or its "
             "extracted cifar-10-batches-py folder) in one of those folders",
        download_md5={CIFAR_ARCHIVE: "c58f30108f718f92721af3b95e74349a"},
    ),
    "svhn": FileDataset(
        "svhn", "svhn", tuple(str(k) for k in range(10)),
        known={"train_32x32.mat": Known("e26dedcc434d2e4c54c9b2d4a06d8373",
                                        "e26dedcc434d2e4c54c9b2d4a06d8373"),
               "test_32x32.mat": Known("eb5a983be6a315427106f1b164d9cef3",
                                       "eb5a983be6a315427106f1b164d9cef3")},
        downloads=tuple(SVHN_FILES.values()),
        mirrors=("http://ufldl.stanford.edu/housenumbers/",),
        hint="run `robustlab data --download svhn`, or put train_32x32.mat and test_32x32.mat "
             "(the cropped-digits format) in one of those folders",
        download_md5={"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
                      "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"},
    ),
}


# ---------------------------------------------------------------------------------------------
# search


def cache_dir(name: str) -> Path:
    return Path.home() / ".cache" / "robustlab" / name


def search_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for dataset `name`, in order (see the module docstring)."""
    dirs: list[Path] = []
    roots = [Path(data_dir).expanduser()] if data_dir else []
    env = os.environ.get(ENV_VAR, "")
    roots += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    for r in roots:
        dirs += [r / name, r]
    dirs += [cache_dir(name), SYSTEM_DIR / name]
    seen: set[Path] = set()
    return [d for d in dirs if not (d in seen or seen.add(d))]


def locate(name: str, data_dir: str | Path | None = None) -> Located | None:
    spec = FILE_DATASETS[name]
    fmt = FORMATS[spec.format]
    for d in search_dirs(name, data_dir):
        if d.is_dir():
            loc = fmt.locate(d)
            if loc is not None:
                return loc
    return None


def not_found(name: str, data_dir: str | Path | None = None) -> DatasetNotFound:
    where = ", ".join(str(d) for d in search_dirs(name, data_dir))
    return DatasetNotFound(f"dataset {name} not found (looked in {where}); "
                           f"{FILE_DATASETS[name].hint}")


def detect(folder: Path) -> tuple[str, Located] | None:
    """Which known layout a folder holds, if any."""
    for kind, fmt in FORMATS.items():
        loc = fmt.locate(folder)
        if loc is not None:
            return kind, loc
    return None


def read_dataset(name: str, data_dir: str | Path | None = None, *, verify: bool = True,
                 download: bool = False) -> tuple[Arrays, Located]:
    """Find and read a registered file dataset → (arrays, where)."""
    spec = FILE_DATASETS[name]
    loc = locate(name, data_dir)
    if loc is None and download:
        fetch(name, data_dir)
        loc = locate(name, data_dir)
    if loc is None:
        raise not_found(name, data_dir)
    return FORMATS[spec.format].read(loc, spec, verify), loc


# ---------------------------------------------------------------------------------------------
# download


def _download(url: str, target: Path, want: str | None, timeout: float) -> None:
    """Stream `url` into `target` atomically; nothing is put in place unless the MD5 matches."""
    from tqdm import tqdm  # noqa: PLC0415

    from robustlab.io import atomic_write  # noqa: PLC0415

    def write(tmp: str) -> None:
        h = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                      disable=None) as bar:
                while block := r.read(1 << 20):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
        if want is not None and h.hexdigest() != want:
            raise ValueError(f"MD5 {h.hexdigest()} is not the published {want}")

    atomic_write(target, write)


def fetch(name: str, data_dir: str | Path | None = None, *, timeout: float = 30.0) -> Path:
    """Download a dataset's published files into `data_dir/<name>` (default the cache folder),
    checking each against its published MD5 before it is put in place; → that folder."""
    spec = FILE_DATASETS.get(name)
    if spec is None:
        raise UserError(f"cannot download {name!r}; downloadable: {', '.join(FILE_DATASETS)}")
    dest = Path(data_dir).expanduser() / name if data_dir else cache_dir(name)
    for fname in spec.downloads:
        target = dest / fname
        want = spec.download_md5.get(fname)
        if target.is_file() and (want is None or md5_file(target) == want):
            continue
        errors = []
        for base in spec.mirrors:
            try:
                _download(base + fname, target, want, timeout)
                break
            except Exception as e:  # noqa: BLE001 - try the next mirror
                errors.append(f"{base + fname}: {e}")
        else:
            raise UserError(f"could not download {fname} for {name} ({'; '.join(errors)}); "
                            f"put the files in {dest} yourself: {spec.hint}")
    return dest


# ---------------------------------------------------------------------------------------------
# npz


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a user `.npz` (never unpickles object arrays)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"npz file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        raise UserError(f"{path}: unsupported npz content ({e}); object arrays are not "
                        f"allowed") from None
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: not a readable .npz file ({e})") from None


def images_from_array(x: np.ndarray, source: str) -> np.ndarray:
    """User images → float32 N×C×H×W in [0, 1]: N×H×W or N×H×W×C are accepted too; uint8 and
    other integer arrays (0..255) are divided by 255, float arrays must already be in [0, 1]."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise UserError(f"{source}: images must be N×C×H×W, N×H×W×C or N×H×W, got {x.shape}")
    if x.dtype == np.bool_:
        return np.ascontiguousarray(x, dtype=np.float32)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise UserError(f"{source}: integer images must be in 0..255")
        out = np.ascontiguousarray(x, dtype=np.float32)
        out /= 255.0
        return out
    if np.issubdtype(x.dtype, np.floating):
        out = np.ascontiguousarray(x, dtype=np.float32)
        if out.size and not (np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1):
            raise UserError(f"{source}: float images must be finite and in [0, 1] "
                            f"(or store uint8 0..255)")
        return out
    raise UserError(f"{source}: images have unsupported dtype {x.dtype}")


def labels_from_array(y: np.ndarray, n: int, source: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1 or len(y) != n:
        raise UserError(f"{source}: labels must be a vector of {n} entries, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                   and np.all(y == np.round(y)))):
        raise UserError(f"{source}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise UserError(f"{source}: labels must be 0..K-1, found {y.min()}")
    return y
