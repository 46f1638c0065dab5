"""Programme maps on H&E-only slides, slide-level summaries, and pseudo-bulk targets.

``programme_map`` tiles a slide's tissue at the model's spot-tile geometry (default 112 µm at
0.5 µm/px, non-overlapping, through :func:`pathstrat.tiling.compute_grid`), embeds every tile
with the model's encoder, and scores each programme on the predicted expression.

``slide_summaries`` turns a map into columns ``train`` can use as targets and ``stratify`` as
covariates (``--covariates prog_immune_high_frac``):

- ``prog_<p>_mean``: mean score over tissue tiles;
- ``prog_<p>_high_frac``: fraction of tissue tiles above the model's level for ``p`` (the
  ``level_quantile`` of the fitted scores on the ST training spots);
- ``prog_<a>__<b>_coloc``: co-localisation of two programmes' high tiles: the share of
  ``a``-high tiles with a ``b``-high tile in their 3 x 3 tile neighbourhood, divided by the same
  share for all tissue tiles (1 = no association, > 1 = together, < 1 = apart).

``pseudobulk_targets`` gives per-sample programme scores from *measured* ST counts (all
in-tissue spots summed, then normalised like a bulk sample) as MIL regression targets.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import ConfigError
from pathstrat.spatial.predict import FittedExpressionModel, log1p_normalise, programme_scores

log = logging.getLogger(__name__)

MAP_SCHEMA = "pathstrat.programme-map/1"


@dataclass
class ProgrammeMap:
    """Per-tile programme scores of one slide (tile top-left level-0 coords)."""

    slide_id: str
    coords: np.ndarray  # (N, 2) int64 level-0 top-left
    tile_size_level0: float
    scores: pd.DataFrame  # (N, programmes)
    levels: dict[str, float]
    slide_mpp: float

    @property
    def centres(self) -> np.ndarray:
        return self.coords + self.tile_size_level0 / 2.0


def programme_map(slide_path: str | os.PathLike, model: FittedExpressionModel, *,
                  slide_id: str | None = None, encoder: Any = None, weights: str | None = None,
                  device: str = "cpu", mpp: float | None = None, min_tissue: float = 0.5,
                  batch: int = 64) -> ProgrammeMap:
    """Predict programme scores on every tissue tile of an H&E slide."""
    from pathstrat.encoders import build_encoder
    from pathstrat.slide import open_slide
    from pathstrat.spatial.spots import SpotTiling, embed_points
    from pathstrat.tiling import TilingParams, compute_grid

    enc_id = str(model.meta.get("encoder", {}).get("encoder_id") or "")
    if encoder is None:
        if not enc_id:
            raise ConfigError("the spatial model does not record its encoder; pass `encoder`")
        encoder = build_encoder(enc_id, weights=weights, device=device)
    elif isinstance(encoder, str):
        encoder = build_encoder(encoder, weights=weights, device=device)
    if enc_id and encoder.spec.id != enc_id:
        raise ConfigError(f"the spatial model was fitted on '{enc_id}' embeddings, not "
                          f"'{encoder.spec.id}'; set `encoder` to {enc_id}")
    t = model.meta.get("tiling", {})
    tile_um, tile_mpp = float(t.get("tile_um", 112.0)), float(t.get("tile_mpp", 0.5))
    sid = slide_id or Path(slide_path).stem
    with open_slide(slide_path, mpp=mpp) as slide:
        tiling = SpotTiling.for_slide(slide.mpp, tile_um, tile_mpp)
        params = TilingParams(target_mpp=tile_mpp, tile_px=tiling.tile_px, min_tissue=min_tissue)
        grid = compute_grid(slide, params, slide_id=sid)
        centres = grid.coords + grid.tile_size_level0 / 2.0
        feats, rate = embed_points(slide, centres, encoder, tiling, batch)
        smpp = float(slide.mpp)
    scores = model.predict_programmes(feats, centres * smpp, None)
    log.info("programme map %s: %d tiles at %.1f tiles/s", sid, len(centres), rate)
    return ProgrammeMap(sid, grid.coords.astype(np.int64), float(grid.tile_size_level0), scores,
                        dict(model.levels), smpp)


def _grid_index(coords: np.ndarray, size: float) -> np.ndarray:
    return np.round(np.asarray(coords, float) / size).astype(np.int64)


def colocalisation(coords: np.ndarray, size: float, a_high: np.ndarray,
                   b_high: np.ndarray) -> float:
    """Share of ``a``-high tiles with a ``b``-high tile in their 3 x 3 neighbourhood over that
    share among all tiles (NaN when no tile is ``a``-high or none has a ``b``-high neighbour)."""
    ij = _grid_index(coords, size)
    b_cells = {tuple(c) for c in ij[np.asarray(b_high, bool)]}
    near = np.array([any((i + di, j + dj) in b_cells for di in (-1, 0, 1) for dj in (-1, 0, 1))
                     for i, j in ij], dtype=bool)
    a = np.asarray(a_high, bool)
    if not a.any() or not near.any():
        return float("nan")
    return float(near[a].mean() / near.mean())


def slide_summaries(pm: ProgrammeMap, pairs: Sequence[tuple[str, str]] | None = None) -> dict[str, float]:
    """Slide-level columns of one map (see the module docstring)."""
    out: dict[str, float] = {"n_tiles": float(len(pm.scores))}
    high = {}
    for p in pm.scores.columns:
        v = pm.scores[p].to_numpy()
        out[f"prog_{p}_mean"] = float(v.mean()) if len(v) else float("nan")
        level = pm.levels.get(p)
        if level is not None:
            high[p] = v > level
            out[f"prog_{p}_high_frac"] = float(high[p].mean()) if len(v) else float("nan")
    pairs = list(pairs) if pairs is not None else list(itertools.combinations(sorted(high), 2))
    for a, b in pairs:
        if a not in high or b not in high:
            raise ConfigError(f"co-localisation pair {a},{b}: both must be programmes of the "
                              f"model ({sorted(high)})")
        out[f"prog_{a}__{b}_coloc"] = colocalisation(pm.coords, pm.tile_size_level0, high[a],
                                                     high[b])
    return out


def map_table(pm: ProgrammeMap) -> pd.DataFrame:
    """One row per tile: ``x, y`` (level-0 top-left), ``tile_size_level0`` and the scores."""
    df = pd.DataFrame({"x": pm.coords[:, 0], "y": pm.coords[:, 1],
                       "tile_size_level0": pm.tile_size_level0})
    return pd.concat([df, pm.scores.reset_index(drop=True)], axis=1)


def write_map_outputs(pm: ProgrammeMap, out_dir: str | os.PathLike, *,
                      slide_path: str | os.PathLike | None = None, heatmaps: bool = True) -> dict[str, Path]:
    """``<slide>.programmes.csv``, QuPath ``<slide>.programmes.geojson`` and (with the slide)
    one heatmap PNG per programme; all written atomically."""
    import json

    from pathstrat.heatmaps import tiles_geojson
    from pathstrat.io import write_dataframe_atomic, write_text_atomic

    out = Path(out_dir)
    paths = {"table": write_dataframe_atomic(out / f"{pm.slide_id}.programmes.csv", map_table(pm))}
    gj = tiles_geojson(pm.coords, pm.tile_size_level0,
                       {f"programme_{k}": pm.scores[k].to_numpy() for k in pm.scores.columns},
                       slide_id=pm.slide_id)
    paths["geojson"] = write_text_atomic(out / f"{pm.slide_id}.programmes.geojson", json.dumps(gj))
    if heatmaps and slide_path is not None and len(pm.scores):
        paths.update(_heatmaps(pm, slide_path, out))
    return paths


def _heatmaps(pm: ProgrammeMap, slide_path: str | os.PathLike, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pathstrat.heatmaps import plot_heatmap, thumb_mpp_for, value_grid
    from pathstrat.io import atomic_path
    from pathstrat.slide import open_slide

    with open_slide(slide_path, mpp=pm.slide_mpp) as s:
        thumb, tmpp = s.thumbnail_at_mpp(thumb_mpp_for(s))
    ds = tmpp / pm.slide_mpp
    paths = {}
    for p in pm.scores.columns:
        v = pm.scores[p].to_numpy()
        grid = value_grid(pm.coords, v, pm.tile_size_level0, thumb.shape[:2], ds)
        fig, ax = plt.subplots(figsize=(6, 6 * thumb.shape[0] / max(thumb.shape[1], 1)))
        plot_heatmap(thumb, grid, ax, cmap="inferno", label=f"{p} score (z)",
                     vmin=float(np.min(v)), vmax=float(np.max(v)))
        ax.set_title(f"{pm.slide_id}: predicted {p} programme")
        ax.axis("off")
        dest = out / f"{pm.slide_id}.programme_{p}.png"
        with atomic_path(dest, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        paths[f"heatmap_{p}"] = dest
    return paths


def pseudobulk_targets(adata: Any, programmes: Mapping[str, Sequence[str]], *,
                       by: str = "sample_id") -> pd.DataFrame:
    """Per-sample ``pb_<programme>``: programme scores of the summed counts of each sample.

    Counts of all spots of a sample are summed (a pseudo-bulk library), normalised to 10,000
    and log1p-transformed; each gene is z-scored across samples and a programme is the mean of
    its genes' z-scores. Rows: ``slide_id`` (= the sample), ``patient_id``, ``path`` (the
    sample's slide, when the samples record it: the table is then a manifest for ``pathstrat
    tile``/``embed``/``train --target pb_<programme>``), ``pb_*``.
    """
    from scipy import sparse

    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    keys = np.asarray(adata.obs[by]).astype(str)
    uniq = sorted(set(keys.tolist()))
    if len(uniq) < 2:
        raise ConfigError(f"pseudo-bulk targets need at least 2 samples to z-score across; got "
                          f"{len(uniq)}")
    onehot = sparse.csr_matrix((np.ones(len(keys)), (np.searchsorted(uniq, keys),
                                                     np.arange(len(keys)))),
                               shape=(len(uniq), len(keys)))
    bulk = log1p_normalise(onehot @ counts)
    genes = list(adata.var_names)
    mean, sd = bulk.mean(axis=0), bulk.std(axis=0)
    sd[sd < 1e-12] = 1.0
    sc = programme_scores(bulk, genes, programmes, mean, sd)
    pid = (pd.Series(np.asarray(adata.obs["patient_id"]).astype(str), index=keys)
           .groupby(level=0).first() if "patient_id" in adata.obs else pd.Series(uniq, index=uniq))
    df = pd.DataFrame({"slide_id": uniq, "patient_id": [pid[u] for u in uniq]})
    paths = adata.uns.get("slide_paths", {}) if by == "sample_id" else {}
    if paths and all(u in paths for u in uniq):  # then the table is a manifest for tile/embed/train
        df["path"] = [str(paths[u]) for u in uniq]
    for c in sc.columns:
        df[f"pb_{c}"] = sc[c].to_numpy()
    return df
