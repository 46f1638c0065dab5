"""The executor contract: run one stage's per-slide work over a cohort, somewhere.

A :class:`SlideWork` wraps the stage's own per-slide function (tile one slide, embed one
slide), so every executor produces the same files; the executor only decides where the
calls run (this process or a local process pool, Slurm array tasks, Ray tasks/actors) and
collects one :class:`SlideOutcome` per slide. Executors are thin layers over existing engines.

An executor registers itself in :data:`EXECUTORS` under its ``name``, declares its config
section (``Config``: the ``executor.<name>:`` keys, or None) and builds itself from it
(:meth:`Executor.from_config`); :meth:`Executor.run_stages` lets a scheduler with job
dependencies (Slurm) run the stages after the per-slide ones as a dependent job.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from pathstrat.registry import Registry

if TYPE_CHECKING:
    from pathstrat.layout import RunLayout

log = logging.getLogger(__name__)


@dataclass
class SlideOutcome:
    """What happened to one slide in one stage (``result`` is e.g. the tiling QC row)."""

    slide_id: str
    path: str
    ok: bool
    result: dict[str, Any] | None = None
    error_type: str = ""
    reason: str = ""
    seconds: float = 0.0


@dataclass
class Resources:
    """What one unit of work needs (mapped onto sbatch / Ray resource requests)."""

    cpus: int = 1
    gpus: float = 0
    mem_gb: float | None = None


class SlideWork(abc.ABC):
    """A picklable per-slide job: ``setup`` once per process/actor, then ``process`` per slide.

    ``__call__(rows)`` runs a chunk of manifest rows and never raises for a slide's own
    failure (an exception of :meth:`slide_errors`): it becomes a failed :class:`SlideOutcome`
    and the chunk goes on. ``processes`` is how many slides may run at once in separate
    processes of one machine (the local executor's pool size; 1 = in this process).
    """

    stage: str = "stage"
    resources: Resources = Resources()
    processes: int = 1
    sub_unit: str | None = None  # what progress counts inside a slide (e.g. "tile")
    verb: str = "processing"  # for messages: "the worker process died while <verb> slide ..."

    def slide_errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions that mean "this slide failed" (recorded); others are bugs and propagate."""
        return (Exception,)

    def progress_units(self, outcome: SlideOutcome) -> int:
        """Sub-units (e.g. tiles) an outcome adds to the progress line."""
        return 0

    def __init__(self) -> None:
        self._ready = False

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load what every slide needs (an encoder); called once per process or actor."""

    @abc.abstractmethod
    def process(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """Do the stage's work for one manifest row; return a small result dict."""

    def run_one(self, row: dict[str, Any]) -> SlideOutcome:
        """Process one row, turning its exception into a failed outcome."""
        if not self._ready:
            self.setup()
            self._ready = True
        t0 = time.perf_counter()
        sid, path = str(row["slide_id"]), str(row.get("path", ""))
        try:
            res = self.process(row)
        except self.slide_errors() as exc:  # per-slide isolation: record and go on
            # logged as a warning where the outcome is recorded (FailureLog), with the traceback here
            log.debug("%s failed for slide '%s'", self.stage, sid, exc_info=True)
            return SlideOutcome(sid, path, False, None, type(exc).__name__, " ".join(str(exc).split()),
                                time.perf_counter() - t0)
        return SlideOutcome(sid, path, True, res, seconds=time.perf_counter() - t0)

    def run_item(self, item: dict[str, Any]) -> list[SlideOutcome]:
        """Outcomes of one unit of work: a manifest row here; a shard of slides for some stages."""
        return [self.run_one(item)]

    @staticmethod
    def item_slides(item: dict[str, Any]) -> list[tuple[str, str]]:
        """(slide_id, path) of every slide an item covers (to report them when its task dies)."""
        if "slides" in item:
            return [(str(s), str(p)) for s, p in item["slides"]]
        return [(str(item["slide_id"]), str(item.get("path", "")))]

    def items(self, rows: Sequence[dict[str, Any]], n_workers: int) -> list[dict[str, Any]]:
        """Units of work for ``rows`` given how many workers will run them (default: one per row)."""
        return list(rows)

    def __call__(self, items: Sequence[dict[str, Any]]) -> list[SlideOutcome]:
        return [o for it in items for o in self.run_item(it)]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_ready"] = False
        for k in self._transient:
            state[k] = None
        return state

    _transient: tuple[str, ...] = ()


def chunk_rows(rows: Sequence[dict[str, Any]], max_chunks: int) -> list[list[dict[str, Any]]]:
    """Split rows into ``min(max_chunks, len(rows))`` contiguous chunks whose sizes differ by <= 1."""
    n = len(rows)
    if n == 0:
        return []
    k = max(1, min(int(max_chunks), n))
    base, extra = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        size = base + (1 if i < extra else 0)
        out.append(list(rows[start:start + size]))
        start += size
    return out


@dataclass
class MapResult:
    """Outcomes of a distributed map plus what the engine reported about its tasks."""

    outcomes: list[SlideOutcome]
    failed_tasks: list[str] = field(default_factory=list)
    n_tasks: int = 0
    retried_tasks: int = 0


class ExecutorSection(BaseModel):
    """Base of an executor's config section (``executor.<name>:``): unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Executor(abc.ABC):
    """Runs per-slide work over manifest rows and, optionally, a follow-up job after it."""

    name: str = "executor"
    #: the executor's config section (``executor.<name>:``), or None when it takes no settings
    Config: ClassVar[type[ExecutorSection] | None] = None

    @classmethod
    def from_config(cls, section: ExecutorSection | None, layout: RunLayout | None = None) -> Executor:
        """Build from the executor's own config section (``layout``: the run's folders)."""
        return cls(**(section.model_dump() if section is not None else {}))

    def run_stages(self, names: Sequence[str], run_stage: Callable[[str], Any],
                   follow_up: Callable[[list[str]], Callable[[], list[Any]]]) -> list[Any]:
        """Run the pipeline stages ``names`` in order; return their reports.

        ``run_stage(name)`` runs one stage here; ``follow_up(names)`` is a picklable callable
        running those stages on whatever node calls it (returning their reports). The default
        runs everything here; a scheduler with job dependencies submits the stages after the
        per-slide ones as a dependent job instead.
        """
        return [run_stage(n) for n in names]

    @abc.abstractmethod
    def map_slides(self, work: SlideWork, rows: Sequence[dict[str, Any]]) -> MapResult:
        """Run ``work`` on every row; return one outcome per row (in any order)."""

    def map_then(self, work: SlideWork, rows: Sequence[dict[str, Any]],
                 then: Callable[[], Any] | None = None) -> tuple[MapResult, Any]:
        """Map ``work`` over rows, then run ``then()`` once every task succeeded (or was retried).

        Schedulers with dependencies (Slurm ``afterok``) submit ``then`` as a dependent job;
        the default runs it here.
        """
        res = self.map_slides(work, rows)
        return res, (then() if then is not None else None)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources (e.g. a Ray instance this executor started)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EXECUTORS: Registry[type[Executor]] = Registry("executor")


def failed_outcomes(work: SlideWork, items: Sequence[dict[str, Any]], error_type: str,
                    reason: str) -> list[SlideOutcome]:
    """One failed outcome per slide of ``items`` (their task died without a result)."""
    return [SlideOutcome(sid, path, False, None, error_type, reason)
            for it in items for sid, path in work.item_slides(it)]
