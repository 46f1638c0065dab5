"""Files other pathology tools read: TRIDENT patch attributes on tiles/features, STAMP feature
files, QuPath GeoJSON (UUID ids, closed rings, right-hand rule, measurements)."""

from __future__ import annotations

import json
import math
import uuid

import h5py
import numpy as np
import pytest

from pathstrat.features import read_bag, write_features


def _shoelace(ring: list[list[float]]) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True))


def geojson_problems(doc: dict) -> list[str]:
    """An independent check of a FeatureCollection against RFC 7946 and QuPath's fields."""
    out = []
    if doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
        return ["not a FeatureCollection"]
    ids = []
    for i, f in enumerate(doc["features"]):
        where = f"feature {i}"
        if f.get("type") != "Feature":
            out.append(f"{where}: type {f.get('type')!r}")
        try:
            ids.append(str(uuid.UUID(str(f.get("id")))))
        except ValueError:
            out.append(f"{where}: id {f.get('id')!r} is not a UUID")
        props = f.get("properties") or {}
        if props.get("objectType") not in ("annotation", "detection", "tile", "cell"):
            out.append(f"{where}: objectType {props.get('objectType')!r}")
        for k, v in (props.get("measurements") or {}).items():
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                out.append(f"{where}: measurement {k}={v!r}")
        if "classification" in props and "name" not in props["classification"]:
            out.append(f"{where}: classification without a name")
        g = f.get("geometry") or {}
        polys = ([g["coordinates"]] if g.get("type") == "Polygon" else
                 g.get("coordinates", []) if g.get("type") == "MultiPolygon" else None)
        if polys is None:
            out.append(f"{where}: geometry {g.get('type')!r}")
            continue
        for rings in polys:
            for j, ring in enumerate(rings):
                if len(ring) < 4 or ring[0] != ring[-1]:
                    out.append(f"{where}: ring {j} not closed or too short")
                    continue
                area = _shoelace(ring)
                if (j == 0 and area <= 0) or (j > 0 and area >= 0):
                    out.append(f"{where}: ring {j} breaks the right-hand rule (area {area:.1f})")
    if len(set(ids)) != len(ids):
        out.append("duplicate ids")
    return out


def test_heatmap_geojson_is_valid_for_qupath():
    from pathstrat.heatmaps import tiles_geojson

    coords = np.array([[0, 0], [224, 0], [448, 0], [0, 224], [448, 224], [0, 448], [224, 448], [448, 448]])
    gj = tiles_geojson(coords, 224.0, {"attention": np.linspace(0, 1, 8), "score": np.ones(8)},
                       slide_id="s1")
    assert geojson_problems(json.loads(json.dumps(gj))) == []
    tiles = [f for f in gj["features"] if f["properties"]["objectType"] == "tile"]
    assert len(tiles) == 8 and tiles[3]["properties"]["measurements"]["attention"] == pytest.approx(3 / 7)
    region = gj["features"][-1]["geometry"]
    assert region["type"] == "Polygon" and len(region["coordinates"]) == 2  # the ring has a hole
    again = tiles_geojson(coords, 224.0, {"attention": np.zeros(8)}, slide_id="s1")
    assert [f["id"] for f in again["features"]] == [f["id"] for f in gj["features"]]  # stable ids
    other = tiles_geojson(coords, 224.0, {"attention": np.zeros(8)}, slide_id="s2")
    assert not {f["id"] for f in other["features"]} & {f["id"] for f in gj["features"]}


def test_tissue_geojson_is_valid_for_qupath():
    from pathstrat.tissue import TissueMask

    mask = np.zeros((40, 60), bool)
    mask[5:35, 5:30] = True
    mask[15:25, 12:22] = False  # a hole
    mask[10:20, 40:55] = True
    tm = TissueMask(mask=mask, pen_mask=np.zeros_like(mask), mask_mpp=8.0, downsample_xy=(32.0, 32.0),
                    level0_size=(1920, 1280), slide_mpp=0.25, threshold=20.0, slide_id="t")
    gj = tm.to_geojson()
    assert len(gj["features"]) == 2 and geojson_problems(gj) == []
    assert any(len(f["geometry"]["coordinates"]) == 2 for f in gj["features"])  # hole kept


def test_tiles_and_features_carry_tridents_patch_attributes(tmp_path):
    from pathstrat.tiles import read_tiles, write_tiles

    attrs = {"schema": "pathstrat.tiles/1", "slide_id": "s", "tile_px": 224, "target_mpp": 0.5,
             "slide_mpp": 0.2523, "tile_size_level0": 443.9, "level0_width": 4000,
             "level0_height": 3000, "overlap_px": 0}
    coords = np.array([[0, 0], [444, 0]])
    write_tiles(tmp_path / "s.h5", coords, np.ones(2), attrs)
    write_features(tmp_path / "f.h5", np.ones((2, 4), np.float32), coords,
                   {**attrs, "encoder_id": "x", "encoder_dim": 4})
    for p in (tmp_path / "s.h5", tmp_path / "f.h5"):
        with h5py.File(p, "r") as f:
            c = dict(f["coords"].attrs)
        # what TRIDENT's readers take: level-0 patch size and magnifications (10 / mpp)
        assert c["patch_size_level0"] == 444 and c["patch_size"] == 224
        assert c["level0_magnification"] == 40 and c["target_magnification"] == 20
        assert (c["level0_width"], c["level0_height"], c["overlap"], c["name"]) == (4000, 3000, 0, "s")
    assert read_tiles(tmp_path / "s.h5").attrs["tile_px"] == 224
    assert read_bag(tmp_path / "f.h5").layout == "pathstrat"  # still ours, not read as TRIDENT


def test_reads_stamp_feature_files(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((5, 6)).astype(np.float16)
    coords_um = np.array([[0.0, 0.0], [256.0, 0.0], [512.0, 0.0], [0.0, 256.0], [256.0, 256.0]])
    p = tmp_path / "slideA.h5"
    with h5py.File(p, "w") as f:  # STAMP's documented layout
        f["coords"] = coords_um
        f["feats"] = feats
        f.attrs["extractor"] = "ctranspath-1a2b3c4d"
        f.attrs["unit"] = "um"
        f.attrs["tile_size"] = 256.0
    bag = read_bag(p, expected_dim=6)
    assert bag.layout == "stamp" and bag.attrs["coords_unit"] == "um"
    np.testing.assert_array_equal(bag.features, feats)
    np.testing.assert_array_equal(bag.coords, coords_um.astype(np.int64))
    assert bag.attrs["encoder_id"] == "ctranspath-1a2b3c4d" and bag.attrs["tile_size_um"] == 256.0
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["coords"] = coords_um
        f["feats"] = feats
        f.attrs["unit"] = "px"
    from pathstrat.errors import SchemaError

    with pytest.raises(SchemaError, match="unit 'px'"):
        read_bag(tmp_path / "bad.h5")
