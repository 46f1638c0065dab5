"""pathstrat.slide: opening, MPP resolution, level choice, tile reads, fast backend, `info`."""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathstrat.errors import MissingMPPError, SlideReadError
from pathstrat.slide import KEYS_TRIED, MPPInfo, Slide, open_slide, resolve_mpp

CMU = "cmu-1-small-region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"
JPEG_TOL = 3.0  # mean absolute difference in grey levels allowed between two decodes/resamplings


# -- generated slides ---------------------------------------------------------------------------
def _tissue_image(w: int, h: int, seed: int) -> np.ndarray:
    """H&E-ish pink/purple ellipse with texture on white (deterministic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w, 3), 242, np.uint8)
    inside = ((xx - w / 2) / (w / 3)) ** 2 + ((yy - h / 2) / (h / 3)) ** 2 < 1
    blur = cv2.GaussianBlur(rng.random((h // 8, w // 8)).astype(np.float32), (0, 0), 2)
    tex = cv2.resize(blur, (w, h))
    noise = rng.integers(0, 30, (h, w)).astype(np.float32)
    r = 170 + 50 * tex + noise
    g = 70 + 60 * tex + noise
    b = 150 + 40 * tex + noise / 2
    img[inside] = np.clip(np.stack([r, g, b], -1)[inside], 0, 255).astype(np.uint8)
    return img


def write_pyramid_tiff(path: Path, img: np.ndarray, *, mpp: float | None = 0.25, factors=(4, 4),
                       compression: str = "jpeg", tile: int = 256) -> list[np.ndarray]:
    """Aperio-style pyramidal tiled TIFF: level k = INTER_AREA downsample of level k-1."""
    import tifffile

    levels = [img]
    for f in factors:
        p = levels[-1]
        levels.append(cv2.resize(p, (p.shape[1] // f, p.shape[0] // f), interpolation=cv2.INTER_AREA))
    h, w = img.shape[:2]
    desc = f"Aperio Image Library v10.0.51\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90|AppMag = 40"
    if mpp is not None:
        desc += f"|MPP = {mpp}"
    args = {"compressionargs": {"level": 90}} if compression == "jpeg" else {}
    with tifffile.TiffWriter(path) as tw:
        for i, lv in enumerate(levels):
            tw.write(lv, tile=(tile, tile), compression=compression, photometric="rgb",
                     description=desc if i == 0 else None, subfiletype=0 if i == 0 else 1,
                     metadata=None, **args)
    return levels


@pytest.fixture(scope="session")
def gen_slide(tmp_path_factory) -> Path:
    """2048 x 1536 px, 0.25 µm/px, levels 1/4/16, JPEG 256-px tiles (make_slide when available,
    with thumbnail/label/macro pages between the levels)."""
    path = tmp_path_factory.mktemp("gen") / "gen.svs"
    try:
        from pathstrat.synthetic import make_slide
    except ImportError:
        write_pyramid_tiff(path, _tissue_image(2048, 1536, seed=1))
    else:
        make_slide(path, width=2048, height=1536, mpp=0.25, seed=1, downsamples=(1, 4, 16), associated=True)
    return path


@pytest.fixture(scope="session")
def deflate_slide(tmp_path_factory) -> Path:
    """Tiled TIFF without JPEG (zlib): the fast backend must step aside for OpenSlide."""
    path = tmp_path_factory.mktemp("gen") / "deflate.tiff"
    write_pyramid_tiff(path, _tissue_image(1024, 768, seed=2), mpp=None, factors=(2,), compression="zlib")
    return path


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# -- MPP resolution -----------------------------------------------------------------------------
def test_resolve_mpp_order_and_sources():
    both = {"openslide.mpp-x": "0.2527", "openslide.mpp-y": "0.2527", "aperio.MPP": "0.26"}
    assert resolve_mpp(both) == MPPInfo(0.2527, 0.2527, "openslide")
    assert resolve_mpp({"aperio.MPP": "0.4990"}).source == "aperio"
    cm = {"tiff.XResolution": "40000", "tiff.YResolution": "40000", "tiff.ResolutionUnit": "centimeter"}
    info = resolve_mpp(cm)
    assert info.source == "tiff-resolution" and info.mpp == pytest.approx(0.25)
    inch = {"tiff.XResolution": "50800", "tiff.ResolutionUnit": "inch"}
    assert resolve_mpp(inch).mpp == pytest.approx(0.5)
    assert resolve_mpp(both, mpp=0.3, mpp_source="manifest") == MPPInfo(0.3, 0.3, "manifest")


@pytest.mark.parametrize("props", [
    {},
    {"tiff.XResolution": "40000", "tiff.ResolutionUnit": "none"},  # no unit: meaningless
    {"tiff.XResolution": "72", "tiff.YResolution": "72", "tiff.ResolutionUnit": "inch"},  # writer default
    {"openslide.vendor": "generic-tiff", "openslide.mpp-x": "352.7777", "openslide.mpp-y": "352.7777",
     "tiff.XResolution": "28.346456", "tiff.ResolutionUnit": "centimeter"},  # 72 dpi seen via OpenSlide
    {"aperio.MPP": "0"},
])
def test_resolve_mpp_rejects_meaningless(props):
    with pytest.raises(MissingMPPError) as ei:
        resolve_mpp(props, slide_name="S1")
    msg = str(ei.value)
    assert "S1" in msg and "'mpp' column" in msg and "`mpp`" in msg and all(k in msg for k in KEYS_TRIED)
    assert "ignored as writer defaults" in msg  # says why a found value was not used
    for k in props:
        if k in KEYS_TRIED:
            assert f"{k}={props[k]!r}" in msg


def test_explicit_mpp_must_be_plausible():
    with pytest.raises(MissingMPPError, match="mpp=-1"):
        resolve_mpp({}, mpp=-1, slide_name="S1")


# -- real slides --------------------------------------------------------------------------------
def test_cmu_metadata(real_slide):
    with open_slide(real_slide(CMU), check=True) as s:
        assert s.mpp == pytest.approx(0.499, abs=1e-3) and s.mpp_source == "openslide"
        assert s.dimensions == (2220, 2967) and s.level_count == 1
        assert s.vendor == "aperio" and s.objective_power == 20
        assert {"label", "macro"} <= set(s.associated_names)
        assert s.backend == "tifffile-jpeg"
        plan = s.tile_read_plan(0.5, 224)
        assert (plan.level, plan.read_size_px) == (0, 224)
        assert plan.tile_size_level0 == pytest.approx(224 * 0.5 / 0.499)
        assert plan.attrs() == {"target_mpp": 0.5, "tile_px": 224, "tile_size_level0": plan.tile_size_level0,
                                "read_level": 0, "read_size_px": 224}


def test_tcga_without_mpp_fails_then_works_with_mpp(real_slide):
    path = real_slide(TCGA)
    with pytest.raises(MissingMPPError) as ei:
        open_slide(path)
    msg = str(ei.value)
    assert path.name in msg and "manifest" in msg and "'mpp' column" in msg and "`mpp`" in msg and "aperio.MPP" in msg
    with pytest.raises(MissingMPPError):  # a manifest row with an empty mpp cell is "not given"
        open_slide(path, mpp=float("nan"), mpp_source="manifest")
    with open_slide(path, require_mpp=False) as s:  # `pathstrat info` opens it without MPP
        assert s.mpp_info is None and s.mpp_source is None
        with pytest.raises(MissingMPPError):
            _ = s.mpp
        assert s.read_tile(0, 0, 448, 224).shape == (224, 224, 3)  # level from the downsample alone
    with open_slide(path, mpp=0.25, mpp_source="manifest", check=True) as s:
        assert (s.mpp, s.mpp_source) == (0.25, "manifest")
        assert s.backend == "openslide"  # JPEG 2000 tiles: not the fast path
        plan = s.tile_read_plan(0.5, 224)
        assert plan.level == 1 and plan.read_size_px == round(448 / s.level_downsamples[1])
        tile = s.read_tile(1000, 1000, plan.tile_size_level0, 224)
        assert tile.shape == (224, 224, 3) and tile.dtype == np.uint8 and tile.std() > 5


@pytest.mark.parametrize("name", ["bad/unreadable.svs", "bad/unopenable.tiff", "bad/broken.svs"])
def test_bad_files_raise_clear_slide_read_error(real_slide, name):
    path = real_slide(name)
    with pytest.raises(SlideReadError) as ei:
        with open_slide(path) as s:
            s.check_readable()
    msg = str(ei.value)
    assert path.name in msg
    assert any(w in msg for w in ("corrupt", "unsupported", "truncated"))
    assert "remove it from the manifest" in msg


def test_unreadable_fails_with_both_backends(real_slide):
    for backend in ("openslide", "auto"):
        with pytest.raises(SlideReadError, match="unreadable.svs"):
            open_slide(real_slide("bad/unreadable.svs"), backend=backend, check=True)


def test_missing_file():
    with pytest.raises(SlideReadError, match="no-such-slide.svs.*does not exist"):
        open_slide("/nonexistent/no-such-slide.svs")


def test_small_real_slides_open(real_slide):
    with open_slide(real_slide("tiny-small.svs"), check=True) as s:
        assert s.dimensions == (16, 16) and s.mpp == pytest.approx(0.499, abs=1e-3)
        assert s.read_tile(0, 0, 16, 16).shape == (16, 16, 3)
    boxes = real_slide("boxes.tiff")
    with pytest.raises(MissingMPPError):  # 72 dpi default resolution is not a pixel size
        open_slide(boxes)
    with open_slide(boxes, mpp=1.0, check=True) as s:
        assert s.vendor == "generic-tiff" and s.level_count == 4 and s.mpp_source == "override"
        assert s.best_level_for_mpp(4.1) == 2 and s.best_level_for_mpp(3.8) == 1  # 4.016 vs 3.99
        assert s.read_tile(0, 0, 300, 64).shape == (64, 64, 3)


def test_cmu_fast_backend_matches_openslide(real_slide):
    path = real_slide(CMU)
    rng = np.random.default_rng(0)
    with open_slide(path) as fast, open_slide(path, backend="openslide") as ref:
        assert (fast.backend, ref.backend) == ("tifffile-jpeg", "openslide")
        for _ in range(6):
            x, y = int(rng.integers(-100, 2100)), int(rng.integers(-100, 2850))
            a, b = fast.read_region(x, y, 0, 300, 260), ref.read_region(x, y, 0, 300, 260)
            assert _mad(a, b) < 0.5  # same libjpeg decode of the same bytes: ~identical
        # Aperio RGB-colourspace JPEG with JPEGTables: colours must match, not just greys
        a, b = fast.read_region(500, 1200, 0, 256, 256), ref.read_region(500, 1200, 0, 256, 256)
        assert np.abs(a.mean((0, 1)) - b.mean((0, 1))).max() < 1


def test_info_cli(real_slide, capsys):
    from pathstrat.cli import main

    assert main(["info", str(real_slide(CMU))]) == 0
    out = capsys.readouterr().out
    assert "aperio" in out and "0.4990" in out and "openslide" in out and "label" in out and "20x" in out
    assert main(["info", str(real_slide(CMU)), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mpp"] == pytest.approx(0.499) and d["mpp_source"] == "openslide" and d["readable"]
    assert d["levels"][0]["dimensions"] == [2220, 2967] and "macro" in d["associated_images"]
    assert main(["info", str(real_slide(TCGA)), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mpp"] is None and "--mpp" in d["mpp_error"] and len(d["levels"]) == 2
    assert main(["info", str(real_slide(TCGA)), "--mpp", "0.25", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mpp_source"] == "override" and d["levels"][1]["mpp"] == pytest.approx(0.25 * 2.0005, rel=1e-3)
    assert main(["info", str(real_slide("bad/unreadable.svs"))]) == 2
    assert "NO - Cannot decode" in capsys.readouterr().out
    assert main(["info", str(real_slide("bad/broken.svs"))]) == 2
    assert "broken.svs" in capsys.readouterr().err


# -- level choice -------------------------------------------------------------------------------
def _fake_slide(downsamples, mpp=0.25) -> Slide:
    s = Slide.__new__(Slide)
    s.level_downsamples = tuple(downsamples)
    s.mpp_info = MPPInfo(mpp, mpp, "openslide")
    return s


def test_best_level_for_mpp_with_tolerance():
    s = _fake_slide((1.0, 4.0, 16.0, 32.0))
    assert s.best_level_for_mpp(0.25) == 0
    assert s.best_level_for_mpp(0.5) == 0
    assert s.best_level_for_mpp(1.0) == 1
    assert s.best_level_for_mpp(0.96) == 1  # 1.0 <= 0.96 * 1.05
    assert s.best_level_for_mpp(0.95) == 0  # 1.0 >  0.95 * 1.05
    assert s.best_level_for_mpp(0.99, tolerance=0.0) == 0
    assert s.best_level_for_mpp(100.0) == 3
    assert s.best_level_for_mpp(0.1) == 0  # finer than level 0: read level 0 (and upsample)


@settings(max_examples=60, deadline=None)
@given(
    ds=st.lists(st.floats(1.01, 64), min_size=0, max_size=5),
    target=st.floats(0.05, 40),
    tol=st.floats(0, 0.2),
)
def test_best_level_property(ds, target, tol):
    s = _fake_slide([1.0, *sorted(ds)], mpp=0.25)
    lvl = s.best_level_for_mpp(target, tol)
    mpps = [0.25 * d for d in s.level_downsamples]
    ok = [m <= target * (1 + tol) for m in mpps]
    if any(ok):
        assert ok[lvl] and all(mpps[i] <= mpps[lvl] for i in range(len(mpps)) if ok[i])
    else:
        assert lvl == 0


def test_read_plans(gen_slide):
    with open_slide(gen_slide) as s:
        assert s.mpp == pytest.approx(0.25) and s.level_count == 3
        p = s.tile_read_plan(0.5, 224)
        assert (p.level, p.read_size_px, p.tile_size_level0) == (0, 448, 448.0)
        p = s.tile_read_plan(1.0, 224)
        assert (p.level, p.read_size_px, p.level_mpp) == (1, 224, pytest.approx(1.0))
        p = s.tile_read_plan(2.0, 224)
        assert (p.level, p.read_size_px) == (1, 448)
        p = s.tile_read_plan(0.125, 224)  # finer than the scan: read 112 px and upsample
        assert (p.level, p.read_size_px) == (0, 112)


# -- pixels -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["auto", "openslide"])
def test_coarse_level_tile_matches_level0_reference(gen_slide, backend):
    with open_slide(gen_slide, backend=backend) as s:
        for target, x, y in [(2.0, 0, 0), (2.0, 256, 512), (1.0, 512, 448), (4.0, 0, 0), (0.5, 600, 500)]:
            plan = s.tile_read_plan(target, 224)
            size0 = int(plan.tile_size_level0)
            tile = s.read_tile(x, y, plan.tile_size_level0, 224)
            ref = cv2.resize(s.read_region(x, y, 0, size0, size0), (224, 224), interpolation=cv2.INTER_AREA)
            assert tile.shape == (224, 224, 3)
            # JPEG tolerance of this content at this scale: error of one JPEG round trip of the
            # reference (a coarse level is a separately JPEG-compressed downsample of level 0)
            roundtrip = _mad(imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(ref, level=90)), ref)
            assert _mad(tile, ref) <= max(JPEG_TOL, 1.25 * roundtrip), (target, plan, roundtrip)
            # ... and far below the error of a 4-px misplaced read
            shifted = cv2.resize(s.read_region(x + 4 * int(plan.level_downsample), y, 0, size0, size0),
                                 (224, 224), interpolation=cv2.INTER_AREA)
            assert _mad(tile, ref) < 0.6 * _mad(shifted, ref)


def test_fast_backend_matches_openslide_on_generated(gen_slide):
    rng = np.random.default_rng(3)
    with open_slide(gen_slide) as fast, open_slide(gen_slide, backend="openslide") as ref:
        assert fast.backend == "tifffile-jpeg"
        for level in range(fast.level_count):
            ds = fast.level_downsamples[level]
            lw, lh = fast.level_dimensions[level]
            for _ in range(4):
                x, y = int(rng.integers(-20, lw)), int(rng.integers(-20, lh))
                w, h = int(rng.integers(1, 300)), int(rng.integers(1, 300))
                a = fast.read_region(int(x * ds), int(y * ds), level, w, h)
                b = ref.read_region(int(x * ds), int(y * ds), level, w, h)
                assert _mad(a, b) < 1.0, (level, x, y, w, h)
        # outside the image is white with both
        assert (fast.read_region(2040, 1530, 0, 32, 32)[10:, 10:] == 255).all()


def test_read_tiles_in_input_order(gen_slide):
    rng = np.random.default_rng(5)
    coords = rng.integers(0, 1600, size=(23, 2))
    with open_slide(gen_slide) as s:
        got = list(s.read_tiles(coords, 448.0, 224, chunk=7))
        assert len(got) == 23
        for (x, y), t in zip(coords, got, strict=True):
            assert np.array_equal(t, s.read_tile(int(x), int(y), 448.0, 224))


def test_deflate_tiff_falls_back_to_openslide(deflate_slide):
    with open_slide(deflate_slide, mpp=0.5) as s:
        assert s.backend == "openslide" and s.level_count == 2
        assert s.read_tile(0, 0, 448, 224).shape == (224, 224, 3)
    with pytest.raises(SlideReadError, match="backend 'tifffile-jpeg' cannot read"):
        open_slide(deflate_slide, mpp=0.5, backend="tifffile-jpeg")


def _read_in_child(slide: Slide) -> np.ndarray:
    return slide.read_tile(256, 256, 448.0, 224)


def test_slide_pickles_and_reopens_per_process(gen_slide):
    with open_slide(gen_slide, mpp=0.25, mpp_source="manifest") as s:
        expected = s.read_tile(256, 256, 448.0, 224)
        clone = pickle.loads(pickle.dumps(s))
        assert clone.mpp_source == "manifest" and clone.dimensions == s.dimensions
        assert np.array_equal(clone.read_tile(256, 256, 448.0, 224), expected)
        with mp.get_context("fork").Pool(1) as pool:  # inherited handles are reopened in the child
            assert np.array_equal(pool.apply(_read_in_child, (s,)), expected)
        clone.close()


def test_thumbnail_from_pyramid_level(gen_slide, monkeypatch):
    with open_slide(gen_slide) as s:
        seen = []
        orig = s.read_region
        monkeypatch.setattr(s, "read_region", lambda *a: seen.append(a[2]) or orig(*a))
        thumb, actual = s.thumbnail_at_mpp(2.0)
        assert thumb.shape == (192, 256, 3) and actual == pytest.approx(2.0)
        assert set(seen) == {1}  # the 1 µm/px level, never level 0
        ref = cv2.resize(orig(0, 0, 0, 2048, 1536), (256, 192), interpolation=cv2.INTER_AREA)
        assert _mad(thumb, ref) < JPEG_TOL
        seen.clear()
        thumb, actual = s.thumbnail_at_mpp(4.0)  # exactly the 4 µm/px level
        assert thumb.shape == (96, 128, 3) and set(seen) == {2}


def test_thumbnail_one_level_slide_reads_in_blocks(real_slide, monkeypatch):
    import pathstrat.slide.core as core

    monkeypatch.setattr(core, "THUMB_BLOCK_PX", 1024)
    with open_slide(real_slide(CMU)) as s:
        sizes = []
        orig = s.read_region
        monkeypatch.setattr(s, "read_region", lambda *a: sizes.append(a[3] * a[4]) or orig(*a))
        thumb, actual = s.thumbnail_at_mpp(8.0)
        assert thumb.shape == (round(2967 * 0.499 / 8), round(2220 * 0.499 / 8), 3)
        assert actual == pytest.approx(8.0, rel=0.01)
        assert max(sizes) <= 1024 * 1024 and len(sizes) > 4
        full = orig(0, 0, 0, 2220, 2967)
        ref = cv2.resize(full, thumb.shape[1::-1], interpolation=cv2.INTER_AREA)
        assert _mad(thumb, ref) < 2.0


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_dct_scaled_decode_matches_full_decode(real_slide, gen_slide, scale):
    """2/4/8x reads decoded at reduced size by libjpeg equal full decode + INTER_AREA."""
    rng = np.random.default_rng(scale)
    for path in (real_slide(CMU), gen_slide):  # Aperio RGB + JPEGTables, and YCbCr
        with open_slide(path) as fast, open_slide(path, dct_scaling=False) as full:
            w, h = fast.dimensions
            for _ in range(4):
                x, y = (int(v) * scale for v in rng.integers(0, (w // scale - 64, h // scale - 64)))
                a = fast._backend.read_region_scaled(x, y, 0, 56, 48, scale)
                assert a is not None and a.shape == (48, 56, 3)
                b = cv2.resize(full.read_region(x, y, 0, 56 * scale, 48 * scale), (56, 48),
                               interpolation=cv2.INTER_AREA)
                assert _mad(a, b) < 1.0 and np.abs(a.mean((0, 1)) - b.mean((0, 1))).max() < 1.0
            t1 = fast.read_tile(scale * 10, scale * 6, 64 * scale, 64)
            t2 = full.read_tile(scale * 10, scale * 6, 64 * scale, 64)
            assert _mad(t1, t2) < 1.0
            assert fast._backend.read_region_scaled(scale * 10 + 1, 0, 0, 8, 8, scale) is None  # unaligned
