"""CLI: `pathstrat spatial synth|build|fit|predict|pseudobulk` (see pathstrat.cli for conventions)."""

from __future__ import annotations

from pathlib import Path

import typer

spatial_app = typer.Typer(help="Spatial transcriptomics: Space Ranger ingest, expression from "
                          "morphology, programme maps on H&E-only slides.", no_args_is_help=True)


@spatial_app.command("synth")
def synth_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the generated samples."),
    n_samples: int = typer.Option(4, "--n-samples", help="ST samples (one patient each)."),
    n_he: int = typer.Option(2, "--n-he", help="Extra H&E-only slides (he_manifest.csv)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Generate Visium-like samples (Space Ranger layout) and H&E-only slides with planted
    morphology-expression links."""
    import pandas as pd

    from pathstrat.io import write_dataframe_atomic
    from pathstrat.synthetic import make_slide, make_visium_cohort

    samples, table = make_visium_cohort(out, n_samples=n_samples, seed=seed)
    rows = []
    for i in range(n_he):
        s = make_slide(out / "he" / f"HE{i + 1:02d}.tiff", width=4000, height=4000, mpp=0.5,
                       seed=10_000 + seed * 100 + i, texture_seed=0,
                       layout={"tissue": 0.6, "lymphocytes": 0.1 + 0.25 * (i % 2)})
        rows.append({"slide_id": s.path.stem, "patient_id": f"HP{i + 1:02d}", "path": str(s.path)})
    if rows:
        write_dataframe_atomic(out / "he_manifest.csv", pd.DataFrame(rows))
    typer.echo(f"{len(samples)} ST samples -> {table}; {len(rows)} H&E-only slides"
               + (f" -> {out / 'he_manifest.csv'}" if rows else ""))


@spatial_app.command("build")
def build_cmd(
    samples: Path = typer.Option(..., "--samples", help="CSV: sample_id, patient_id, slide, "
                                 "spaceranger (outs folder); relative paths resolve against it."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for <sample_id>.h5ad."),
    encoder: str = typer.Option("builtin", "--encoder", "-e", help="Encoder id (pathstrat encoders list)."),
    weights: str = typer.Option(None, "--weights", help="Weights file/folder, or 'random' (tests only)."),
    device: str = typer.Option("auto", "--device"),
    tile_um: float = typer.Option(112.0, "--tile-um", help="Spot tile side in µm."),
    tile_mpp: float = typer.Option(0.5, "--tile-mpp", help="Spot tile resolution (µm/px)."),
    bin_size: float = typer.Option(None, "--bin-size", help="Visium HD bin (2, 8, 16 µm)."),
    no_content_check: bool = typer.Option(False, "--no-content-check",
                                          help="Skip the hires-image vs slide comparison."),
) -> None:
    """Space Ranger outputs + slides -> one .h5ad per sample (counts, spot embeddings)."""
    import pandas as pd

    from pathstrat.errors import ManifestError
    from pathstrat.spatial.spots import build_sample

    table = pd.read_csv(samples, dtype=str)
    need = [c for c in ("sample_id", "slide", "spaceranger") if c not in table.columns]
    if need:
        raise ManifestError(f"--samples '{samples}' lacks columns {need}; it needs sample_id, "
                            "slide, spaceranger (and optionally patient_id, mpp)")
    base = samples.resolve().parent
    for r in table.itertuples():
        slide = Path(r.slide) if Path(r.slide).is_absolute() else base / r.slide
        sr = Path(r.spaceranger) if Path(r.spaceranger).is_absolute() else base / r.spaceranger
        mpp = getattr(r, "mpp", None)
        ad = build_sample(sr, slide, out / f"{r.sample_id}.h5ad", encoder=encoder, weights=weights,
                          device=device, sample_id=r.sample_id,
                          patient_id=getattr(r, "patient_id", None) or r.sample_id,
                          mpp=float(mpp) if mpp and mpp == mpp else None, tile_um=tile_um,
                          tile_mpp=tile_mpp, bin_size_um=bin_size,
                          check_content=not no_content_check)
        typer.echo(f"{r.sample_id}: {ad.n_obs} spots x {ad.n_vars} genes, "
                   f"{ad.uns['pathstrat']['spots_per_s']:.1f} spots/s -> {out / (r.sample_id + '.h5ad')}")


@spatial_app.command("fit")
def fit_cmd(
    samples: list[Path] = typer.Option(..., "--samples", help="Sample .h5ad files or folders (repeat)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (benchmark.csv, model.npz ...)."),
    model: str = typer.Option("ridge", "--model", help="Comma list of ridge, mlp, ridge_smooth; "
                              "all are cross-validated, the first is saved."),
    genes: str = typer.Option("", "--genes", help="Comma-separated genes (default: top HVGs)."),
    n_top: int = typer.Option(50, "--n-top", help="Highly variable genes when --genes is empty."),
    hvg_bins: int = typer.Option(20, "--hvg-bins", help="Mean bins of the HVG dispersion ranking."),
    programmes: str = typer.Option(None, "--programmes", help="JSON {name: [genes]} or 'planted'."),
    folds: int = typer.Option(5, "--folds", help="Patient-level folds (0 = no cross-validation)."),
    n_boot: int = typer.Option(200, "--n-boot", help="Patient bootstrap resamples for CIs."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Cross-validate expression models on ST samples (by patient) and save the first one."""
    from pathstrat.io import as_list
    from pathstrat.spatial.benchmark import fit_and_evaluate
    from pathstrat.spatial.predict import load_programmes

    res = fit_and_evaluate(samples, out, models=as_list(model), genes=as_list(genes) or None,
                           n_top=n_top, n_bins=hvg_bins, programmes=load_programmes(programmes),
                           n_folds=folds, n_boot=n_boot, seed=seed)
    for r in res.benchmark.itertuples():
        typer.echo(f"{r.model}: mean Pearson {r.pearson_mean:.3f} (median {r.pearson_median:.3f}) "
                   f"over {r.n_genes} genes, {r.n_spots} spots, {r.n_patients} patients")
    typer.echo(f"model -> {res.model_path}")


@spatial_app.command("predict")
def predict_cmd(
    model: Path = typer.Option(..., "--model", help="model.npz from `pathstrat spatial fit`."),
    manifest: Path = typer.Option(..., "--manifest", "-m", help="H&E manifest (slide_id, path, ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    weights: str = typer.Option(None, "--weights", help="Encoder weights (as for `embed`)."),
    device: str = typer.Option("auto", "--device"),
    pairs: str = typer.Option(None, "--pairs", help="Co-localisation pairs a:b,c:d (default: all)."),
    min_tissue: float = typer.Option(0.5, "--min-tissue", help="Minimum tissue fraction per tile."),
    heatmaps: bool = typer.Option(True, "--heatmaps/--no-heatmaps", help="Write heatmap PNGs."),
) -> None:
    """Programme maps on every tissue tile of each slide; slide_programmes.csv with summaries
    and manifest_programmes.csv (the manifest plus those columns, for train/stratify)."""
    from pathstrat.cohort import load_manifest
    from pathstrat.encoders import build_encoder
    from pathstrat.errors import EmptyTissueError, MissingMPPError, SlideReadError
    from pathstrat.io import FailureLog, as_list, ensure_writable_dir, write_dataframe_atomic
    from pathstrat.spatial.maps import programme_map, slide_summaries, write_map_outputs
    from pathstrat.spatial.predict import FittedExpressionModel

    fitted = FittedExpressionModel.load(model)
    df = load_manifest(manifest, check_files=True)
    outd = ensure_writable_dir(out)
    enc = build_encoder(str(fitted.meta.get("encoder", {}).get("encoder_id", "builtin")),
                        weights=weights, device=device)
    pr = [tuple(p.split(":", 1)) for p in as_list(pairs)] if pairs else None
    rows = []
    import pandas as pd

    failures = FailureLog(outd / "failures.csv", "spatial-predict")
    for r in df.itertuples():
        mpp = getattr(r, "mpp", None)
        try:
            pm = programme_map(r.path, fitted, slide_id=str(r.slide_id), encoder=enc,
                               mpp=float(mpp) if mpp is not None and mpp == mpp else None,
                               min_tissue=min_tissue)
        except (SlideReadError, EmptyTissueError, MissingMPPError) as exc:
            failures.add(str(r.slide_id), r.path, exc)
            continue
        write_map_outputs(pm, outd / "maps", slide_path=r.path, heatmaps=heatmaps)
        rows.append({"slide_id": str(r.slide_id), **slide_summaries(pm, pr)})
    summ = pd.DataFrame(rows, columns=["slide_id"] if not rows else None)
    write_dataframe_atomic(outd / "slide_programmes.csv", summ)
    merged = df.drop(columns=[c for c in summ.columns if c in df.columns and c != "slide_id"])
    merged = merged.merge(summ, on="slide_id", how="left")
    write_dataframe_atomic(outd / "manifest_programmes.csv", merged)
    typer.echo(f"{len(rows)} slides -> {outd / 'slide_programmes.csv'}; manifest with programme "
               f"columns -> {outd / 'manifest_programmes.csv'}")
    if len(failures):
        failures.write()
        typer.echo(f"{len(failures)} slides failed; see {failures.path}", err=True)
        raise typer.Exit(3)


@spatial_app.command("pseudobulk")
def pseudobulk_cmd(
    samples: list[Path] = typer.Option(..., "--samples", help="Sample .h5ad files or folders (repeat)."),
    programmes: str = typer.Option(..., "--programmes", help="JSON {name: [genes]} or 'planted'."),
    out: Path = typer.Option(..., "--out", "-o", help="CSV of slide_id, patient_id, pb_<programme>."),
) -> None:
    """Per-sample programme scores of summed ST counts: MIL regression targets (train --target pb_x)."""
    from pathstrat.io import write_dataframe_atomic
    from pathstrat.spatial.benchmark import sample_paths
    from pathstrat.spatial.maps import pseudobulk_targets
    from pathstrat.spatial.predict import load_programmes
    from pathstrat.spatial.spots import read_samples

    ad = read_samples(sample_paths(samples))
    df = pseudobulk_targets(ad, load_programmes(programmes))
    write_dataframe_atomic(out, df)
    n_prog = sum(c.startswith("pb_") for c in df.columns)
    typer.echo(f"{len(df)} samples x {n_prog} programmes -> {out}")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""
    app.add_typer(spatial_app, name="spatial")
