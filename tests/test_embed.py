"""End-to-end embedding: generated slides -> tiles -> features; workers, shards, failures."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from pathstrat import encoders as E
from pathstrat.encoders.embed import embed_cohort, parse_shard, shard_slides
from pathstrat.errors import ConfigError
from pathstrat.features import FEATURES_SCHEMA, read_bag
from pathstrat.io import read_failures, sha256_file

N_SLIDES = 4


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four small generated slides (0.5 µm/px), their manifest and their tiles (224 px)."""
    from pathstrat.synthetic import make_slide
    from pathstrat.tiling import TilingParams, tile_cohort

    root = tmp_path_factory.mktemp("embed_cohort")
    rows = []
    for i in range(N_SLIDES):
        s = make_slide(root / f"slide{i}.svs", width=1150, height=930, mpp=0.5, seed=40 + i,
                       layout={"tissue": 0.7})
        rows.append({"slide_id": f"slide{i}", "path": str(s.path)})
    df = pd.DataFrame(rows)
    df.to_csv(root / "manifest.csv", index=False)
    res = tile_cohort(df, root / "tiling", TilingParams(target_mpp=0.5, tile_px=224,
                                                       min_tissue=0.05), progress=False)
    assert res.n_tiled == N_SLIDES
    return root, df


def _tiles(root, sid):
    from pathstrat.tiles import read_tiles

    return read_tiles(root / "tiling" / "tiles" / f"{sid}.h5")


def _naive_features(enc, slide_path, ts):
    """Independent reference: one tile at a time with read_tile (no loader, no chunks)."""
    from pathstrat.slide import open_slide

    a = ts.attrs
    with open_slide(slide_path) as s:
        tiles = np.stack([s.read_tile(int(x), int(y), a["tile_size_level0"], a["tile_px"])
                          for x, y in ts.coords])
    return enc(tiles).numpy()


def test_builtin_end_to_end_rows_and_attrs(cohort, tmp_path):
    root, df = cohort
    res = embed_cohort(df, root / "tiling", tmp_path, "builtin", batch_size=5, workers=0)
    assert sorted(res.done) == sorted(df.slide_id) and res.failed == []
    enc = E.build_encoder("builtin", device="cpu")
    for row in df.itertuples():
        ts = _tiles(root, row.slide_id)
        bag = read_bag(tmp_path / "features" / "builtin" / f"{row.slide_id}.h5",
                       expected_dim=enc.dim, expected_encoder="builtin")
        np.testing.assert_array_equal(bag.coords, ts.coords)
        assert bag.features.shape == (len(ts), len(E.builtin.FEATURE_NAMES))
        np.testing.assert_allclose(bag.features, _naive_features(enc, row.path, ts), atol=1e-5)
        a = bag.attrs
        assert a["schema"] == FEATURES_SCHEMA and a["encoder_id"] == "builtin"
        assert a["encoder_dim"] == enc.dim and a["dtype"] == "fp32"
        assert a["transform"] == enc.transform_description
        assert a["weights_sha256"] == enc.weights_sha256 and a["weights_random"] is False
        assert a["params_hash"] == ts.attrs["params_hash"] and a["tile_px"] == 224
    assert res.n_tiles == sum(len(_tiles(root, s)) for s in df.slide_id)
    again = embed_cohort(df, root / "tiling", tmp_path, "builtin", batch_size=5, workers=0)
    assert again.done == [] and sorted(again.skipped) == sorted(df.slide_id)  # resume


def test_random_small_vit_end_to_end_and_warns(cohort, tmp_path):
    root, df = cohort
    E.custom_timm_spec("test_vit_tiny_e2e", "vit_tiny_patch16_224", dim=192, dtype="fp32",
                       build_kwargs={"depth": 2})
    res = embed_cohort(df.iloc[:2], root / "tiling", tmp_path, "test_vit_tiny_e2e",
                       weights="random", batch_size=8, workers=1)
    assert sorted(res.done) == ["slide0", "slide1"]
    enc = E.build_encoder("test_vit_tiny_e2e", weights="random", device="cpu")
    for row in df.iloc[:2].itertuples():
        ts = _tiles(root, row.slide_id)
        bag = read_bag(tmp_path / "features" / "test_vit_tiny_e2e" / f"{row.slide_id}.h5",
                       expected_dim=192)
        np.testing.assert_array_equal(bag.coords, ts.coords)
        np.testing.assert_allclose(bag.features, _naive_features(enc, row.path, ts), atol=1e-4)
        assert bag.attrs["weights_random"] is True
        assert bag.attrs["weights_sha256"] == "random-init:seed=0"
        assert bag.attrs["transform"].startswith("resize(224,bilinear)+normalize(")
        with pytest.warns(E.RandomWeightsWarning):
            E.warn_if_random(bag.attrs)


def _all_features(out, enc_id, ids):
    return {s: read_bag(out / "features" / enc_id / f"{s}.h5") for s in ids}


def test_workers_and_shards_give_identical_features(cohort, tmp_path):
    root, df = cohort
    ids = list(df.slide_id)
    kw = {"batch_size": 4, "views": 2}
    one = embed_cohort(df, root / "tiling", tmp_path / "w1", "builtin", workers=1, **kw)
    two = embed_cohort(df, root / "tiling", tmp_path / "w2", "builtin", workers=2, **kw)
    shards = [embed_cohort(df.iloc[::-1], root / "tiling", tmp_path / "sh", "builtin",
                           workers=0, shard=f"{i}/3", **kw) for i in range(3)]
    done = [s for r in shards for s in r.done]
    assert sorted(done) == sorted(ids) and len(done) == len(set(done))  # union, disjoint
    assert sorted(one.done) == sorted(two.done) == sorted(ids)
    a, b, c = (_all_features(tmp_path / d, "builtin", ids) for d in ("w1", "w2", "sh"))
    for s in ids:
        np.testing.assert_array_equal(a[s].features, b[s].features)
        np.testing.assert_array_equal(a[s].features, c[s].features)
        np.testing.assert_array_equal(a[s].views, b[s].views)
        np.testing.assert_array_equal(a[s].views, c[s].views)
        assert a[s].views.shape == (2, *a[s].features.shape)
        assert not np.allclose(a[s].views[0], a[s].features)  # augmented, not copies
    for i in range(3):
        assert (tmp_path / "sh" / f"failures.shard-{i}-of-3.csv").is_file()


def test_shard_partition_is_stable_and_complete():
    ids = [f"case-{i:03d}" for i in range(50)]
    parts = [shard_slides(ids, (i, 4)) for i in range(4)]
    assert sorted(s for p in parts for s in p) == sorted(ids)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    rev = [shard_slides(ids[::-1], (i, 4)) for i in range(4)]
    assert [sorted(p) for p in parts] == [sorted(p) for p in rev]
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None
    for bad in ("4/4", "x", "1/0", "-1/3"):
        with pytest.raises(ConfigError, match="shard"):
            parse_shard(bad)


def _corrupt_tile_under(path, x, y):
    """Destroy the JPEG data of the level-0 TIFF tile holding (x, y): reads there must fail."""
    import tifffile

    with tifffile.TiffFile(path) as t:
        page = t.pages[0]
        per_row = -(-page.imagewidth // page.tilewidth)
        idx = (y // page.tilelength) * per_row + x // page.tilewidth
        off, n = page.dataoffsets[idx], page.databytecounts[idx]
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\x00" * n)


def test_failing_slide_leaves_no_partial_file_and_batch_finishes(cohort, tmp_path):
    from pathstrat.cli import main

    root, df = cohort
    bad = tmp_path / "bad.svs"
    shutil.copy(df.path[1], bad)
    ts = _tiles(root, "slide1")
    last = ts.coords[-1]
    _corrupt_tile_under(bad, int(last[0]) + 100, int(last[1]) + 100)
    df2 = df.copy()
    df2.loc[1, "path"] = str(bad)
    manifest = tmp_path / "m.csv"
    df2.to_csv(manifest, index=False)
    out = tmp_path / "out"
    rc = main(["embed", "--manifest", str(manifest), "--tiles", str(root / "tiling"),
               "--out", str(out), "--encoder", "builtin", "--batch-size", "3", "--workers", "1"])
    assert rc == 3
    feat_dir = out / "features" / "builtin"
    assert sorted(p.name for p in feat_dir.iterdir()) == ["slide0.h5", "slide2.h5", "slide3.h5"]
    rows = read_failures(out / "failures.csv")
    assert [(r["stage"], r["slide_id"]) for r in rows] == [("embed", "slide1")]
    first_bad = int(rows[0]["reason"].split()[1].split("..")[0])  # "tiles 15..17: ..."
    assert first_bad >= 3  # earlier chunks were embedded: it failed mid-slide
    for s in ("slide0", "slide2", "slide3"):
        assert len(read_bag(feat_dir / f"{s}.h5")) == len(_tiles(root, s))


def test_missing_tiles_file_and_cli_success(cohort, tmp_path, capsys):
    from pathstrat.cli import main

    root, df = cohort
    df2 = pd.concat([df.iloc[:1], pd.DataFrame([{"slide_id": "ghost", "path": df.path[0]}])])
    res = embed_cohort(df2, root / "tiling", tmp_path, "builtin", workers=0)
    assert res.done == ["slide0"] and res.failed == ["ghost"]
    assert "run `pathstrat tile`" in read_failures(tmp_path / "failures.csv")[0]["reason"]
    m = tmp_path / "m.csv"
    df.iloc[:1].to_csv(m, index=False)
    rc = main(["embed", "-m", str(m), "--tiles", str(root / "tiling"), "-o", str(tmp_path / "c"),
               "--workers", "0"])
    assert rc == 0
    assert "1 embedded" in capsys.readouterr().out
    f = tmp_path / "c" / "features" / "builtin" / "slide0.h5"
    sha = sha256_file(f)
    assert main(["embed", "-m", str(m), "--tiles", str(root / "tiling"), "-o",
                 str(tmp_path / "c"), "--workers", "0"]) == 0
    assert sha256_file(f) == sha and "1 up to date" in capsys.readouterr().out


def test_encoders_list_cli(capsys):
    from pathstrat.cli import main

    assert main(["encoders", "list"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    assert set(lines) == {s.id for s in E.list_specs()}
    assert lines["uni"].split()[1:6] == ["1024", "224", "0.5", "fp16", "yes"]
    assert "n/a" in lines["builtin"]


def test_missing_tiles_folder_is_one_error_not_a_failure_per_slide(cohort, tmp_path):
    root, df = cohort
    with pytest.raises(ConfigError, match=r"Tiles folder .*nowhere.* does not exist.*pathstrat tile"):
        embed_cohort(df, tmp_path / "nowhere", tmp_path / "out", "builtin", workers=0)
    assert not (tmp_path / "out").exists()


def test_gpus_runs_one_process_per_device_and_matches_a_single_process(cohort, tmp_path):
    """--gpus with CPU processes standing in for devices: every slide embedded once, features
    identical to one process, one merged failures.csv (the missing slide), no per-shard files."""
    from pathstrat.cli import main
    from pathstrat.encoders.embed import parse_devices

    root, df = cohort
    man = tmp_path / "m.csv"
    pd.concat([df, pd.DataFrame([{"slide_id": "ghost", "path": df.path[0]}])]).to_csv(man, index=False)
    rc = main(["embed", "-m", str(man), "--tiles", str(root / "tiling"), "-o", str(tmp_path / "multi"),
               "--workers", "0", "--gpus", "cpu,cpu"])
    assert rc == 3
    fails = read_failures(tmp_path / "multi" / "failures.csv")
    assert [f["slide_id"] for f in fails] == ["ghost"]
    assert not list((tmp_path / "multi").glob("failures.shard-*"))
    ref = embed_cohort(df, root / "tiling", tmp_path / "one", "builtin", workers=0)
    for sid in df.slide_id:
        a = read_bag(tmp_path / "multi" / "features" / "builtin" / f"{sid}.h5")
        b = read_bag(ref.features_dir / f"{sid}.h5")
        np.testing.assert_array_equal(a.features, b.features)
    assert parse_devices("0, 2") == ["0", "2"]
    with pytest.raises(ConfigError, match="`gpus`"):
        parse_devices("gpu0")
