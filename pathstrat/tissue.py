"""Tissue detection on a low-resolution thumbnail: mask, pen marks, polygons and QC figures.

The mask is computed at ``mask_mpp`` (default 8 µm/px) from the best pyramid level, downscaled:
HSV saturation with an Otsu threshold (floored so blank glass stays empty), median blur,
morphological closing/opening, hole filling and small-object removal with sizes in µm² (so the
result does not depend on the mask resolution), and a pen-mark filter (blue, green, red and black
ink by hue/saturation/value rules). Polygons are exported in level-0 pixels as QuPath GeoJSON.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from pathstrat.errors import EmptyTissueError
from pathstrat.units import Level0Px, MicronsPerPixel

if TYPE_CHECKING:
    from pathstrat.slide import Slide

log = logging.getLogger(__name__)

# OpenCV HSV ranges: H in [0, 180), S and V in [0, 255].
MIN_SATURATION = 20  # Otsu threshold floor: glass, dust and JPEG noise stay below this
BLANK_RANGE = 8  # saturation spread (p99.5 - p0.5) under which an image is considered blank
QUPATH_TISSUE_COLOR = [0, 200, 0]


@dataclass(frozen=True)
class PenRules:
    """Hue/saturation/value rules (OpenCV units) that flag ink, not stained tissue.

    H&E tissue is pink to purple (hue about 125-179 and 0-5) with moderate saturation; marker
    ink is green or pure blue (hues no stain produces), strongly saturated red, or near black /
    dark unsaturated grey.
    """

    blue_hue: tuple[int, int] = (92, 122)
    blue_min_sat: int = 70
    green_hue: tuple[int, int] = (35, 91)
    green_min_sat: int = 50
    red_hue_low: int = 6  # hue <= this or >= red_hue_high is red
    red_hue_high: int = 174
    red_min_sat: int = 170
    red_max_val: int = 215
    black_max_val: int = 55
    grey_max_val: int = 120  # black ink at low resolution: dark grey, unlike saturated stain
    grey_max_sat: int = 60


@dataclass
class TissueMask:
    """Tissue mask of one slide at ``mask_mpp`` with the pen-mark mask and geometry helpers.

    ``downsample`` is level-0 pixels per mask pixel (x and y differ by rounding only; both are in
    ``downsample_xy``). ``thumbnail`` is the RGB image the mask was computed from.
    """

    mask: np.ndarray
    pen_mask: np.ndarray
    mask_mpp: float
    downsample_xy: tuple[float, float]
    level0_size: tuple[int, int]
    slide_mpp: float
    threshold: float
    slide_id: str = ""
    thumbnail: np.ndarray | None = field(default=None, repr=False)

    @property
    def downsample(self) -> float:
        """Level-0 pixels per mask pixel (mean of x and y)."""
        return (self.downsample_xy[0] + self.downsample_xy[1]) / 2.0

    @property
    def pixel_area_um2(self) -> float:
        """Area of one mask pixel in µm²."""
        return self.slide_mpp**2 * self.downsample_xy[0] * self.downsample_xy[1]

    @property
    def area_mm2(self) -> float:
        """Tissue area in mm²."""
        return float(self.mask.sum()) * self.pixel_area_um2 / 1e6

    @property
    def pen_area_fraction(self) -> float:
        """Fraction of the slide area covered by pen marks."""
        return float(self.pen_mask.mean()) if self.pen_mask.size else 0.0

    def polygons_level0(self) -> list:
        """Tissue outlines as shapely Polygons (with holes) in level-0 pixel coordinates."""
        return mask_to_polygons(self.mask, self.downsample_xy)

    def to_geojson(self, classification: str = "Tissue") -> dict[str, Any]:
        """QuPath-compatible GeoJSON FeatureCollection of the tissue polygons (level-0 px)."""
        feats = []
        from shapely.geometry.polygon import orient

        for i, poly in enumerate(self.polygons_level0()):
            poly = orient(poly, 1.0)  # GeoJSON right-hand rule: exterior CCW, holes CW
            rings = [_ring(poly.exterior.coords)] + [_ring(r.coords) for r in poly.interiors]
            feats.append({
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pathstrat/{self.slide_id}/tissue/{i}")),
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": classification, "color": QUPATH_TISSUE_COLOR},
                    "area_mm2": round(poly.area * self.slide_mpp**2 / 1e6, 6),
                },
            })
        return {"type": "FeatureCollection", "features": feats}


def detect_tissue(slide: Slide, *, mask_mpp: MicronsPerPixel | float = 8.0, slide_id: str | None = None,
                  allow_empty: bool = False, **kwargs: Any) -> TissueMask:
    """Detect tissue on ``slide`` (a :class:`pathstrat.slide.Slide`) at about ``mask_mpp`` µm/px.

    Keyword arguments go to :func:`tissue_from_rgb` (``min_saturation``, ``min_object_um2``,
    ``max_hole_um2``, ``pen_rules``, ...). Raises :class:`EmptyTissueError` naming the slide when
    nothing is found, unless ``allow_empty``.
    """
    sid = slide_id or _slide_name(slide)
    thumb, _actual = slide.thumbnail_at_mpp(mask_mpp)
    thumb = np.ascontiguousarray(thumb[..., :3], dtype=np.uint8)
    w0, h0 = (int(v) for v in slide.dimensions)
    ds = (w0 / thumb.shape[1], h0 / thumb.shape[0])
    slide_mpp = float(slide.mpp)
    mask_mpp_actual = slide_mpp * (ds[0] + ds[1]) / 2.0
    mask, pen, thr = tissue_from_rgb(thumb, mask_mpp_actual, **kwargs)
    tm = TissueMask(mask=mask, pen_mask=pen, mask_mpp=mask_mpp_actual, downsample_xy=ds,
                    level0_size=(w0, h0), slide_mpp=slide_mpp, threshold=thr, slide_id=sid,
                    thumbnail=thumb)
    log.debug("tissue %s: %.3f mm2, pen %.3f, threshold %.1f", sid, tm.area_mm2,
              tm.pen_area_fraction, thr)
    if not allow_empty and not mask.any():
        raise EmptyTissueError(
            f"Slide '{sid}': no tissue found at {mask_mpp_actual:.1f} µm/px (saturation threshold "
            f"{thr:.0f}, pen marks {tm.pen_area_fraction:.1%} of the slide). If the slide has faint "
            "tissue, try a lower min_saturation (e.g. 10) or min_object_um2; check that the "
            "slide is not blank or fully covered by pen marks."
        )
    return tm


def tissue_from_rgb(rgb: np.ndarray, mpp: MicronsPerPixel | float, *, min_saturation: float = MIN_SATURATION,
                    blur_um: float = 40.0, close_um: float = 48.0, open_um: float = 24.0,
                    min_object_um2: float = 20_000.0, max_hole_um2: float = 50_000.0,
                    pen_rules: PenRules | None = PenRules(), pen_dilate_um: float = 16.0,
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """Tissue and pen masks of an RGB thumbnail at ``mpp`` µm/px; returns (mask, pen, threshold).

    Sizes are physical (µm, µm²) and converted to pixels here. A blank or uniform image yields
    an empty mask rather than an Otsu threshold inside the noise.
    """
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    empty = np.zeros((h, w), bool)
    if h == 0 or w == 0:
        return empty, empty.copy(), float("nan")
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    pen = pen_mask_from_hsv(hsv, pen_rules, mpp, pen_dilate_um) if pen_rules else empty.copy()

    sat = cv2.medianBlur(hsv[..., 1], _odd_px(blur_um, mpp))
    sat_free = sat[~pen]
    if sat_free.size == 0:
        return empty, pen, float("nan")
    lo, hi = np.percentile(sat_free, [0.5, 99.5])
    if hi < min_saturation:
        return empty, pen, float(min_saturation)  # blank glass: nothing to threshold
    # A uniform image (all glass or all tissue) has no two classes for Otsu to separate.
    thr = float(min_saturation) if hi - lo < BLANK_RANGE else max(_otsu(sat_free), min_saturation)
    mask = (sat > thr) & ~pen
    mask = _morph(mask, cv2.MORPH_CLOSE, _odd_px(close_um, mpp))
    mask = _morph(mask, cv2.MORPH_OPEN, _odd_px(open_um, mpp))
    px_area = mpp * mpp
    mask = fill_holes(mask, max_hole_px=max_hole_um2 / px_area)
    mask &= ~pen
    mask = remove_small_objects(mask, min_px=min_object_um2 / px_area)
    return mask, pen, thr


def pen_mask_from_hsv(hsv: np.ndarray, rules: PenRules, mpp: float,
                      dilate_um: float = 16.0) -> np.ndarray:
    """Pixels of blue, green, red or black marker ink (dilated a little to cover ink edges)."""
    hue, sat, val = (hsv[..., i].astype(np.int16) for i in range(3))
    r = rules
    blue = (hue >= r.blue_hue[0]) & (hue <= r.blue_hue[1]) & (sat >= r.blue_min_sat)
    green = (hue >= r.green_hue[0]) & (hue <= r.green_hue[1]) & (sat >= r.green_min_sat)
    red = (((hue <= r.red_hue_low) | (hue >= r.red_hue_high)) & (sat >= r.red_min_sat)
           & (val <= r.red_max_val))
    black = (val <= r.black_max_val) | ((val <= r.grey_max_val) & (sat <= r.grey_max_sat))
    pen = (blue | green | red | black).astype(np.uint8)
    pen = cv2.morphologyEx(pen, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))  # drop isolated pixels
    k = 2 * int(round(dilate_um / max(mpp, 1e-9))) + 1  # dilate_um is the radius
    if k > 1:
        pen = cv2.dilate(pen, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return pen.astype(bool)


def fill_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fill background regions enclosed by tissue that are smaller than ``max_hole_px``."""
    if not mask.any():
        return mask
    inv = (~mask).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    h, w = mask.shape
    x, y, bw, bh, area = (stats[:, i] for i in range(5))
    touches = (x == 0) | (y == 0) | (x + bw >= w) | (y + bh >= h)
    fill = (~touches) & (area < max_hole_px)
    fill[0] = False if n else fill[0]
    out = mask.copy()
    out |= fill[labels] & (inv > 0)
    return out


def remove_small_objects(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Remove 8-connected tissue components smaller than ``min_px`` pixels."""
    if not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False
    return keep[labels]


def mask_to_polygons(mask: np.ndarray, downsample_xy: tuple[float, float]) -> list:
    """shapely Polygons (exterior + holes) of a boolean mask, scaled to level-0 pixels."""
    from shapely.geometry import MultiPolygon, Polygon
    from shapely.validation import make_valid

    m = mask.astype(np.uint8)
    if not m.any():
        return []
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    hierarchy = hierarchy[0]
    scale = np.asarray(downsample_xy, dtype=np.float64)

    def to_l0(c: np.ndarray) -> np.ndarray:
        return (c.reshape(-1, 2).astype(np.float64) + 0.5) * scale

    polys = []
    for i, c in enumerate(contours):
        if hierarchy[i][3] != -1 or len(c) < 3:
            continue  # holes are attached to their parent below
        holes = []
        child = hierarchy[i][2]
        while child != -1:
            if len(contours[child]) >= 3:
                holes.append(to_l0(contours[child]))
            child = hierarchy[child][0]
        poly = Polygon(to_l0(c), holes)
        if not poly.is_valid:
            poly = make_valid(poly)
        parts = poly.geoms if hasattr(poly, "geoms") else [poly]
        polys.extend(p for p in parts if isinstance(p, Polygon) and p.area > 0)
        polys.extend(q for p in parts if isinstance(p, MultiPolygon) for q in p.geoms)
    return polys


def draw_qc(tm: TissueMask, coords: np.ndarray | None = None, tile_size_level0: Level0Px | float = 0.0,
            min_long_side: int = 800, max_upscale: int = 4) -> np.ndarray:
    """RGB QC image: thumbnail, tissue contour (green), pen marks (red tint), tile grid (blue)."""
    if tm.thumbnail is None:
        raise ValueError("TissueMask has no thumbnail to draw on")
    img = tm.thumbnail.copy()
    long_side = max(img.shape[:2])
    f = int(min(max_upscale, max(1, math.ceil(min_long_side / max(long_side, 1)))))
    if f > 1:
        img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
    size = (img.shape[1], img.shape[0])
    pen = _resize_mask(tm.pen_mask, size)
    img[pen] = (0.5 * img[pen] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
    if coords is not None and len(coords):
        sx, sy = f / tm.downsample_xy[0], f / tm.downsample_xy[1]
        x0 = np.round(coords[:, 0] * sx).astype(np.int32)
        y0 = np.round(coords[:, 1] * sy).astype(np.int32)
        x1 = np.round((coords[:, 0] + tile_size_level0) * sx).astype(np.int32)
        y1 = np.round((coords[:, 1] + tile_size_level0) * sy).astype(np.int32)
        for a, b, c, d in zip(x0, y0, x1, y1, strict=True):
            cv2.rectangle(img, (int(a), int(b)), (int(c), int(d)), (40, 80, 255), 1)
    contours, _ = cv2.findContours(_resize_mask(tm.mask, size).astype(np.uint8), cv2.RETR_CCOMP,
                                   cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, (0, 170, 0), max(1, f))
    return img


# ---------------------------------------------------------------------------------------------


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of uint8 values (OpenCV on a 1-row image)."""
    v = np.ascontiguousarray(values.reshape(1, -1), dtype=np.uint8)
    thr, _ = cv2.threshold(v, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(thr)


def _odd_px(um: float, mpp: float, minimum: int = 3) -> int:
    """Odd kernel size in pixels for a physical size (at least ``minimum``)."""
    k = max(minimum, int(round(um / max(mpp, 1e-9))))
    return k if k % 2 == 1 else k + 1


def _morph(mask: np.ndarray, op: int, k: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    return cv2.morphologyEx(mask.astype(np.uint8), op, kernel).astype(bool)


def _ring(coords: Any) -> list[list[float]]:
    return [[round(float(x), 2), round(float(y), 2)] for x, y in coords]


def _slide_name(slide: Any) -> str:
    from pathlib import Path

    p = getattr(slide, "path", None)
    return Path(p).stem if p else "slide"
