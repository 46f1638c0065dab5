"""Spot tiles at a physical size, embedded with a registered encoder, written as ``.h5ad``.

A spot tile is the square of ``tile_um`` µm centred on the spot, read at ``tile_mpp`` µm/px
through :meth:`pathstrat.slide.Slide.read_tiles` (the fast JPEG-tile reader where the slide
allows it). The default, 112 µm at 0.5 µm/px (224 px), is the convention of the public
H&E-to-expression benchmarks (HEST-1k, STimage-1K4M).

The AnnData written per sample holds raw counts in ``X`` and ``layers["counts"]``,
``obsm["spatial"]`` (level-0 pixel ``x, y`` of the spot centres), ``obsm["X_<encoder_id>"]``
and ``uns["spatial"][library_id]`` (hires image and scale factors relative to level 0, the
layout scanpy and squidpy read), and provenance in ``uns["pathstrat"]``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathstrat.errors import ConfigError, import_optional
from pathstrat.io import atomic_path

log = logging.getLogger(__name__)

DEFAULT_TILE_UM = 112.0
DEFAULT_TILE_MPP = 0.5
H5AD_SCHEMA = "pathstrat.spatial-sample/1"


@dataclass(frozen=True)
class SpotTiling:
    """Geometry of spot tiles on one slide: side in level-0 px and output pixels."""

    tile_um: float
    tile_mpp: float
    tile_px: int
    tile_size_level0: float

    @classmethod
    def for_slide(cls, slide_mpp: float, tile_um: float = DEFAULT_TILE_UM,
                  tile_mpp: float = DEFAULT_TILE_MPP) -> SpotTiling:
        if tile_um <= 0 or tile_mpp <= 0:
            raise ConfigError(f"spot tile {tile_um} µm at {tile_mpp} µm/px: both must be > 0")
        px = int(round(tile_um / tile_mpp))
        if px < 8:
            raise ConfigError(f"spot tile {tile_um} µm at {tile_mpp} µm/px is {px} px: use at "
                              "least 8 px (a larger `tile_um` or a smaller `tile_mpp`)")
        return cls(float(tile_um), float(tile_mpp), px, tile_um / float(slide_mpp))

    def top_left(self, centres_level0: np.ndarray) -> np.ndarray:
        """Integer level-0 top-left corners of tiles centred on ``centres_level0`` (N, 2)."""
        c = np.asarray(centres_level0, dtype=np.float64).reshape(-1, 2)
        return np.round(c - self.tile_size_level0 / 2.0).astype(np.int64)

    def attrs(self) -> dict[str, Any]:
        return {"tile_um": self.tile_um, "tile_mpp": self.tile_mpp, "tile_px": self.tile_px,
                "tile_size_level0": self.tile_size_level0}


def iter_spot_tiles(slide: Any, centres_level0: np.ndarray, tiling: SpotTiling,
                    batch: int = 64) -> Iterator[np.ndarray]:
    """Yield (B, tile_px, tile_px, 3) uint8 batches of spot tiles, in input order."""
    coords = tiling.top_left(centres_level0)
    buf: list[np.ndarray] = []
    for tile in slide.read_tiles(coords, tiling.tile_size_level0, tiling.tile_px):
        buf.append(tile)
        if len(buf) == batch:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


def embed_points(slide: Any, centres_level0: np.ndarray, encoder: Any, tiling: SpotTiling,
                 batch: int = 64) -> tuple[np.ndarray, float]:
    """Features (N, dim) float32 of tiles centred on the points, and the tiles/s achieved."""
    t0 = time.perf_counter()
    parts = [np.asarray(encoder(b), dtype=np.float32)
             for b in iter_spot_tiles(slide, centres_level0, tiling, batch)]
    dt = time.perf_counter() - t0
    n = len(centres_level0)
    feats = np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)
    return feats, (n / dt if dt > 0 else float("nan"))


def build_sample(spaceranger: str | os.PathLike, slide_path: str | os.PathLike,
                 out_path: str | os.PathLike, *, encoder: Any = "builtin",
                 weights: str | None = None, device: str = "cpu", sample_id: str | None = None,
                 patient_id: str | None = None, mpp: float | None = None,
                 tile_um: float = DEFAULT_TILE_UM, tile_mpp: float = DEFAULT_TILE_MPP,
                 bin_size_um: float | None = None, check_content: bool = True,
                 batch: int = 64) -> Any:
    """Space Ranger output + its slide -> ``out_path`` (.h5ad); returns the AnnData.

    ``encoder`` is a registered encoder id or a built :class:`pathstrat.encoders.Encoder`.
    ``mpp`` overrides the slide's metadata MPP. The mapping is checked by
    :func:`pathstrat.spatial.ingest.map_to_slide` (a wrong slide raises
    :class:`SlideMismatchError` before any tile is read).
    """
    import_optional("anndata", "spatial", "writing .h5ad samples")
    from pathstrat.encoders import build_encoder
    from pathstrat.slide import open_slide
    from pathstrat.spatial.ingest import map_to_slide, read_spaceranger

    sample = read_spaceranger(spaceranger, bin_size_um=bin_size_um)
    enc = build_encoder(encoder, weights=weights, device=device) if isinstance(encoder, str) else encoder
    with open_slide(slide_path, mpp=mpp) as slide:
        xy, mapping = map_to_slide(sample, slide, check_content=check_content)
        tiling = SpotTiling.for_slide(slide.mpp, tile_um, tile_mpp)
        feats, rate = embed_points(slide, xy, enc, tiling, batch)
        dims = tuple(int(v) for v in slide.dimensions)
        slide_mpp, backend = float(slide.mpp), slide.backend
    ad = sample.adata
    sid = sample_id or sample.library_id
    ad.obs["sample_id"] = sid
    ad.obs["patient_id"] = patient_id or sid
    ad.obs["slide_mpp"] = slide_mpp
    ad.obs_names = [f"{sid}:{b}" for b in ad.obs_names]
    ad.obsm["spatial"] = xy.astype(np.float64)
    ad.obsm[f"X_{enc.spec.id}"] = feats
    from scipy import sparse

    x = sparse.csr_matrix(ad.X).astype(np.float32)
    ad.X = x
    ad.layers["counts"] = x.copy()
    sf = dict(sample.scalefactors)
    scale = mapping.scale
    # scanpy/squidpy plot obsm["spatial"] * scalef over the image: re-express against level 0
    lvl0 = {"tissue_hires_scalef": float(sf.get("tissue_hires_scalef", 0.0)) / scale,
            "tissue_lowres_scalef": float(sf.get("tissue_lowres_scalef", 0.0)) / scale,
            "spot_diameter_fullres": sample.spot_diameter_um / slide_mpp}
    images = {"hires": sample.hires} if sample.hires is not None else {}
    ad.uns["spatial"] = {sid: {"images": images, "scalefactors": lvl0,
                               "metadata": {"source_image_path": str(Path(slide_path).resolve())}}}
    from pathstrat import __version__

    ad.uns["pathstrat"] = {
        "schema": H5AD_SCHEMA, "pathstrat_version": __version__, "sample_id": sid,
        "patient_id": patient_id or sid, "library_id": sample.library_id,
        "slide_path": str(Path(slide_path).resolve()), "slide_dimensions": list(dims),
        "slide_mpp": slide_mpp, "reader_backend": backend,
        "spaceranger": str(sample.outs.resolve()), "spaceranger_files": dict(sample.files),
        "scalefactors_fullres": {k: float(v) for k, v in sf.items() if isinstance(v, (int, float))},
        "fullres_mpp": float(mapping.fullres_mpp), "fullres_to_level0": float(scale),
        "mapping": mapping.how,
        "content_corr": float("nan") if mapping.content_corr is None else mapping.content_corr,
        "spot_diameter_um": sample.spot_diameter_um, **tiling.attrs(),
        "encoder": {k: v for k, v in enc.attrs().items() if v is not None},
        "embedding_key": f"X_{enc.spec.id}", "spots_per_s": float(rate),
    }
    write_h5ad_atomic(ad, out_path)
    log.info("spatial sample %s: %d spots embedded with %s at %.1f spots/s -> %s", sid,
             ad.n_obs, enc.spec.id, rate, out_path)
    return ad


def write_h5ad_atomic(adata: Any, dest: str | os.PathLike) -> Path:
    """``adata.write_h5ad`` to a temporary name beside ``dest``, renamed on success."""
    with atomic_path(dest, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp)
    return Path(dest)


def read_samples(paths: list[str | os.PathLike]) -> Any:
    """Concatenate per-sample ``.h5ad`` files (same genes and embedding) into one AnnData."""
    ad_mod = import_optional("anndata", "spatial", "reading .h5ad samples")
    from pathstrat.errors import SchemaError

    ads = []
    for p in paths:
        a = ad_mod.read_h5ad(p)
        meta = a.uns.get("pathstrat", {})
        if meta.get("schema") != H5AD_SCHEMA:
            raise SchemaError(f"'{p}' is not a pathstrat spatial sample (uns['pathstrat']['schema']"
                              f" is {meta.get('schema')!r}); build it with `pathstrat spatial build`")
        ads.append(a)
    keys = {a.uns["pathstrat"]["embedding_key"] for a in ads}
    if len(keys) > 1:
        raise SchemaError(f"samples were embedded with different encoders {sorted(keys)}; "
                          "rebuild them with one `encoder`")
    genes = ads[0].var_names
    for p, a in zip(paths, ads, strict=True):
        if not a.var_names.equals(genes):
            common = genes.intersection(a.var_names)
            log.info("'%s' has %d genes, %d shared with the first sample", p, a.n_vars, len(common))
            genes = common
    out = ad_mod.concat([a[:, genes] for a in ads], join="inner", merge="same")
    out.uns["embedding_key"] = keys.pop()
    out.uns["samples"] = [a.uns["pathstrat"]["sample_id"] for a in ads]
    out.uns["slide_paths"] = {a.uns["pathstrat"]["sample_id"]: a.uns["pathstrat"]["slide_path"]
                              for a in ads}
    first = ads[0].uns["pathstrat"]
    out.uns["encoder"] = dict(first["encoder"])
    out.uns["tiling"] = {k: first[k] for k in ("tile_um", "tile_mpp", "tile_px")}
    return out
