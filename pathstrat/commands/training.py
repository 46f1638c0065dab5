"""`pathstrat train` and `pathstrat predict` (see pathstrat.cli for conventions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""

    @app.command("train")
    def train(
        ctx: typer.Context,
        features: Path = typer.Option(None, "--features", help="Folder of <slide_id>.h5 feature files."),
        manifest: Path = typer.Option(None, "--manifest", help="Cohort manifest (CSV/Parquet)."),
        target: list[str] = typer.Option([], "--target", help="Label column (repeat for multi-task); "
                                         "'a,b' multi-label; 'col:regression' forces a kind; "
                                         "'survival' with --time-col/--event-col."),
        model: str = typer.Option("abmil", "--model", help="MIL model (see --list-models)."),
        folds: int = typer.Option(5, "--folds", help="Cross-validation folds (by patient)."),
        repeats: int = typer.Option(1, "--repeats", help="Repeats of the K-fold with other seeds."),
        seed: int = typer.Option(0, "--seed"),
        out: Path = typer.Option(None, "--out", help="Run directory to write."),
        time_col: Optional[str] = typer.Option(None, "--time-col", help="Survival time column."),  # noqa: UP045
        event_col: Optional[str] = typer.Option(None, "--event-col", help="Survival event column (1 = event)."),  # noqa: UP045
        survival_loss: str = typer.Option("cox", "--survival-loss", help="cox | discrete."),
        split_col: Optional[str] = typer.Option(None, "--split-col", help="Fixed train/val/test column instead of K-fold."),  # noqa: UP045
        level: str = typer.Option("slide", "--level", help="slide | patient (all slides of a patient in one bag)."),
        epochs: int = typer.Option(30, "--epochs"),
        max_tiles: int = typer.Option(1024, "--max-tiles", help="Tiles sampled per bag in training (0 = all)."),
        batch_size: int = typer.Option(8, "--batch-size"),
        lr: float = typer.Option(2e-4, "--lr"),
        device: str = typer.Option("auto", "--device"),
        store: str = typer.Option("memory", "--store", help="memory | mmap (features read once either way)."),
        schedule: str = typer.Option("constant", "--schedule", help="constant | cosine | onecycle (lr over the epochs of a fold)."),
        balanced_sampling: bool = typer.Option(False, "--balanced-sampling", help="Draw bags inversely to class frequency."),
        input_scaling: str = typer.Option("auto", "--input-scaling", help="auto | standardize | none: per-feature "
                                          "z-scoring fitted on each training fold, saved in the checkpoint "
                                          "(auto: on unless the encoder/feature files declare normalised features)."),
        val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Training-fold patients held out for "  # noqa: UP045
                                                     "early stopping (default auto: 0.2 when the training fold has >= --early-stop-min-patients patients, else 0 = fixed epochs)."),
        early_stop_min_patients: int = typer.Option(300, "--early-stop-min-patients", help="Training-fold patients from "
                                                    "which auto --val-fraction holds out 0.2 for early stopping."),
        patience: int = typer.Option(8, "--patience", help="Early-stopping patience (epochs)."),
        bucket: str = typer.Option("auto", "--bucket", help="auto | on | off: batch bags of similar "
                                   "length (auto: when padding would cost > 1.2x the unpadded compute)."),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default auto: 1 for small bags)."),  # noqa: UP045
        workers: Optional[str] = typer.Option(None, "--workers", help="Folds trained at once in worker processes "  # noqa: UP045
                                              "(default auto: on CPU with small bags, one per core; 1 = one after another)."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML with the same keys (CLI flags win)."),  # noqa: UP045
        hparam: list[str] = typer.Option([], "--hparam", help="Model hyperparameter key=value (repeatable)."),
        list_models: bool = typer.Option(False, "--list-models", help="Print the MIL model registry and exit."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous training run in --out."),
    ) -> None:
        """Cross-validated MIL training with patient-grouped folds; writes RUNDIR."""
        if list_models:
            from pathstrat.mil import MODELS

            for _, spec in MODELS.items():
                typer.echo(json.dumps(spec.describe()))
            return
        import yaml
        from click.core import ParameterSource
        from pydantic import ValidationError

        from pathstrat.errors import ConfigError
        from pathstrat.training import TrainConfig, train_cv
        from pathstrat.vocabulary import format_validation_error

        base = yaml.safe_load(config.read_text()) if config else {}
        given = {"features": features, "manifest": manifest, "targets": target or None,
                 "out": out, "time_col": time_col, "event_col": event_col, "split_col": split_col}
        cli = {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items() if v is not None}
        flags = dict(model=model, folds=folds, repeats=repeats, seed=seed,
                     survival_loss=survival_loss, level=level, epochs=epochs,
                     max_tiles=max_tiles or None, batch_size=batch_size, lr=lr, device=device,
                     store=store, schedule=schedule, balanced_sampling=balanced_sampling,
                     input_scaling=input_scaling, val_fraction=val_fraction, patience=patience,
                     early_stop_min_patients=early_stop_min_patients,
                     threads=threads, bucket=bucket,
                     workers=int(workers) if workers and workers.isdigit() else workers)
        # flags left at their default do not override values from --config
        cli.update({k: v for k, v in flags.items()
                    if not base or ctx.get_parameter_source(k) != ParameterSource.DEFAULT})
        hp = dict(base.get("hparams", {}))
        for kv in hparam:
            k, sep, v = kv.partition("=")
            if not sep:
                raise ConfigError(f"--hparam '{kv}' must be key=value, e.g. --hparam dim=256.")
            hp[k] = yaml.safe_load(v)
        try:
            cfg = TrainConfig(**{**base, **cli, "hparams": hp})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "invalid training options", TrainConfig)) from exc
        run = train_cv(cfg, overwrite=overwrite)
        typer.echo(f"run written to {run}")
        metrics = json.loads((run / "metrics.json").read_text())
        for tgt, ms in metrics.items():
            parts = [f"{m}={v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                     for m, v in ms.items() if m in ("auroc", "accuracy", "c_index", "pearson_r", "mae")
                     and v["mean"] is not None]
            typer.echo(f"{tgt}: " + ", ".join(parts))
        if (run / "failures.csv").exists():
            raise typer.Exit(3)

    @app.command("predict")
    def predict(
        run: Path = typer.Option(None, "--run", help="Run directory from `pathstrat train`."),
        package: Path = typer.Option(None, "--package", help="A model package (folder or .zip) instead of --run."),
        remote: str = typer.Option(None, "--remote", help="URL of a `pathstrat serve` service instead of --run."),
        token: str = typer.Option(None, "--token", help="With --remote: your API token.", envvar="PATHSTRAT_TOKEN"),
        features: Path = typer.Option(None, "--features", help="Folder of <slide_id>.h5 feature files."),
        manifest: Path = typer.Option(..., "--manifest", help="Cohort manifest (CSV/Parquet)."),
        out: Path = typer.Option(..., "--out", help="Output folder."),
        slides: bool = typer.Option(False, "--slides", help="With --package: tile and embed the manifest's slides as pinned (into OUT/work) instead of --features."),
        weights: str = typer.Option(None, "--weights", help="With --slides: the encoder's weights (must match the pinned sha256)."),
        allow_overlap: bool = typer.Option(False, "--allow-overlap", help="Predict patients that were in training."),
        public_key: Path = typer.Option(None, "--public-key", help="With --package: the sponsor's public key."),
        require_signature: bool = typer.Option(False, "--require-signature", help="With --package: refuse unsigned packages."),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """Ensemble of a run's (or a package's) fold models on a new cohort (refuses training
        patients; a package refuses features made another way and reports an OOD check)."""
        from pathstrat.errors import ConfigError

        if sum(x is not None for x in (run, package, remote)) != 1:
            raise ConfigError("predict needs exactly one of --run RUNDIR, --package PACKAGE or --remote URL.")
        if remote is not None:
            from pathstrat.sharing.serve import predict_remote

            if not token:
                raise ConfigError("--remote needs --token (or PATHSTRAT_TOKEN).")
            dest = predict_remote(remote, token, features, manifest, out)
        elif package is not None and slides:
            from pathstrat.sharing.predict import predict_package_from_slides

            dest = predict_package_from_slides(package, manifest, out, weights=weights,
                                               public_key=public_key,
                                               require_signature=require_signature, device=device)
        elif package is not None:
            from pathstrat.sharing import predict_package

            if features is None:
                raise ConfigError("predict --package needs --features DIR, or --slides to tile and embed.")
            dest = predict_package(package, features, manifest, out, public_key=public_key,
                                   require_signature=require_signature, device=device)
        elif features is None:
            raise ConfigError("predict --run needs --features DIR.")
        else:
            from pathstrat.training import predict as run_predict

            dest = run_predict(run, features, manifest, out, allow_overlap=allow_overlap, device=device)
        typer.echo(f"predictions written to {dest / 'predictions.csv'}")
        if (dest / "failures.csv").exists():
            raise typer.Exit(3)
