"""The one logging set-up: stderr for the CLI, a file per run directory.

Library modules only call ``logging.getLogger(__name__)``; handlers live here. The stderr
handler writes to whatever ``sys.stderr`` is at the time of the record (captured or redirected
streams included); :func:`log_to_file` adds a file handler for the duration of a run
(``train``'s ``run.log``, the pipeline's ``pipeline.log``) and restores the level afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

#: Record format of run logs (stderr uses a shorter time stamp).
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ROOT = "pathstrat"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now, not to the stream of the first call."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Log pathstrat records to stderr with a compact format (idempotent; sets the level)."""
    root = logging.getLogger(ROOT)
    root.setLevel(level)
    if not any(getattr(h, "_pathstrat", False) for h in root.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter(FILE_FORMAT, "%H:%M:%S"))
        h._pathstrat = True  # type: ignore[attr-defined]
        root.addHandler(h)


@contextlib.contextmanager
def log_to_file(path: str | Path, *, mode: str = "a") -> Iterator[Path]:
    """Copy every pathstrat record of INFO and above to ``path`` while the block runs.

    The logger level is lowered to INFO for the block if it was higher (so the file always
    holds the run's progress, even under ``--quiet``) and restored afterwards.
    """
    path = Path(path)
    handler = logging.FileHandler(path, mode=mode, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    handler.setLevel(logging.INFO)
    root = logging.getLogger(ROOT)
    old_level = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
