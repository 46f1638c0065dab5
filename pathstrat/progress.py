"""Progress reporting: a live bar on a terminal, periodic log lines elsewhere (CI, Slurm logs)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("pathstrat.progress")


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Counts items (and optional units such as tiles) and reports rate.

    Use as ``with Progress(total, desc) as p: ... p.update(1, units=n_tiles)``.
    On a terminal it draws a tqdm bar; otherwise it logs a line every ``log_every`` seconds
    and at the end, so batch logs stay readable. ``bar_only=True`` reports nothing off a
    terminal (for inner loops, e.g. epochs, whose caller logs one summary line).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "slide",
                 sub_unit: str | None = None, log_every: float = 10.0,
                 enable_bar: bool | None = None, bar_only: bool = False) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.sub_unit = sub_unit
        self.log_every = log_every
        self.n = 0
        self.sub_n = 0
        self._t0 = time.perf_counter()
        self._last_log = self._t0
        self._logged_n = -1  # n at the last log line: close() does not repeat it
        self._bar = None
        self.quiet = False
        if enable_bar if enable_bar is not None else _is_tty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)
        else:
            self.quiet = bar_only

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def rate(self) -> float:
        """Sub-units (or units) per second so far."""
        n = self.sub_n if self.sub_unit else self.n
        return n / max(self.elapsed, 1e-9)

    def update(self, n: int = 1, units: int = 0) -> None:
        self.n += n
        self.sub_n += units
        if self._bar is not None:
            if self.sub_unit:
                self._bar.set_postfix_str(f"{self.rate():.1f} {self.sub_unit}/s", refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if not self.quiet and now - self._last_log >= self.log_every:
            self._last_log = now
            self._log_line()

    def _log_line(self) -> None:
        self._logged_n = self.n
        tot = f"/{self.total}" if self.total is not None else ""
        extra = f", {self.sub_n} {self.sub_unit} ({self.rate():.1f}/s)" if self.sub_unit else ""
        log.info("%s: %d%s %s%s, %.1f s", self.desc, self.n, tot, self.unit, extra, self.elapsed)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._logged_n != self.n and not self.quiet:
            self._log_line()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "item") -> Iterator[T]:
    """Iterate with progress reporting (bar on a terminal, log lines otherwise)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit) as p:
        for it in items:
            yield it
            p.update(1)
