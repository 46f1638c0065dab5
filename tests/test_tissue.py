"""pathstrat.tissue: tissue mask, pen marks, hole/small-object filtering, polygons, GeoJSON."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pathstrat.errors import EmptyTissueError
from pathstrat.slide import open_slide
from pathstrat.tissue import TissueMask, detect_tissue, draw_qc, mask_to_polygons, tissue_from_rgb

PINK = (222, 140, 192)
PURPLE = (160, 100, 190)
BLUE_INK = (40, 60, 200)
GREEN_INK = (40, 160, 80)
BLACK_INK = (25, 25, 30)


def glass(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Near-white glass with a little noise."""
    rng = np.random.default_rng(seed)
    return np.clip(238 + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)


def paint(img: np.ndarray, mask: np.ndarray, colour, seed: int = 1, noise: float = 12.0) -> None:
    """Paint ``colour`` with texture noise where ``mask`` is true (in place)."""
    rng = np.random.default_rng(seed)
    vals = np.asarray(colour, np.float32) + rng.normal(0, noise, (int(mask.sum()), 3))
    img[mask] = np.clip(vals, 0, 255).astype(np.uint8)


def disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# -- pure mask function --------------------------------------------------------------------------
def test_disc_of_tissue_is_found_with_its_area():
    h, w, mpp = 200, 260, 8.0
    truth = disc(h, w, 130, 100, 60)
    img = glass(h, w)
    paint(img, truth, PINK)
    mask, pen, thr = tissue_from_rgb(img, mpp)
    assert iou(mask, truth) > 0.95
    assert not pen.any()
    assert 20 <= thr < 90  # between glass (~0-10) and tissue (~90) saturation
    area_um2 = mask.sum() * mpp * mpp
    assert area_um2 == pytest.approx(np.pi * (60 * mpp) ** 2, rel=0.05)


@pytest.mark.parametrize("img", [
    glass(120, 160),
    np.full((120, 160, 3), 255, np.uint8),
    np.zeros((0, 0, 3), np.uint8),
], ids=["noisy-glass", "white", "empty"])
def test_blank_images_give_an_empty_mask_not_a_crash(img):
    mask, pen, _ = tissue_from_rgb(img, 8.0)
    assert mask.shape == img.shape[:2] and not mask.any()


def test_uniform_tissue_is_all_tissue():
    img = np.zeros((80, 80, 3), np.uint8)
    paint(img, np.ones((80, 80), bool), PINK, noise=2)
    mask, _, _ = tissue_from_rgb(img, 8.0)
    assert mask.mean() > 0.99


def test_pen_marks_are_detected_and_excluded_from_tissue():
    h, w, mpp = 240, 320, 8.0
    tissue = disc(h, w, 150, 120, 90)
    img = glass(h, w)
    paint(img, tissue, PURPLE)
    blue = np.zeros((h, w), bool)
    blue[115:125, 40:280] = True  # a blue line across the tissue
    green = disc(h, w, 290, 30, 12)  # a green dot on the glass
    black = disc(h, w, 30, 210, 10)  # a black dot on the glass
    grey = disc(h, w, 150, 200, 12)  # black ink seen at low resolution: dark grey, on tissue
    for m, c in ((blue, BLUE_INK), (green, GREEN_INK), (black, BLACK_INK), (grey, (85, 84, 83))):
        paint(img, m, c, noise=5)
    mask, pen, _ = tissue_from_rgb(img, mpp)
    ink = blue | green | black | grey
    assert pen[ink].mean() > 0.98  # every ink pixel flagged
    assert not (mask & ink).any()  # and none of it counted as tissue
    assert pen[tissue & ~ink].mean() < 0.06  # stained tissue is not ink (only the ink's rim)
    assert iou(mask, tissue & ~ink) > 0.85


def test_red_ink_differs_from_eosin():
    h, w = 120, 160
    img = glass(h, w)
    eosin = disc(h, w, 60, 60, 40)
    paint(img, eosin, PINK)
    red = np.zeros((h, w), bool)
    red[20:100, 120:130] = True
    paint(img, red, (200, 20, 30), noise=5)
    mask, pen, _ = tissue_from_rgb(img, 8.0)
    assert pen[red].mean() > 0.98 and pen[eosin].mean() < 0.02
    assert mask[eosin].mean() > 0.95


def test_small_holes_filled_large_holes_kept_sizes_in_um2():
    h, w, mpp = 200, 200, 8.0
    tissue = disc(h, w, 100, 100, 90)
    small_hole = disc(h, w, 60, 100, 4)  # ~ 50 px = 3,200 µm² < 50,000 µm²
    big_hole = disc(h, w, 130, 100, 25)  # ~ 1,960 px = 125,000 µm²
    img = glass(h, w)
    paint(img, tissue & ~small_hole & ~big_hole, PINK)
    mask, _, _ = tissue_from_rgb(img, mpp)
    assert mask[small_hole].mean() > 0.95
    assert mask[big_hole].mean() < 0.05
    polys = mask_to_polygons(mask, (4.0, 4.0))
    assert len(polys) == 1 and len(polys[0].interiors) == 1
    # hole area in level-0 px²: 4x4 level-0 px per mask px
    hole_area = abs(cv2.contourArea(np.asarray(polys[0].interiors[0].coords, np.float32)))
    assert hole_area == pytest.approx(big_hole.sum() * 16, rel=0.15)


@pytest.mark.parametrize("mpp", [8.0, 16.0])
def test_small_objects_removed_by_physical_size(mpp):
    # A 20,000 µm² threshold: a 60 µm speck (2,800 µm²) goes, a 400 µm blob (125,000 µm²) stays,
    # whatever the mask resolution.
    size_um = 3200.0
    n = int(size_um / mpp)
    img = glass(n, n)
    speck = disc(n, n, n * 0.25, n * 0.25, 30 / mpp)
    blob = disc(n, n, n * 0.6, n * 0.6, 200 / mpp)
    paint(img, speck | blob, PURPLE)
    mask, _, _ = tissue_from_rgb(img, mpp)
    assert not mask[speck].any()
    assert mask[blob].mean() > 0.9


# -- TissueMask geometry -------------------------------------------------------------------------
def _tissue_mask(mask: np.ndarray, ds=(16.0, 16.0), mpp=0.5) -> TissueMask:
    h, w = mask.shape
    return TissueMask(mask=mask, pen_mask=np.zeros_like(mask), mask_mpp=mpp * ds[0],
                      downsample_xy=ds, level0_size=(int(w * ds[0]), int(h * ds[1])),
                      slide_mpp=mpp, threshold=30.0, slide_id="s1",
                      thumbnail=np.full((h, w, 3), 240, np.uint8))


def test_polygons_and_geojson_in_level0_pixels():
    m = np.zeros((50, 80), bool)
    m[10:30, 20:60] = True  # 40 x 20 mask px
    m[18:22, 35:45] = False  # a hole
    tm = _tissue_mask(m)
    polys = tm.polygons_level0()
    assert len(polys) == 1
    minx, miny, maxx, maxy = polys[0].bounds
    # contour through boundary pixel centres: x from 20.5 to 59.5 mask px -> *16 level-0 px
    assert (minx, miny, maxx, maxy) == pytest.approx((20.5 * 16, 10.5 * 16, 59.5 * 16, 29.5 * 16))
    gj = json.loads(json.dumps(tm.to_geojson()))
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 1
    f = gj["features"][0]
    assert f["geometry"]["type"] == "Polygon" and len(f["geometry"]["coordinates"]) == 2
    assert f["properties"]["objectType"] == "annotation"
    assert f["properties"]["classification"]["name"] == "Tissue"
    ring = f["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]  # closed ring as GeoJSON requires
    # mask area: 40*20 - 10*4 = 760 px of (16*0.5 µm)² = 64 µm²
    assert tm.area_mm2 == pytest.approx(760 * 64 / 1e6)
    assert f["properties"]["area_mm2"] == pytest.approx(polys[0].area * 0.25 / 1e6, rel=1e-4)


def test_draw_qc_marks_contour_and_tiles():
    m = np.zeros((50, 80), bool)
    m[10:30, 20:60] = True
    tm = _tissue_mask(m)
    img = draw_qc(tm, np.array([[320, 160]], np.int64), 160.0)
    assert img.shape[2] == 3 and max(img.shape[:2]) >= 320
    green = (img[..., 1] > 150) & (img[..., 0] < 60)
    assert green.any()


# -- slides ---------------------------------------------------------------------------------------
def test_detect_tissue_on_generated_slide_matches_truth(tmp_path, aperio_tiff):
    h, w, mpp = 1536, 2048, 0.25
    truth = disc(h, w, 1000, 760, 520)
    img = glass(h, w)
    paint(img, truth, PINK)
    path = aperio_tiff(tmp_path / "disc.svs", img, mpp=mpp)
    with open_slide(path) as s:
        tm = detect_tissue(s, mask_mpp=8.0)
    assert tm.mask_mpp == pytest.approx(8.0, rel=0.02)
    assert tm.area_mm2 == pytest.approx(truth.sum() * mpp**2 / 1e6, rel=0.05)
    small = cv2.resize(truth.astype(np.uint8), tm.mask.shape[::-1], interpolation=cv2.INTER_AREA) > 0
    assert iou(tm.mask, small) > 0.9


def test_blank_slide_raises_empty_tissue_error_naming_slide(tmp_path, aperio_tiff):
    path = aperio_tiff(tmp_path / "blank.svs", glass(512, 768))
    with open_slide(path) as s:
        with pytest.raises(EmptyTissueError, match=r"'blank'.*min_saturation"):
            detect_tissue(s)
        assert not detect_tissue(s, allow_empty=True).mask.any()


def test_cmu_mask_agrees_with_independent_otsu(real_slide):
    """Compare with scikit-image Otsu on the saturation of OpenSlide's own thumbnail."""
    import openslide
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    path = real_slide("cmu-1-small-region.svs")
    with open_slide(path) as s:
        tm = detect_tissue(s, mask_mpp=8.0)
    osr = openslide.OpenSlide(str(path))
    h, w = tm.mask.shape
    thumb = np.asarray(osr.get_thumbnail((w, h)).convert("RGB"))
    sat = rgb2hsv(thumb)[..., 1]
    ref = sat > threshold_otsu(sat)
    ref = cv2.resize(ref.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    assert iou(tm.mask, ref) > 0.78
    assert (tm.mask & ref).sum() / ref.sum() > 0.9  # the mask covers the tissue
    # the region is 1.1 x 1.5 mm, about a third of it tissue
    assert 0.4 < tm.area_mm2 < 0.7
    assert tm.pen_area_fraction < 0.01


def _truth_at(truth: dict, key: str, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(truth[key].astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST)


def test_synthetic_slide_tissue_and_pen_match_ground_truth(synthetic_pen_slide):
    """make_slide plants tissue classes and ink strokes (black/green/blue) with saved truth."""
    truth = dict(np.load(synthetic_pen_slide.truth_path, allow_pickle=False))
    with open_slide(synthetic_pen_slide.path) as s:
        tm = detect_tissue(s)
    ink = _truth_at(truth, "pen_mask", tm.mask.shape) > 0
    near_ink = cv2.dilate(ink.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    tissue = (_truth_at(truth, "class_map", tm.mask.shape) > 0) & ~near_ink
    assert ink.mean() > 0.03  # the slide really has pen strokes
    assert tm.pen_mask[ink].mean() > 0.9  # ink found
    assert tm.mask[ink].mean() < 0.05  # and not counted as tissue
    assert tm.pen_mask[tissue].mean() < 0.01  # stained tissue is never called ink
    assert iou(tm.mask, tissue) > 0.85
    assert tm.pen_area_fraction == pytest.approx(ink.mean(), rel=0.35)  # dilated ink edges
