"""Slurm executor: per-slide stages as a job array through submitit, training as a dependent job.

Slides are grouped into at most ``max_array_tasks`` (<= 1000, below Slurm's default
MaxArraySize of 1001) contiguous chunks; each array task runs the stage's own per-slide
function on its chunk. Tasks that end without a result (node failure, out of memory, time
limit) are resubmitted once as a new array; slides still without a result are listed as
failed. In a pipeline run (:meth:`SlurmExecutor.run_stages`) the stages after embedding
(training and the decisions) are submitted as one job with ``--dependency=afterok:<embed
array>`` so they start as soon as every task succeeded; that logic lives only here.

Job state is read from the result files submitit writes and from ``squeue`` (not ``sacct``,
so clusters without accounting work too).
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from pathstrat.errors import PathstratError, import_optional
from pathstrat.executors.base import (
    EXECUTORS,
    Executor,
    ExecutorSection,
    MapResult,
    SlideOutcome,
    SlideWork,
    chunk_rows,
    failed_outcomes,
)

if TYPE_CHECKING:
    from pathstrat.layout import RunLayout

log = logging.getLogger(__name__)

MAX_ARRAY_TASKS = 1000


class SlurmJobError(PathstratError, RuntimeError):
    """A Slurm job (not a single slide) failed; the message points at its log."""


def _run_chunk(work: SlideWork, rows: list[dict[str, Any]]) -> list[SlideOutcome]:
    """Array-task entry point (module level so it pickles by reference)."""
    return work(rows)


def _call(fn: Callable[[], Any]) -> Any:
    return fn()


class SlurmConfig(ExecutorSection):
    """Resources of the Slurm job arrays (submitit)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = Field(240, ge=1, description="Wall time of one array task, minutes.")
    cpus_per_task: int = Field(4, ge=1)
    gpus_per_task: int = Field(0, ge=0, description="GPUs per embedding task (tiling uses none).")
    mem_gb: float = Field(16, gt=0)
    train_gpus: int = Field(0, ge=0, description="GPUs of the dependent training job.")
    max_array_tasks: int = Field(1000, ge=1, le=1000, description="Slides are grouped into at most this many tasks.")
    array_parallelism: int = Field(256, ge=1, description="Tasks running at once (%N).")
    retries: int = Field(1, ge=0, le=3, description="Resubmissions of failed array tasks.")
    poll_s: float = Field(5.0, gt=0, description="Seconds between queue polls.")
    log_dir: Path | None = Field(None, description="submitit folder (default <run>/slurm).")
    setup: list[str] = Field(default_factory=list, description="Shell lines run before each task (module load ...).")
    additional: dict[str, Any] = Field(default_factory=dict, description="Extra sbatch parameters.")


#: the per-slide stage whose array the follow-up job depends on
DEPEND_ON = "embed"


class SlurmExecutor(Executor):
    """Submits job arrays with submitit and waits for them by polling ``squeue``."""

    name = "slurm"
    Config = SlurmConfig

    @classmethod
    def from_config(cls, section: SlurmConfig | None, layout: RunLayout | None = None) -> SlurmExecutor:
        s = (section or SlurmConfig()).model_dump()
        folder = s.pop("log_dir") or (layout.slurm_dir if layout is not None else Path("slurm-jobs"))
        return cls(folder, **s)

    def __init__(self, folder: str | Path, *, partition: str | None = None, account: str | None = None,
                 qos: str | None = None, time_min: int = 240, cpus_per_task: int = 4,
                 gpus_per_task: int = 0, mem_gb: float = 16, train_gpus: int = 0,
                 max_array_tasks: int = MAX_ARRAY_TASKS, array_parallelism: int = 256,
                 retries: int = 1, poll_s: float = 5.0, setup: Sequence[str] = (),
                 additional: dict[str, Any] | None = None, timeout_s: float | None = None) -> None:
        self.submitit = import_optional("submitit", "slurm", "the Slurm executor")
        if not 1 <= max_array_tasks <= MAX_ARRAY_TASKS:
            raise PathstratError(f"max_array_tasks must be in 1..{MAX_ARRAY_TASKS}, got {max_array_tasks}")
        self.folder = Path(folder)
        self.partition, self.account, self.qos = partition, account, qos
        self.time_min, self.cpus_per_task, self.gpus_per_task = time_min, cpus_per_task, gpus_per_task
        self.mem_gb, self.train_gpus = mem_gb, train_gpus
        self.max_array_tasks, self.array_parallelism = max_array_tasks, array_parallelism
        self.retries, self.poll_s, self.setup = retries, poll_s, list(setup)
        self.additional = dict(additional or {})
        self.timeout_s = timeout_s
        self.submitted: list[str] = []  # job ids, for tests and the run log
        self._then: Callable[[], Any] | None = None  # follow-up waiting for the DEPEND_ON array
        self._then_value: Any = None
        self._then_ran = False

    # -- submission -----------------------------------------------------------------------------
    def _executor(self, name: str, *, gpus: int, dependency: str | None = None):
        ex = self.submitit.SlurmExecutor(folder=self.folder / name)
        params: dict[str, Any] = dict(
            job_name=f"pathstrat-{name}", time=self.time_min, cpus_per_task=self.cpus_per_task,
            mem=f"{max(1, int(self.mem_gb * 1024))}M", array_parallelism=self.array_parallelism,
            setup=self.setup, additional_parameters=dict(self.additional),
        )
        if gpus:
            params["gpus_per_node"] = gpus
        for key in ("partition", "account", "qos"):
            if getattr(self, key):
                params[key] = getattr(self, key)
        if dependency:
            params["dependency"] = dependency
            params["additional_parameters"]["kill-on-invalid-dep"] = "yes"
        ex.update_parameters(**params)
        return ex

    def _submit_array(self, work: SlideWork, chunks: list[list[dict[str, Any]]], attempt: int):
        gpus = int(work.resources.gpus) if work.resources.gpus else self.gpus_per_task if work.stage == "embed" else 0
        ex = self._executor(f"{work.stage}-a{attempt}", gpus=gpus)
        jobs = ex.map_array(_run_chunk, [work] * len(chunks), chunks)
        if jobs:
            self.submitted.append(jobs[0].job_id.split("_")[0])
            log.info("%s: submitted Slurm array %s with %d task(s) (attempt %d)",
                     work.stage, jobs[0].job_id.split("_")[0], len(jobs), attempt + 1)
        return jobs

    def _submit_after(self, fn: Callable[[], Any], array_id: str, name: str):
        ex = self._executor(name, gpus=self.train_gpus, dependency=f"afterok:{array_id}")
        job = ex.submit(_call, fn)
        self.submitted.append(job.job_id)
        log.info("submitted %s as Slurm job %s after array %s", name, job.job_id, array_id)
        return job

    # -- waiting ----------------------------------------------------------------------------------
    def _queued(self, job_ids: set[str]) -> set[str] | None:
        """Job/task ids still known to squeue (None when squeue itself failed)."""
        bases = sorted({j.split("_")[0] for j in job_ids})
        try:
            res = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(bases)],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("squeue failed (%s); retrying", exc)
            return None
        if res.returncode != 0:
            if "Invalid job id" in res.stderr:
                return set()
            log.warning("squeue failed: %s", res.stderr.strip())
            return None
        return {line.strip() for line in res.stdout.splitlines() if line.strip()}

    def wait(self, jobs: Sequence[Any]) -> None:
        """Block until every job has a result file or has left the queue."""
        pending = {j.job_id: j for j in jobs}
        t0 = time.monotonic()
        gone_once: set[str] = set()
        while pending:
            for jid in [j for j, job in pending.items() if job.paths.result_pickle.exists()]:
                pending.pop(jid)
            if not pending:
                break
            queued = self._queued(set(pending))
            if queued is not None:
                for jid in list(pending):
                    if jid not in queued:
                        if jid in gone_once:  # gone twice in a row and still no result: failed
                            pending.pop(jid)
                        gone_once.add(jid)
                    else:
                        gone_once.discard(jid)
            if self.timeout_s is not None and time.monotonic() - t0 > self.timeout_s:
                raise SlurmJobError(f"Slurm jobs {sorted(pending)} did not finish within {self.timeout_s:.0f} s")
            if pending:
                time.sleep(self.poll_s)

    @staticmethod
    def _result(job: Any) -> tuple[Any, str]:
        """(result, '') or (None, why the job failed)."""
        if not job.paths.result_pickle.exists():
            return None, (f"Slurm task {job.job_id} ended without a result (killed, out of memory or "
                          f"time?); see {job.paths.stderr}")
        try:
            return job.result(), ""
        except Exception as exc:  # noqa: BLE001 - the job's own error, reported per slide
            msg = " ".join(str(exc).split())[-500:]
            return None, f"Slurm task {job.job_id} raised: {msg}"

    # -- the contract -------------------------------------------------------------------------------
    def _run_array(self, work: SlideWork, rows: Sequence[dict[str, Any]],
                   then: Callable[[], Any] | None) -> tuple[MapResult, Any]:
        chunks = chunk_rows(work.items(rows, self.max_array_tasks), self.max_array_tasks)
        outcomes: list[SlideOutcome] = []
        failed_tasks: list[str] = []
        retried = 0
        follow = None
        todo = chunks
        for attempt in range(self.retries + 1):
            if not todo:
                break
            jobs = self._submit_array(work, todo, attempt)
            array_id = jobs[0].job_id.split("_")[0]
            if then is not None:
                follow = self._submit_after(then, array_id, f"{work.stage}-then-a{attempt}")
            self.wait(jobs)
            failed: list[tuple[list[dict[str, Any]], str, str]] = []
            for job, chunk in zip(jobs, todo, strict=True):
                res, why = self._result(job)
                if res is None:
                    failed.append((chunk, job.job_id, why))
                else:
                    outcomes.extend(res)
            if not failed:
                break
            if follow is not None:  # its dependency can no longer be satisfied
                self._cancel(follow.job_id)
                follow = None
            listing = [f"{jid}: {why}" for _, jid, why in failed]
            if attempt < self.retries:
                retried += len(failed)
                log.warning("%s: %d Slurm task(s) failed, resubmitting once: %s", work.stage,
                            len(failed), "; ".join(listing))
                todo = [c for c, _, _ in failed]
            else:
                failed_tasks = listing
                log.error("%s: %d Slurm task(s) failed again and are listed in failures.csv: %s",
                          work.stage, len(failed), "; ".join(listing))
                for chunk, _jid, why in failed:
                    outcomes.extend(failed_outcomes(work, chunk, "SlurmTaskFailed", why))
                todo = []
        return MapResult(outcomes, failed_tasks, n_tasks=len(chunks), retried_tasks=retried), follow

    def _finish(self, job: Any) -> Any:
        self.wait([job])
        value, why = self._result(job)
        if why:
            raise SlurmJobError(why)
        return value

    def map_slides(self, work: SlideWork, rows: Sequence[dict[str, Any]]) -> MapResult:
        if self._then is not None and work.stage == DEPEND_ON:  # submit the follow-up after it
            then, self._then = self._then, None
            res, self._then_value = self.map_then(work, rows, then)
            self._then_ran = True
            return res
        return self._run_array(work, rows, None)[0]

    def run_stages(self, names: Sequence[str], run_stage: Callable[[str], Any],
                   follow_up: Callable[[list[str]], Callable[[], list[Any]]]) -> list[Any]:
        """Tile and embed arrays from here, then the later stages (training first) as one job
        depending on the embedding array; it runs as a plain job when embedding was skipped."""
        names = list(names)
        if not {DEPEND_ON, "train"} <= set(names):
            return super().run_stages(names, run_stage, follow_up)
        cut = names.index(DEPEND_ON) + 1
        head, tail = names[:cut], names[cut:]
        self._then, self._then_value, self._then_ran = follow_up(tail), None, False
        try:
            reports = [run_stage(n) for n in head]
            if not self._then_ran:  # the embed stage was skipped: nothing to depend on
                ex = self._executor(f"{DEPEND_ON}-then-final", gpus=self.train_gpus)
                job = ex.submit(_call, self._then)
                self.submitted.append(job.job_id)
                self._then_value = self._finish(job)
            return reports + list(self._then_value or [])
        finally:
            self._then = None

    def map_then(self, work: SlideWork, rows: Sequence[dict[str, Any]],
                 then: Callable[[], Any] | None = None) -> tuple[MapResult, Any]:
        res, follow = self._run_array(work, rows, then)
        if then is None:
            return res, None
        if follow is None:
            # Tasks failed even after the retry, so the dependent job was cancelled; the failed
            # slides are recorded and the follow-up runs on the others as a plain job.
            ex = self._executor(f"{work.stage}-then-final", gpus=self.train_gpus)
            follow = ex.submit(_call, then)
            self.submitted.append(follow.job_id)
        return res, self._finish(follow)

    def _cancel(self, job_id: str) -> None:
        subprocess.run(["scancel", job_id], capture_output=True, check=False)


EXECUTORS.add("slurm", SlurmExecutor)
