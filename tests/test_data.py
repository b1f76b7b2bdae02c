"""Datasets: every on-disk format read back exactly, file search order, checksums, safe unpickling,
npz files, splits, the digits fallback, downloads (from file:// URLs) and `robustlab data`."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab import data
from robustlab import data_files as files
from robustlab.errors import UserError

# ---------------------------------------------------------------------------------------------
# writers, independent of the readers under test


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    """IDX: 0x00 0x00, type 0x08 (ubyte), ndim, big-endian uint32 dims, then the bytes."""
    arr = np.asarray(arr, dtype=np.uint8)
    blob = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        blob = gzip.compress(blob, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


def make_idx(folder: Path, *, seed: int = 0, n_train: int = 6, n_test: int = 4, gz: bool = True,
             h: int = 5, w: int = 4) -> dict[str, np.ndarray]:
    """Tiny MNIST-layout folder (non-square images so an H/W swap would show)."""
    rng = np.random.default_rng(seed)
    arrs = {"train_images": rng.integers(0, 256, (n_train, h, w), dtype=np.uint8),
            "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
            "test_images": rng.integers(0, 256, (n_test, h, w), dtype=np.uint8),
            "test_labels": rng.integers(0, 10, n_test).astype(np.uint8)}
    for role, base in files.IDX_ROLES.items():
        write_idx(folder / base, arrs[role], gz)
    return arrs


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def cifar_arrays(seed: int = 0, n: int = 3):
    rng = np.random.default_rng(seed)
    batches = {b: (rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                   [int(v) for v in rng.integers(0, 10, n)]) for b in files.CIFAR_ALL}
    return batches


CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
               b"ship", b"truck"]


def write_cifar(folder: Path, batches, *, meta: bool = True, py2: bool = False) -> None:
    """The real layout: dicts with b'data' (uint8 N×3072) and b'labels', plus batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in batches.items():
        d = {b"batch_label": f"{name} of 6".encode(), b"labels": y, b"data": x,
             b"filenames": [f"img{i}.png".encode() for i in range(len(y))]}
        blob = py2_pickle(d) if py2 else pickle.dumps(d, protocol=4)
        (folder / name).write_bytes(blob)
    if meta:
        m = {b"num_cases_per_batch": 10000, b"label_names": CIFAR_NAMES, b"num_vis": 3072}
        (folder / "batches.meta").write_bytes(py2_pickle(m) if py2 else pickle.dumps(m, 4))


def py2_pickle(d: dict) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle with numpy 1.x wrote the real CIFAR batches:
    strings are BINSTRINGs, arrays are numpy.core.multiarray._reconstruct + BUILD(state)."""

    def s(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    out = bytearray(b"\x80\x02}(")
    for k, v in d.items():
        out += s(k)
        if isinstance(v, np.ndarray):
            out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R("
            out += b"K\x01" + i(v.shape[0]) + i(v.shape[1]) + b"\x86"
            out += (b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNN"
                    b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
            out += b"\x89" + s(v.tobytes()) + b"tb"
        elif isinstance(v, list):
            out += b"]("
            for e in v:
                out += i(e) if isinstance(e, int) else s(e)
            out += b"e"
        elif isinstance(v, int):
            out += i(v)
        else:
            out += s(v)
    out += b"u."
    return bytes(out)


def expected_cifar(batches):
    xs = np.concatenate([batches[b][0] for b in files.CIFAR_TRAIN])
    ys = sum((batches[b][1] for b in files.CIFAR_TRAIN), [])
    return xs, ys


@pytest.fixture
def iso(monkeypatch, tmp_path):
    """No real data anywhere: HOME, $ROBUSTLAB_DATA and /usr/share/datasets point into tmp."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(files.ENV_VAR, raising=False)
    monkeypatch.setattr(files, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(files, "_VERIFIED", {})
    return tmp_path


def with_known(monkeypatch, name: str, **changes) -> files.FileDataset:
    spec = dataclasses.replace(files.FILE_DATASETS[name], **changes)
    monkeypatch.setitem(files.FILE_DATASETS, name, spec)
    return spec


# ---------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_exact(iso, gz):
    arrs = make_idx(iso / "d" / "mnist", gz=gz)
    train, test = data.load("mnist", data_dir=iso / "d", verify=False)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.x.shape == (6, 1, 5, 4) and test.x.shape == (4, 1, 5, 4)
    ref = torch.from_numpy(arrs["train_images"].astype(np.float32) / np.float32(255))
    assert torch.equal(train.x[:, 0], ref)
    assert torch.equal(test.x[:, 0] * 255, torch.from_numpy(arrs["test_images"]).float())
    assert train.y.tolist() == arrs["train_labels"].tolist()
    assert test.y.tolist() == arrs["test_labels"].tolist()
    assert train.num_classes == 10 and train.classes == [str(k) for k in range(10)]
    assert train.source == str(iso / "d" / "mnist")


def test_idx_mixed_gz_raw_and_dotted_names(iso):
    arrs = make_idx(iso / "mnist", gz=True)
    # replace one file by a raw file with the `train-images.idx3-ubyte` spelling
    (iso / "mnist" / "train-images-idx3-ubyte.gz").unlink()
    write_idx(iso / "mnist" / "train-images.idx3-ubyte", arrs["train_images"], gz=False)
    train, _ = data.load("mnist", data_dir=iso, verify=False)
    assert torch.equal(train.x[:, 0] * 255, torch.from_numpy(arrs["train_images"]).float())


def test_parse_idx_dtypes_and_corruption():
    vals = np.array([[-2, 300], [7, -32768]], dtype=">i2")
    blob = bytes([0, 0, 0x0B, 2]) + struct.pack(">2I", 2, 2) + vals.tobytes()
    assert files.parse_idx(blob).tolist() == [[-2, 300], [7, -32768]]
    with pytest.raises(UserError, match="truncated"):
        files.parse_idx(blob[:-1])
    with pytest.raises(UserError, match="magic"):
        files.parse_idx(b"\x01\x00\x08\x01" + blob[4:])


def test_idx_label_count_mismatch(iso):
    make_idx(iso / "mnist")
    write_idx(iso / "mnist" / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8), gz=True)
    with pytest.raises(UserError, match="3 labels for 4 images"):
        data.load("mnist", data_dir=iso, verify=False)


# ---------------------------------------------------------------------------------------------
# search order and missing data


def test_search_order(iso, monkeypatch):
    dd, env = iso / "cli", iso / "env"
    cache, system = iso / "home" / ".cache" / "robustlab" / "mnist", iso / "system" / "mnist"
    sizes = {dd / "mnist": 1, env: 2, cache: 3, system: 4}  # env holds the files loose
    for folder, n in sizes.items():
        make_idx(folder, n_train=n)
    monkeypatch.setenv(files.ENV_VAR, str(env))
    assert files.search_dirs("mnist", dd) == [dd / "mnist", dd, env / "mnist", env, cache,
                                              system]
    order = [(dd, 1), (None, 2)]
    for data_dir, n in order:
        assert len(data.load("mnist", data_dir=data_dir, verify=False)[0]) == n
    monkeypatch.delenv(files.ENV_VAR)
    assert len(data.load("mnist", verify=False)[0]) == 3
    for p in cache.iterdir():
        p.unlink()
    train, _ = data.load("mnist", verify=False)
    assert len(train) == 4 and train.source == str(system)


def test_missing_dataset_is_one_line_user_error(iso):
    (iso / "mine").mkdir()  # an existing --data-dir without the files (a missing one: see below)
    with pytest.raises(data.DatasetNotFound) as e:
        data.load("fashion-mnist", data_dir=iso / "mine")
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg
    for d in (iso / "mine" / "fashion-mnist", iso / "mine",
              iso / "home" / ".cache" / "robustlab" / "fashion-mnist",
              iso / "system" / "fashion-mnist"):
        assert str(d) in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_unknown_name():
    with pytest.raises(UserError, match="unknown dataset 'nope'.*fashion-mnist"):
        data.load("nope")


# ---------------------------------------------------------------------------------------------
# checksums


def idx_known(folder: Path) -> dict[str, files.Known]:
    """Content digests of a tiny IDX folder, as a published table would list them."""
    out = {}
    for base in files.IDX_ROLES.values():
        raw = (folder / f"{base}.gz").read_bytes()
        out[base] = files.Known(md5(raw), md5(gzip.decompress(raw)))
    return out


def test_content_checksum_accepts_recompressed_and_raw(iso, monkeypatch):
    make_idx(iso / "fashion-mnist")
    known = idx_known(iso / "fashion-mnist")
    with_known(monkeypatch, "fashion-mnist", known={k: files.Known("0" * 32, v.content_md5)
                                                    for k, v in known.items()})
    # the .gz bytes differ from the "published" ones, the content matches → ok
    assert data.info("fashion-mnist", iso)["checksums"] == "ok"
    train, _ = data.load("fashion-mnist", iso)
    assert train.classes[0] == "T-shirt/top" and train.num_classes == 10
    # corrupt one pixel of the test images (a valid gzip of different content) → mismatch
    p = iso / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    blob = bytearray(gzip.decompress(p.read_bytes()))
    blob[-1] ^= 1
    p.write_bytes(gzip.compress(bytes(blob)))
    with pytest.raises(data.ChecksumError, match="t10k-images-idx3-ubyte.gz has MD5") as e:
        data.load("fashion-mnist", iso)
    assert "\n" not in str(e.value) and isinstance(e.value, UserError)
    assert len(data.load("fashion-mnist", iso, verify=False)[1]) == 4
    info = data.info("fashion-mnist", iso)
    assert info["status"] == "error" and "MD5" in info["error"]


def test_gz_only_digest_ok_when_identical_else_unverified(iso, monkeypatch):
    make_idx(iso / "mnist")
    known = idx_known(iso / "mnist")
    with_known(monkeypatch, "mnist", known={k: files.Known(v.md5) for k, v in known.items()})
    assert data.info("mnist", iso)["checksums"] == "ok"
    # recompress one file differently: same content, other bytes, and no content digest known
    p = iso / "mnist" / "train-labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes()), mtime=12345))
    assert data.info("mnist", iso)["checksums"] == "unverified"
    assert len(data.load("mnist", iso)[0]) == 6  # loads, only not verified


def test_real_fashion_mnist_passes_published_checksums(monkeypatch):
    real = Path("/usr/share/datasets/fashion-mnist")
    if not (real / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST (dataset-fashion-mnist) not installed")
    monkeypatch.setattr(files, "_VERIFIED", {})
    spec = files.FILE_DATASETS["fashion-mnist"]
    for base in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        arr, status = files.read_idx(real / f"{base}.gz", spec.known[base], "fashion-mnist")
        assert status == "ok"
    assert arr.shape == (10000, 28, 28)
    train, test = data.load("fashion-mnist", data_dir=real.parent)
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.y.bincount().tolist() == [6000] * 10
    assert test.y.bincount().tolist() == [1000] * 10
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert data.info("fashion-mnist", real.parent)["checksums"] == "ok"


# ---------------------------------------------------------------------------------------------
# CIFAR-10 and safe unpickling


@pytest.mark.parametrize("layout", ["folder", "loose", "archive", "py2"])
def test_cifar_round_trip_exact(iso, layout):
    batches = cifar_arrays()
    root = iso / "d" / "cifar10"
    if layout == "folder":
        write_cifar(root / "cifar-10-batches-py", batches)
    elif layout == "loose":
        write_cifar(root, batches)
    elif layout == "py2":
        write_cifar(root / "cifar-10-batches-py", batches, py2=True)
    else:
        write_cifar(iso / "stage" / "cifar-10-batches-py", batches)
        root.mkdir(parents=True)
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(iso / "stage" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    train, test = data.load("cifar10", iso / "d", verify=False)
    xs, ys = expected_cifar(batches)
    assert train.x.shape == (15, 3, 32, 32) and test.x.shape == (3, 3, 32, 32)
    # row layout: 1024 red, then green, then blue values, each 32×32 row-major
    n, c, h, w = 4, 2, 5, 7
    assert train.x[n, c, h, w] == torch.tensor(float(xs[n, c * 1024 + h * 32 + w])) / 255
    assert torch.equal(train.x.reshape(15, -1) * 255, torch.from_numpy(xs).float())
    assert train.y.tolist() == ys and test.y.tolist() == batches["test_batch"][1]
    assert train.classes == [c.decode() for c in CIFAR_NAMES] and train.num_classes == 10


def test_cifar_checksums(iso, monkeypatch):
    batches = cifar_arrays()
    folder = iso / "cifar10" / "cifar-10-batches-py"
    write_cifar(folder, batches)
    digests = {p.name: md5(p.read_bytes()) for p in folder.iterdir()}
    with_known(monkeypatch, "cifar10", known={k: files.Known(v, v) for k, v in digests.items()})
    assert data.info("cifar10", iso)["checksums"] == "ok"
    (folder / "data_batch_3").write_bytes(pickle.dumps(
        {b"data": batches["data_batch_1"][0], b"labels": batches["data_batch_3"][1]}, 4))
    with pytest.raises(data.ChecksumError, match="data_batch_3 has MD5"):
        data.load("cifar10", iso)
    # the archive's members are checked the same way
    arch = iso / "a" / "cifar10"
    arch.mkdir(parents=True)
    with tarfile.open(arch / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    with pytest.raises(data.ChecksumError, match="data_batch_3 in .*tar.gz has MD5"):
        data.load("cifar10", iso / "a")
    digests["data_batch_3"] = md5((folder / "data_batch_3").read_bytes())
    with_known(monkeypatch, "cifar10", known={k: files.Known(v, v) for k, v in digests.items()})
    assert data.info("cifar10", iso / "a")["checksums"] == "ok"


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_cifar_pickle_is_refused(iso):
    marker = iso / "pwned"
    batches = cifar_arrays()
    write_cifar(iso / "cifar10", batches)
    evil = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=4)
    (iso / "cifar10" / "data_batch_2").write_bytes(evil)
    with pytest.raises(UserError, match=r"refused to unpickle the global (posix|os|nt)\.system"):
        data.load("cifar10", iso, verify=False)
    assert not marker.exists()


@pytest.mark.parametrize("glob", [b"builtins\neval\n", b"subprocess\ncheck_output\n",
                                  b"numpy\nload\n", b"numpy.core.multiarray\nscalar\n",
                                  b"_codecs\nencode\n"])
def test_unpickler_allows_only_numpy_reconstruction(glob):
    blob = b"\x80\x02c" + glob + b"U\x041+1;\x85R."
    with pytest.raises(UserError, match="refused to unpickle the global"):
        files.safe_unpickle(blob, "x")


def test_cifar_batch_shape_validation():
    bad = pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, 4)
    with pytest.raises(UserError, match="uint8 N×3072"):
        files.parse_cifar_batch(bad, "b")
    bad = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, 4)
    with pytest.raises(UserError, match="2 images but labels"):
        files.parse_cifar_batch(bad, "b")
    with pytest.raises(UserError, match="not a readable pickle"):
        files.safe_unpickle(b"\x80\x02garbage", "b")


# ---------------------------------------------------------------------------------------------
# SVHN


def write_svhn(folder: Path, seed: int = 0, n=(3, 2)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for role, k in zip(("train", "test"), n):
        X = rng.integers(0, 256, (32, 32, 3, k), dtype=np.uint8)
        y = np.array([[10], [1], [7]][:k], dtype=np.uint8) if role == "train" else \
            rng.integers(1, 11, (k, 1)).astype(np.uint8)
        savemat(folder / f"{role}_32x32.mat", {"X": X, "y": y})
        out[role] = (X, y)
    return out


def test_svhn_round_trip_exact(iso):
    arrs = write_svhn(iso / "svhn")
    train, test = data.load("svhn", iso, verify=False)
    X, y = arrs["train"]
    assert train.x.shape == (3, 3, 32, 32) and test.x.shape == (2, 3, 32, 32)
    assert train.y.tolist() == [0, 1, 7]  # label 10 means digit 0
    assert test.y.tolist() == (arrs["test"][1].reshape(-1) % 10).tolist()
    n, c, h, w = 2, 1, 3, 30
    assert train.x[n, c, h, w] == torch.tensor(float(X[h, w, c, n])) / 255
    ref = torch.from_numpy(X.transpose(3, 2, 0, 1).astype(np.float32))
    assert torch.equal(train.x * 255, ref)
    info = data.info("svhn", iso, verify=False)
    assert (info["train"], info["test"], info["shape"]) == (3, 2, [3, 32, 32])


def test_svhn_bad_labels(iso):
    from scipy.io import savemat

    write_svhn(iso / "svhn")
    savemat(iso / "svhn" / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8),
                                              "y": np.array([[0], [3]], np.uint8)})
    with pytest.raises(UserError, match="1..10"):
        data.load("svhn", iso, verify=False)


# ---------------------------------------------------------------------------------------------
# npz, folders, splits


def test_npz_with_test_split_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)  # N×H×W×C
    xt = rng.random((2, 3, 6, 7)).astype(np.float64)  # N×C×H×W floats in [0, 1]
    np.savez(tmp_path / "mine.npz", x=x, y=np.array([0, 1, 2, 1, 0]), x_test=xt,
             y_test=np.array([2, 2]), classes=np.array(["a", "b", "c"]))
    train, test = data.load(str(tmp_path / "mine.npz"))
    assert train.name == "mine" and train.x.shape == (5, 3, 6, 7) and test.x.shape == (2, 3, 6, 7)
    assert torch.equal(train.x * 255, torch.from_numpy(x.transpose(0, 3, 1, 2)).float())
    assert torch.equal(test.x, torch.from_numpy(xt.astype(np.float32)))
    assert train.classes == ["a", "b", "c"] and train.num_classes == 3
    assert test.y.tolist() == [2, 2]


def test_npz_without_test_split_is_deterministic(tmp_path):
    x = np.arange(40 * 16, dtype=np.uint8).reshape(40, 4, 4)
    y = np.arange(40) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    tr1, te1 = data.load(str(tmp_path / "d.npz"))
    tr2, te2 = data.load(str(tmp_path / "d.npz"))
    assert (len(tr1), len(te1)) == (32, 8)
    assert torch.equal(tr1.x, tr2.x) and torch.equal(te1.y, te2.y)
    firsts = torch.cat([tr1.x[:, 0, 0, 0], te1.x[:, 0, 0, 0]]) * 255
    assert sorted(firsts.round().long().tolist()) == sorted((16 * i) % 256 for i in range(40))


@pytest.mark.parametrize("arrays, msg", [
    ({"x": np.zeros((2, 4, 4), np.float32)}, "needs arrays 'x' and 'y'"),
    ({"x": np.full((2, 4, 4), 2.0), "y": np.zeros(2, int)}, r"in \[0, 1\]"),
    ({"x": np.zeros((2, 4, 4)), "y": np.zeros(3, int)}, "vector of 2"),
    ({"x": np.zeros((2, 4, 4)), "y": np.array([0, -1])}, "0..K-1"),
    ({"x": np.zeros((2, 4, 4)), "y": np.zeros(2, int), "x_test": np.zeros((1, 4, 4))},
     "both 'x_test' and 'y_test'"),
    ({"x": np.array([None, None], dtype=object), "y": np.zeros(2, int)}, "object arrays"),
])
def test_npz_errors(tmp_path, arrays, msg):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=msg):
        data.load(str(tmp_path / "bad.npz"))


def test_missing_npz(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load(str(tmp_path / "none.npz"))


def test_folder_paths(iso):
    arrs = make_idx(iso / "whatever", gz=False)
    train, test = data.load(str(iso / "whatever"))
    assert train.name == "whatever" and train.y.tolist() == arrs["train_labels"].tolist()
    make_idx(iso / "fashion-mnist")
    train, _ = data.load(str(iso / "fashion-mnist"), verify=False)
    assert train.name == "fashion-mnist" and train.classes[-1] == "Ankle boot"
    (iso / "empty").mkdir()
    with pytest.raises(UserError, match="no dataset files found"):
        data.load(str(iso / "empty"))


def test_load_splits_deterministic_disjoint(tmp_path):
    x = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1).repeat(2, axis=2)
    np.savez(tmp_path / "s.npz", x=x, y=np.arange(50) % 5, x_test=x[:3], y_test=np.zeros(3, int))
    tr, va, te = data.load_splits(str(tmp_path / "s.npz"), val_fraction=0.2, seed=3)
    tr2, va2, _ = data.load_splits(str(tmp_path / "s.npz"), val_fraction=0.2, seed=3)
    _, va3, _ = data.load_splits(str(tmp_path / "s.npz"), val_fraction=0.2, seed=4)
    assert (len(tr), len(va), len(te)) == (40, 10, 3)
    assert torch.equal(va.x, va2.x) and torch.equal(tr.y, tr2.y) and not torch.equal(va.x, va3.x)
    ids = lambda d: set((d.x[:, 0, 0, 0] * 255).round().long().tolist())  # noqa: E731
    assert ids(tr).isdisjoint(ids(va)) and ids(tr) | ids(va) == set(range(50))


def test_digits_registered():
    train, test = data.load("digits")
    assert (len(train), len(test)) == (1438, 359) and train.shape == (1, 8, 8)
    up, _ = data.load("digits", size=28)
    assert up.shape == (1, 28, 28) and 0 <= float(up.x.min()) and float(up.x.max()) <= 1


# ---------------------------------------------------------------------------------------------
# fallback and download


def test_load_default_falls_back_to_digits(iso, caplog):
    with caplog.at_level("WARNING", logger="robustlab.data"):
        train, test = data.load_default()
    assert train.name == "digits" and train.shape == (1, 28, 28) and len(test) == 359
    assert "fashion-mnist not found" in caplog.text and "digits" in caplog.text
    assert "fallback" in train.source
    make_idx(iso / "system" / "fashion-mnist", h=28, w=28)
    train, _ = data.load_default(verify=False)
    assert train.name == "fashion-mnist" and len(train) == 6


def test_load_default_does_not_hide_checksum_errors(iso):
    make_idx(iso / "system" / "fashion-mnist")
    with pytest.raises(data.ChecksumError):
        data.load_default()


def serve(tmp: Path, arrs_seed: int = 1) -> tuple[Path, dict[str, str]]:
    """A folder standing in for a mirror, and the published digests of its files."""
    src = tmp / "mirror"
    make_idx(src, seed=arrs_seed)
    return src, {p.name: md5(p.read_bytes()) for p in src.iterdir()}


def test_download_from_mirror_with_fallback(iso, monkeypatch, capsys):
    from robustlab.cli import main

    src, digests = serve(iso)
    with_known(monkeypatch, "mnist", download_md5=digests,
               mirrors=((iso / "nowhere").as_uri() + "/", src.as_uri() + "/"))
    assert main(["data", "mnist", "--download", "--no-verify"]) == 0
    cache = iso / "home" / ".cache" / "robustlab" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(digests)
    assert str(cache) in capsys.readouterr().out
    train, _ = data.load("mnist", verify=False)
    assert len(train) == 6 and train.source == str(cache)


def test_download_bad_checksum_leaves_nothing(iso, monkeypatch):
    src, digests = serve(iso)
    digests["t10k-images-idx3-ubyte.gz"] = "0" * 32
    with_known(monkeypatch, "mnist", download_md5=digests, mirrors=(src.as_uri() + "/",))
    with pytest.raises(UserError, match="could not download t10k-images-idx3-ubyte.gz.*MD5") as e:
        data.load("mnist", iso / "dl", download=True)
    assert str(iso / "dl" / "mnist") in str(e.value)
    left = sorted(p.name for p in (iso / "dl" / "mnist").iterdir())
    assert left == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]  # no temp files


# ---------------------------------------------------------------------------------------------
# the `robustlab data` command


def test_cli_lists_datasets(iso, capsys):
    from robustlab.cli import main

    make_idx(iso / "system" / "mnist")
    assert main(["data", "--no-verify"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["dataset", "status", "train"]
    row = {ln.split()[0]: ln for ln in lines[1:]}
    assert set(data.names()) <= set(row)
    assert row["mnist"].split()[1:4] == ["found", "6", "4"]
    assert str(iso / "system" / "mnist") in row["mnist"] and "1×5×4" in row["mnist"]
    assert "missing" in row["fashion-mnist"] and "apt-get install dataset-fashion-mnist" in out
    assert "1438" in row["digits"]


def test_cli_json_and_exit_status(iso, capsys, tmp_path):
    from robustlab.cli import main

    x = np.zeros((10, 2, 2), np.uint8)
    np.savez(tmp_path / "u.npz", x=x, y=np.arange(10) % 2)
    assert main(["data", str(tmp_path / "u.npz"), "--json"]) == 0
    (info,) = json.loads(capsys.readouterr().out)
    assert (info["status"], info["train"], info["test"], info["shape"]) == ("found", 8, 2,
                                                                            [1, 2, 2])
    assert main(["data", "svhn"]) == 1  # named and missing
    assert "svhn: looked in" in capsys.readouterr().out
    make_idx(iso / "system" / "fashion-mnist")  # not the published files
    assert main(["data", "fashion-mnist"]) == 1
    assert "published file has" in capsys.readouterr().out
    assert main(["data", "--download"]) == 2
    assert "needs the NAMEs" in capsys.readouterr().err
    assert main(["data", "nosuch"]) == 2  # an unknown name is bad input: one line, status 2
    err = capsys.readouterr().err
    assert "unknown dataset 'nosuch'" in err and len(err.strip().splitlines()) == 1


# ---- issue 11: degenerate data is one UserError line, before anything is sized by it -----------

def _npz(tmp_path, name="d.npz", **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def test_split_must_leave_both_parts_non_empty():
    train, _ = data.synthetic(8, 4, seed=0)
    with pytest.raises(UserError, match="0.9999"):
        data.split(train, 0.9999)
    with pytest.raises(UserError, match="0.5"):
        data.split(train.subset(slice(0, 1)), 0.5)
    rest, part = data.split(train, 0.25)
    assert (len(rest), len(part)) == (6, 2)
    assert data.split(train, 0.0)[1].x.shape[0] == 0  # no hold-out asked: allowed


@pytest.mark.parametrize("arrays,msg", [
    ({"x": np.zeros((0, 1, 8, 8), np.uint8), "y": np.zeros(0, np.int64)}, "example"),
    ({"x": np.zeros((1, 1, 8, 8), np.uint8), "y": np.array([0])}, "1 example"),
    ({"x": np.zeros((4, 1, 0, 0), np.uint8), "y": np.arange(4) % 2}, "1×0×0"),
    ({"x": np.zeros((4, 1, 8, 8), np.uint8), "y": np.arange(4) % 2, "num_classes": np.array(0)},
     "0 classes"),
    ({"x": np.zeros((4, 1, 8, 8), np.uint8), "y": np.arange(4) % 2,
      "num_classes": np.array([2, 3])}, "num_classes must be one integer"),
    ({"x": np.zeros((5, 1, 8, 8), np.uint8), "y": np.array([0, 1, 2, 3, 10**9])}, "1000000000"),
    ({"x": np.zeros((4, 1, 8, 8), np.uint8), "y": np.arange(4) % 2,
      "x_test": np.zeros((0, 1, 8, 8), np.uint8), "y_test": np.zeros(0, np.int64)}, "0 test"),
])
def test_degenerate_npz_is_refused(tmp_path, arrays, msg):
    with pytest.raises(UserError, match=msg) as e:
        data.load(str(_npz(tmp_path, **arrays)))
    assert "\n" not in str(e.value)


def test_huge_label_is_refused_quickly(tmp_path):
    """Labels up to 1e9 used to build a 1e9-entry class list (107 s, then MemoryError)."""
    import tracemalloc

    p = _npz(tmp_path, x=np.zeros((5, 1, 8, 8), np.uint8), y=np.array([0, 1, 2, 3, 10**9]))
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="at most 100000"):
            data.load(str(p))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # refused before anything is sized by the class count


def test_explicit_num_classes_zero_is_not_ignored(tmp_path):
    p = _npz(tmp_path, x=np.zeros((6, 1, 8, 8), np.uint8), y=np.arange(6) % 2,
             num_classes=np.array(0))
    with pytest.raises(UserError, match="0 classes"):
        data.load(str(p))
    p = _npz(tmp_path, "k5.npz", x=np.zeros((6, 1, 8, 8), np.uint8), y=np.arange(6) % 2,
             num_classes=np.array(5))
    train, test = data.load(str(p))
    assert train.num_classes == test.num_classes == 5


def test_data_dir_must_exist(tmp_path):
    for bad in (tmp_path / "nope", tmp_path / "file.txt"):
        if bad.name == "file.txt":
            bad.write_text("x")
        with pytest.raises(UserError, match=str(bad.name)):
            data.load("mnist", data_dir=bad)
        with pytest.raises(UserError, match=str(bad.name)):
            data.load_default(data_dir=bad)


def test_cli_data_unusable_npz_is_exit_2(tmp_path, capsys):
    from robustlab.cli import main

    p = _npz(tmp_path, x=np.zeros((0, 1, 8, 8), np.uint8), y=np.zeros(0, np.int64))
    assert main(["data", str(p)]) == 2
    out, err = capsys.readouterr()
    assert "found" not in out and len(err.strip().splitlines()) == 1 and "d.npz" in err
