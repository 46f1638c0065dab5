"""Stage adapters: call each stage's public function with its config section.

Nothing here re-implements a stage; an adapter picks the slides a stage should see (those
that survived the stages before), calls the stage, and records failed slides.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pathstrat.config import stage_train_config
from pathstrat.io import FailureLog, read_failures, write_dataframe_atomic
from pathstrat.runner.context import RunContext, StageDef, StageReport, _record_outcomes

log = logging.getLogger(__name__)


# -- tile ------------------------------------------------------------------------------------------

def _tile_params(ctx: RunContext) -> dict:
    t = ctx.cfg.tiling.model_dump()
    t.pop("workers")
    return t


def _copy_failures(ctx: RunContext, src: Path, stage: str, slide_ids: set[str]) -> int:
    """Bring a stage's failures.csv rows (written in a shared tiles/features folder) into the run."""
    rows = [r for r in read_failures(src) if r.get("stage") == stage and r["slide_id"] in slide_ids]
    if src.resolve() == ctx.failures_path.resolve():
        return len(rows)
    flog = FailureLog(ctx.failures_path, stage)
    for r in rows:
        flog.rows.append({k: r.get(k, "") for k in ("stage", "slide_id", "path", "error_type", "reason")})
    flog.write()
    return len(rows)


def run_tile(ctx: RunContext) -> StageReport:
    from pathstrat import tiling

    df = ctx.manifest()
    tiling.tile_cohort(df, ctx.layout.tiles.root, tiling.TilingParams(**_tile_params(ctx)),
                       workers=ctx.cfg.tiling.workers, executor=ctx.executor())
    n = _copy_failures(ctx, ctx.layout.tiles.failures, "tile", set(df["slide_id"]))
    return StageReport("tile", "failed-slides" if n else "done", n_failed=n)


def tiled_slides(ctx: RunContext):
    """Manifest rows whose tiles file exists (tiling succeeded)."""
    df = ctx.manifest()
    ok = df["slide_id"].map(lambda s: ctx.layout.tiles.tiles_file(s).exists())
    return df[ok].reset_index(drop=True)


# -- embed -----------------------------------------------------------------------------------------

def run_embed(ctx: RunContext) -> StageReport:
    from pathstrat.executors.work import EmbedWork

    df = tiled_slides(ctx)
    kw = ctx.cfg.embed.model_dump()
    encoder_id = kw.pop("encoder_id")
    write_dataframe_atomic(ctx.layout.tiled_manifest, df)  # the tasks read it from shared storage
    work = EmbedWork(ctx.layout.tiled_manifest, ctx.tiles_dir, ctx.layout.features.root, encoder_id, **kw)
    res = ctx.executor().map_slides(work, ctx.rows(df))
    n = _record_outcomes(ctx, "embed", res.outcomes)
    return StageReport("embed", "failed-slides" if n else "done", n_failed=n,
                       detail=f"{res.n_tasks} task(s), {res.retried_tasks} retried")


def embedded_slides(ctx: RunContext):
    df = ctx.manifest()
    ok = df["slide_id"].map(lambda s: ctx.layout.features.features_file(s).exists())
    return df[ok].reset_index(drop=True)


# -- train and decisions ---------------------------------------------------------------------------

def run_train(ctx: RunContext) -> StageReport:
    from pathstrat.training import train_cv

    df = embedded_slides(ctx)
    write_dataframe_atomic(ctx.cohort_manifest, df)
    tc = stage_train_config(ctx.cfg.train, features=str(ctx.features_dir), manifest=str(ctx.cohort_manifest),
                            out=str(ctx.run_dir), encoder_id=ctx.cfg.embed.encoder_id)
    train_cv(tc, overwrite=True)  # the runner re-runs train only when its state says so
    return StageReport("train", "done")


def run_stratify(ctx: RunContext) -> StageReport:
    from pathstrat import survival

    ran = []
    for sec, out in ((ctx.cfg.stratify, ctx.run_dir), (ctx.cfg.predictive, ctx.run_dir / "predictive")):
        if sec is None or not sec.enabled:
            continue
        kw = sec.model_dump()
        kw.pop("enabled")
        survival.stratify(ctx.run_dir / "predictions.csv", ctx.cohort_manifest, out_dir=out, **kw)
        ran.append(str(out.relative_to(ctx.run_dir)) or ".")
    if not ran:
        return StageReport("stratify", "not-run", detail="not configured")
    return StageReport("stratify", "done", detail="survival.json in " + ", ".join(ran))


def run_select(ctx: RunContext) -> StageReport:
    s = ctx.cfg.select
    if s is None or not s.enabled:
        return StageReport("select", "not-run", detail="not configured")
    from pathstrat import selection

    kw = s.model_dump()
    kw.pop("enabled")
    trial = kw.pop("trial")
    selection.run_selection(ctx.run_dir / "predictions.csv", ctx.run_dir, manifest=ctx.cohort_manifest,
                            **kw)
    if trial is None or not trial.pop("enabled", True):
        return StageReport("select", "done")
    from pathstrat.trial import run_trial_design

    run_trial_design(ctx.run_dir / "trial", selection=ctx.run_dir / "selection.json",
                     predictions=ctx.run_dir / "predictions.csv",
                     **{k: v for k, v in trial.items() if v is not None})
    return StageReport("select", "done", detail="trial design in trial/")


def run_heatmaps(ctx: RunContext) -> StageReport:
    h = ctx.cfg.heatmaps
    if not h.enabled:
        return StageReport("heatmaps", "not-run", detail="disabled")
    from pathstrat import heatmaps

    kw = h.model_dump()
    kw.pop("enabled")
    _, n = heatmaps.heatmap_run(ctx.run_dir, ctx.cohort_manifest, tiles_dir=ctx.tiles_dir, **kw)
    return StageReport("heatmaps", "done", detail=f"{n} slide(s) without heatmap" if n else "")


def run_report(ctx: RunContext) -> StageReport:
    r = ctx.cfg.report
    if not r.enabled:
        return StageReport("report", "not-run", detail="disabled")
    from pathstrat import report
    from pathstrat.runner.derived import derive_missing

    notes = derive_missing(ctx.run_dir, n_boot=r.n_boot, seed=r.seed)  # survival/selection not staged
    report.build_report(ctx.run_dir, manifest=ctx.cfg.cohort.manifest, n_boot=r.n_boot, seed=r.seed,
                        notes=notes)
    return StageReport("report", "done")


def _stratify_outputs(ctx: RunContext) -> list[Path]:
    outs = [ctx.run_dir / "survival.json"] if ctx.cfg.stratify is not None else []
    if ctx.cfg.predictive is not None:
        outs.append(ctx.run_dir / "predictive" / "survival.json")
    return outs


def definitions() -> list[StageDef]:
    """The seven stages in order, with what decides their rerun and what they produce."""
    rd = lambda *names: (lambda ctx: [ctx.run_dir / n for n in names])  # noqa: E731
    return [
        StageDef("tile", (), ("tiling",), lambda ctx: [ctx.layout.tiles.qc_table], run_tile,
                 ignore=("workers",)),
        StageDef("embed", ("tile",), ("embed",), lambda ctx: [ctx.features_dir], run_embed,
                 ignore=("workers", "batch_size", "device")),
        StageDef("train", ("embed",), ("train",), rd("metrics.json", "predictions.csv"), run_train,
                 ignore=("device",)),
        StageDef("stratify", ("train",), ("stratify", "predictive"), _stratify_outputs, run_stratify),
        StageDef("select", ("train",), ("select",), rd("selection.json"), run_select),
        StageDef("heatmaps", ("train",), ("heatmaps",), rd("heatmaps"), run_heatmaps),
        StageDef("report", ("stratify", "select", "heatmaps"), ("report",), rd("report.html"),
                 run_report),
    ]
