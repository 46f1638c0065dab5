"""Ray executor: per-slide work as Ray actors with ``num_cpus``/``num_gpus``.

Each actor holds one copy of the stage's work object and calls its ``setup`` once (the
encoder is loaded once per actor, not per slide); an ``ActorPool`` feeds slides to idle
actors. Actors that die are restarted and their slide retried once (Ray's own
``max_restarts``/``max_task_retries``); a slide whose actor died twice is recorded as failed.
Ray is an optional extra: ``pip install "pathstrat[ray]"``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from pathstrat.errors import import_optional
from pathstrat.executors.base import (
    EXECUTORS,
    Executor,
    ExecutorSection,
    MapResult,
    SlideOutcome,
    SlideWork,
    failed_outcomes,
)
from pathstrat.progress import Progress

log = logging.getLogger(__name__)

LOCAL_OBJECT_STORE = 512 * 2**20  # outcomes are small; keep a local Ray light on shared memory


class _SlideActor:
    """Actor body: owns one work object (model loaded once) and runs slides on it."""

    def __init__(self, work: SlideWork) -> None:
        self.work = work
        self.work.setup()
        self.work._ready = True

    def run(self, item: dict[str, Any]) -> list[SlideOutcome]:
        return self.work.run_item(item)


class RayConfig(ExecutorSection):
    """Resources of the Ray tasks/actors."""

    address: str | None = Field(None, description="Cluster address ('auto', 'ray://host:10001') or null = local.")
    num_cpus: float = Field(1, gt=0, description="CPUs per tiling task / embedding actor.")
    num_gpus: float = Field(0, ge=0, description="GPUs per embedding actor.")
    actors: int = Field(1, ge=1, description="Embedding actors (model loaded once per actor).")
    local_num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray started by pathstrat.")


class RayExecutor(Executor):
    """Connects to (or starts) Ray on first use and maps slides over a pool of actors."""

    name = "ray"
    Config = RayConfig

    def __init__(self, *, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 actors: int = 1, local_num_cpus: int | None = None, **_: Any) -> None:
        self.ray = import_optional("ray", "ray", "the Ray executor")
        self.num_cpus, self.num_gpus, self.actors = num_cpus, num_gpus, actors
        self.address, self.local_num_cpus = address, local_num_cpus
        self._started = False

    def _connect(self) -> None:
        """Join the cluster (or start a local Ray) unless this process already did."""
        address, local_num_cpus = self.address, self.local_num_cpus
        if not self.ray.is_initialized():
            kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                      configure_logging=False)
            if address:
                kw["address"] = address
            else:
                kw["num_cpus"] = local_num_cpus
                kw["object_store_memory"] = LOCAL_OBJECT_STORE
            self.ray.init(**kw)
            self._started = True
            log.info("Ray initialised (%s): %s", address or "local", self.ray.cluster_resources())

    def _pool_size(self, work: SlideWork, n: int) -> int:
        if work.stage == "embed" or self.num_gpus:
            want = self.actors
        else:
            avail = float(self.ray.cluster_resources().get("CPU", 1))
            want = max(1, int(avail // max(self.num_cpus, 1e-9)))
        return max(1, min(want, n))

    def map_slides(self, work: SlideWork, rows: Sequence[dict[str, Any]]) -> MapResult:
        if not rows:
            return MapResult([], n_tasks=0)
        self._connect()
        ray = self.ray
        gpus = self.num_gpus if work.stage == "embed" else 0
        actor_cls = ray.remote(num_cpus=self.num_cpus, num_gpus=gpus, max_restarts=1,
                               max_task_retries=1)(_SlideActor)
        n = self._pool_size(work, len(rows))
        queue = work.items(rows, n)
        n = min(n, len(queue))
        idle = [actor_cls.remote(work) for _ in range(n)]
        running: dict[Any, tuple[Any, dict[str, Any]]] = {}
        outcomes: list[SlideOutcome] = []
        failed: list[str] = []
        with Progress(len(queue), f"{work.stage} (ray, {n} actors)") as bar:
            while queue or running:
                while idle and queue:
                    actor, item = idle.pop(), queue.pop(0)
                    running[actor.run.remote(item)] = (actor, item)
                done, _ = ray.wait(list(running), num_returns=1)
                actor, item = running.pop(done[0])
                try:
                    outcomes.extend(ray.get(done[0]))
                except ray.exceptions.RayError as exc:
                    # Ray already retried the item once on a restarted actor; record its slides
                    # and replace the actor, whose restarts may be used up.
                    why = " ".join(str(exc).split())[:500]
                    failed.append(f"{item.get('slide_id', item.get('name'))}: {why}")
                    outcomes.extend(failed_outcomes(work, [item], "RayTaskFailed",
                                                    f"Ray actor died twice: {why}"))
                    ray.kill(actor)
                    actor = actor_cls.remote(work)
                idle.append(actor)
                bar.update(1)
        for a in idle:
            ray.kill(a)
        return MapResult(outcomes, failed, n_tasks=n, retried_tasks=len(failed))

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
            self._started = False


EXECUTORS.add("ray", RayExecutor)
