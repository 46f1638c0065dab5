"""CLI commands of the tiling stage: `pathstrat tile` (see pathstrat.cli for conventions)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""
    app.command("tile")(tile)


def tile(
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Cohort manifest (CSV or Parquet) "
                                  "with slide_id, path and optionally mpp."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: tiles/, qc/, qc.csv, "
                             "failures.csv."),
    target_mpp: float = typer.Option(0.5, "--target-mpp", help="µm per pixel of the tiles."),
    tile_px: int = typer.Option(224, "--tile-px", help="Tile side in pixels at --target-mpp."),
    overlap_px: int = typer.Option(0, "--overlap-px", help="Overlap between neighbouring tiles."),
    min_tissue: float = typer.Option(0.25, "--min-tissue", help="Minimum tissue fraction per tile."),
    mask_mpp: float = typer.Option(8.0, "--mask-mpp", help="µm per pixel of the tissue mask."),
    workers: int = typer.Option(1, "--workers", "-j", help="Slides processed in parallel."),
    mpp: float | None = typer.Option(None, "--mpp", help="Level-0 µm/px for slides whose manifest "
                                     "row has no mpp value (overrides their metadata)."),
    force: bool = typer.Option(False, "--overwrite", "--force", help="Retile slides even when their tiles file "
                               "already matches these parameters."),
    mpp_override: bool = typer.Option(False, "--mpp-override", help="Trust manifest/--mpp values "
                                      "even when they are more than 2x from the file's own MPP."),
) -> None:
    """Detect tissue and write the tile grid of every slide (tiles/<slide_id>.h5 + QC).

    Slides that cannot be tiled (corrupt, unreadable, missing, no MPP, no tissue) are listed in
    OUT/failures.csv and the batch goes on; the exit status is then 3. Reruns skip slides whose
    tiles file already has the same parameters.
    """
    from pydantic import ValidationError

    from pathstrat.cohort import load_manifest
    from pathstrat.errors import ConfigError
    from pathstrat.tiling import TilingParams, tile_cohort
    from pathstrat.vocabulary import format_validation_error

    try:
        params = TilingParams(target_mpp=target_mpp, tile_px=tile_px, overlap_px=overlap_px,
                              min_tissue=min_tissue, mask_mpp=mask_mpp)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "invalid tiling options", TilingParams)) from exc
    df, _problems = load_manifest(manifest, on_missing="record")  # missing files: failures.csv
    result = tile_cohort(df, out, params, workers=workers, mpp=mpp, force=force,
                         mpp_override=mpp_override)
    typer.echo(f"tiling: {result.summary()}. QC table: {result.qc_path}")
    if result.n_failed:
        typer.echo(f"{result.n_failed} slide(s) failed; reasons in {result.failures_path}", err=True)
        raise typer.Exit(3)
