"""CLI: `pathstrat stratify`, `select`, `heatmap`, `report` (see pathstrat.cli for conventions)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""

    @app.command("stratify")
    def stratify_cmd(
        predictions: Path = typer.Option(..., "--predictions", help="predictions.csv (slide or patient rows)."),
        manifest: Path = typer.Option(..., "--manifest", help="Manifest or clinical table with patient_id, time, event."),
        score_col: str = typer.Option("risk", "--score-col", help="Score column; higher = earlier event."),
        time_col: str = typer.Option(..., "--time-col", help="Follow-up time column."),
        event_col: str = typer.Option(..., "--event-col", help="Event column (1 = event, 0 = censored)."),
        out: Path = typer.Option(..., "--out", help="Output folder (survival.json, figures/)."),
        cutoff: str = typer.Option("median", "--cutoff", help="median | tertiles | VALUE[,VALUE]; fitted out of fold."),
        arm_col: str = typer.Option(None, "--arm-col", help="Treatment arm column (2 levels) for score x arm."),
        covariates: str = typer.Option("", "--covariates", help="Comma-separated covariates for multivariable Cox."),
        target: str = typer.Option(None, "--target", help="Target to use when predictions hold several."),
        train_scores: Path = typer.Option(None, "--train-scores", help="Scores the cut-off is fitted on: per-fold training scores (default: train_scores.csv beside predictions, else other folds' OOF scores), or a development cohort's predictions when --predictions has no folds."),
        times: str = typer.Option("", "--times", help="Comma-separated times for time-dependent AUC (default: event-time quartiles)."),
        n_boot: int = typer.Option(500, "--n-boot", help="Bootstrap resamples for CIs."),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Risk groups, Kaplan-Meier, log-rank, Cox and C-index of a score against survival."""
        from pathstrat.io import as_list
        from pathstrat.survival import stratify

        res = stratify(predictions, manifest, score_col=score_col, time_col=time_col,
                       event_col=event_col, out_dir=out, cutoff=cutoff, arm_col=arm_col,
                       covariates=as_list(covariates), target=target, train_scores=train_scores,
                       td_auc_times=[float(t) for t in as_list(times)] or None, n_boot=n_boot,
                       seed=seed)
        s = res.summary
        typer.echo(f"C-index {s['c_index']:.3f} ({s['c_index_ci_low']:.3f}-{s['c_index_ci_high']:.3f}); "
                   f"log-rank chi2 {s['logrank_chi2']:.2f} p={s['logrank_p']:.3g}; "
                   f"HR per unit {s['cox_hr']:.3f} ({s['cox_ci_low']:.3f}-{s['cox_ci_high']:.3f}) "
                   f"p={s['cox_p']:.3g} -> {out / 'survival.json'}")

    @app.command("select")
    def select_cmd(
        predictions: Path = typer.Option(..., "--predictions", help="Development predictions (out of fold)."),
        out: Path = typer.Option(..., "--out", help="Output folder (selection.json, selection.csv)."),
        rule: str = typer.Option("sensitivity", "--rule", help="sensitivity | specificity | npv | ppv."),
        value: float = typer.Option(0.95, "--value", help="Target value of the rule's metric."),
        holdout: Path = typer.Option(None, "--holdout", help="Held-out predictions (default: out of fold)."),
        target: str = typer.Option(None, "--target", help="Target to use when predictions hold several."),
        manifest: Path = typer.Option(None, "--manifest", help="Clinical table for --label-col/--response-col."),
        label_col: str = typer.Option(None, "--label-col", help="Biomarker column (default: predictions' y_true)."),
        response_col: str = typer.Option(None, "--response-col", help="Response column (0/1) for response rates."),
        score_col: str = typer.Option("score", "--score-col"),
    ) -> None:
        """Choose a threshold for a target sensitivity/specificity/NPV and report selection numbers."""
        from pathstrat.selection import run_selection

        res = run_selection(predictions, out, target=target, rule=rule, value=value,
                            holdout=holdout, manifest=manifest, label_col=label_col,
                            response_col=response_col, score_col=score_col)
        h = res.get("heldout") or res["development"]
        typer.echo(f"threshold {res['threshold']:.4g}: sensitivity {h['sensitivity']['value']:.3f}, "
                   f"specificity {h['specificity']['value']:.3f}, NPV {h['npv']['value']:.3f}, "
                   f"spared {h['fraction_spared']['value']:.1%} -> {out / 'selection.json'}")

    @app.command("heatmap")
    def heatmap_cmd(
        run: Path = typer.Option(..., "--run", help="Run directory with attention/<slide_id>.h5."),
        manifest: Path = typer.Option(None, "--manifest", help="Manifest with slide paths (default: the run config's manifest)."),
        out: Path = typer.Option(None, "--out", help="Output folder (default RUNDIR/heatmaps)."),
        slides: str = typer.Option("", "--slides", help="Comma-separated slide ids (default: highest/lowest-scored patients)."),
        target: str = typer.Option(None, "--target", help="Only value maps of this target."),
        top_k: int = typer.Option(8, "--top-k", help="Tiles per montage row."),
        tiles_dir: Path = typer.Option(None, "--tiles-dir", help="Folder of tiles/<slide_id>.h5 for tile geometry."),
    ) -> None:
        """Attention/score heatmaps on thumbnails, top/bottom tiles, QuPath GeoJSON."""
        from pathstrat.heatmaps import heatmap_run
        from pathstrat.io import as_list

        index, n_failed = heatmap_run(run, manifest, out, slides=as_list(slides) or None,
                                      target=target, top_k=top_k, tiles_dir=tiles_dir)
        typer.echo(f"{index['slide_id'].nunique() if len(index) else 0} slide(s) -> "
                   f"{out or run / 'heatmaps'}")
        if n_failed:
            typer.echo(f"{n_failed} slide(s) failed: see failures.csv", err=True)
            raise typer.Exit(3)

    @app.command("report")
    def report_cmd(
        run: Path = typer.Argument(..., help="Run directory."),
        manifest: Path = typer.Option(None, "--manifest", help="Manifest, for the cohort flow counts."),
        out: Path = typer.Option(None, "--out", help="HTML file (default RUNDIR/report.html)."),
        n_boot: int = typer.Option(200, "--n-boot", help="Bootstrap resamples for curve bands."),
        compute: bool = typer.Option(True, "--compute/--no-compute", help="Compute missing survival/selection outputs with defaults."),
        show_paths: bool = typer.Option(False, "--show-paths", help="Keep absolute file paths (default: shortened to the file name)."),
    ) -> None:
        """One self-contained report.html (images embedded, opens offline)."""
        from pathstrat.report import build_report
        from pathstrat.runner.derived import derive_missing

        notes = derive_missing(run, n_boot=n_boot) if compute else {}
        typer.echo(str(build_report(run, manifest=manifest, out=out, n_boot=n_boot, notes=notes,
                                    show_paths=show_paths)))
