"""Folds in parallel worker processes: how many, how a worker gets the bags, ordered results.

``train_cv`` runs its (repeat, fold) units through :func:`map_folds`: in this process one after
the other (``workers`` 1), or in a pool of spawned processes, each on its own torch thread(s).
Each fold is seeded on its own and the parent writes every output in fold order, so a run's
files do not depend on ``workers``. Workers compute only (no file is written by a worker), so a
killed run leaves what a killed serial run leaves: no ``model.json``, an incomplete run.

A worker receives the cohort once, when it starts (the pool's initializer), never per fold:
with ``store="mmap"`` the path of the run's memory-mapped cache file and each bag's first row
(every worker maps the same file: the page cache is shared, nothing is copied); with
``store="memory"`` the feature arrays themselves (one copy per worker, so the automatic worker
count also respects the free memory).
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch

from pathstrat.errors import PathstratError
from pathstrat.training.data import Bag, BagStore, cache_rows, map_feature_cache

log = logging.getLogger(__name__)

#: Most worker processes ``workers: auto`` starts (more rarely pays on small cohorts).
MAX_AUTO_WORKERS = 8
#: Below this many tile-epochs (folds x epochs x tiles trained on) a run takes a few seconds
#: on one core and starting workers (each imports torch, ~2 s) costs more than it saves.
MIN_PARALLEL_TILE_EPOCHS = 100_000
#: ``workers: auto`` keeps the workers' copies of an in-memory store below this share of the
#: free memory (``store: mmap`` shares one file between them).
MEMORY_SHARE = 0.5


class WorkerDiedError(PathstratError, RuntimeError):
    """A training worker process died (killed, out of memory) before returning its fold."""


def cpu_budget() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """Free physical memory in bytes (None where the platform does not say)."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def resolve_workers(workers: int | str | None, *, n_units: int, device: str, fold_threads: int,
                    tile_epochs: int, store_bytes: int, shared_store: bool) -> tuple[int, str]:
    """How many fold processes to run, and why (for the run log).

    An explicit ``workers`` is honoured (capped at the number of folds; CUDA runs stay serial:
    the folds would share one GPU). ``None``/``"auto"``: on CPU, when every fold trains on one
    thread (small bags) and the run is long enough to pay for starting processes,
    ``min(folds, CPUs, MAX_AUTO_WORKERS)``, fewer when the workers' copies of an in-memory
    store would not fit in ``MEMORY_SHARE`` of the free memory; else 1.
    """
    if device != "cpu":
        if workers not in (None, "auto") and int(workers) > 1:
            return 1, f"device {device}: folds run one after another (they would share the device)"
        return 1, "serial"
    if workers not in (None, "auto"):
        n = max(1, min(int(workers), n_units))
        return n, f"workers={workers}"
    if n_units < 2:
        return 1, "one fold"
    if fold_threads != 1:
        return 1, f"folds use {fold_threads} threads each"
    if tile_epochs < MIN_PARALLEL_TILE_EPOCHS:
        return 1, f"a short run ({tile_epochs} tile-epochs)"
    n = min(n_units, cpu_budget(), MAX_AUTO_WORKERS)
    free = available_memory()
    if not shared_store and free and store_bytes:
        n = min(n, max(1, int(MEMORY_SHARE * free // store_bytes)))
    return n, "auto"


# --- the store as a worker receives it ---------------------------------------------------------


@dataclass
class StorePayload:
    """What a worker needs to rebuild the parent's :class:`BagStore` (no tensors: picklable)."""

    meta: list[Bag]  # bags without features
    table: Any
    dim: int
    encoder_id: str | None
    level: str
    attrs: dict[str, Any]
    arrays: list[np.ndarray] | None = None  # store="memory": each bag's features
    cache: str | None = None  # store="mmap": the cache file, bag i at rows cache_rows[i]

    @classmethod
    def of(cls, store: BagStore) -> StorePayload:
        meta = [replace(b, features=None) for b in store.bags]
        cache, rows = store.attrs.get("cache"), store.attrs.get("cache_rows")
        arrays = None if cache and rows is not None else [b.features.cpu().numpy() for b in store.bags]
        return cls(meta, store.table, store.dim, store.encoder_id, store.level, dict(store.attrs),
                   arrays, cache if arrays is None else None)

    def build(self) -> BagStore:
        if self.arrays is not None:
            feats = [torch.from_numpy(a) for a in self.arrays]
        else:
            mm = map_feature_cache(self.cache, sum(b.offsets[-1] for b in self.meta), self.dim)
            feats = [cache_rows(mm, s, b.offsets[-1])
                     for s, b in zip(self.attrs["cache_rows"], self.meta, strict=True)]
        bags = [replace(b, features=f) for b, f in zip(self.meta, feats, strict=True)]
        return BagStore(bags, self.table, self.dim, self.encoder_id, self.level, self.attrs)


# --- worker side --------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def in_worker() -> bool:
    """True inside a fold worker process (no epoch bar there: the parent logs each fold)."""
    return bool(_WORKER)


class _Capture(logging.Handler):
    """Collects a worker's pathstrat log records (INFO and above) to replay in the parent."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))


def _init_worker(make_context: Callable[[BagStore], Any], payload: StorePayload, threads: int) -> None:
    torch.set_num_threads(threads)
    root = logging.getLogger("pathstrat")
    root.setLevel(logging.INFO)
    cap = _Capture()
    root.addHandler(cap)
    _WORKER.update(context=make_context(payload.build()), capture=cap)


def _run_in_worker(fn: Callable[[Any, Any], Any], task: Any) -> tuple[Any, list[tuple[str, int, str]]]:
    cap: _Capture = _WORKER["capture"]
    cap.records = []
    try:
        result = fn(_WORKER["context"], task)
    except Exception as exc:
        try:  # the parent re-raises it: it must survive the trip (custom __init__ may not)
            pickle.loads(pickle.dumps(exc))
        except Exception:
            raise PathstratError(f"{type(exc).__name__}: {exc}") from None
        raise
    return result, cap.records


# --- parent side --------------------------------------------------------------------------------


def map_folds(fn: Callable[[Any, Any], Any], tasks: Sequence[Any], *, workers: int,
              context: Any, make_context: Callable[[BagStore], Any], store: BagStore,
              threads: int = 1, describe: Callable[[Any], str] = str) -> Iterator[Any]:
    """``fn(context, task)`` for every task, yielded in task order.

    ``workers`` 1 runs them here with ``context``; more runs them in a pool of spawned processes
    (torch and fork do not mix), each building its context once as ``make_context(store)`` from a
    :class:`StorePayload` and running ``threads`` torch threads. A task's exception is re-raised
    here as it was raised there (the pool is stopped: no further fold starts); a worker that dies
    raises :class:`WorkerDiedError`. Workers' log records are replayed here with their results.
    """
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            yield fn(context, t)
        return
    payload = StorePayload.of(store)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=get_context("spawn"),
                               initializer=_init_worker, initargs=(make_context, payload, threads))
    ok = False
    try:
        with _main_not_rerun():  # processes start inside submit()
            futures = [pool.submit(_run_in_worker, fn, t) for t in tasks]
        for t, fut in zip(tasks, futures, strict=True):
            try:
                result, records = fut.result()
            except BrokenProcessPool as exc:
                raise WorkerDiedError(
                    f"a training worker process died while {describe(t)} (or a fold running beside "
                    "it) was training: killed, or out of memory. Rerun with fewer `workers` (1 = "
                    "one fold at a time in this process) or `store: mmap`.") from exc
            for name, level, msg in records:
                logging.getLogger(name).log(level, "%s", msg)
            yield result
        ok = True
    finally:
        _stop(pool, wait=ok)


@contextmanager
def _main_not_rerun() -> Iterator[None]:
    """Start spawned workers without importing the caller's ``__main__``.

    A spawned process normally re-imports the main script (``__mp_main__``), so a user script
    calling ``train_cv`` without an ``if __name__ == "__main__":`` guard would run again in every
    worker (and train, or overwrite its outputs, there). The workers need nothing of it (their
    functions live in pathstrat), so while they start the main module hides its file and spec.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def _stop(pool: ProcessPoolExecutor, *, wait: bool) -> None:
    """Shut the pool down; after an error (or an interrupt) kill the folds still running."""
    if wait:
        pool.shutdown(wait=True)
        return
    pool.shutdown(wait=False, cancel_futures=True)
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        if p.is_alive():
            p.terminate()
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        p.join(timeout=5)
