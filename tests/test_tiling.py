"""pathstrat.tiling: grid properties, tissue fractions, tiles-file contract, batch, resume, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathstrat.errors import ConfigError, EmptyTissueError, MissingMPPError, SchemaError
from pathstrat.io import TMP_PREFIX, read_failures
from pathstrat.slide import open_slide
from pathstrat.tiles import TILES_SCHEMA, read_tiles
from pathstrat.tiling import (
    TilingParams,
    compute_grid,
    grid_coords,
    tile_cohort,
    tile_slide,
    tiles_file_reusable,
    tissue_fractions,
)

ROOT = Path(__file__).resolve().parents[1]
CMU = "cmu-1-small-region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"
BAD = ("bad/broken.svs", "bad/unopenable.tiff", "bad/unreadable.svs")
CONTRACT_ATTRS = ("target_mpp", "tile_px", "overlap_px", "tile_size_level0", "stride_level0",
                  "read_level", "read_size_px", "slide_mpp", "mpp_source", "level0_width",
                  "level0_height", "slide_id", "slide_path", "params_hash", "pathstrat_version",
                  "schema")
SMALL = TilingParams(target_mpp=0.5, tile_px=64)  # 128 level-0 px tiles on 0.25 µm/px slides


# -- generated slides ---------------------------------------------------------------------------
def ellipse(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def he_slide(h: int, w: int, tissue: np.ndarray, seed: int = 0) -> np.ndarray:
    """Glass with H&E-like pink/purple texture where ``tissue`` is true."""
    rng = np.random.default_rng(seed)
    img = np.clip(238 + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
    tex = cv2.resize(rng.random((h // 16 + 1, w // 16 + 1)).astype(np.float32), (w, h))[..., None]
    col = (1 - tex) * np.array([222, 140, 192], np.float32) + tex * np.array([160, 100, 190])
    col += rng.normal(0, 10, (h, w, 3))
    img[tissue] = np.clip(col[tissue], 0, 255).astype(np.uint8)
    return img


TRUTH_SHAPE = (1536, 2048)


def truth_mask() -> np.ndarray:
    h, w = TRUTH_SHAPE
    return ellipse(h, w, 1000, 780, 700, 520)


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory, aperio_tiff) -> Path:
    """Generated 0.25 µm/px slides: an ellipse of tissue, the same with blue ink, a blank one."""
    d = tmp_path_factory.mktemp("gen")
    h, w = TRUTH_SHAPE
    tissue = truth_mask()
    aperio_tiff(d / "ellipse.svs", he_slide(h, w, tissue))
    inked = he_slide(h, w, tissue, seed=1)
    inked[700:1000, :] = np.array([40, 60, 200], np.uint8)  # 300 px (75 µm) blue band
    aperio_tiff(d / "inked.svs", inked)
    aperio_tiff(d / "blank.svs", he_slide(768, 1024, np.zeros((768, 1024), bool)))
    return d


def tile_truth_fraction(mask: np.ndarray, coords: np.ndarray, size: float) -> np.ndarray:
    """Brute-force tissue fraction of level-0 tiles on a level-0 truth mask (test reference)."""
    s = int(round(size))
    return np.array([mask[y:y + s, x:x + s].mean() for x, y in coords])


# -- grid properties (hypothesis) ---------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(w=st.integers(1, 2000), h=st.integers(1, 2000), size=st.floats(8, 900),
       overlap=st.floats(0, 0.9))
def test_grid_properties(w, h, size, overlap):
    stride = max(4.0, size * (1 - overlap))  # grids stay under 250,000 tiles
    c = grid_coords(w, h, size, stride)
    assert c.dtype == np.int64 and c.shape[1] == 2
    assert len(np.unique(c[:, 1] * (w + 1) + c[:, 0])) == len(c)  # no duplicates
    if len(c):
        assert c.min() >= 0
        assert (c[:, 0] + size <= w + 1e-6).all() and (c[:, 1] + size <= h + 1e-6).all()
    expected = [int(np.floor((n - size) / stride + 1e-9)) + 1 if n >= size else 0 for n in (w, h)]
    assert len(c) == expected[0] * expected[1]  # full rectangular grid of every tile that fits
    if not len(c):
        return
    for axis, length, n in ((np.unique(c[:, 0]), w, expected[0]), (np.unique(c[:, 1]), h, expected[1])):
        assert len(axis) == n and axis[0] == 0
        if n > 1:
            assert (np.abs(np.diff(axis) - stride) <= 1.0 + 1e-9).all()  # stride respected
            assert abs(axis[-1] - np.floor((n - 1) * stride)) <= 1
        assert axis[-1] + stride + size > length - 1  # no room left for another tile


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), ds=st.integers(1, 8), tile_mask_px=st.integers(1, 12))
def test_tissue_fraction_equals_block_mean_when_aligned(seed, ds, tile_mask_px):
    rng = np.random.default_rng(seed)
    mask = rng.random((30, 40)) < rng.random()
    size = float(ds * tile_mask_px)
    coords = grid_coords(40 * ds, 30 * ds, size, size)
    frac = tissue_fractions(mask, coords, size, (ds, ds))
    ref = [mask[y // ds:y // ds + tile_mask_px, x // ds:x // ds + tile_mask_px].mean()
           for x, y in coords]
    np.testing.assert_allclose(frac, ref, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), ds=st.floats(1.3, 20), size=st.floats(3, 300),
       stride_frac=st.floats(0.3, 1.0))
def test_tissue_fraction_matches_supersampled_reference(seed, ds, size, stride_frac):
    """Fractional mask pixels per tile: compare with a 64 x 64 midpoint-rule integral."""
    rng = np.random.default_rng(seed)
    mask = rng.random((25, 35)) < 0.4
    coords = grid_coords(int(35 * ds), int(25 * ds), size, max(1.0, size * stride_frac))
    if len(coords) == 0:
        return
    coords = coords[rng.choice(len(coords), min(40, len(coords)), replace=False)]
    frac = tissue_fractions(mask, coords, size, (ds, ds))
    off = (np.arange(64) + 0.5) / 64 * size
    for (x, y), f in zip(coords, frac, strict=True):
        iy = np.clip(((y + off) / ds).astype(int), 0, 24)
        ix = np.clip(((x + off) / ds).astype(int), 0, 34)
        ref = mask[iy][:, ix].mean()
        # midpoint rule error: at most 1/64 of the tile per mask edge crossing each axis
        crossings = int(np.ceil(size / ds)) + 1
        assert abs(f - ref) <= 2 * crossings / 64 + 1e-6


def test_sub_pixel_stride_is_rejected():
    with pytest.raises(ConfigError, match="at least one level-0 pixel"):
        grid_coords(100, 100, 8.0, 0.5)


def test_overlap_halves_the_stride():
    p = TilingParams(tile_px=224, overlap_px=112)
    assert p.tile_size_level0(0.25) == 448.0 and p.stride_level0(0.25) == 224.0
    c = grid_coords(2000, 500, p.tile_size_level0(0.25), p.stride_level0(0.25))
    xs = np.unique(c[:, 0])
    assert xs.tolist() == [0, 224, 448, 672, 896, 1120, 1344]  # 1344 + 448 <= 2000 < 1568 + 448
    assert np.unique(c[:, 1]).tolist() == [0]


def test_params_validation_and_hash():
    with pytest.raises(ValueError, match="overlap_px"):
        TilingParams(tile_px=224, overlap_px=224)
    with pytest.raises(ValueError):
        TilingParams(unknown=1)
    a, b = TilingParams(), TilingParams(min_tissue=0.5)
    assert a.hash() == TilingParams().hash() and a.hash() != b.hash()


# -- generated slides ---------------------------------------------------------------------------
def test_grid_on_generated_slide_lies_in_tissue_and_covers_it(gen_dir):
    with open_slide(gen_dir / "ellipse.svs") as s:
        g = compute_grid(s, SMALL)
    size = g.tile_size_level0
    assert size == pytest.approx(128.0) and g.stride_level0 == pytest.approx(128.0)
    h, w = TRUTH_SHAPE
    c = g.coords
    assert (c >= 0).all() and (c[:, 0] + size <= w).all() and (c[:, 1] + size <= h).all()
    truth = truth_mask()
    kept = tile_truth_fraction(truth, c, size)
    assert kept.min() >= SMALL.min_tissue - 0.1  # every tile is (mostly) tissue
    np.testing.assert_allclose(g.tissue_fraction, kept, atol=0.12)
    allc = grid_coords(w, h, size, size)
    full = allc[tile_truth_fraction(truth, allc, size) >= 0.6]
    kept_set = {tuple(x) for x in c.tolist()}
    assert all(tuple(x) in kept_set for x in full.tolist())  # coverage of the tissue
    assert g.background_rejected_fraction == pytest.approx(1 - len(c) / len(allc))


def test_synthetic_slide_tiles_lie_in_true_tissue_not_on_ink(synthetic_pen_slide):
    truth = np.load(synthetic_pen_slide.truth_path, allow_pickle=False)
    tissue = (truth["class_map"] > 0) & ~(truth["pen_mask"] > 0)
    f = float(truth["truth_mpp"]) / float(truth["slide_mpp"])  # level-0 px per truth px
    with open_slide(synthetic_pen_slide.path) as s:
        g = compute_grid(s, TilingParams(target_mpp=0.5, tile_px=64))
        w0, h0 = s.dimensions
    size = g.tile_size_level0
    assert (g.coords[:, 0] + size <= w0).all() and (g.coords[:, 1] + size <= h0).all()
    # truth fraction per tile on the truth grid (tile = size / f truth px)
    frac = tile_truth_fraction(tissue, np.round(g.coords / f).astype(int), size / f)
    assert frac.min() >= 0.1 and np.median(frac) > 0.9
    area_tiles = tissue.sum() * f * f / size**2  # tissue area in tile units
    assert 0.85 * area_tiles <= len(g.coords) <= 1.2 * area_tiles  # covers the tissue


def test_tile_slide_writes_the_contract(gen_dir, tmp_path):
    row = tile_slide(gen_dir / "ellipse.svs", tmp_path, SMALL, slide_id="ell")
    ts = read_tiles(tmp_path / "tiles" / "ell.h5")
    with h5py.File(tmp_path / "tiles" / "ell.h5") as f:
        assert f["coords"].dtype == np.int64 and f["tissue_fraction"].dtype == np.float32
    a = ts.attrs
    assert all(k in a for k in CONTRACT_ATTRS)
    assert a["schema"] == TILES_SCHEMA and a["params_hash"] == SMALL.hash()
    assert (a["target_mpp"], a["tile_px"], a["overlap_px"]) == (0.5, 64, 0)
    assert a["tile_size_level0"] == pytest.approx(128.0) and a["stride_level0"] == pytest.approx(128.0)
    assert (a["level0_width"], a["level0_height"]) == (2048, 1536)
    assert a["slide_mpp"] == pytest.approx(0.25) and a["mpp_source"] == "openslide"
    # 0.5 µm/px is 2x the 0.25 base; levels are 1/4/16 -> read level 0, 128 px, resize to 64
    assert (a["read_level"], a["read_size_px"]) == (0, 128)
    # stored relative to the run directory (no absolute paths in shared files)
    assert not Path(a["slide_path"]).is_absolute()
    assert (tmp_path / a["slide_path"]).resolve() == (gen_dir / "ellipse.svs").resolve()
    assert row["status"] == "tiled" and row["n_tiles"] == len(ts) > 50
    assert row["tissue_area_mm2"] == pytest.approx(truth_mask().sum() * 0.0625 / 1e6, rel=0.05)
    gj = json.loads((tmp_path / "qc" / "ell.geojson").read_text())
    assert gj["features"][0]["properties"]["classification"]["name"] == "Tissue"
    png = cv2.imread(str(tmp_path / "qc" / "ell.png"))
    assert png is not None and png.shape[2] == 3
    assert tiles_file_reusable(tmp_path / "tiles" / "ell.h5", SMALL,
                               slide_path=str(gen_dir / "ellipse.svs")) is None
    assert tiles_file_reusable(tmp_path / "tiles" / "ell.h5", TilingParams(tile_px=32),
                               slide_path=str(gen_dir / "ellipse.svs")) == "tiling parameters changed"
    assert tiles_file_reusable(tmp_path / "tiles" / "ell.h5", SMALL, slide_path=str(gen_dir / "ellipse.svs"),
                               mpp_override=0.3) == "mpp override changed"


def test_pen_marked_band_gets_no_tiles(gen_dir, tmp_path):
    with open_slide(gen_dir / "inked.svs") as s:
        g = compute_grid(s, SMALL)
    assert g.tissue.pen_area_fraction > 0.1
    size = g.tile_size_level0
    inside_band = (g.coords[:, 1] >= 700) & (g.coords[:, 1] + size <= 1000)
    assert not inside_band.any()
    band_mask_rows = slice(int(720 / g.tissue.downsample_xy[1]), int(980 / g.tissue.downsample_xy[1]))
    assert not g.tissue.mask[band_mask_rows].any()
    assert len(g.coords) > 30  # tissue above and below the band is kept


def test_cohort_records_blank_slide_and_skips_on_rerun(gen_dir, tmp_path):
    df = pd.DataFrame({"slide_id": ["ell", "blank"],
                       "path": [str(gen_dir / "ellipse.svs"), str(gen_dir / "blank.svs")]})
    r = tile_cohort(df, tmp_path, SMALL, progress=False)
    assert (r.n_tiled, r.n_skipped, r.n_failed) == (1, 0, 1)
    fails = read_failures(tmp_path / "failures.csv")
    assert [(f["slide_id"], f["error_type"], f["stage"]) for f in fails] == [
        ("blank", "EmptyTissueError", "tile")]
    assert "no tissue found" in fails[0]["reason"]
    qc = pd.read_csv(tmp_path / "qc.csv")
    assert qc["slide_id"].tolist() == ["ell", "blank"]
    assert qc["status"].tolist() == ["tiled", "failed"]
    mtime = (tmp_path / "tiles" / "ell.h5").stat().st_mtime_ns
    r2 = tile_cohort(df, tmp_path, SMALL, progress=False)
    assert (r2.n_tiled, r2.n_skipped, r2.n_failed) == (0, 1, 1)
    assert (tmp_path / "tiles" / "ell.h5").stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(r2.qc.drop(columns="status"), r.qc.drop(columns="status"))
    r3 = tile_cohort(df, tmp_path, TilingParams(target_mpp=0.5, tile_px=96), progress=False)
    assert r3.n_tiled == 1 and read_tiles(tmp_path / "tiles" / "ell.h5").attrs["tile_px"] == 96


def test_reuse_survives_moving_the_slide_but_not_changing_it_or_the_code(gen_dir, tmp_path, monkeypatch):
    import shutil

    import pathstrat.tiling as T

    src = tmp_path / "a" / "ellipse.svs"
    src.parent.mkdir()
    shutil.copyfile(gen_dir / "ellipse.svs", src)
    out = tmp_path / "run"
    assert tile_cohort(pd.DataFrame({"slide_id": ["ell"], "path": [str(src)]}), out, SMALL,
                       progress=False).n_tiled == 1
    # staged to another folder, copied without -p (new path, new mtime): reused
    moved = tmp_path / "scratch" / "ellipse.svs"
    moved.parent.mkdir()
    shutil.copyfile(src, moved)
    os.utime(moved, (1e9, 1e9))
    df = pd.DataFrame({"slide_id": ["ell"], "path": [str(moved)]})
    assert tile_cohort(df, out, SMALL, progress=False).n_skipped == 1
    # a changed header (same size): retiled
    data = bytearray(moved.read_bytes())
    data[200] ^= 0xFF
    moved.write_bytes(bytes(data))
    assert T.tiles_file_reusable(out / "tiles" / "ell.h5", SMALL, slide_path=str(moved)) == \
        "slide file changed since it was tiled"
    moved.write_bytes(src.read_bytes())
    assert tile_cohort(df, out, SMALL, progress=False).n_skipped == 1
    # another tissue/grid algorithm version: never reuses the old tiles
    monkeypatch.setattr(T, "CODE_VERSION", "tissue-99.grid-1")
    assert T.tiles_file_reusable(out / "tiles" / "ell.h5", SMALL, slide_path=str(moved)).startswith(
        "tiling code changed")


def test_invalid_tiles_file_is_redone(gen_dir, tmp_path):
    (tmp_path / "tiles").mkdir()
    bogus = tmp_path / "tiles" / "ell.h5"
    bogus.write_bytes(b"not hdf5")
    with pytest.raises(SchemaError, match="cannot be read"):
        read_tiles(bogus)
    assert tiles_file_reusable(bogus, SMALL, slide_path="x").startswith("invalid tiles file")
    row = tile_slide(gen_dir / "ellipse.svs", tmp_path, SMALL, slide_id="ell")
    assert row["status"] == "tiled" and len(read_tiles(bogus)) == row["n_tiles"]


def test_workers_give_identical_tiles(gen_dir, tmp_path):
    df = pd.DataFrame({"slide_id": ["a", "b", "c"],
                       "path": [str(gen_dir / n) for n in ("ellipse.svs", "inked.svs", "blank.svs")]})
    r1 = tile_cohort(df, tmp_path / "one", SMALL, workers=1, progress=False)
    r2 = tile_cohort(df, tmp_path / "two", SMALL, workers=2, progress=False)
    assert (r2.n_tiled, r2.n_failed) == (r1.n_tiled, r1.n_failed) == (2, 1)
    for sid in ("a", "b"):
        _assert_same_tiles(tmp_path / "one", tmp_path / "two", sid)


# -- real slides ---------------------------------------------------------------------------------
def test_cmu_tile_count_matches_independent_threshold(real_slide, tmp_path):
    """Tile count vs. an independent mask: scikit-image Otsu on OpenSlide's thumbnail saturation."""
    import openslide
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    path = real_slide(CMU)
    row = tile_slide(path, tmp_path, TilingParams(), slide_id="cmu")
    ts = read_tiles(tmp_path / "tiles" / "cmu.h5")
    assert ts.attrs["slide_mpp"] == pytest.approx(0.499)
    size = 224 * 0.5 / 0.499
    assert ts.attrs["tile_size_level0"] == pytest.approx(size)
    osr = openslide.OpenSlide(str(path))
    w0, h0 = osr.dimensions
    thumb = np.asarray(osr.get_thumbnail((round(w0 * 0.499 / 8), round(h0 * 0.499 / 8))).convert("RGB"))
    sat = rgb2hsv(thumb)[..., 1]
    ref = sat > threshold_otsu(sat)
    sx, sy = ref.shape[1] / w0, ref.shape[0] / h0
    n_ref = 0
    for x, y in grid_coords(w0, h0, size, size):
        blk = ref[int(y * sy):int(np.ceil((y + size) * sy)), int(x * sx):int(np.ceil((x + size) * sx))]
        n_ref += blk.mean() >= 0.25
    assert 35 <= n_ref <= 65  # ~0.55 mm² of tissue in 0.0125 mm² tiles
    assert abs(len(ts) - n_ref) <= 0.15 * n_ref
    assert row["n_tiles"] == len(ts)
    assert (ts.coords[:, 0] + size <= w0).all() and (ts.coords[:, 1] + size <= h0).all()


def test_tcga_without_mpp_fails_then_tiles_with_manifest_mpp(real_slide, tmp_path):
    path = real_slide(TCGA)
    with pytest.raises(MissingMPPError, match="mpp"):
        tile_slide(path, tmp_path, TilingParams(), slide_id="tcga")
    m = tmp_path / "m.csv"
    m.write_text(f"slide_id,path,mpp\ntcga,{path},0.25\n")
    from pathstrat.cohort import load_manifest

    r = tile_cohort(load_manifest(m), tmp_path / "out", TilingParams(), progress=False)
    assert r.n_failed == 0 and r.n_tiled == 1
    ts = read_tiles(tmp_path / "out" / "tiles" / "tcga.h5")
    assert ts.attrs["mpp_source"] == "manifest" and ts.attrs["slide_mpp"] == 0.25
    assert ts.attrs["read_level"] == 1  # 0.5 µm/px is exactly level 1 (downsample 2)
    assert ts.attrs["read_size_px"] == 224
    assert 30 <= len(ts) <= 63  # 1.1 x 0.9 mm, mostly tissue, 63 candidate tiles


def test_cli_batch_with_bad_files_finishes_good_slide(real_slide, tmp_path):
    from pathstrat.cli import main

    good = real_slide(CMU)
    bad = [real_slide(b) for b in BAD]
    rows = ["slide_id,path"] + [f"cmu,{good}"] + [f"bad{i},{p}" for i, p in enumerate(bad)]
    rows += ["gone,missing.svs", f"tcga,{real_slide(TCGA)}"]
    m = tmp_path / "m.csv"
    m.write_text("\n".join(rows) + "\n")
    rc = main(["tile", "--manifest", str(m), "--out", str(tmp_path / "out")])
    assert rc == 3
    fails = {f["slide_id"]: f for f in read_failures(tmp_path / "out" / "failures.csv")}
    assert set(fails) == {"bad0", "bad1", "bad2", "gone", "tcga"}
    assert all(f["reason"] for f in fails.values())
    assert fails["tcga"]["error_type"] == "MissingMPPError"
    assert fails["gone"]["error_type"] == "SlideReadError" and "does not exist" in fails["gone"]["reason"]
    for i in range(3):
        assert fails[f"bad{i}"]["error_type"] == "SlideReadError"
        assert str(bad[i]) in fails[f"bad{i}"]["reason"]
    assert (tmp_path / "out" / "tiles" / "cmu.h5").is_file()
    qc = pd.read_csv(tmp_path / "out" / "qc.csv")
    assert len(qc) == 6 and qc.set_index("slide_id").loc["cmu", "status"] == "tiled"
    # give the TCGA slide an mpp in the manifest: it tiles, cmu is skipped, the rest still fail
    m.write_text(m.read_text().replace(f"tcga,{real_slide(TCGA)}", f"tcga,{real_slide(TCGA)},0.25")
                 .replace("slide_id,path", "slide_id,path,mpp"))
    assert main(["tile", "--manifest", str(m), "--out", str(tmp_path / "out")]) == 3
    qc = pd.read_csv(tmp_path / "out" / "qc.csv").set_index("slide_id")
    assert qc.loc["tcga", "status"] == "tiled" and qc.loc["tcga", "mpp_source"] == "manifest"
    assert qc.loc["cmu", "status"] == "skipped"
    assert len(read_failures(tmp_path / "out" / "failures.csv")) == 4
    # --mpp overrides rows without a manifest value: a changed MPP retiles, exit 0 when all pass
    only = tmp_path / "tcga.csv"
    only.write_text(f"slide_id,path\ntcga,{real_slide(TCGA)}\n")
    assert main(["tile", "--manifest", str(only), "--out", str(tmp_path / "out"), "--mpp", "0.3"]) == 0
    ts = read_tiles(tmp_path / "out" / "tiles" / "tcga.h5")
    assert ts.attrs["mpp_source"] == "override" and ts.attrs["slide_mpp"] == pytest.approx(0.3)
    assert read_failures(tmp_path / "out" / "failures.csv") == []


def test_cli_rejects_bad_options(tmp_path, capsys):
    from pathstrat.cli import main

    m = tmp_path / "m.csv"
    m.write_text("slide_id,path\n")
    assert main(["tile", "--manifest", str(m), "--out", str(tmp_path), "--overlap-px", "300"]) == 2
    assert "overlap_px" in capsys.readouterr().err


# -- kill and rerun ------------------------------------------------------------------------------
def _assert_same_tiles(a: Path, b: Path, sid: str) -> None:
    ta, tb = read_tiles(a / "tiles" / f"{sid}.h5"), read_tiles(b / "tiles" / f"{sid}.h5")
    np.testing.assert_array_equal(ta.coords, tb.coords)
    np.testing.assert_array_equal(ta.tissue_fraction, tb.tissue_fraction)
    strip = lambda d: {k: v for k, v in d.items() if k != "qc_seconds"}  # noqa: E731
    assert strip(ta.attrs) == strip(tb.attrs)
    for ext in ("geojson", "png"):
        assert (a / "qc" / f"{sid}.{ext}").read_bytes() == (b / "qc" / f"{sid}.{ext}").read_bytes()


@pytest.mark.slow
def test_kill_and_rerun_gives_identical_outputs(gen_dir, tmp_path):
    n = 8
    paths = [gen_dir / ("inked.svs" if i % 2 else "ellipse.svs") for i in range(n)]
    df = pd.DataFrame({"slide_id": [f"s{i}" for i in range(n)], "path": [str(p) for p in paths]})
    manifest = tmp_path / "m.csv"
    df.to_csv(manifest, index=False)
    params = TilingParams(target_mpp=0.5, tile_px=32)
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    code = ("import pandas as pd; from pathstrat.tiling import tile_cohort, TilingParams; "
            f"tile_cohort(pd.read_csv({str(manifest)!r}), {str(killed)!r}, "
            f"TilingParams(**{params.model_dump()!r}), progress=False)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    tiles = killed / "tiles"
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if tiles.is_dir() and any(p.suffix == ".h5" and not p.name.startswith(TMP_PREFIX)
                                      for p in tiles.iterdir()):
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the batch finished before it could be killed"
    done = sorted(p.name for p in tiles.glob("s*.h5"))
    assert 1 <= len(done) < n
    assert not (killed / "qc.csv").exists()  # killed before the end: no cohort table yet
    r = tile_cohort(df, killed, params, progress=False)
    assert r.n_failed == 0 and r.n_skipped >= len(done) and r.n_tiled + r.n_skipped == n
    tile_cohort(df, ref, params, progress=False)
    for i in range(n):
        _assert_same_tiles(killed, ref, f"s{i}")
    leftovers = [p for p in killed.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert leftovers == []
    qa, qb = pd.read_csv(killed / "qc.csv"), pd.read_csv(ref / "qc.csv")
    cols = [c for c in qa.columns if c not in ("seconds", "status")]
    pd.testing.assert_frame_equal(qa[cols], qb[cols])


def test_read_tiles_rejects_other_h5(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("coords", data=np.zeros((2, 2), np.int64))
    with pytest.raises(SchemaError, match="not a pathstrat tiles file"):
        read_tiles(p)


def test_empty_tissue_error_when_no_tile_reaches_min_tissue(gen_dir):
    with open_slide(gen_dir / "ellipse.svs") as s:
        with pytest.raises(EmptyTissueError, match="none of .* tiles"):
            compute_grid(s, TilingParams(target_mpp=8.0, tile_px=256, min_tissue=1.0))


@pytest.mark.slow
def test_worker_crash_fails_only_that_slide(gen_dir):
    from conftest import CrashOnSlideC  # a light module: spawned workers import it quickly

    from pathstrat.executors.local import LocalExecutor

    rows = [{"slide_id": s, "path": str(gen_dir / "ellipse.svs")} for s in "abcde"]
    out = {o.slide_id: o for o in LocalExecutor(progress=False).map_slides(CrashOnSlideC(), rows).outcomes}
    assert sorted(out) == list("abcde")
    assert out["c"].ok is False and out["c"].error_type == "WorkerCrashed"
    assert "while tiling slide 'c'" in out["c"].reason
    assert all(out[s].ok and out[s].result["n_tiles"] == 1 for s in "abde")


def test_slide_replaced_at_the_same_path_is_retiled(gen_dir, tmp_path):
    """A slide regenerated in place (same path, other content) must not reuse its old tiles."""
    import shutil

    slide = tmp_path / "s.svs"
    shutil.copy(gen_dir / "ellipse.svs", slide)
    df = pd.DataFrame({"slide_id": ["s"], "path": [str(slide)]})
    out = tmp_path / "out"
    first = tile_cohort(df, out, SMALL, progress=False)
    n_ellipse = len(read_tiles(out / "tiles" / "s.h5"))
    assert first.n_tiled == 1 and n_ellipse > 0
    assert tile_cohort(df, out, SMALL, progress=False).n_skipped == 1
    shutil.copy(gen_dir / "inked.svs", slide)  # same path, new content (ink band removes tiles)
    again = tile_cohort(df, out, SMALL, progress=False)
    assert (again.n_tiled, again.n_skipped) == (1, 0)
    assert len(read_tiles(out / "tiles" / "s.h5")) < n_ellipse


def test_tile_and_info_never_decode_label_or_macro(tmp_path, monkeypatch, capsys):
    """A slide with label/macro images (synthetic identifiers): names may be listed, pixels never read."""
    import openslide
    import openslide.lowlevel
    import tifffile

    from pathstrat.cli import main
    from pathstrat.slide.backends import _jpeg_levels
    from pathstrat.synthetic import make_slide

    s = make_slide(tmp_path / "a.svs", width=1024, height=768, mpp=0.5, seed=3, associated=True)

    def forbidden(*_a, **_k):
        raise AssertionError("label/macro/associated image decoded")

    monkeypatch.setattr(openslide.lowlevel, "read_associated_image", forbidden)
    monkeypatch.setattr(openslide.OpenSlide, "get_thumbnail", forbidden)
    row = tile_slide(s.path, tmp_path / "out", TilingParams(tile_px=64), slide_id="a")
    assert row["n_tiles"] > 0
    assert main(["info", str(s.path)]) == 0
    assert "label, macro" in capsys.readouterr().out
    # the fast backend's byte ranges come from pyramid pages only, never from label/macro pages
    with open_slide(s.path) as sl:
        levels = _jpeg_levels(Path(s.path), sl.level_dimensions)
    used = {int(o) for lvl in levels.values() for o in lvl.offsets}
    with tifffile.TiffFile(s.path) as t:
        assoc = [p for p in t.pages if p.description.splitlines()[-1].split(" ")[0] in ("label", "macro")]
        assert len(assoc) == 2
        assert used.isdisjoint(int(o) for p in assoc for o in p.dataoffsets)
    assert not list((tmp_path / "out").rglob("*label*")) and not list((tmp_path / "out").rglob("*macro*"))
