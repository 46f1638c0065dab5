"""Atomic, self-describing file output shared by every stage.

Every artifact is written to a temporary name in the destination folder and renamed with
``os.replace`` so a killed run never leaves a partial file under the final name. Reruns
compare a parameters hash stored in the artifact to decide whether to skip.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from pathstrat.errors import PathstratError
from pathstrat.vocabulary import plain

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


class OutputDirError(PathstratError, OSError):
    """The output directory cannot be written (read-only, missing, or full)."""


def ensure_writable_dir(path: str | os.PathLike, min_free_mb: float = 50.0) -> Path:
    """Create ``path`` and check, before any work, that it is writable and has free space."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f"{TMP_PREFIX}probe-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise OutputDirError(
            f"Output directory '{p}' is not writable ({exc.strerror or exc}). "
            "Choose another `out` or fix its permissions; nothing was processed."
        ) from exc
    free_mb = _free_mb(p)
    if free_mb < min_free_mb:
        raise OutputDirError(
            f"Output directory '{p}' has only {free_mb:.0f} MiB free (need at least "
            f"{min_free_mb:.0f} MiB). Free space or choose another `out`; nothing was processed."
        )
    return p


def _free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**20


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only on success.

    The temporary file lives in the same directory (same filesystem) so the final
    ``os.replace`` is atomic. On any exception the temporary file is removed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sfx = suffix if suffix is not None else dest.suffix
    fd, tmp = tempfile.mkstemp(prefix=f"{tmp_owner()}{dest.stem}-", suffix=sfx, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-global and racy in threads


def _umask() -> int:
    return _UMASK


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(dest: str | os.PathLike, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_json_atomic(dest: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write JSON atomically (NaN written as null so every JSON reader accepts it)."""
    return write_text_atomic(dest, json.dumps(_json_safe(obj), indent=indent, sort_keys=False) + "\n")


def _json_safe(obj: Any) -> Any:
    import math

    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if np is not None:
        if isinstance(obj, np.ndarray):
            return _json_safe(obj.tolist())
        if isinstance(obj, np.generic):
            obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_dataframe_atomic(dest: str | os.PathLike, df: pd.DataFrame, **to_csv_kwargs: Any) -> Path:
    """Write a pandas DataFrame as CSV atomically (index off unless asked)."""
    to_csv_kwargs.setdefault("index", False)
    with atomic_path(dest) as tmp:
        df.to_csv(tmp, **to_csv_kwargs)
    return Path(dest)


def params_hash(params: Mapping[str, Any]) -> str:
    """Stable short hash of a parameter mapping (sorted keys, JSON-encoded)."""
    blob = json.dumps(_json_safe(dict(params)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


#: A temporary file of unknown owner (another host, or an old name) is removed only after this.
STALE_TMP_AGE_S = 24 * 3600


def tmp_owner() -> str:
    """``.tmp-<pid>@<host>-``: the prefix of this process's temporary files, so a later start-up
    can tell a dead writer's leftovers from a live process's in-flight file."""
    host = socket.gethostname().replace("-", "_").replace("@", "_") or "host"
    return f"{TMP_PREFIX}{os.getpid()}@{host}-"


_OWNER = re.compile(rf"^{re.escape(TMP_PREFIX)}(\d+)@([^-]+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_stale_tmp(path: Path, *, now: float | None = None) -> bool:
    """True when ``path`` (a ``.tmp-`` file) belongs to no live writer.

    Written by a process of this host that has exited -> stale. Written on another host, or with
    no owner in its name -> stale only when older than :data:`STALE_TMP_AGE_S` (a live writer
    elsewhere keeps its file)."""
    m = _OWNER.match(path.name)
    host = socket.gethostname().replace("-", "_").replace("@", "_") or "host"
    if m and m.group(2) == host:
        pid = int(m.group(1))
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        age = (now if now is not None else time.time()) - path.stat().st_mtime
    except OSError:
        return False
    return age > STALE_TMP_AGE_S


def clean_stale_tmp(directory: str | os.PathLike) -> int:
    """Remove temporary files a killed run left behind; return how many were removed.

    Only files whose writer is gone are removed (see :func:`is_stale_tmp`): another live
    process's in-flight file in the same folder is left alone.
    """
    d = Path(directory)
    if not d.is_dir():
        return 0
    n = 0
    for p in d.glob(f"{TMP_PREFIX}*"):
        if not is_stale_tmp(p):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


FAILURE_COLUMNS = ("stage", "slide_id", "path", "error_type", "reason")


class FailureLog:
    """Collects per-item failures of a batch and writes ``failures.csv`` atomically.

    A batch records a failure and goes on; at the end ``write`` replaces the CSV with the
    rows of this run (rows of other stages already in the file are kept).
    """

    def __init__(self, path: str | os.PathLike, stage: str) -> None:
        self.path = Path(path)
        self.stage = stage
        self.rows: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def add(self, slide_id: str, path: str | os.PathLike | None, exc: BaseException | str) -> None:
        """Record one failed item from the exception it raised (or a plain reason string)."""
        if isinstance(exc, BaseException):
            self.record(slide_id, path, type(exc).__name__, str(exc) or repr(exc))
        else:
            self.record(slide_id, path, "Error", str(exc))

    def record(self, slide_id: str, path: str | os.PathLike | None, error_type: str,
               reason: str) -> None:
        """Record one failed item by error type and reason (e.g. reported by a worker process or
        a remote task, where only the exception's name and message survive)."""
        row = {"stage": self.stage, "slide_id": str(slide_id), "path": str(path or ""),
               "error_type": error_type or "Error",
               # read by people and other tools, not translated by a front end: bare field names
               "reason": plain(" ".join(str(reason).split()))}
        with self._lock:
            self.rows.append(row)
        log.warning("%s failed for slide '%s': %s: %s", self.stage, slide_id, row["error_type"],
                    row["reason"])

    def __len__(self) -> int:
        return len(self.rows)

    def write(self) -> Path:
        """Merge this stage's rows into the CSV (replacing older rows of the same stage)."""
        kept: list[dict[str, str]] = []
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as fh:
                kept = [r for r in csv.DictReader(fh) if r.get("stage") != self.stage]
        rows = kept + sorted(self.rows, key=lambda r: r["slide_id"])
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=list(FAILURE_COLUMNS))
                w.writeheader()
                for r in rows:
                    w.writerow({k: r.get(k, "") for k in FAILURE_COLUMNS})
        return self.path


def read_failures(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a ``failures.csv`` (empty list when absent)."""
    p = Path(path)
    if not p.exists():
        return []
    with open(p, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def as_list(x: str | Sequence[str] | None) -> list[str]:
    """Normalise a comma-separated string or sequence to a list of non-empty strings."""
    if x is None:
        return []
    if isinstance(x, str):
        return [s.strip() for s in x.split(",") if s.strip()]
    return [str(s) for s in x]
