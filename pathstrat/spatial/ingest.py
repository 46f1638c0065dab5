"""Read Space Ranger outputs and map spot centres onto the slide's level-0 pixels.

Counts come from ``filtered_feature_bc_matrix.h5`` through :func:`scanpy.read_10x_h5`; positions
from ``spatial/tissue_positions.csv`` (Space Ranger >= 2), ``tissue_positions_list.csv``
(Space Ranger 1, no header) or ``tissue_positions.parquet`` (Space Ranger 3, Visium HD
``binned_outputs/square_XXXum``); scale factors from ``spatial/scalefactors_json.json``.

Space Ranger's positions are in the pixel frame of the image it was given ("full
resolution"). :func:`map_to_slide` converts them to level-0 pixels of a slide and refuses a
slide that is not that image: physical size, dimensions and the hires image's content must
agree with the slide.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import SchemaError, import_optional

log = logging.getLogger(__name__)

MATRIX_FILE = "filtered_feature_bc_matrix.h5"
POSITION_FILES = ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet")
POSITION_COLUMNS = ("in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                    "pxl_col_in_fullres")
VISIUM_SPOT_UM = 55.0
VISIUM_PITCH_UM = 100.0
MIN_CONTENT_CORR = 0.5  # hires image vs slide thumbnail (grayscale Pearson) to accept the pair


class SlideMismatchError(SchemaError):
    """The slide given is not the image the Space Ranger coordinates refer to."""


@dataclass
class SpaceRangerSample:
    """One Space Ranger output: counts (AnnData), positions in the full-resolution frame."""

    outs: Path
    library_id: str
    adata: Any  # anndata.AnnData, obs indexed by barcode, with POSITION_COLUMNS
    scalefactors: dict[str, float]
    hires: np.ndarray | None  # (h, w, 3) uint8 or None when absent
    fullres_mpp: float  # µm per full-resolution pixel (estimated, see fullres_mpp_estimate)
    bin_size_um: float | None = None  # Visium HD bins; None for 55 µm Visium spots
    files: dict[str, str] = field(default_factory=dict)

    @property
    def spot_diameter_um(self) -> float:
        """Spot (or bin side) size in µm."""
        return float(self.bin_size_um) if self.bin_size_um else VISIUM_SPOT_UM

    @property
    def fullres_xy(self) -> np.ndarray:
        """(N, 2) float64 spot centres ``(x, y)`` = ``(pxl_col, pxl_row)`` in full-resolution px."""
        obs = self.adata.obs
        return np.stack([obs["pxl_col_in_fullres"].to_numpy(np.float64),
                         obs["pxl_row_in_fullres"].to_numpy(np.float64)], axis=1)


def find_outs(path: str | os.PathLike, bin_size_um: float | None = None) -> Path:
    """The folder holding the matrix and ``spatial/``: ``path``, ``path/outs`` or, for Visium
    HD, ``.../binned_outputs/square_{bin:03d}um``."""
    p = Path(path)
    cands = [p, p / "outs"]
    if bin_size_um:
        tag = f"square_{int(round(bin_size_um)):03d}um"
        cands = [p / "binned_outputs" / tag, p / "outs" / "binned_outputs" / tag, *cands]
    for c in cands:
        if (c / MATRIX_FILE).is_file() and (c / "spatial").is_dir():
            return c
    raise SchemaError(f"'{p}' is not a Space Ranger output: no {MATRIX_FILE} with a spatial/ "
                      "folder in it or in outs/" + (f" or binned_outputs/{tag}/" if bin_size_um else "")
                      + "; point at the sample's outs folder")


def read_positions(spatial_dir: str | os.PathLike) -> tuple[pd.DataFrame, Path]:
    """The tissue positions table indexed by barcode (csv with header, legacy csv, or parquet)."""
    d = Path(spatial_dir)
    for name in POSITION_FILES:
        p = d / name
        if not p.is_file():
            continue
        if name.endswith(".parquet"):
            df = pd.read_parquet(p)
        elif name == "tissue_positions_list.csv":
            df = pd.read_csv(p, header=None, names=["barcode", *POSITION_COLUMNS])
        else:
            df = pd.read_csv(p)
        missing = [c for c in ("barcode", *POSITION_COLUMNS) if c not in df.columns]
        if missing:
            raise SchemaError(f"'{p}' lacks columns {missing}; expected barcode,"
                              f"{','.join(POSITION_COLUMNS)} as written by Space Ranger")
        return df.set_index("barcode"), p
    raise SchemaError(f"no tissue positions in '{d}' (looked for {', '.join(POSITION_FILES)}); "
                      "copy the whole spatial/ folder of the Space Ranger output")


def fullres_mpp_estimate(scalefactors: dict[str, Any], positions: pd.DataFrame) -> float:
    """µm per full-resolution pixel.

    ``microns_per_pixel`` when Space Ranger wrote it (Visium HD); else the spot pitch: along an
    array row, neighbouring spots are ``array_col`` 2 apart and 100 µm apart, so the slope of
    ``pxl_col_in_fullres`` on ``array_col`` is 50 µm / mpp. ``spot_diameter_fullres`` (55 µm)
    is the fallback when fewer than two columns are present.
    """
    if scalefactors.get("microns_per_pixel"):
        return float(scalefactors["microns_per_pixel"])
    cols = positions["array_col"].to_numpy(np.float64)
    px = positions["pxl_col_in_fullres"].to_numpy(np.float64)
    rows = positions["array_row"].to_numpy(np.float64)
    if np.unique(cols).size >= 2:
        # fit pxl_col = a * array_col + b * array_row + c (the array can be slightly rotated)
        design = np.stack([cols, rows, np.ones_like(cols)], axis=1)
        (a, b, _), *_ = np.linalg.lstsq(design, px, rcond=None)
        pyy = positions["pxl_row_in_fullres"].to_numpy(np.float64)
        (c2, d2, _), *_ = np.linalg.lstsq(design, pyy, rcond=None)
        step = math.hypot(a, c2)  # px per array_col step (half a pitch)
        if step > 0:
            return (VISIUM_PITCH_UM / 2.0) / step
    diam = scalefactors.get("spot_diameter_fullres")
    if not diam:
        raise SchemaError("scalefactors_json.json has neither microns_per_pixel nor "
                          "spot_diameter_fullres and the array has one column: pass fullres_mpp")
    return VISIUM_SPOT_UM / float(diam)


def read_spaceranger(path: str | os.PathLike, *, bin_size_um: float | None = None,
                     library_id: str | None = None, load_hires: bool = True) -> SpaceRangerSample:
    """Read a Space Ranger output folder with scanpy (counts) and pandas (positions).

    Only barcodes of the filtered matrix are kept; each gets its positions row (a barcode
    without one is a schema error). ``obs`` gains the position columns.
    """
    sc = import_optional("scanpy", "spatial", "reading Space Ranger outputs")
    outs = find_outs(path, bin_size_um)
    matrix = outs / MATRIX_FILE
    try:
        adata = sc.read_10x_h5(matrix)
    except (OSError, KeyError, ValueError) as exc:
        raise SchemaError(f"'{matrix}' is not a readable 10x feature-barcode HDF5 ({exc}); "
                          "copy it again from the Space Ranger outs folder") from exc
    adata.var_names_make_unique()
    if library_id is None:
        import h5py

        with h5py.File(matrix, "r") as f:
            libs = f.attrs.get("library_ids")
        library_id = (_text(libs[0]) if libs is not None and len(libs) else outs.parent.name)
    positions, pos_path = read_positions(outs / "spatial")
    missing = adata.obs_names.difference(positions.index)
    if len(missing):
        raise SchemaError(f"{len(missing)} barcodes of '{matrix}' (e.g. {missing[0]}) have no row "
                          f"in '{pos_path}': the two files come from different runs")
    pos = positions.loc[adata.obs_names, list(POSITION_COLUMNS)]
    for c in POSITION_COLUMNS:
        adata.obs[c] = pos[c].to_numpy()
    sf_path = outs / "spatial" / "scalefactors_json.json"
    if not sf_path.is_file():
        raise SchemaError(f"'{sf_path}' is missing; copy the whole spatial/ folder of the output")
    scalefactors = json.loads(sf_path.read_text())
    hires = None
    hires_path = outs / "spatial" / "tissue_hires_image.png"
    if load_hires and hires_path.is_file():
        import cv2

        img = cv2.imread(str(hires_path), cv2.IMREAD_COLOR)
        hires = None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    mpp = fullres_mpp_estimate(scalefactors, positions)
    bin_um = scalefactors.get("bin_size_um") or bin_size_um
    log.info("Space Ranger %s: %d spots x %d genes, full-res %.4g µm/px", library_id,
             adata.n_obs, adata.n_vars, mpp)
    return SpaceRangerSample(outs=outs, library_id=str(library_id), adata=adata,
                             scalefactors=scalefactors, hires=hires, fullres_mpp=mpp,
                             bin_size_um=float(bin_um) if bin_um else None,
                             files={"matrix": str(matrix), "positions": str(pos_path),
                                    "scalefactors": str(sf_path)})


@dataclass(frozen=True)
class SlideMapping:
    """Full-resolution px -> level-0 px: ``level0 = fullres * scale`` (no offset)."""

    scale: float
    slide_mpp: float
    fullres_mpp: float
    content_corr: float | None
    how: str  # "same image", "integer downsample", "mpp ratio" or "given"

    def apply(self, fullres_xy: np.ndarray) -> np.ndarray:
        return np.asarray(fullres_xy, dtype=np.float64) * self.scale


def map_to_slide(sample: SpaceRangerSample, slide: Any, *, tolerance: float = 0.03,
                 fullres_mpp: float | None = None, check_content: bool = True,
                 min_corr: float = MIN_CONTENT_CORR) -> tuple[np.ndarray, SlideMapping]:
    """Level-0 ``(x, y)`` of every spot centre on ``slide`` (an open :class:`Slide`).

    The scale is ``fullres_mpp / slide_mpp``, snapped to exactly 1 or to an integer downsample
    when within ``tolerance`` (the full-resolution image is then the slide or an integer
    reduction of it, and the mapping is exact). Refuses with :class:`SlideMismatchError`:
    a full-resolution frame whose physical size (hires image / scale factor) differs from the
    slide's by more than ``tolerance``, spots outside the slide, or a hires image whose
    grayscale Pearson correlation with the slide at the same scale is below ``min_corr``.
    """
    name = Path(str(slide.path)).name
    smpp = float(slide.mpp)
    fmpp = float(fullres_mpp) if fullres_mpp else sample.fullres_mpp
    est = fmpp / smpp
    how = "given" if fullres_mpp else "mpp ratio"
    scale = est
    for k in range(1, 17):
        if abs(est / k - 1.0) <= tolerance:
            scale, how = float(k), ("same image" if k == 1 else "integer downsample")
            break
    w0, h0 = (int(v) for v in slide.dimensions)
    who = f"Space Ranger sample '{sample.library_id}'"
    sf = float(sample.scalefactors.get("tissue_hires_scalef") or 0.0)
    if sample.hires is not None and sf > 0:
        hh, hw = sample.hires.shape[:2]
        fw_um, fh_um = hw / sf * fmpp, hh / sf * fmpp
        sw_um, sh_um = w0 * smpp, h0 * smpp
        slack = tolerance + 2.0 / min(hw, hh)  # the hires image is rounded to whole pixels
        if abs(fw_um / sw_um - 1) > slack or abs(fh_um / sh_um - 1) > slack:
            raise SlideMismatchError(
                f"{who} does not match slide '{name}': its image is {fw_um:.0f} x {fh_um:.0f} µm "
                f"({hw / sf:.0f} x {hh / sf:.0f} px at {fmpp:.4g} µm/px) but the slide is "
                f"{sw_um:.0f} x {sh_um:.0f} µm ({w0} x {h0} px at {smpp:.4g} µm/px); pass the "
                "slide given to spaceranger --image, or its MPP (`mpp`) if the metadata is wrong")
    xy = sample.fullres_xy * scale
    half = sample.spot_diameter_um / smpp / 2
    outside = (xy[:, 0] < -half) | (xy[:, 1] < -half) | (xy[:, 0] > w0 + half) | (xy[:, 1] > h0 + half)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise SlideMismatchError(
            f"{who} does not match slide '{name}': {int(outside.sum())} spot centres (e.g. "
            f"{sample.adata.obs_names[i]} at level-0 {xy[i, 0]:.0f},{xy[i, 1]:.0f}) fall outside "
            f"the {w0} x {h0} px slide; pass the slide the sample was imaged on")
    corr = None
    if check_content and sample.hires is not None and sf > 0:
        corr = content_correlation(sample.hires, slide, smpp * scale / sf)
        if not corr >= min_corr:
            raise SlideMismatchError(
                f"{who} does not match slide '{name}': its hires image correlates {corr:.2f} with "
                f"the slide at the same scale (need >= {min_corr}); pass the slide given to "
                "spaceranger --image for this sample")
    return xy, SlideMapping(scale=scale, slide_mpp=smpp, fullres_mpp=fmpp, content_corr=corr,
                            how=how)


def content_correlation(hires: np.ndarray, slide: Any, hires_mpp: float) -> float:
    """Pearson correlation of grayscale ``hires`` with the slide resampled to its pixel grid."""
    import cv2

    thumb, _ = slide.thumbnail_at_mpp(hires_mpp)
    hh, hw = hires.shape[:2]
    a = cv2.cvtColor(np.ascontiguousarray(hires[..., :3]), cv2.COLOR_RGB2GRAY).astype(np.float64)
    b = cv2.cvtColor(cv2.resize(thumb, (hw, hh), interpolation=cv2.INTER_AREA),
                     cv2.COLOR_RGB2GRAY).astype(np.float64)
    # compare at ~16 µm/px after removing structure above ~150 µm (where any two tissue
    # sections look alike): robust to JPEG/PNG and resampling, sensitive to the layout
    f = max(1, int(round(16.0 / hires_mpp)))
    if f > 1 and min(hh, hw) // f >= 16:
        size = (hw // f, hh // f)
        a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
        b = cv2.resize(b, size, interpolation=cv2.INTER_AREA)
    sigma = 150.0 / (hires_mpp * f)
    a = a - cv2.GaussianBlur(a, (0, 0), sigma)
    b = b - cv2.GaussianBlur(b, (0, 0), sigma)
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / den) if den > 0 else 0.0


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
