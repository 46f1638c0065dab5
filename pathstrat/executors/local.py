"""Local executor: per-slide work on this machine, in this process or a process pool.

The reference against which Slurm and Ray results are compared. A work object whose
``processes`` is > 1 (``tiling.workers``) runs in a pool of that many spawned processes
(each opens its own slides); otherwise slides run one after the other in this process (the
embedding stage parallelises inside, with its DataLoader workers).

The pool survives a worker crash (e.g. a decoder segfault on a corrupt slide): slides in
flight when a worker dies are retried once in a new pool; slides that break the pool again
run one per process, so only the slide that really crashes is recorded (``WorkerCrashed``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any

from pathstrat.executors.base import (
    EXECUTORS,
    Executor,
    MapResult,
    SlideOutcome,
    SlideWork,
    failed_outcomes,
)
from pathstrat.progress import Progress

log = logging.getLogger(__name__)

WORKER_CRASHED = "WorkerCrashed"


class LocalExecutor(Executor):
    """Runs every slide on this machine (a process pool when the work allows several)."""

    name = "local"

    def __init__(self, *, progress: bool = True, **_: Any) -> None:
        self.progress = progress

    def map_slides(self, work: SlideWork, rows: Sequence[dict[str, Any]]) -> MapResult:
        items = work.items(rows, 1)
        outcomes: list[SlideOutcome] = []
        desc = work.verb if work.verb != "processing" else work.stage  # "tiling", as before
        with Progress(len(items), desc, unit="slide", sub_unit=work.sub_unit,
                      enable_bar=None if self.progress else False) as bar:
            for got in self._run(work, items):
                outcomes.extend(got)
                bar.update(1, units=sum(work.progress_units(o) for o in got))
        return MapResult(outcomes, n_tasks=len(items))

    @staticmethod
    def _run(work: SlideWork, items: list[dict[str, Any]]) -> Iterator[list[SlideOutcome]]:
        n = max(1, int(work.processes))
        if n <= 1 or len(items) <= 1:
            for item in items:
                yield work.run_item(item)
            return
        yield from _run_pool(work, items, n)


def _run_pool(work: SlideWork, items: list[dict[str, Any]], workers: int) -> Iterator[list[SlideOutcome]]:
    """Outcomes per item as they finish, from a pool that survives worker crashes."""
    pending = items
    for round_ in range(3):
        isolate = round_ == 2
        broken: list[dict[str, Any]] = []
        groups = [[it] for it in pending] if isolate else [pending]
        for group in groups:
            n = 1 if isolate else min(workers, len(group))
            with ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(work.run_item, it): it for it in group}
                for fut in as_completed(futures):
                    try:
                        got = fut.result()
                    except BrokenProcessPool:
                        broken.append(futures[fut])
                        continue
                    yield got
        if broken:
            log.warning("a %s worker process died; %d slide(s) to retry%s", work.stage, len(broken),
                        " one per process" if round_ == 1 else "")
        pending = broken
        if not pending:
            return
    for it in pending:
        sid = work.item_slides(it)[0][0]
        yield failed_outcomes(work, [it], WORKER_CRASHED,
                              f"the worker process died while {work.verb} slide '{sid}' (a crash in "
                              "the slide decoder, or out of memory). Check the file with `pathstrat "
                              "info` or re-export it; lower `workers` if memory is short.")


EXECUTORS.add("local", LocalExecutor)
