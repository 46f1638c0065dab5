"""Heatmaps: value grid placement, top/bottom tiles from the slide, QuPath GeoJSON, batch CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pathstrat import heatmaps as H

TILE0 = 128  # tile size in level-0 px
W, HGT = 1024, 768


def make_tiff(path: Path, mpp: float = 0.5) -> Path:
    """Tiled JPEG TIFF: white left half, blue right half (OpenSlide generic-tiff, MPP from resolution)."""
    import tifffile

    img = np.full((HGT, W, 3), 240, np.uint8)
    img[:, W // 2:] = (40, 60, 200)
    tifffile.imwrite(path, img, tile=(256, 256), compression="jpeg", photometric="rgb",
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return path


def grid_coords() -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(0, W, TILE0), np.arange(0, HGT, TILE0))
    return np.c_[xs.ravel(), ys.ravel()].astype(np.int64)


def write_attention(path: Path, coords: np.ndarray, values: dict[str, np.ndarray], **attrs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["coords"] = coords
        for k, v in values.items():
            f[k] = v
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def test_read_values_infers_tile_size_and_averages_folds(tmp_path):
    c = grid_coords()
    p = write_attention(tmp_path / "a.h5", c, {"fold0/attention": np.ones(len(c)),
                                               "fold1/attention": np.zeros(len(c)),
                                               "scores/os": c[:, 0].astype(float)})
    tv = H.read_tile_values(p, slide_id="s")
    assert tv.tile_size_level0 == TILE0 and tv.tile_px == H.DEFAULT_TILE_PX
    maps = H.pick_values(tv)
    assert set(maps) == {"attention"}  # the model's attention by default, folds averaged
    assert np.allclose(maps["attention"], 0.5)
    assert set(H.pick_values(tv, "os")) == {"scores/os"}  # per-target tile scores
    assert set(H.pick_values(tv, "msi")) == {"attention"}  # shared attention serves every head
    only_scores = H.TileValues("s", c, {"scores/os": np.ones(len(c))}, 128.0, 224)
    assert set(H.pick_values(only_scores)) == {"scores/os"}
    with pytest.raises(Exception, match="available"):
        H.pick_values(only_scores, "msi")


def test_value_grid_places_tiles_in_thumbnail_pixels():
    coords = np.array([[0, 0], [128, 0], [0, 128]])
    g = H.value_grid(coords, np.array([0.1, 0.5, 0.9]), 128.0, (8, 8), scale=32.0)  # 4 px per tile
    assert g[0:4, 0:4].tolist() == np.full((4, 4), 0.1).tolist()
    assert np.allclose(g[0:4, 4:8], 0.5) and np.allclose(g[4:8, 0:4], 0.9)
    assert np.isnan(g[4:8, 4:8]).all()
    assert H.normalise(np.array([5.0, 1.0, 3.0])).tolist() == [1.0, 0.0, 0.5]


def test_geojson_is_qupath_ready():
    coords = np.array([[0, 0], [100, 0]])
    gj = H.tiles_geojson(coords, 100.0, {"attention": np.array([0.2, 0.8])}, slide_id="s")
    assert gj["type"] == "FeatureCollection"
    tiles = [f for f in gj["features"] if f["properties"]["objectType"] == "tile"]
    ann = [f for f in gj["features"] if f["properties"]["objectType"] == "annotation"]
    assert len(tiles) == 2 and len(ann) == 1
    ring = tiles[1]["geometry"]["coordinates"][0]
    assert tiles[1]["geometry"]["type"] == "Polygon"
    assert ring == [[100, 0], [200, 0], [200, 100], [100, 100], [100, 0]]  # closed, level-0 px
    assert tiles[1]["properties"]["measurements"] == {"attention": 0.8}
    from shapely.geometry import shape

    assert shape(ann[0]["geometry"]).area == pytest.approx(200 * 100)
    json.dumps(gj)  # serialisable


def test_heatmap_run_top_tiles_come_from_the_slide(tmp_path, caplog):
    slide = make_tiff(tmp_path / "slide.tiff")
    run = tmp_path / "run"
    c = grid_coords()
    att = c[:, 0].astype(float) + 0.01 * c[:, 1]  # highest attention on the blue right side
    write_attention(run / "attention" / "s1.h5", c, {"attention": att},
                    tile_size_level0=float(TILE0), tile_px=64)
    man = pd.DataFrame({"slide_id": ["s1", "s2"], "path": [str(slide), str(tmp_path / "nope.svs")],
                        "patient_id": ["p1", "p2"]})
    man.to_csv(tmp_path / "manifest.csv", index=False)
    pd.DataFrame({"slide_id": ["s1", "s2"], "patient_id": ["p1", "p2"], "fold": [0, 1], "repeat": 0,
                  "target": "os", "y_true": np.nan, "score": [0.2, 0.9], "risk": [0.2, 0.9]}
                 ).to_csv(run / "predictions.csv", index=False)
    with caplog.at_level(logging.INFO, logger="pathstrat.progress"):
        index, n_failed = H.heatmap_run(run, tmp_path / "manifest.csv", top_k=3)
    assert "heatmaps: 2/2 slide" in caplog.text  # progress reported (log lines off a terminal)
    out = run / "heatmaps"
    assert n_failed == 1  # s2 has no attention file and no slide: recorded, batch goes on
    fails = pd.read_csv(out / "failures.csv")
    assert fails.slide_id.tolist() == ["s2"] and fails.stage.tolist() == ["heatmap"]
    assert index.slide_id.tolist() == ["s1"] and index.patient_score.tolist() == [0.2]
    heat = np.asarray(Image.open(out / index.heatmap_png[0]).convert("RGB"))
    assert heat.std() > 10  # not blank
    mont = np.asarray(Image.open(out / index.tiles_png[0]).convert("RGB")).astype(int)
    h = mont.shape[0]
    top_half, bottom_half = mont[: int(0.5 * h)], mont[int(0.6 * h):]  # rows (suptitle on top)
    # top tiles are blue (right half of the slide), bottom tiles white-ish (left half)
    blue = lambda a: ((a[..., 2] - a[..., 0]) > 100).sum()  # noqa: E731
    assert blue(top_half) > 3 * 40 * 40 and blue(bottom_half) < 200
    # the tiles really are read from the slide at the tiles' geometry
    from pathstrat.slide import open_slide

    top, bottom = H.extreme_indices(att, 3)
    with open_slide(slide) as s:
        t = s.read_tile(*c[top[0]], float(TILE0), 64)
    assert t[..., 2].mean() > 150 and c[top[0], 0] >= W // 2 and c[bottom[0], 0] < W // 2
    gj = json.loads((out / "s1.geojson").read_text())
    meas = [f["properties"]["measurements"]["attention"] for f in gj["features"]
            if f["properties"]["objectType"] == "tile"]
    assert np.allclose(meas, att)


def test_heatmap_cli_exit_3_on_failed_slide(tmp_path):
    slide = make_tiff(tmp_path / "slide.tiff")
    run = tmp_path / "run"
    c = grid_coords()
    # attention file as `pathstrat train` writes it: no geometry attrs; geometry in the features file
    write_attention(run / "attention" / "s1.h5", c, {"attention": np.arange(len(c), dtype=float)},
                    model="abmil", fold=0)
    write_attention(tmp_path / "features" / "s1.h5", c, {"features": np.zeros((len(c), 4))},
                    tile_size_level0=120.0, tile_px=32)
    pd.DataFrame({"slide_id": ["s1", "s2"], "path": [str(slide)] * 2}).to_csv(tmp_path / "m.csv", index=False)
    (run / "config.yaml").write_text(f"features: {tmp_path / 'features'}\nmanifest: {tmp_path / 'm.csv'}\n")
    from pathstrat.cli import main

    rc = main(["heatmap", "--run", str(run), "--slides", "s1,s2", "--top-k", "2",
               "--out", str(tmp_path / "hm")])  # manifest from the run config
    assert rc == 3
    assert (tmp_path / "hm" / "s1__attention.png").exists()
    assert pd.read_csv(tmp_path / "hm" / "index.csv").tile_size_level0.tolist() == [120.0]
    assert pd.read_csv(tmp_path / "hm" / "failures.csv").slide_id.tolist() == ["s2"]


def test_heatmap_on_real_slide(tmp_path, real_slide):
    path = real_slide("cmu-1-small-region.svs")
    xs, ys = np.meshgrid(np.arange(0, 2000, 448), np.arange(0, 2800, 448))
    c = np.c_[xs.ravel(), ys.ravel()]
    tv = H.TileValues("cmu", c, {"attention": np.linspace(0, 1, len(c))}, 448.0, 224)
    rows = H.slide_heatmaps(path, tv, tmp_path, top_k=2, max_thumb_px=400)
    assert rows[0]["thumb_mpp"] == pytest.approx(2967 * 0.499 / 400, rel=0.02)
    assert Image.open(tmp_path / rows[0]["tiles_png"]).size[0] > 100


def test_heatmap_never_touches_label_or_macro(tmp_path, monkeypatch):
    """A synthetic Aperio slide with label/macro images: drawing never reads associated images."""
    synthetic = pytest.importorskip("pathstrat.synthetic")
    import openslide
    import openslide.lowlevel

    s = synthetic.make_slide(tmp_path / "syn.svs", width=1024, height=768, mpp=0.5, seed=3,
                             associated=True)

    def forbidden(*_a, **_k):
        raise AssertionError("label/macro/associated image accessed")

    # names may be listed; pixels of associated images must never be decoded
    monkeypatch.setattr(openslide.lowlevel, "read_associated_image", forbidden)
    monkeypatch.setattr(openslide.OpenSlide, "get_thumbnail", forbidden)
    c = grid_coords()
    tv = H.TileValues("syn", c, {"attention": c[:, 1].astype(float)}, float(TILE0), 64)
    rows = H.slide_heatmaps(s.path, tv, tmp_path / "out", top_k=2)
    assert rows[0]["thumb_mpp"] == pytest.approx(0.5)  # 1024 px wide: thumbnail at level 0 mpp
    heat = np.asarray(Image.open(tmp_path / "out" / rows[0]["heatmap_png"]).convert("RGB"))
    assert heat.std() > 10


def test_missing_run_dir_is_one_clear_error_and_creates_nothing(tmp_path, capsys):
    from pathstrat.cli import main

    gone = tmp_path / "no-such-run"
    assert main(["heatmap", "--run", str(gone), "--manifest", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run directory") and str(gone) in err and "pathstrat train" in err
    assert not gone.exists()  # no stray <run>/heatmaps folder for `pathstrat report` to pick up


def test_per_target_attention_gives_one_map_per_task(tmp_path):
    """Multi-head attention files (attention, attention_branches, attention_<target>): every task
    gets its own map by default, survival included; --target picks that task's own map."""
    c = grid_coords()
    n = len(c)
    resp, surv = np.linspace(0, 1, n), np.linspace(1, 0, n)
    path = write_attention(tmp_path / "s.h5", c, {"attention": np.full(n, 1 / n),
                                                  "attention_responder": resp,
                                                  "attention_survival": surv},
                           tile_size_level0=float(TILE0), tile_px=64)
    with h5py.File(path, "a") as f:
        f["attention_branches"] = np.stack([resp, surv])
    tv = H.read_tile_values(path)
    maps = H.pick_values(tv)
    assert sorted(maps) == ["attention", "attention_responder", "attention_survival"]
    np.testing.assert_allclose(maps["attention_survival"], surv)
    only = H.pick_values(tv, target="survival")
    assert list(only) == ["attention_survival"]
    np.testing.assert_allclose(only["attention_survival"], surv)
