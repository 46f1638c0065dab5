"""Local executor: per-slide work in this process, one slide after the other.

The reference against which Slurm and Ray results are compared. (Within-machine parallelism
comes from the stage functions themselves: ``tile_cohort(workers=N)``, the embedding
DataLoader.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pathstrat.executors.base import EXECUTORS, Executor, MapResult, SlideWork
from pathstrat.progress import Progress


class LocalExecutor(Executor):
    """Runs every slide in this process."""

    name = "local"

    def __init__(self, **_: Any) -> None:
        pass

    def map_slides(self, work: SlideWork, rows: Sequence[dict[str, Any]]) -> MapResult:
        outcomes = []
        items = work.items(rows, 1)
        with Progress(len(items), work.stage) as bar:
            for item in items:
                outcomes.extend(work.run_item(item))
                bar.update(1)
        return MapResult(outcomes, n_tasks=len(items))


EXECUTORS.add("local", LocalExecutor)
