"""Tile grid at a physical resolution: tissue mask -> level-0 coordinates -> ``tiles/<id>.h5``.

A tile is ``tile_px`` pixels at ``target_mpp`` µm/px, i.e. ``tile_size_level0 = tile_px *
target_mpp / slide_mpp`` level-0 pixels. The grid starts at the slide origin with stride
``(tile_px - overlap_px) * target_mpp / slide_mpp``; only tiles fully inside the slide with a
tissue fraction >= ``min_tissue`` (exact area coverage of the mask, from an integral image) are
kept. One slide = one unit of work: outputs are written atomically and reused on rerun when the
parameters hash, slide path and MPP override match.

The tiles file format (schema, ``read_tiles``, ``write_tiles``, the slide fingerprint) lives in
:mod:`pathstrat.tiles`; ``read_tiles`` and ``write_tiles`` stay importable from here.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pathstrat.errors import (
    ConfigError,
    EmptyTissueError,
    PathstratError,
    SchemaError,
)
from pathstrat.io import (
    FailureLog,
    clean_stale_tmp,
    ensure_writable_dir,
    params_hash,
    write_bytes_atomic,
    write_dataframe_atomic,
    write_json_atomic,
)
from pathstrat.layout import TilesLayout
from pathstrat.tiles import TILES_SCHEMA, read_tiles, slide_fingerprint, write_tiles
from pathstrat.units import Level0Px, MicronsPerPixel, TilePx

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: Versions of the tissue-detection and grid algorithms: bump the one you change, so old tiles
#: made by another algorithm are never reused (part of the reuse check, recorded per file).
TISSUE_ALGORITHM = 1
GRID_ALGORITHM = 1
CODE_VERSION = f"tissue-{TISSUE_ALGORITHM}.grid-{GRID_ALGORITHM}"
STAGE = "tile"
QC_COLUMNS = ("slide_id", "status", "tissue_area_mm2", "n_tiles", "pen_area_fraction",
              "background_rejected_fraction", "mpp", "mpp_source", "read_level", "seconds")


class TilingParams(BaseModel):
    """Tiling parameters; their hash decides whether an existing tiles file is reused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_mpp: MicronsPerPixel = Field(0.5, gt=0, description="µm per pixel of the tiles")
    tile_px: TilePx = Field(224, ge=8, description="tile side in pixels at target_mpp")
    overlap_px: int = Field(0, ge=0, description="overlap between neighbouring tiles (px)")
    min_tissue: float = Field(0.25, ge=0, le=1, description="minimum tissue fraction per tile")
    mask_mpp: MicronsPerPixel = Field(8.0, gt=0, description="µm per pixel of the tissue mask")

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> TilingParams:
        if self.overlap_px >= self.tile_px:
            raise ValueError(f"overlap_px ({self.overlap_px}) must be smaller than tile_px "
                             f"({self.tile_px})")
        return self

    def hash(self) -> str:
        """Stable hash of the parameters and the tiles schema."""
        return params_hash({"schema": TILES_SCHEMA, **self.model_dump()})

    def tile_size_level0(self, slide_mpp: float) -> float:
        return self.tile_px * self.target_mpp / slide_mpp

    def stride_level0(self, slide_mpp: float) -> float:
        return (self.tile_px - self.overlap_px) * self.target_mpp / slide_mpp


# ---------------------------------------------------------------------------------------------
# grid (pure functions: property-tested)


def grid_coords(level0_width: int, level0_height: int, tile_size_level0: Level0Px | float,
                stride_level0: float) -> np.ndarray:
    """Top-left level-0 (x, y) of every grid tile fully inside the slide, row-major, int64.

    Positions are ``floor(i * stride)`` so a tile never extends past the slide edge.
    """
    if not (tile_size_level0 >= 1 and stride_level0 >= 1):
        raise ConfigError(f"tile grid needs tiles and stride of at least one level-0 pixel (got "
                          f"tile_size_level0={tile_size_level0:.3g}, stride_level0="
                          f"{stride_level0:.3g}); use a larger `tile_px` or `target_mpp`, or a "
                          "smaller `overlap_px`.")
    xs = _axis(level0_width, tile_size_level0, stride_level0)
    ys = _axis(level0_height, tile_size_level0, stride_level0)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.int64)


def _axis(length: int, size: float, stride: float) -> np.ndarray:
    if length < size:
        return np.zeros(0, np.int64)
    n = int(math.floor((length - size) / stride + 1e-9)) + 1
    pos = np.floor(np.arange(n) * stride + 1e-9).astype(np.int64)
    return pos[pos + size <= length + 1e-6]


def tissue_fractions(mask: np.ndarray, coords: np.ndarray, tile_size_level0: Level0Px | float,
                     downsample_xy: tuple[float, float]) -> np.ndarray:
    """Fraction of each tile's area covered by the mask (exact for a pixelwise-constant mask).

    The summed-area table is interpolated bilinearly at fractional corners, which equals the
    exact integral of the piecewise-constant mask, so tiles smaller than a mask pixel are fine.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    import cv2

    h, w = mask.shape
    sat = cv2.integral(np.ascontiguousarray(mask, dtype=np.uint8), sdepth=cv2.CV_64F)
    dsx, dsy = downsample_xy
    x0 = np.clip(coords[:, 0] / dsx, 0, w)
    x1 = np.clip((coords[:, 0] + tile_size_level0) / dsx, 0, w)
    y0 = np.clip(coords[:, 1] / dsy, 0, h)
    y1 = np.clip((coords[:, 1] + tile_size_level0) / dsy, 0, h)
    total = _interp(sat, x1, y1) - _interp(sat, x0, y1) - _interp(sat, x1, y0) + _interp(sat, x0, y0)
    area = (tile_size_level0 / dsx) * (tile_size_level0 / dsy)
    return np.clip(total / area, 0.0, 1.0).astype(np.float32)


def _interp(sat: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of the summed-area table at fractional (x, y)."""
    h1, w1 = sat.shape
    ix = np.clip(np.floor(x).astype(np.int64), 0, w1 - 2)
    iy = np.clip(np.floor(y).astype(np.int64), 0, h1 - 2)
    fx, fy = x - ix, y - iy
    a, b = sat[iy, ix], sat[iy, ix + 1]
    c, d = sat[iy + 1, ix], sat[iy + 1, ix + 1]
    return a * (1 - fx) * (1 - fy) + b * fx * (1 - fy) + c * (1 - fx) * fy + d * fx * fy


@dataclass
class TileGrid:
    """Kept tiles of one slide with the mask they came from."""

    coords: np.ndarray
    tissue_fraction: np.ndarray
    tissue: Any  # pathstrat.tissue.TissueMask
    tile_size_level0: float
    stride_level0: float
    n_candidates: int

    @property
    def background_rejected_fraction(self) -> float:
        """Fraction of candidate grid tiles dropped for too little tissue."""
        return 1.0 - len(self.coords) / self.n_candidates if self.n_candidates else 0.0


def compute_grid(slide: Any, params: TilingParams, *, tissue: Any = None,
                 slide_id: str | None = None) -> TileGrid:
    """Tissue mask + tile grid of an open slide, without writing anything (the hot path).

    Raises :class:`EmptyTissueError` when no tissue is found or no tile reaches ``min_tissue``.
    """
    from pathstrat.tissue import detect_tissue

    sid = slide_id or Path(str(slide.path)).stem
    tm = tissue if tissue is not None else detect_tissue(slide, mask_mpp=params.mask_mpp,
                                                         slide_id=sid)
    size0 = params.tile_size_level0(slide.mpp)
    stride0 = params.stride_level0(slide.mpp)
    w0, h0 = slide.dimensions
    cand = grid_coords(w0, h0, size0, stride0)
    frac = tissue_fractions(tm.mask, cand, size0, tm.downsample_xy)
    keep = frac >= params.min_tissue if params.min_tissue > 0 else frac > 0
    grid = TileGrid(cand[keep], frac[keep], tm, size0, stride0, len(cand))
    if len(grid.coords) == 0:
        raise EmptyTissueError(
            f"Slide '{sid}': tissue found ({tm.area_mm2:.3f} mm²) but none of {len(cand)} tiles of "
            f"{params.tile_px} px at {params.target_mpp} µm/px has >= {params.min_tissue:.0%} "
            "tissue. Try a lower `min_tissue`, a smaller `tile_px` or check the slide's MPP."
        )
    return grid


# ---------------------------------------------------------------------------------------------
# reuse of a tiles file (the file format itself: pathstrat.tiles)


def tiles_file_reusable(path: str | os.PathLike, params: TilingParams, *, slide_path: str,
                        mpp_override: float | None = None) -> str | None:
    """``None`` if ``path`` is a complete tiles file for these inputs, else why it is not."""
    p = Path(path)
    if not p.is_file():
        return "no tiles file"
    try:
        ts = read_tiles(p)
    except SchemaError as exc:
        return f"invalid tiles file ({exc})"
    a = ts.attrs
    if a.get("params_hash") != params.hash():
        return "tiling parameters changed"
    if a.get("code_version") != CODE_VERSION:
        return f"tiling code changed ({a.get('code_version')} -> {CODE_VERSION})"
    if not _same_float(a.get("mpp_override"), mpp_override):
        return "mpp override changed"
    # keyed on the slide id (the file name) and the slide's content, not its path: staging to
    # node-local scratch or copying without -p reuses the tiles
    stored_fp = str(a.get("slide_fingerprint", ""))
    if not stored_fp.startswith("v2:"):  # older files: size and mtime at the recorded path
        stored = a.get("slide_path")
        if stored is None or _stored_slide_path(Path(path), str(stored)) != Path(slide_path).resolve():
            return "slide path changed"
        if stored_fp and stored_fp != _stat_fingerprint(slide_path):
            return "slide file changed since it was tiled"
    elif stored_fp != slide_fingerprint(slide_path):
        return "slide file changed since it was tiled"
    if int(a.get("n_tiles", -1)) != len(ts):
        return "tile count does not match the file's attributes"
    sid = a.get("slide_id", p.stem)
    qc = TilesLayout.of_tiles_file(p).qc_dir
    if not (qc / f"{sid}.png").is_file() or not (qc / f"{sid}.geojson").is_file():
        return "QC files missing"
    return None


def _stored_slide_path(tiles_file: Path, stored: str) -> Path:
    """A tiles file's ``slide_path`` attribute (relative to its run directory) as an absolute
    path; older files stored absolute paths."""
    p = Path(stored)
    return p if p.is_absolute() else (TilesLayout.of_tiles_file(tiles_file.resolve()).root / p).resolve()


def _stat_fingerprint(slide_path: str | os.PathLike) -> str:
    """The older fingerprint (size and mtime), for tiles files written before ``v2``."""
    try:
        st = os.stat(slide_path)
    except OSError:
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"


# ---------------------------------------------------------------------------------------------
# one slide


def tile_slide(slide_path: str | os.PathLike, out_dir: str | os.PathLike, params: TilingParams,
               *, slide_id: str, mpp: float | None = None, mpp_source: str = "manifest",
               force: bool = False, mpp_check: bool = True) -> dict[str, Any]:
    """Tile one slide into ``out_dir/tiles/<slide_id>.h5`` plus QC files; return its QC row.

    Skips the work (``status="skipped"``) when a complete file with the same parameters exists.
    Raises SlideReadError, MissingMPPError or EmptyTissueError for slides that cannot be tiled.
    """
    from pathstrat.slide import open_slide

    t0 = time.perf_counter()
    layout = TilesLayout(Path(out_dir))
    dest = layout.tiles_file(slide_id)
    slide_path = str(Path(slide_path).resolve())
    override = None if mpp is None or (isinstance(mpp, float) and math.isnan(mpp)) else float(mpp)
    if not force and tiles_file_reusable(dest, params, slide_path=slide_path,
                                         mpp_override=override) is None:
        return qc_row_from_attrs(read_tiles(dest).attrs, status="skipped")

    with open_slide(slide_path, mpp=override, mpp_source=mpp_source, check=True,
                    mpp_check=mpp_check) as slide:
        grid = compute_grid(slide, params, slide_id=slide_id)
        plan = slide.tile_read_plan(params.target_mpp, params.tile_px)
        tm = grid.tissue
        _write_qc(layout.qc_dir, slide_id, tm, grid)
        seconds = time.perf_counter() - t0
        attrs = {
            **plan.attrs(),
            "overlap_px": params.overlap_px,
            "min_tissue": params.min_tissue,
            "mask_mpp": float(tm.mask_mpp),
            "tile_size_level0": float(grid.tile_size_level0),
            "stride_level0": float(grid.stride_level0),
            "slide_mpp": float(slide.mpp),
            "mpp_source": str(slide.mpp_source),
            "level0_width": int(slide.dimensions[0]),
            "level0_height": int(slide.dimensions[1]),
            "slide_id": slide_id,
            "slide_path": os.path.relpath(slide_path, layout.root.resolve()),  # no absolute paths in files
            "slide_fingerprint": slide_fingerprint(slide_path),
            "params_hash": params.hash(),
            "code_version": CODE_VERSION,
            "pathstrat_version": _version(),
            "schema": TILES_SCHEMA,
            "n_tiles": len(grid.coords),
            "qc_tissue_area_mm2": float(tm.area_mm2),
            "qc_pen_area_fraction": float(tm.pen_area_fraction),
            "qc_background_rejected_fraction": float(grid.background_rejected_fraction),
            "qc_n_candidates": int(grid.n_candidates),
            "qc_seconds": float(seconds),
        }
        if override is not None:
            attrs["mpp_override"] = override  # absent when the slide's metadata MPP was used
        write_tiles(dest, grid.coords, grid.tissue_fraction, attrs)
    log.info("tiled %s: %d tiles, %.2f mm² tissue, %.1f s", slide_id, len(grid.coords),
             tm.area_mm2, seconds)
    return qc_row_from_attrs(attrs, status="tiled")


def qc_row_from_attrs(attrs: dict[str, Any], status: str) -> dict[str, Any]:
    """The cohort QC row of one slide from its tiles-file attributes."""
    return {
        "slide_id": attrs["slide_id"], "status": status,
        "tissue_area_mm2": round(float(attrs["qc_tissue_area_mm2"]), 6),
        "n_tiles": int(attrs["n_tiles"]),
        "pen_area_fraction": round(float(attrs["qc_pen_area_fraction"]), 6),
        "background_rejected_fraction": round(float(attrs["qc_background_rejected_fraction"]), 6),
        "mpp": float(attrs["slide_mpp"]), "mpp_source": attrs["mpp_source"],
        "read_level": int(attrs["read_level"]), "seconds": round(float(attrs["qc_seconds"]), 3),
    }


def _write_qc(qc_dir: Path, slide_id: str, tm: Any, grid: TileGrid) -> None:
    import cv2

    from pathstrat.tissue import draw_qc

    write_json_atomic(qc_dir / f"{slide_id}.geojson", tm.to_geojson())
    img = draw_qc(tm, grid.coords, grid.tile_size_level0)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode the QC image of slide '{slide_id}'")
    write_bytes_atomic(qc_dir / f"{slide_id}.png", buf.tobytes())


# ---------------------------------------------------------------------------------------------
# cohort


@dataclass
class CohortTilingResult:
    """Outcome of :func:`tile_cohort`: counts, the QC table and the failures."""

    out_dir: Path
    qc: pd.DataFrame  # one row per slide (failed slides with status "failed")
    failures: list[dict[str, str]]
    n_tiled: int = 0
    n_skipped: int = 0

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def n_slides(self) -> int:
        return len(self.qc)

    @property
    def n_tiles(self) -> int:
        return int(self.qc["n_tiles"].fillna(0).sum()) if len(self.qc) else 0

    @property
    def qc_path(self) -> Path:
        return TilesLayout(self.out_dir).qc_table

    @property
    def failures_path(self) -> Path:
        return TilesLayout(self.out_dir).failures

    def summary(self) -> str:
        return (f"{self.n_slides} slides: {self.n_tiled} tiled, {self.n_skipped} skipped "
                f"(already done), {self.n_failed} failed; {self.n_tiles} tiles")


def slide_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "this slide cannot be tiled": recorded, the batch goes on."""
    import cv2
    import openslide

    return (PathstratError, OSError, openslide.OpenSlideError, cv2.error, MemoryError)


def tile_cohort(manifest_df: pd.DataFrame, out_dir: str | os.PathLike, params: TilingParams | None = None,
                workers: int = 1, *, mpp: float | None = None, force: bool = False,
                progress: bool = True, mpp_override: bool = False,
                executor: Any = None) -> CohortTilingResult:
    """Tile every slide of a manifest; failures go to ``failures.csv`` and the batch goes on.

    ``manifest_df`` has ``slide_id``, ``path`` and optionally ``mpp`` (per-slide override);
    ``mpp`` here is the fallback for rows without one; a given MPP more than 2x from the file's
    own fails that slide unless ``mpp_override``. The slides run on ``executor`` (default: the
    local executor, a process pool of ``workers`` when > 1; each worker opens its own slides).
    Writes ``qc.csv`` (one row per slide) atomically.
    """
    import pandas as pd

    from pathstrat.executors.local import LocalExecutor
    from pathstrat.executors.work import TileWork

    params = params or TilingParams()
    for col in ("slide_id", "path"):
        if col not in manifest_df.columns:
            raise SchemaError(f"manifest has no '{col}' column; load it with "
                              "pathstrat.cohort.load_manifest")
    out = ensure_writable_dir(out_dir)
    layout = TilesLayout(out)
    for sub in (layout.tiles_dir, layout.qc_dir):
        sub.mkdir(exist_ok=True)
        n = clean_stale_tmp(sub)
        if n:
            log.info("removed %d stale temporary file(s) from %s", n, sub)
    clean_stale_tmp(out)
    failures = FailureLog(layout.failures, STAGE)
    work = TileWork(out, params.model_dump(), force=force, mpp=mpp, mpp_check=not mpp_override,
                    processes=workers)
    rows = [{"slide_id": str(r["slide_id"]), "path": str(r["path"]),
             "mpp": r.get("mpp")} for r in manifest_df.to_dict("records")]
    ex = executor if executor is not None else LocalExecutor(progress=progress)
    qc_rows: dict[str, dict[str, Any]] = {}
    for o in ex.map_slides(work, rows).outcomes:
        if o.ok and o.result is not None:
            qc_rows[o.slide_id] = o.result
        else:
            failures.record(o.slide_id, o.path, o.error_type, o.reason)
            qc_rows[o.slide_id] = {"slide_id": o.slide_id, "status": "failed"}
    failures.write()
    qc = pd.DataFrame([qc_rows[r["slide_id"]] for r in rows if r["slide_id"] in qc_rows],
                      columns=list(QC_COLUMNS))
    qc = qc.astype({"n_tiles": "Int64", "read_level": "Int64"})
    write_dataframe_atomic(layout.qc_table, qc)
    result = CohortTilingResult(out, qc, list(failures.rows),
                                n_tiled=int((qc["status"] == "tiled").sum()),
                                n_skipped=int((qc["status"] == "skipped").sum()))
    log.info("tiling: %s", result.summary())
    return result


def _same_float(a: Any, b: float | None) -> bool:
    a = None if a is None or (isinstance(a, float) and math.isnan(a)) else float(a)
    return (a is None and b is None) or (a is not None and b is not None
                                         and math.isclose(a, b, rel_tol=1e-9))


def _version() -> str:
    from pathstrat import __version__

    return __version__
