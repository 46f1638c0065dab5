"""Tiles -> features: ``features/<encoder_id>/<slide_id>.h5`` for every slide of a cohort.

One DataLoader runs over fixed-size chunks of tile coordinates of all slides (in manifest /
shard order). Workers keep their own slide handles (a slide is opened once per worker, never
per tile), read and resize tiles (and augmented views), while the main process runs the
encoder under ``torch.inference_mode`` (autocast on CUDA). Because the loader prefetches
across slide boundaries, reading the next slide overlaps compute of the current one.

Each slide is written atomically once all its chunks are embedded, so a failing slide leaves
no file; its error goes to ``failures.csv`` and the batch goes on. Reruns skip slides whose
file records the same encoder, weights hash, tile params and transform. The loader side (the
dataset of tile chunks that DataLoader workers read) is :mod:`pathstrat.encoders.loader`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pathstrat.encoders.loader import AUGMENTATION, ChunkDataset, SlideJob, make_loader
from pathstrat.errors import ConfigError, SchemaError
from pathstrat.io import FailureLog, clean_stale_tmp, ensure_writable_dir, params_hash
from pathstrat.layout import FeaturesLayout, resolve_tiles_dir
from pathstrat.vocabulary import format_validation_error

log = logging.getLogger(__name__)

EMBED_STAGE = "embed"


class EmbedParams(BaseModel):
    """Parameters of :func:`embed_cohort` (the pipeline's ``embed:`` section is built from it)."""

    model_config = ConfigDict(extra="forbid")

    encoder_id: str = Field("builtin", description="Encoder id from `pathstrat encoders list`.")
    weights: str | None = Field(None, description="Local weights file/dir, 'random' (tests only) or null = HF cache.")
    batch_size: int = Field(64, ge=1, description="Tiles per forward pass.")
    workers: int = Field(2, ge=0, description="DataLoader workers reading tiles.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    views: int = Field(0, ge=0, description="Augmented feature views stored per slide (0 = none).")
    dtype: str | None = Field(None, description="Compute dtype (null = the encoder spec's).")
    seed: int = Field(0, description="Seed of random init / augmented views.")

    @field_validator("encoder_id")
    @classmethod
    def _registered(cls, v: str) -> str:
        from pathstrat.encoders.spec import get_spec
        from pathstrat.errors import UnknownNameError

        try:
            get_spec(v)
        except UnknownNameError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        kind, _, index = v.partition(":")
        if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
            raise ValueError(f"device '{v}' is not 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str | None) -> str | None:
        from pathstrat.encoders.spec import DTYPES

        if v not in (None, "auto") and v not in DTYPES:
            raise ValueError(f"dtype '{v}' is not one of {sorted(DTYPES)} (or 'auto')")
        return v


def check_params(**kw: Any) -> EmbedParams:
    """:class:`EmbedParams` from keyword arguments; one :class:`ConfigError` naming each bad one."""
    try:
        return EmbedParams(**kw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "embedding options", EmbedParams)) from None


# ---------------------------------------------------------------------------------------------
# sharding


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"i/N"`` (0 <= i < N) -> (i, N); None stays None."""
    if shard is None or shard == "":
        return None
    if isinstance(shard, tuple):
        i, n = shard
    else:
        try:
            i_s, n_s = str(shard).split("/")
            i, n = int(i_s), int(n_s)
        except ValueError:
            raise ConfigError(f"`shard` '{shard}' must look like i/N, e.g. 0/4 "
                              "(0-based index i of N shards)") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"`shard` {i}/{n}: need N >= 1 and 0 <= i < N (Slurm: "
                          "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return int(i), int(n)


def _slide_key(slide_id: str) -> str:
    return hashlib.sha256(str(slide_id).encode()).hexdigest()


def shard_slides(slide_ids: list[str], shard: tuple[int, int] | None) -> list[str]:
    """Slides of shard (i, N): rank slides by sha256(slide_id), take every N-th from i.

    The ranking depends only on the ids, so the partition is stable under any reordering of
    the manifest, every slide lands in exactly one shard and shards differ by at most one.
    """
    if shard is None:
        return list(slide_ids)
    i, n = shard
    ranked = sorted(slide_ids, key=_slide_key)
    mine = set(ranked[i::n])
    return [s for s in slide_ids if s in mine]


# ---------------------------------------------------------------------------------------------
# jobs (SlideJob and the loader that reads them: pathstrat.encoders.loader)


@dataclass
class EmbedResult:
    """What :func:`embed_cohort` did (ids per outcome, tile count, timing, files)."""

    features_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    n_tiles: int = 0
    seconds: float = 0.0
    failures_path: Path | None = None
    shard: tuple[int, int] | None = None

    @property
    def tiles_per_s(self) -> float:
        return self.n_tiles / max(self.seconds, 1e-9)


def _embed_hash(encoder, tile_attrs: dict[str, Any], n_tiles: int, views: int, seed: int) -> str:
    """What makes an output reusable: encoder, weights, preprocessing, tiles and views."""
    return params_hash({
        "encoder_id": encoder.spec.id, "weights_sha256": encoder.weights_sha256,
        "transform": encoder.transform_description, "dtype": encoder.compute_dtype,
        "tiles_params_hash": tile_attrs.get("params_hash", ""), "n_tiles": n_tiles,
        "slide_fingerprint": tile_attrs.get("slide_fingerprint", ""),
        "views": views, "augmentation": AUGMENTATION if views else "", "seed": seed if views else 0,
    })


# ---------------------------------------------------------------------------------------------
# cohort


def _prepare_jobs(df, tiles_dir: Path, feat_dir: Path, encoder, views: int, seed: int,
                  failures: FailureLog, overwrite: bool) -> tuple[list[SlideJob], list[str]]:
    from pathstrat.features import read_attrs
    from pathstrat.tiles import read_tiles

    jobs, skipped = [], []
    for row in df.itertuples(index=False):
        sid, spath = str(row.slide_id), str(row.path)
        tpath = tiles_dir / f"{sid}.h5"
        if not tpath.is_file():
            failures.record(sid, spath, "FileNotFoundError", f"no tiles file {tpath}; run "
                            "`pathstrat tile` for this slide first")
            continue
        try:
            ts = read_tiles(tpath)
        except SchemaError as exc:
            failures.add(sid, spath, exc)
            continue
        out = feat_dir / f"{sid}.h5"
        job = SlideJob(sid, spath, tpath, out, ts.coords, dict(ts.attrs))
        job.embed_hash = _embed_hash(encoder, job.tile_attrs, job.n_tiles, views, seed)
        if not overwrite and out.is_file() and read_attrs(out).get("embed_hash") == job.embed_hash:
            skipped.append(sid)
            continue
        jobs.append(job)
    return jobs, skipped


def embed_cohort(manifest_df, tiles_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 encoder_id: str, *, weights: str | os.PathLike | None = None,
                 batch_size: int = 64, workers: int = 2, device: str = "auto", views: int = 0,
                 shard: str | tuple[int, int] | None = None, dtype: str | None = None,
                 seed: int = 0, overwrite: bool = False, encoder=None) -> EmbedResult:
    """Embed every (shard's) slide of ``manifest_df`` from ``tiles_dir`` into ``out_dir``.

    Writes ``out_dir/features/<encoder_id>/<slide_id>.h5`` (``pathstrat.features/1``) and
    ``out_dir/failures.csv`` (per-shard name with ``shard``). ``views`` > 0 adds
    ``features_views`` (V,N,D) from augmented tiles. ``encoder`` may be a prebuilt
    :class:`~pathstrat.encoders.Encoder` (then ``encoder_id``/``weights`` are not used to build).
    """
    from pathstrat.encoders import build_encoder

    check_params(batch_size=batch_size, workers=workers, views=views, device=device, dtype=dtype,
                 seed=seed)
    shard_t = parse_shard(shard)
    tiles_root = resolve_tiles_dir(tiles_dir)  # fail before building the encoder
    out = ensure_writable_dir(out_dir)
    enc = encoder or build_encoder(encoder_id, weights=weights, device=device, dtype=dtype,
                                   seed=seed)
    layout = FeaturesLayout(out, enc.spec.id)
    feat_dir = layout.features_dir
    feat_dir.mkdir(parents=True, exist_ok=True)
    if shard_t is None:
        clean_stale_tmp(feat_dir)  # never while other shards may be writing
    failures = FailureLog(layout.failures(shard_t), EMBED_STAGE)
    ids = shard_slides([str(s) for s in manifest_df["slide_id"]], shard_t)
    df = manifest_df[manifest_df["slide_id"].astype(str).isin(set(ids))]
    jobs, skipped = _prepare_jobs(df, tiles_root, feat_dir, enc, views, seed,
                                  failures, overwrite)
    result = EmbedResult(feat_dir, skipped=skipped, failures_path=failures.path, shard=shard_t)
    t0 = time.perf_counter()
    _run(jobs, enc, batch_size, workers, views, seed, failures, result)
    result.seconds = time.perf_counter() - t0
    result.failed = sorted({r["slide_id"] for r in failures.rows})
    failures.write()
    log.info("embed %s: %d done, %d skipped, %d failed, %d tiles in %.1f s (%.1f tiles/s)",
             enc.spec.id, len(result.done), len(skipped), len(result.failed), result.n_tiles,
             result.seconds, result.tiles_per_s)
    return result


def _run(jobs: list[SlideJob], enc, batch_size: int, workers: int, views: int, seed: int,
         failures: FailureLog, result: EmbedResult) -> None:
    """Drive the loader; collect per-slide chunks; write each slide when complete."""
    from pathstrat.progress import Progress

    ds = ChunkDataset(jobs, batch_size, enc.transform, views, seed)
    parts: dict[int, list[np.ndarray]] = {}
    vparts: dict[int, list[np.ndarray]] = {}
    dead: set[int] = set()
    for job in jobs:  # slides without tiles: an empty, valid file
        if job.n_tiles == 0:
            empty = np.zeros((0, enc.dim), np.float32)
            _write(job, enc, empty, np.zeros((views, 0, enc.dim), np.float32) if views else None,
                   views, seed)
            result.done.append(job.slide_id)
    with Progress(len(jobs), f"embed {enc.spec.id}", unit="slide", sub_unit="tile") as bar:
        for item in make_loader(ds, workers, pin_memory=enc.device.type == "cuda"):
            j = item["job"]
            job = jobs[j]
            if j in dead:
                continue
            if item["error"] is not None:  # a loader worker failed to read the slide
                dead.add(j)
                parts.pop(j, None)
                vparts.pop(j, None)
                failures.record(job.slide_id, job.slide_path, *item["error"])
                bar.update(1)
                continue
            try:
                parts.setdefault(j, []).append(_features(enc, item["tiles"]))
                if views:
                    vparts.setdefault(j, []).append(
                        np.stack([_features(enc, v) for v in item["views"]]))
                bar.update(0, units=item["stop"] - item["start"])
                if item["stop"] == job.n_tiles:
                    feats = np.concatenate(parts.pop(j))
                    vfeats = np.concatenate(vparts.pop(j), axis=1) if views else None
                    _write(job, enc, feats, vfeats, views, seed)
                    result.done.append(job.slide_id)
                    result.n_tiles += job.n_tiles
                    bar.update(1)
            except Exception as exc:  # noqa: BLE001 - one slide fails, the batch goes on
                dead.add(j)
                parts.pop(j, None)
                vparts.pop(j, None)
                failures.add(job.slide_id, job.slide_path, exc)
                bar.update(1)
    if ds._cache is not None:  # workers=0: handles were opened in this process
        ds._cache.close()


def _features(enc, tiles) -> np.ndarray:
    out = enc.forward_uint8(tiles).numpy()
    if not np.isfinite(out).all():
        raise FloatingPointError(f"encoder '{enc.spec.id}' produced NaN/inf features")
    return out


def _write(job: SlideJob, enc, feats: np.ndarray, vfeats: np.ndarray | None, views: int,
           seed: int) -> None:
    from pathstrat.features import write_features

    store = np.float16 if enc.compute_dtype == "fp16" else np.float32
    attrs = {**job.tile_attrs, **enc.attrs(), "slide_id": job.slide_id,
             # the file name only: feature files are shared between sites, paths are not
             "slide_path": Path(job.slide_path).name, "tiles_params_hash": job.tile_attrs.get("params_hash"),
             "embed_hash": job.embed_hash, "n_views": views,
             "augmentation": AUGMENTATION if views else "", "view_seed": seed,
             "pathstrat_version": _version()}
    attrs.pop("schema", None)
    write_features(job.out_path, feats.astype(store), job.coords, attrs,
                   views=None if vfeats is None else vfeats.astype(store))


def _version() -> str:
    from pathstrat import __version__

    return __version__


# ---------------------------------------------------------------------------------------------
# one node, several devices


def parse_devices(spec: str) -> list[str]:
    """``--gpus`` value -> device list: ``"0,1,3"``, ``"all"`` (every visible CUDA device), or
    ``"cpu,cpu"`` (CPU processes standing in for devices: tests, machines without GPUs)."""
    spec = str(spec).strip()
    if spec == "all":
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise ConfigError("`gpus` all: no CUDA device is visible; set `device` to cpu, or list "
                              "devices explicitly (e.g. `gpus` 0,1).")
        return [str(i) for i in range(n)]
    out = [d.strip() for d in spec.split(",") if d.strip()]
    bad = [d for d in out if d != "cpu" and not d.isdigit()]
    if not out or bad:
        raise ConfigError(f"`gpus` '{spec}': give CUDA device numbers (0,1,2), 'all', or 'cpu' "
                          "entries; found " + (", ".join(bad) or "nothing") + ".")
    return out


def embed_on_devices(argv: list[str], devices: list[str], out_dir: str | os.PathLike) -> int:
    """Run one ``pathstrat embed`` process per device over the shards ``i/len(devices)``.

    ``argv`` is the embed command line without ``--shard``/``--device``/``--gpus``. Each GPU
    process sees only its device (``CUDA_VISIBLE_DEVICES``); shards write per-shard failure files,
    merged here into ``failures.csv`` at the end. Returns 0, 3 (some slides failed) or the first
    process error code (the others still finish: no work is lost)."""
    import subprocess
    import sys

    from pathstrat.io import read_failures

    n = len(devices)
    procs = []
    for i, dev in enumerate(devices):
        env = dict(os.environ)
        if dev == "cpu":
            device = "cpu"
        else:
            env["CUDA_VISIBLE_DEVICES"] = dev
            device = "cuda:0"
        cmd = [sys.executable, "-m", "pathstrat", *argv, "--shard", f"{i}/{n}", "--device", device]
        procs.append(subprocess.Popen(cmd, env=env))
        log.info("embed shard %d/%d on %s: pid %d", i, n, "cpu" if dev == "cpu" else f"GPU {dev}",
                 procs[-1].pid)
    codes = [p.wait() for p in procs]
    layout = FeaturesLayout(Path(out_dir), "")  # failures files only (any encoder)
    failures = FailureLog(layout.failures(), EMBED_STAGE)
    for i in range(n):
        part = layout.failures((i, n))
        for row in read_failures(part):
            failures.record(row["slide_id"], row["path"], row["error_type"], row["reason"])
        part.unlink(missing_ok=True)
    failures.write()
    hard = [c for c in codes if c not in (0, 3)]
    if hard:
        log.error("embed: %d of %d device process(es) failed (exit codes %s)", len(hard), n, codes)
        return hard[0]
    return 3 if len(failures) else 0
