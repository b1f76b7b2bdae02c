"""Atomic file writes, JSON results, output-path checks and environment stamps.

Every file robustlab writes goes through `atomic_write`: a temporary file `.NAME.hHOST.pPID.XXXX.tmp`
beside the target, fsync'ed, renamed into place, and the folder fsync'ed, so a crash at any moment
leaves the old file or the new one, never a mix. A temporary file left by a killed process is
removed by `clean_temp_files` the next time a command opens that folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import re
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from robustlab.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_TMP_RE = re.compile(r"^\..+\.h(?P<host>[A-Za-z0-9-]+)\.p(?P<pid>\d+)\.[^.]*\.tmp$")


def hostname() -> str:
    """This machine's name as it appears in temp-file and lock-file names."""
    return _HOST


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def _fsync_path(path: str | Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, fsync it, rename it into place
    and fsync the folder. The temporary name carries host and pid (see `clean_temp_files`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.h{_HOST}.p{os.getpid()}.",
                               suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_path(path.parent, directory=True)
    return path


def clean_temp_files(folder: str | Path, *, owner_alive: Callable[[], bool] | None = None
                     ) -> list[Path]:
    """Remove temporary files (`.*.tmp`) left in `folder` by killed writes; returns them.

    A file named by `atomic_write` is removed when its process (on this host) is gone. An older
    or foreign-host name is removed only when `owner_alive()` says no writer holds the folder
    (callers pass a check of the run's locks)."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.glob(".*.tmp"))
    except OSError:
        return removed
    for p in entries:
        m = _TMP_RE.match(p.name)
        if m and m["host"] == _HOST:
            stale = not pid_alive(int(m["pid"]))
        else:
            stale = owner_alive is not None and not owner_alive()
        if stale and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


DirToken = tuple[int, int]  # (inode, creation time in ns) of a folder `create_dir` made


def create_dir(path: str | Path) -> DirToken | None:
    """Create the folder `path` (and its parents). Returns a token (its inode and creation time)
    when this call created the folder itself (an exclusive mkdir), None when it existed already:
    `remove_created` then never removes a folder this invocation did not make."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir():
            raise
        return None
    st = os.lstat(path)
    return st.st_ino, st.st_mtime_ns


def remove_created(path: str | Path, token: DirToken | None) -> None:
    """Remove the folder `create_dir` made (its `token`) with what this invocation wrote into it:
    nothing when the token is None or `path` is no longer that same folder; inside it, only
    entries modified since the folder was created (a file moved in from elsewhere keeps its
    older time and stays, and so do the folders holding it). Links are removed, never followed,
    so nothing outside `path` is touched."""
    if token is None:
        return
    inode, created_ns = token
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not (stat.S_ISDIR(st.st_mode) and st.st_ino == inode):
        return
    for folder, dirs, files in os.walk(path, topdown=False, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            entry = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if os.lstat(entry).st_mtime_ns >= created_ns:
                    os.unlink(entry)
        with contextlib.suppress(OSError):  # fails (and keeps the folder) while it holds anything
            if folder == os.fspath(path) or os.lstat(folder).st_mtime_ns >= created_ns:
                os.rmdir(folder)


def atomic_write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(obj, indent=indent, default=_jsonable, allow_nan=True)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_result(path: str | Path) -> dict[str, Any]:
    """A result file, checked: a JSON object whose `kind` (when present) is a string.
    Anything else is a one-line `UserError` naming the file."""
    path = Path(path)
    try:
        d = read_json(path)
    except FileNotFoundError:
        raise UserError(f"result file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"result file {path} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"result file {path} must hold a JSON object, not {type(d).__name__}")
    if "kind" in d and not isinstance(d["kind"], str):
        raise UserError(f"result file {path}: 'kind' must be a string, not {d['kind']!r}")
    return d


def versions() -> dict[str, str]:
    """Versions of the pieces that determine numbers."""
    import numpy

    import robustlab

    return {"robustlab": robustlab.__version__, "torch": torch.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


_DEFERRED: list[tuple[Path, dict[str, Any]]] | None = None


@contextlib.contextmanager
def results_last() -> Iterator[None]:
    """Hold back every `write_result` inside the block and write the JSON files when the block
    ends without an error: after the figures and other files the block wrote. The JSON marks a
    result complete, so a crash or kill part-way leaves the previous result, never a new JSON
    beside old figures. The CLI wraps every evaluation command in it."""
    global _DEFERRED
    previous, _DEFERRED = _DEFERRED, []
    try:
        yield
    except BaseException:
        _DEFERRED = previous
        raise
    pending, _DEFERRED = _DEFERRED, previous
    for path, result in pending:
        atomic_write_json(path, result)


def write_result(run_dir: str | Path, name: str, result: dict[str, Any]) -> Path:
    """Write `run_dir/results/<name>.json`, stamped with versions; returns the path.
    Inside `results_last()` the file is written when that block ends (after the figures)."""
    result = {"kind": name, **result, "versions": versions()}
    path = Path(run_dir) / "results" / f"{name}.json"
    if _DEFERRED is not None:
        _DEFERRED.append((path, json.loads(dumps(result))))  # a snapshot of the values now
        return path
    return atomic_write_json(path, result)


# ---- output paths: checked up front, before long work --------------------------------------

def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable(folder: Path) -> bool:
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:  # os.access ignores read-only mounts for root; statvfs does not
        return not (os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return True


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Refuse (one-line `UserError`) a folder that cannot be created or written: an existing
    file, a path under a file, a read-only parent or folder."""
    text = str(path)
    if not text.strip():
        raise UserError(f"{what} is empty; give a folder path")
    p = Path(text).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} is an existing file, not a folder")
    base = _first_existing(p.absolute())
    if not base.is_dir():
        raise UserError(f"{what} {p} cannot be created: {base} is a file, not a folder")
    if not _writable(base):
        where = "" if base == p.absolute() else f" (in {base})"
        raise UserError(f"{what} {p} is not writable{where}: permission denied or read-only")
    return p


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Refuse (one-line `UserError`) a file path that cannot be written: an existing folder, a
    path under a file, a read-only folder."""
    text = str(path)
    if not text.strip():
        raise UserError(f"{what} is empty; give a file path")
    p = Path(text).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {p} is an existing folder; give a file path")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{what} {p} is not writable: permission denied")
    base = _first_existing(p.absolute().parent)
    if not base.is_dir():
        raise UserError(f"{what} {p} cannot be written: {base} is a file, not a folder")
    if not _writable(base):
        raise UserError(f"{what} {p} is not writable (in {base}): permission denied or read-only")
    return p


def os_error_message(e: OSError) -> str:
    """One line for an OS error on a path: what went wrong, and where."""
    name = e.filename if e.filename is not None else ""
    reasons = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EISDIR: "is a folder, not a file", errno.ENOTDIR: "a part of the path is a "
               "file, not a folder", errno.EEXIST: "already exists", errno.ENOENT: "does not exist",
               errno.EDQUOT: "disk quota exceeded"}
    reason = reasons.get(e.errno or -1) or (e.strerror or str(e)).strip().splitlines()[0]
    if name:
        other = f" → {e.filename2}" if getattr(e, "filename2", None) else ""
        return f"cannot use {name}{other}: {reason}"
    return reason
