"""`pathstrat run`: tile -> embed -> train -> stratify -> select -> heatmaps -> report.

The runner only orchestrates: each stage calls that stage's public function with the
parameters of its config section. Before a stage runs, the runner compares a parameters hash
(its config section, the manifest and the hashes of the stages it reads from) with the stamp
left by its last successful run; when they match and its outputs exist, the stage is skipped.
Per-slide stages also resume inside (finished slides are skipped by the stage itself), so a
killed run restarts where it stopped. The resolved config (``pipeline.yaml``) and a log
(``pipeline.log``) are written into the run directory.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from pathlib import Path

from pathstrat.config import STAGES, PipelineConfig, dump_config, validate_config
from pathstrat.errors import ConfigError
from pathstrat.io import (
    OutputDirError,
    clean_stale_tmp,
    ensure_writable_dir,
    read_failures,
    write_dataframe_atomic,
    write_text_atomic,
)
from pathstrat.layout import RUN_LOG, RunLayout
from pathstrat.logs import log_to_file
from pathstrat.runner.context import RunContext, RunSummary, StageReport, stage_hash
from pathstrat.runner.stages import definitions

log = logging.getLogger(__name__)

STAGE_DEFS = {sd.name: sd for sd in definitions()}
if tuple(STAGE_DEFS) != STAGES:  # pragma: no cover - programming error
    raise RuntimeError(f"stage definitions {tuple(STAGE_DEFS)} differ from config STAGES {STAGES}")




def run_log(run_dir: Path) -> contextlib.AbstractContextManager[Path]:
    """Append every pathstrat log record of this run to ``run_dir/run.log``."""
    return log_to_file(Path(run_dir) / RUN_LOG, mode="a")


def prepare_run_dir(cfg: PipelineConfig) -> Path:
    """Check the run directory is writable with room to spare, then write the resolved config."""
    layout = RunLayout.from_config(cfg)
    run_dir = ensure_writable_dir(layout.run_dir, min_free_mb=200.0)
    for d in (layout.tiles.root, layout.features.root):
        ensure_writable_dir(d, min_free_mb=200.0)
    layout.state_dir.mkdir(exist_ok=True)
    write_text_atomic(layout.resolved_config, dump_config(cfg))
    return run_dir


def run_pipeline(cfg: PipelineConfig, *, executor: str | None = None, address: str | None = None,
                 stages: list[str] | None = None, force: bool = False) -> RunSummary:
    """Run the configured stages in order, skipping those already done with the same parameters.

    Returns a :class:`RunSummary`; its ``exit_code`` is 3 when slides failed (listed in
    ``failures.csv``). Library errors (bad config, unwritable output) raise before any work.
    """
    kind = executor or cfg.executor.kind
    section = getattr(cfg.executor, kind, None)
    if address and section is not None and "address" in type(section).model_fields:
        section.address = address  # recorded in pipeline.yaml (e.g. the Ray cluster)
    unknown = [s for s in stages or [] if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
    todo = [s for s in STAGES if s in (stages or cfg.stages)]
    check_registry_names(cfg, todo)
    run_dir = prepare_run_dir(cfg)
    summary = RunSummary(run_dir)
    with run_log(run_dir):
        log.info("pathstrat run '%s' -> %s (executor %s, stages %s)", cfg.name, run_dir, kind,
                 ",".join(todo))
        ctx = RunContext(cfg, kind, address)
        _clean_partial_files(ctx)
        ctx.manifest()
        for name in STAGES:  # the hash chain is known up front (also inside a Slurm job)
            ctx.hashes[name] = stage_hash(ctx, STAGE_DEFS[name])
        try:  # the executor decides where stages run (Slurm: training as a dependent job)
            summary.stages.extend(ctx.executor().run_stages(
                todo, lambda name: _run_stage(ctx, name, force),
                lambda names: _Downstream(ctx.cfg, names)))
        finally:
            ctx.close()
        summary.n_failed = len({(r["slide_id"]) for r in read_failures(ctx.failures_path)})
        _write_summary(ctx, summary)
        log.info("run finished: %s; %d slide(s) failed (see %s)",
                 ", ".join(f"{s.name}={s.status}" for s in summary.stages), summary.n_failed,
                 ctx.failures_path)
    return summary


def check_registry_names(cfg: PipelineConfig, stages: list[str]) -> None:
    """The names the torch-free schema cannot check (the MIL model and its hyperparameters live in
    a registry that imports torch), checked before any slide work so that a typo fails in
    seconds, not after tiling and embedding."""
    if "train" not in stages:
        return
    from pathstrat.errors import UnknownNameError
    from pathstrat.mil import model_hparams

    try:
        model_hparams(cfg.train.model, **cfg.train.hparams)
    except UnknownNameError as exc:
        raise ConfigError(f"config: train.model: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"config: train.hparams: {exc}") from None


def _clean_partial_files(ctx: RunContext) -> None:
    """Remove temporary files a killed run left (every folder of the run; tiles/features too)."""
    n = 0
    dirs = {p.parent for p in ctx.run_dir.rglob(".tmp-*")} | set(ctx.layout.data_dirs())
    for d in sorted(dirs):
        n += clean_stale_tmp(d)
    if n:
        log.info("removed %d partial file(s) left by an interrupted run", n)


def _run_stage(ctx: RunContext, name: str, force: bool = False) -> StageReport:
    sd = STAGE_DEFS[name]
    h = ctx.hashes[name]
    stamp = ctx.read_stamp(name)
    outs = sd.outputs(ctx)
    if not force and stamp and stamp.get("params_hash") == h and all(p.exists() for p in outs):
        log.info("stage %s: skipped (outputs exist with the same parameters, hash %s)", name, h)
        return StageReport(name, "skipped", n_failed=int(stamp.get("n_failed", 0)))
    log.info("stage %s: running (hash %s)", name, h)
    t0 = time.perf_counter()
    try:
        report = sd.run(ctx)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
            raise OutputDirError(
                f"stage {name}: cannot write outputs ({exc.strerror}: {exc.filename or ctx.run_dir}). "
                "Every slide finished so far is kept (outputs are written atomically); free space "
                "or fix the output folder, then rerun the same command: it resumes.") from exc
        raise
    report.seconds = time.perf_counter() - t0
    ctx.write_stamp(name, h, report)
    log.info("stage %s: %s in %.1f s (%d failed)", name, report.status, report.seconds, report.n_failed)
    return report


class _Downstream:
    """Later stages run on whatever node calls this (a dependent Slurm job), with the local
    executor; returns their reports."""

    def __init__(self, cfg: PipelineConfig, stages: list[str]) -> None:
        self.cfg_json = cfg.model_dump(mode="json")
        self.stages = stages

    def __call__(self) -> list[StageReport]:
        cfg = validate_config(self.cfg_json)
        summary = run_pipeline(cfg, executor="local", stages=self.stages)
        return list(summary.stages)


def _write_summary(ctx: RunContext, summary: RunSummary) -> None:
    rows = [{"stage": s.name, "status": s.status, "seconds": round(s.seconds, 2),
             "n_failed": s.n_failed, "detail": s.detail} for s in summary.stages]
    import pandas as pd

    write_dataframe_atomic(ctx.layout.stages_table, pd.DataFrame(rows))
