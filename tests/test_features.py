"""Feature files: our layout round-trips atomically; TRIDENT and CLAM files read as bags."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pathstrat.errors import FeatureDimError, SchemaError
from pathstrat.features import FEATURES_SCHEMA, read_attrs, read_bag, write_features


@pytest.fixture
def bag_data(rng):
    feats = rng.normal(size=(7, 5)).astype(np.float32)
    coords = rng.integers(0, 10_000, size=(7, 2)).astype(np.int64)
    return feats, coords


def test_roundtrip_ours_with_views_and_attrs(tmp_path, bag_data, rng):
    feats, coords = bag_data
    views = rng.normal(size=(3, 7, 5)).astype(np.float32)
    attrs = {"encoder_id": "builtin", "encoder_dim": 5, "weights_random": False,
             "transform": "resize(224,bilinear)", "target_mpp": 0.5, "skip_me": None}
    p = write_features(tmp_path / "a.h5", feats, coords, attrs, views=views)
    bag = read_bag(p, expected_dim=5, expected_encoder="builtin")
    assert bag.layout == "pathstrat"
    np.testing.assert_array_equal(bag.features, feats)
    np.testing.assert_array_equal(bag.coords, coords)
    np.testing.assert_array_equal(bag.views, views)
    assert bag.attrs["schema"] == FEATURES_SCHEMA and bag.attrs["n_tiles"] == 7
    assert bag.attrs["weights_random"] is False and bag.attrs["target_mpp"] == 0.5
    assert "skip_me" not in bag.attrs
    assert read_attrs(p)["encoder_id"] == "builtin"
    assert [f.name for f in tmp_path.iterdir()] == ["a.h5"]  # no temporary file left


def test_write_rejects_mismatched_rows_and_leaves_nothing(tmp_path, bag_data):
    feats, coords = bag_data
    with pytest.raises(FeatureDimError, match="one row per tile"):
        write_features(tmp_path / "b.h5", feats, coords[:5], {})
    with pytest.raises(FeatureDimError, match="views"):
        write_features(tmp_path / "b.h5", feats, coords, {}, views=np.zeros((2, 7, 4)))
    assert list(tmp_path.iterdir()) == []


def test_reads_trident_layout(tmp_path, bag_data):
    feats, coords = bag_data
    p = tmp_path / "TCGA-1.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("features", data=feats[None])  # TRIDENT may keep a batch axis
        c = f.create_dataset("coords", data=coords)
        c.attrs["patch_size_level0"] = 512
        c.attrs["patch_size"] = 256
        c.attrs["target_magnification"] = 20
    bag = read_bag(p, expected_dim=5)
    assert bag.layout == "trident"
    assert bag.features.shape == (7, 5)
    assert bag.attrs["tile_size_level0"] == 512 and bag.attrs["tile_px"] == 256
    assert bag.attrs["target_magnification"] == 20 and bag.attrs["slide_id"] == "TCGA-1"


def test_reads_clam_layout_and_checks_dims(tmp_path, bag_data):
    feats, coords = bag_data
    p = tmp_path / "clam.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("features", data=feats)
        f.create_dataset("coords", data=coords.astype(np.int32))
    bag = read_bag(p, expected_encoder="uni")  # no provenance: accepted with a warning
    assert bag.layout == "clam" and bag.coords.dtype == np.int64 and len(bag) == 7
    with pytest.raises(FeatureDimError, match=r"clam\.h5.*dim 5.*1024 is expected"):
        read_bag(p, expected_dim=1024)


def test_encoder_mismatch_and_bad_files(tmp_path, bag_data):
    feats, coords = bag_data
    p = write_features(tmp_path / "s.h5", feats, coords, {"encoder_id": "uni", "encoder_dim": 5})
    with pytest.raises(FeatureDimError, match="made by encoder 'uni', not 'virchow2'"):
        read_bag(p, expected_encoder="virchow2")
    bad = tmp_path / "rows.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("features", data=feats)
        f.create_dataset("coords", data=coords[:3])
    with pytest.raises(SchemaError, match="7 feature rows but 3 coords rows"):
        read_bag(bad)
    nofeat = tmp_path / "nofeat.h5"
    with h5py.File(nofeat, "w") as f:
        f.create_dataset("coords", data=coords)
    with pytest.raises(SchemaError, match=r"needs datasets 'features' \(or STAMP's 'feats'\) and 'coords'"):
        read_bag(nofeat)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(SchemaError, match="cannot be opened"):
        read_bag(junk)
    lying = tmp_path / "lying.h5"
    write_features(lying, feats, coords, {"encoder_dim": 5})
    with h5py.File(lying, "a") as f:
        f.attrs["encoder_dim"] = 9
    with pytest.raises(FeatureDimError, match="encoder_dim=9"):
        read_bag(lying)
