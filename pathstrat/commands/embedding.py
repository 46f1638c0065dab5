"""`pathstrat embed` and `pathstrat encoders list` (see pathstrat.cli for conventions)."""

from __future__ import annotations

from pathlib import Path

import typer

encoders_app = typer.Typer(help="Tile encoders: the registry and which weights are found.",
                           no_args_is_help=True)


def embed(
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Cohort manifest (CSV/Parquet)."),
    tiles: Path = typer.Option(..., "--tiles", help="Tiling output folder (holding tiles/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; writes features/<encoder>/."),
    encoder: str = typer.Option("builtin", "--encoder", "-e", help="Encoder id (pathstrat encoders list)."),
    weights: str = typer.Option(None, "--weights", help="Weights file/folder, or 'random' (tests only). "
                                "Default: the local Hugging Face cache (never downloads)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Tiles per forward pass."),
    workers: int = typer.Option(2, "--workers", "-j", help="Worker processes reading tiles (DataLoader)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    views: int = typer.Option(0, "--views", help="Also store N augmented views (features_views)."),
    shard: str = typer.Option(None, "--shard", help="i/N: embed only shard i of N (0-based), "
                              "e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT."),
    dtype: str = typer.Option("auto", "--dtype", help="Compute dtype on CUDA: auto (the spec's), "
                              "fp32, fp16, bf16. CPU always uses fp32."),
    seed: int = typer.Option(0, "--seed", help="Seed of random init and augmented views."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute even matching outputs."),
    gpus: str = typer.Option(None, "--gpus", help="One process per device over the shards: "
                             "'0,1,2,3', 'all', or 'cpu,cpu' (CPU processes)."),
) -> None:
    """Embed the tiles of every slide with a registered encoder (resumable, shardable)."""
    from pathstrat.cohort import load_manifest
    from pathstrat.encoders.embed import embed_cohort, embed_on_devices, parse_devices
    from pathstrat.errors import ConfigError

    if gpus is not None:
        if shard is not None:
            raise ConfigError("--gpus splits the cohort into shards itself; drop --shard.")
        argv = ["embed", "--manifest", str(manifest), "--tiles", str(tiles), "--out", str(out),
                "--encoder", encoder, "--batch-size", str(batch_size), "--workers", str(workers),
                "--views", str(views), "--dtype", dtype, "--seed", str(seed)]
        argv += (["--weights", str(weights)] if weights else []) + (["--overwrite"] if overwrite else [])
        load_manifest(manifest, check_files=False)  # refuse a bad manifest once, before forking
        rc = embed_on_devices(argv, parse_devices(gpus), out)
        if rc:
            raise typer.Exit(rc)
        return

    df = load_manifest(manifest, check_files=False)
    res = embed_cohort(df, tiles, out, encoder, weights=weights, batch_size=batch_size,
                       workers=workers, device=device, views=views, shard=shard, dtype=dtype,
                       seed=seed, overwrite=overwrite)
    typer.echo(f"{encoder}: {len(res.done)} embedded, {len(res.skipped)} up to date, "
               f"{len(res.failed)} failed; {res.n_tiles} tiles at {res.tiles_per_s:.1f} tiles/s "
               f"-> {res.features_dir}")
    if res.failed:
        typer.echo(f"failed slides are listed in {res.failures_path}", err=True)
        raise typer.Exit(3)


@encoders_app.command("list")
def list_encoders(
    weights: Path = typer.Option(None, "--weights", help="Also look for weights in this folder "
                                 "(<folder>/<file> or <folder>/<encoder id>/<file>)."),
) -> None:
    """Registered encoders: id, dim, input px, µm/px, dtype, licence, gated, weights found."""
    from pathstrat.encoders import list_specs, weights_found

    header = f"{'id':<16} {'dim':>5} {'input':>5} {'um/px':>5} {'dtype':<5} {'gated':<5} " \
             f"{'weights':<7} licence"
    typer.echo(header)
    for s in list_specs():
        found = "n/a" if not s.needs_weights else ("found" if weights_found(s, weights) else "missing")
        typer.echo(f"{s.id:<16} {s.dim:>5} {s.input_px:>5} {s.tile_mpp:>5g} {s.dtype:<5} "
                   f"{'yes' if s.gated else 'no':<5} {found:<7} {s.licence}")


@encoders_app.command("verify")
def verify_encoder(
    encoder_id: str = typer.Argument(..., help="Encoder id (pathstrat encoders list)."),
    weights: Path = typer.Option(..., "--weights", help="Checkpoint file or folder holding it."),
) -> None:
    """Check a downloaded checkpoint (keys, shapes, dtypes, sha256) against the encoder; exit 1
    when it would not load, so a long run is not started on a wrong file."""
    from pathstrat.encoders.verify import verify_checkpoint

    rep = verify_checkpoint(encoder_id, weights)
    for line in rep.lines():
        typer.echo(line)
    if not rep.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""
    app.command("embed")(embed)
    app.add_typer(encoders_app, name="encoders")
