"""Run state shared by the stages: paths, manifest, stage stamps, parameters hashes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathstrat.config import PipelineConfig
from pathstrat.io import FailureLog, params_hash, read_failures, sha256_file, write_json_atomic
from pathstrat.layout import RunLayout

log = logging.getLogger(__name__)


@dataclass
class StageReport:
    """What one stage did in this invocation."""

    name: str
    status: str  # "done" | "skipped" | "failed-slides" | "not-run"
    seconds: float = 0.0
    n_failed: int = 0
    detail: str = ""


@dataclass
class RunSummary:
    """Result of :func:`run_pipeline`; ``exit_code`` is 3 when any slide failed."""

    run_dir: Path
    stages: list[StageReport] = field(default_factory=list)
    n_failed: int = 0

    @property
    def exit_code(self) -> int:
        return 3 if self.n_failed else 0


class RunContext:
    """Everything a stage needs: config, paths (its :class:`RunLayout`), the manifest and the
    executor."""

    def __init__(self, cfg: PipelineConfig, executor_kind: str, address: str | None = None) -> None:
        self.cfg = cfg
        self.layout = RunLayout.from_config(cfg)
        self.run_dir = self.layout.run_dir
        self.executor_kind = executor_kind
        self.address = address
        self.state_dir = self.layout.state_dir
        self.failures_path = self.layout.failures
        self._manifest = None
        self._manifest_hash: str | None = None
        self.hashes: dict[str, str] = {}
        self._executor = None

    # -- paths ---------------------------------------------------------------------------------
    @property
    def tiles_dir(self) -> Path:
        return self.layout.tiles.tiles_dir

    @property
    def features_dir(self) -> Path:
        return self.layout.features.features_dir

    @property
    def cohort_manifest(self) -> Path:
        """The manifest restricted to slides that have features (what training reads)."""
        return self.layout.features_manifest

    # -- manifest ------------------------------------------------------------------------------
    def manifest(self):
        """The validated manifest; missing slide files are recorded, not fatal."""
        if self._manifest is None:
            from pathstrat import cohort

            c = self.cfg
            labels = [t for t in c.train.targets if t != "survival"]
            surv = "survival" in c.train.targets
            df, problems = cohort.load_manifest(
                c.cohort.manifest, check_files=c.cohort.check_files, label_cols=labels,
                time_col=c.train.time_col if surv else None,
                event_col=c.train.event_col if surv else None, on_missing="record")
            flog = FailureLog(self.failures_path, "cohort")
            for p in problems:
                flog.add(p.slide_id, p.path, f"slide file problem: {p.reason}")
            if problems or self.failures_path.exists():  # also clears rows of a fixed manifest
                flog.write()
            bad = {p.slide_id for p in problems}
            self._manifest = df[~df["slide_id"].isin(bad)].reset_index(drop=True)
        return self._manifest

    def manifest_hash(self) -> str:
        if self._manifest_hash is None:
            self._manifest_hash = sha256_file(self.cfg.cohort.manifest)[:16]
        return self._manifest_hash

    def rows(self, df=None) -> list[dict[str, Any]]:
        df = self.manifest() if df is None else df
        return [{k: (None if _isnan(v) else v) for k, v in r.items()} for r in df.to_dict("records")]

    # -- stamps --------------------------------------------------------------------------------
    def stamp_path(self, stage: str) -> Path:
        return self.layout.stamp(stage)

    def read_stamp(self, stage: str) -> dict[str, Any] | None:
        p = self.stamp_path(stage)
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def write_stamp(self, stage: str, h: str, report: StageReport) -> None:
        write_json_atomic(self.stamp_path(stage), {
            "stage": stage, "params_hash": h, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": round(report.seconds, 2), "n_failed": report.n_failed})

    def executor(self):
        """The run's executor, created on first use (one Ray session per run); see close()."""
        if self._executor is None:
            from pathstrat.executors import make_executor

            self._executor = make_executor(self.executor_kind, self.cfg, address=self.address)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and v != v


# ---------------------------------------------------------------------------------------------
# Stage definitions: parameters hash, outputs, and how to run


@dataclass(frozen=True)
class StageDef:
    name: str
    reads: tuple[str, ...]  # upstream stages whose hash enters this one
    sections: tuple[str, ...]  # config sections that change results
    outputs: Callable[[RunContext], list[Path]]
    run: Callable[[RunContext], StageReport]
    ignore: tuple[str, ...] = ()  # keys of the sections that do not change results


def stage_hash(ctx: RunContext, sd: StageDef) -> str:
    data: dict[str, Any] = {"manifest": ctx.manifest_hash()}
    for s in sd.sections:
        sec = getattr(ctx.cfg, s)
        d = sec.model_dump(mode="json") if sec is not None else None
        if isinstance(d, dict):
            for k in sd.ignore:
                d.pop(k, None)
        data[s] = d
    for up in sd.reads:
        data[f"up:{up}"] = ctx.hashes.get(up, "")
    return params_hash(data)


def _record_outcomes(ctx: RunContext, stage: str, outcomes) -> int:
    flog = FailureLog(ctx.failures_path, stage)
    for o in outcomes:
        if not o.ok:
            flog.record(o.slide_id, o.path, o.error_type, o.reason)
    flog.write()
    return len(flog)


def _failed_in(ctx: RunContext, stage: str) -> set[str]:
    return {r["slide_id"] for r in read_failures(ctx.failures_path) if r.get("stage") == stage}


