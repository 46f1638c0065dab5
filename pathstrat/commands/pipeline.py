"""`pathstrat run`, `pathstrat demo`, `pathstrat doctor` (see pathstrat.cli for conventions)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add run, demo and doctor."""

    @app.command("run")
    def run_cmd(
        config: Path = typer.Argument(..., help="Pipeline YAML (see configs/example_cohort.yaml)."),
        set_: list[str] = typer.Option([], "--set", help="Override a key: --set train.folds=3 (repeatable)."),
        executor: str = typer.Option(None, "--executor", help="local | slurm | ray, or another registered executor (default: config)."),
        address: str = typer.Option(None, "--address", help="Ray cluster address (with --executor ray)."),
        stage: list[str] = typer.Option([], "--stage", help="Run only these stages (repeatable)."),
        force: bool = typer.Option(False, "--overwrite", "--force", help="Rerun stages even when outputs match (--force: the old name)."),
    ) -> None:
        """Run a whole study from one config: tile, embed, train, stratify, select, heatmaps, report."""
        from pathstrat.config import load_config
        from pathstrat.errors import ConfigError
        from pathstrat.runner import run_pipeline

        if executor is not None:
            from pathstrat.executors import load_executors

            names = load_executors()
            if executor not in names:
                raise ConfigError(f"--executor must be one of {', '.join(names)}, not '{executor}'")
        cfg = load_config(config, set_)
        summary = run_pipeline(cfg, executor=executor, address=address, stages=stage or None, force=force)
        _print_summary(summary)
        if summary.exit_code:
            raise typer.Exit(summary.exit_code)

    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("pathstrat-demo"), "--out", help="Folder for the cohort and the run."),
        n_patients: int = typer.Option(60, "--n-patients", help="Synthetic patients."),
        seed: int = typer.Option(0, "--seed"),
        set_: list[str] = typer.Option([], "--set", help="Override a key of configs/demo.yaml."),
        spatial: bool = typer.Option(False, "--spatial", help="Also run the spatial-transcriptomics step (OUT/spatial; needs the [spatial] extra)."),
    ) -> None:
        """Generate a synthetic cohort with planted signal and run the whole pipeline on it."""
        from pathstrat.runner.demo import run_demo, run_spatial_demo

        summary = run_demo(out, n_patients=n_patients, seed=seed, overrides=set_)
        _print_summary(summary)
        report = summary.run_dir / "report.html"
        typer.echo(f"report: {report.resolve()}")
        if spatial:
            from pathstrat.commands import run_app

            res = run_spatial_demo(out / "spatial", lambda argv: run_app(app, argv), seed=seed)
            progs = {k.split("_")[1]: v for k, v in res["benchmark"].items()
                     if k.startswith("programme_") and k.endswith("_pearson")}
            typer.echo("spatial: programme Pearson (out of fold) "
                       + ", ".join(f"{k} {v:.2f}" for k, v in progs.items())
                       + f"; slide columns {res['slide_columns']}")
        if summary.exit_code:
            raise typer.Exit(summary.exit_code)

    @app.command("init")
    def init_cmd(
        out: Path = typer.Argument(Path("pathstrat.yaml"), help="Config file to write."),
        template: str = typer.Option("cohort", "--template", help="cohort (your own study) | demo."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
    ) -> None:
        """Write a commented pipeline config to start from (`pathstrat run FILE` runs it)."""
        from pathstrat.config import TEMPLATES, shipped_config
        from pathstrat.errors import ConfigError
        from pathstrat.io import write_text_atomic

        if template not in TEMPLATES:
            raise ConfigError(f"--template must be one of {', '.join(TEMPLATES)}, not '{template}'.")
        if out.exists() and not overwrite:
            raise ConfigError(f"{out} exists; pass --overwrite to replace it or name another file.")
        write_text_atomic(out, shipped_config(TEMPLATES[template]).read_text())
        typer.echo(f"wrote {out}: edit cohort.manifest and the targets, then `pathstrat run {out}`")

    @app.command("doctor")
    def doctor_cmd(
        out: Path = typer.Option(None, "--out", help="Where outputs will go (free disk is measured there)."),
    ) -> None:
        """Versions, OpenSlide, torch/CUDA/GPUs, encoder weights and the HF cache, free disk, Slurm
        and Ray, each as ok / warn / error; exits 1 when something required is broken."""
        from pathstrat.doctor import run_checks

        section = None
        checks = run_checks(out)
        for c in checks:
            if c.section != section:
                section = c.section
                typer.echo(f"[{section}]")
            typer.echo(f"  {c.level:<5} {c.name:<22} {c.detail}")
        n = {lv: sum(c.level == lv for c in checks) for lv in ("warn", "error")}
        typer.echo(f"{n['error']} error(s), {n['warn']} warning(s)")
        if n["error"]:
            raise typer.Exit(1)


def _print_summary(summary) -> None:
    for s in summary.stages:
        extra = f", {s.n_failed} failed" if s.n_failed else ""
        typer.echo(f"{s.name:<9} {s.status:<13} {s.seconds:7.1f} s{extra}")
    typer.echo(f"run directory: {summary.run_dir}")
    if summary.n_failed:
        typer.echo(f"{summary.n_failed} slide(s) failed: see {summary.run_dir / 'failures.csv'}")
