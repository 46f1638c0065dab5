"""Attention / per-tile score heatmaps on slide thumbnails, top/bottom tile montages, QuPath GeoJSON.

Works for any model and task (survival included): it reads per-tile values from
``<run>/attention/<slide_id>.h5`` (``coords`` plus 1-D datasets of per-tile values), draws
them over the slide thumbnail (``Slide.thumbnail_at_mpp``; label and macro images are never
read), reads the top- and bottom-k tiles at the tiles' own resolution, and exports the tiles
as a QuPath FeatureCollection with the values as measurements.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pathstrat.errors import SchemaError
from pathstrat.units import Level0Px, MicronsPerPixel

if TYPE_CHECKING:
    import pandas as pd

    from pathstrat.slide import Slide

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

DEFAULT_THUMB_PX = 1024
DEFAULT_TILE_PX = 224
INDEX_COLUMNS = ("slide_id", "value", "n_tiles", "heatmap_png", "tiles_png", "thumb_mpp",
                 "tile_size_level0", "top_k", "value_min", "value_max", "geojson")


@dataclass
class TileValues:
    """Per-tile values of one slide: level-0 ``coords`` (N,2) and named value arrays (N,)."""

    slide_id: str
    coords: np.ndarray
    values: dict[str, np.ndarray]
    tile_size_level0: float
    tile_px: int
    attrs: dict[str, Any] = field(default_factory=dict)


def _infer_tile_size(coords: np.ndarray) -> float:
    """Tile size in level-0 px from the grid spacing (tiles are assumed not to overlap)."""
    steps = []
    for axis in (0, 1):
        u = np.unique(coords[:, axis])
        if u.size > 1:
            steps.append(np.diff(u).min())
    if not steps:
        raise SchemaError("cannot infer the tile size from a single tile; store the attribute "
                          "'tile_size_level0' in the attention file.")
    return float(min(steps))


def read_tile_values(path: str | Path, *, slide_id: str | None = None,
                     tiles_file: str | Path | None = None) -> TileValues:
    """Read ``coords`` and every 1-D numeric dataset of length N from an attention file.

    Dataset paths become value names (``attention``, ``fold0/attention``, ``scores/os`` ...).
    Tile geometry comes from attrs ``tile_size_level0``/``tile_px`` of the file, else of the
    tiles file, else from the coordinate spacing.
    """
    import h5py

    p = Path(path)
    values: dict[str, np.ndarray] = {}
    with h5py.File(p, "r") as f:
        if "coords" not in f:
            raise SchemaError(f"attention file '{p}' has no 'coords' dataset; expected coords (N,2) "
                              "and per-tile values (N,).")
        coords = np.asarray(f["coords"][:], dtype=np.int64).reshape(-1, 2)
        n = len(coords)
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and name != "coords" and obj.dtype.kind in "fiu":
                arr = np.asarray(obj[()], dtype=np.float64)
                if arr.ndim == 1 and arr.size == n:
                    values[name] = arr
                elif arr.ndim == 2 and n in arr.shape and min(arr.shape) <= 64:
                    arr = arr if arr.shape[1] == n else arr.T
                    for i, row in enumerate(arr):
                        values[f"{name}/{i}"] = row

        f.visititems(visit)
    if not values:
        raise SchemaError(f"attention file '{p}' has no per-tile values of length {n}.")
    if tiles_file is not None and Path(tiles_file).exists() and "tile_size_level0" not in attrs:
        with h5py.File(tiles_file, "r") as t:
            attrs = {**{k: (v.item() if hasattr(v, "item") else v) for k, v in t.attrs.items()}, **attrs}
    size0 = float(attrs["tile_size_level0"]) if "tile_size_level0" in attrs else _infer_tile_size(coords)
    tile_px = int(attrs.get("tile_px", DEFAULT_TILE_PX))
    return TileValues(str(slide_id or attrs.get("slide_id") or p.stem), coords, values, size0,
                      tile_px, attrs)


def pick_values(tv: TileValues, target: str | None = None) -> dict[str, np.ndarray]:
    """Value maps to draw, fold-averaged.

    With ``target``: datasets whose name contains it (per-target tile scores), else the shared
    ``attention`` (an attention-MIL model attends once for all heads). Without: ``attention`` and
    every per-target ``attention_<target>`` map when present (the raw ``attention_branches``
    rows duplicate those and are skipped), else every array. Arrays differing only by a fold/repeat component
    (``fold0/attention``, ``fold1/attention``) are averaged into one map named without it.
    """
    names = [k for k in tv.values if target is not None and (target in k.split("/") or target in k)]
    if not names:
        shared = [k for k in tv.values if k.split("/")[-1] == "attention"]
        if target is None:  # per-target maps of a multi-head model: one heatmap per task
            shared += [k for k in tv.values if k.split("/")[-1].startswith("attention_")
                       and "attention_branches" not in k.split("/")]
        names = shared or ([] if target is not None else list(tv.values))
    if not names:
        raise SchemaError(f"slide '{tv.slide_id}': no per-tile values for target '{target}'; "
                          f"available: {sorted(tv.values)}.")
    groups: dict[str, list[np.ndarray]] = {}
    for k in names:
        key = re.sub(r"(^|/|_)(fold|repeat|r)\d+", "", k).strip("/_") or k
        groups.setdefault(key, []).append(tv.values[k])
    return {k: np.mean(v, axis=0) for k, v in groups.items()}


def normalise(values: np.ndarray, how: str = "rank") -> np.ndarray:
    """Map values to [0, 1]: ``rank`` (percentile, robust to heavy-tailed attention) or ``minmax``."""
    v = np.asarray(values, float)
    if how == "rank":
        from scipy.stats import rankdata

        return (rankdata(v) - 1) / max(len(v) - 1, 1)
    lo, hi = np.nanmin(v), np.nanmax(v)
    return (v - lo) / (hi - lo) if hi > lo else np.full_like(v, 0.5)


def value_grid(coords: np.ndarray, values: np.ndarray, tile_size_level0: Level0Px | float,
               shape: tuple[int, int], scale: float) -> np.ndarray:
    """Mean tile value per thumbnail pixel (NaN outside tiles); ``scale`` = level-0 px per pixel."""
    h, w = shape
    acc = np.zeros((h, w))
    cnt = np.zeros((h, w))
    for (x, y), v in zip(coords, values, strict=True):
        c0, r0 = int(np.floor(x / scale)), int(np.floor(y / scale))
        c1 = max(c0 + 1, int(np.ceil((x + tile_size_level0) / scale)))
        r1 = max(r0 + 1, int(np.ceil((y + tile_size_level0) / scale)))
        acc[max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)] += v
        cnt[max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)] += 1
    with np.errstate(invalid="ignore"):
        return np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)


def plot_heatmap(thumb: np.ndarray, grid: np.ndarray, ax: Axes | None = None, *,
                 cmap: str = "inferno", alpha: float = 0.55, label: str = "value",
                 vmin: float = 0.0, vmax: float = 1.0) -> Axes:
    """Thumbnail with the value grid blended on top and a colour bar; returns ``ax`` (a new
    figure's axes, sized to the thumbnail, when None)."""
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(7, 7 * thumb.shape[0] / thumb.shape[1] + 0.6)).add_subplot(111)
    ax.imshow(thumb)
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=label)
    ax.set_axis_off()
    return ax


def extreme_indices(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` highest (descending) and ``k`` lowest (ascending) values."""
    order = np.argsort(values, kind="stable")
    k = min(k, len(values))
    return order[::-1][:k], order[:k]


def plot_montage(tiles_top: Sequence[np.ndarray], tiles_bottom: Sequence[np.ndarray],
                 values_top: Sequence[float], values_bottom: Sequence[float], axes: Any, *,
                 name: str = "value") -> Any:
    """Top-k tiles in the first row of ``axes`` (a 2 x k array of Axes, e.g.
    ``fig.subplots(2, k, squeeze=False)``: a montage is a grid, not one Axes) and bottom-k in
    the second; returns ``axes``."""
    for row, tiles, vals, what in ((0, tiles_top, values_top, "top"),
                                   (1, tiles_bottom, values_bottom, "bottom")):
        for j, ax in enumerate(axes[row]):
            ax.set_axis_off()
            if j < len(tiles):
                ax.imshow(tiles[j])
                ax.set_title(f"{what} {j + 1}: {vals[j]:.3g}", fontsize=7)
    axes[0][0].figure.suptitle(f"highest and lowest {name}", fontsize=9)
    return axes


def tiles_geojson(coords: np.ndarray, tile_size_level0: Level0Px | float,
                  measurements: dict[str, np.ndarray], *, slide_id: str = "",
                  with_outline: bool = True) -> dict[str, Any]:
    """QuPath-ready FeatureCollection: one ``tile`` Polygon (level-0 px) per tile with
    ``measurements {name: value}`` (QuPath colours tiles by them), plus an ``annotation``
    outlining all scored tiles.

    Ids are UUIDs (QuPath parses ids as UUIDs and replaces anything else), stable per slide
    and tile (uuid5), so re-exports keep their identity. Rings are closed and follow the
    GeoJSON right-hand rule (exterior counter-clockwise, holes clockwise)."""
    import uuid

    s = float(tile_size_level0)
    feats = []
    for i, (x, y) in enumerate(np.asarray(coords, float)):
        ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
        feats.append({"type": "Feature",
                      "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pathstrat/{slide_id}/tile/{i}")),
                      "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": {"objectType": "tile", "name": f"tile {i}",
                                     "measurements": {k: float(v[i]) for k, v in measurements.items()}}})
    if with_outline and len(coords):
        from shapely.geometry import MultiPolygon, box, mapping
        from shapely.geometry.polygon import orient
        from shapely.ops import unary_union

        union = unary_union([box(x, y, x + s, y + s) for x, y in np.asarray(coords, float)])
        union = (MultiPolygon([orient(p, 1.0) for p in union.geoms]) if union.geom_type == "MultiPolygon"
                 else orient(union, 1.0))
        feats.append({"type": "Feature",
                      "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pathstrat/{slide_id}/scored-region")),
                      "geometry": mapping(union),
                      "properties": {"objectType": "annotation", "name": "scored tiles",
                                     "classification": {"name": "Region*"},
                                     "measurements": {"n_tiles": float(len(coords))}}})
    return {"type": "FeatureCollection", "features": _listify(feats)}


def _listify(obj: Any) -> Any:
    """Tuples (from shapely's mapping) to lists so the JSON matches the GeoJSON spec exactly."""
    if isinstance(obj, dict):
        return {k: _listify(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_listify(v) for v in obj]
    return obj


def thumb_mpp_for(slide: Slide, max_px: int = DEFAULT_THUMB_PX) -> MicronsPerPixel:
    """Thumbnail resolution whose longest side is about ``max_px`` pixels."""
    return MicronsPerPixel(max(slide.mpp, max(slide.dimensions) * slide.mpp / max_px))


def _save(fig: Any, dest: Path) -> Path:
    from pathstrat.io import atomic_path

    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return dest


def slide_heatmaps(slide_path: str | Path, tv: TileValues, out_dir: str | Path, *,
                   target: str | None = None, top_k: int = 8, mpp: float | None = None,
                   normalize: str = "rank", max_thumb_px: int = DEFAULT_THUMB_PX) -> list[dict[str, Any]]:
    """Heatmap PNG, top/bottom-k montage PNG per value map, and one GeoJSON for a slide."""
    from matplotlib.figure import Figure

    from pathstrat.io import write_json_atomic
    from pathstrat.slide import open_slide

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    maps = pick_values(tv, target)
    rows = []
    with open_slide(slide_path, mpp=mpp) as slide:
        thumb, actual_mpp = slide.thumbnail_at_mpp(thumb_mpp_for(slide, max_thumb_px))
        scale = slide.dimensions[0] / thumb.shape[1]
        for name, vals in maps.items():
            tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
            norm = normalise(vals, normalize)
            grid = value_grid(tv.coords, norm, tv.tile_size_level0, thumb.shape[:2], scale)
            fig = Figure(figsize=(7, 7 * thumb.shape[0] / thumb.shape[1] + 0.6))
            ax = fig.add_subplot(111)
            label = f"{name} ({'percentile' if normalize == 'rank' else 'scaled'})"
            plot_heatmap(thumb, grid, ax, label=label)
            ax.set_title(f"{tv.slide_id}: {name}", fontsize=9)
            heat = _save(fig, out / f"{tv.slide_id}__{tag}.png")
            top, bottom = extreme_indices(vals, top_k)
            read = [slide.read_tile(int(x), int(y), tv.tile_size_level0, tv.tile_px)
                    for x, y in tv.coords[np.concatenate([top, bottom])]]
            ncol = max(len(top), 1)
            fig = Figure(figsize=(1.4 * ncol, 3.2))
            axes = fig.subplots(2, ncol, squeeze=False)
            plot_montage(read[:len(top)], read[len(top):], vals[top], vals[bottom], axes, name=name)
            mont = _save(fig, out / f"{tv.slide_id}__{tag}__tiles.png")
            rows.append({"slide_id": tv.slide_id, "value": name, "n_tiles": len(vals),
                         "heatmap_png": heat.name, "tiles_png": mont.name,
                         "thumb_mpp": actual_mpp, "tile_size_level0": tv.tile_size_level0,
                         "top_k": len(top), "value_min": float(vals.min()),
                         "value_max": float(vals.max())})
    gj = tiles_geojson(tv.coords, tv.tile_size_level0, maps, slide_id=tv.slide_id)
    write_json_atomic(out / f"{tv.slide_id}.geojson", gj, indent=None)
    for r in rows:
        r["geojson"] = f"{tv.slide_id}.geojson"
    return rows


def extreme_slides(predictions: pd.DataFrame | str | Path, *, target: str | None = None, n: int = 2) -> list[str]:
    """Slides of the ``n`` highest- and ``n`` lowest-scored patients (risk when present)."""
    import pandas as pd

    df = predictions if isinstance(predictions, pd.DataFrame) else pd.read_csv(predictions)
    if target is not None and "target" in df.columns:
        df = df[df["target"] == target]
    col = "risk" if "risk" in df.columns and df["risk"].notna().any() else "score"
    df = df[df[col].notna()]
    pid = df["patient_id"] if "patient_id" in df.columns else df["slide_id"]
    pt = df.groupby(pid.astype(str))[col].mean().sort_values()
    chosen = list(pt.index[::-1][:n]) + [p for p in pt.index[:n] if p not in pt.index[::-1][:n]]
    sids = []
    for p in chosen:
        sids += sorted(df.loc[pid.astype(str) == p, "slide_id"].astype(str).unique())
    return list(dict.fromkeys(sids))


def _run_config(run: Path) -> dict[str, Any]:
    """The run's config.yaml as a dict (empty when absent)."""
    import yaml

    p = run / "config.yaml"
    return (yaml.safe_load(p.read_text()) or {}) if p.exists() else {}


def _geometry_file(sid: str, tiles_dir: str | Path | None, cfg: dict[str, Any]) -> Path | None:
    """Tiles file (``--tiles-dir``) or the run's features file holding the tile geometry attrs."""
    for d in (tiles_dir, cfg.get("features")):
        if d and (Path(d) / f"{sid}.h5").exists():
            return Path(d) / f"{sid}.h5"
    return None


def heatmap_run(run_dir: str | Path, manifest: str | Path | pd.DataFrame | None = None, out_dir: str | Path | None = None, *,
                slides: Sequence[str] | None = None, target: str | None = None, top_k: int = 8,
                n_extreme: int = 2, tiles_dir: str | Path | None = None) -> tuple[pd.DataFrame, int]:
    """Heatmaps for ``slides`` (default: highest/lowest-scored patients) of a run directory.

    The manifest defaults to the run's ``config.yaml`` ``manifest``; tile geometry comes from the
    attention file's attrs, else ``tiles_dir/<slide_id>.h5``, else the run's features file
    (config ``features``), else the coordinate spacing. Writes ``out_dir`` (default ``<run>/heatmaps``) PNGs, GeoJSONs, ``index.csv`` (one row per
    slide and value map, with patient score) and ``failures.csv``; returns (index, n_failed).
    """
    import pandas as pd

    from pathstrat.cohort import load_manifest
    from pathstrat.io import FailureLog, ensure_writable_dir, write_dataframe_atomic
    from pathstrat.progress import track

    run = Path(run_dir)
    if not run.is_dir():  # check before creating <run>/heatmaps
        raise SchemaError(f"run directory '{run}' does not exist; pass the --out folder of "
                          "`pathstrat train` (holding attention/ and predictions.csv).")
    out = ensure_writable_dir(out_dir or run / "heatmaps")
    cfg = _run_config(run)
    if manifest is None:
        if not cfg.get("manifest"):
            raise SchemaError(f"no `manifest` given and '{run}/config.yaml' names none.")
        manifest = cfg["manifest"]
    man = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest, check_files=False)
    man = man.assign(slide_id=man["slide_id"].astype(str)).set_index("slide_id", drop=False)
    preds_path = run / "predictions.csv"
    preds = pd.read_csv(preds_path, dtype={"slide_id": str, "patient_id": str}) \
        if preds_path.exists() else None
    if not slides:
        if preds is None:
            raise SchemaError(f"no `slides` given and no predictions.csv in '{run}' to choose "
                              "the highest- and lowest-scored patients from.")
        slides = extreme_slides(preds, target=target, n=n_extreme)
    failures = FailureLog(out / "failures.csv", stage="heatmap")
    rows: list[dict[str, Any]] = []
    for sid in track(list(slides), "heatmaps", unit="slide"):
        try:
            if sid not in man.index:
                raise SchemaError(f"slide '{sid}' is not in the manifest.")
            att = run / "attention" / f"{sid}.h5"
            if not att.exists():
                raise SchemaError(f"no attention file '{att}' for slide '{sid}'; rerun "
                                  "`pathstrat train` (or `predict`) with attention export.")
            tv = read_tile_values(att, slide_id=sid, tiles_file=_geometry_file(sid, tiles_dir, cfg))
            mpp = man.at[sid, "mpp"] if "mpp" in man.columns else None
            mpp = None if mpp is None or pd.isna(mpp) else float(mpp)
            rows += slide_heatmaps(man.at[sid, "path"], tv, out, target=target, top_k=top_k, mpp=mpp)
        except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the batch
            failures.add(sid, man.at[sid, "path"] if sid in man.index else None, exc)
    index = pd.DataFrame(rows, columns=list(rows[0]) if rows else list(INDEX_COLUMNS))
    if len(index) and preds is not None:
        col = "risk" if "risk" in preds.columns and preds["risk"].notna().any() else "score"
        p = preds if target is None or "target" not in preds.columns else preds[preds["target"] == target]
        pid = p.groupby("slide_id")["patient_id"].first() if "patient_id" in p.columns else None
        if pid is not None:
            index["patient_id"] = index["slide_id"].map(pid)
            pscore = p.groupby("patient_id")[col].mean()
            index["patient_score"] = index["patient_id"].map(pscore)
    write_dataframe_atomic(out / "index.csv", index)
    if len(failures):
        failures.write()
    return index, len(failures)
