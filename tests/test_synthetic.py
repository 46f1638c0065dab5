"""Synthetic slides and cohorts: OpenSlide compatibility, truth vs pixels, determinism, streaming,
and the planted label / survival relationships."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
from scipy import ndimage

from pathstrat.errors import ConfigError
from pathstrat.synthetic import (
    CLASSES,
    MANIFEST_COLUMNS,
    CohortDesign,
    load_truth,
    make_cohort,
    make_slide,
    tile_truth,
)
from pathstrat.synthetic.cohort import _draw_patients, _patient_outcomes

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = {"stroma": 0.3, "tumor": 0.3, "lymphocytes": 0.2, "necrosis": 0.2, "mucinous": 0.5,
          "tissue": 0.6, "n_blobs": 2}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def slide_05(tmp_path_factory):
    """2400 x 1800 px at 0.5 µm/px with every class, mucinous tumour and associated images."""
    d = tmp_path_factory.mktemp("syn05")
    return make_slide(d / "s05.svs", width=2400, height=1800, mpp=0.5, seed=11, layout=LAYOUT,
                      associated=True)


@pytest.fixture(scope="module")
def slide_025(tmp_path_factory):
    """0.25 µm/px slide with pen marks."""
    d = tmp_path_factory.mktemp("syn025")
    return make_slide(d / "s025.tiff", width=2600, height=2100, mpp=0.25, seed=3, pen=2,
                      patch_um=256)


def test_openslide_reads_aperio_metadata_and_pyramid(slide_05, slide_025):
    for s, mag in ((slide_05, "20"), (slide_025, "40")):
        with openslide.OpenSlide(str(s.path)) as o:
            assert o.properties["openslide.vendor"] == "aperio"
            assert float(o.properties["openslide.mpp-x"]) == pytest.approx(s.mpp)
            assert float(o.properties["openslide.mpp-y"]) == pytest.approx(s.mpp)
            assert o.properties["openslide.objective-power"] == mag
            assert o.dimensions == (s.width, s.height)
            assert o.level_count == len(s.downsamples)
            assert o.level_dimensions[1] == (s.width // 4, s.height // 4)
            assert o.level_downsamples[1] == pytest.approx(4.0, rel=0.01)
            assert o.properties["openslide.level[0].tile-width"] == "256"
            region = np.asarray(o.read_region((100, 200), 0, (300, 200)))
            assert region.shape == (200, 300, 4)
    assert slide_05.downsamples == [1, 4, 16]
    with openslide.OpenSlide(str(slide_05.path)) as o:
        assert o.level_downsamples[2] == pytest.approx(16.0, rel=0.01)
        assert set(o.associated_images) == {"thumbnail", "label", "macro"}


def test_lower_levels_are_box_averages_of_level0(slide_05):
    with openslide.OpenSlide(str(slide_05.path)) as o:
        x, y, n = 800, 600, 512  # a region crossing tissue and glass
        lvl0 = np.asarray(o.read_region((x, y), 0, (n, n)).convert("RGB"), dtype=np.float32)
        lvl1 = np.asarray(o.read_region((x, y), 1, (n // 4, n // 4)).convert("RGB"),
                          dtype=np.float32)
        shifted = np.asarray(o.read_region((x + 64, y), 1, (n // 4, n // 4)).convert("RGB"),
                             dtype=np.float32)
    ref = lvl0.reshape(n // 4, 4, n // 4, 4, 3).mean(axis=(1, 3))
    err = np.abs(ref - lvl1).mean()
    assert err < 6.0  # two JPEG generations apart (4:2:0 chroma), same content
    assert np.abs(ref - shifted).mean() > 3 * err  # and it is the content, not a blur of anything
    assert lvl0.std() > 10  # not a blank region


def test_truth_file_contract(slide_05):
    t = load_truth(slide_05.truth_path)
    assert t["classes"] == list(CLASSES)
    assert t["schema"] == "pathstrat.synthetic-truth/1"
    cm = t["class_map"]
    assert cm.dtype == np.uint8 and cm.max() <= 4
    assert cm.shape == (np.ceil(1800 * 0.5 / t["truth_mpp"]), np.ceil(2400 * 0.5 / t["truth_mpp"]))
    assert t["mucinous_mask"].shape == cm.shape and t["pen_mask"].shape == cm.shape
    assert not (t["mucinous_mask"] & (cm != CLASSES.index("tumor"))).any()
    # measured fractions match the layout asked for
    for k in ("stroma", "tumor", "lymphocytes", "necrosis"):
        assert slide_05.class_fractions[k] == pytest.approx(LAYOUT[k], abs=0.03)
    assert slide_05.tissue_fraction == pytest.approx(LAYOUT["tissue"], abs=0.04)
    assert slide_05.mucinous_fraction == pytest.approx(0.5 * slide_05.class_fractions["tumor"],
                                                       abs=0.03)


def test_tile_truth_matches_direct_count_of_the_class_map(slide_05):
    t = load_truth(slide_05.truth_path)
    cell = t["truth_mpp"] / t["slide_mpp"]  # level-0 px per truth cell (4)
    rng = np.random.default_rng(0)
    cells = rng.integers(0, [t["class_map"].shape[1] - 8, t["class_map"].shape[0] - 8], (40, 2))
    coords = (cells * cell).astype(np.int64)
    got = tile_truth(t, coords, tile_size_level0=8 * cell, slide_mpp=0.5, samples=8)
    assert list(got.columns) == [*CLASSES, "mucinous", "pen"]
    for i, (cx, cy) in enumerate(cells):
        block = t["class_map"][cy:cy + 8, cx:cx + 8]
        want = np.bincount(block.ravel(), minlength=5) / block.size
        np.testing.assert_allclose(got.loc[i, list(CLASSES)].to_numpy(float), want, atol=1e-9)
        assert got.loc[i, "mucinous"] == pytest.approx(t["mucinous_mask"][cy:cy + 8, cx:cx + 8].mean())
    assert np.allclose(got[list(CLASSES)].sum(axis=1), 1.0)


def _pure_tiles(slide, truth, cls_name: str, n: int = 6, px: int = 224):
    """Tiles (224 px at level 0) lying wholly inside one class (or the mucinous pattern)."""
    ys, xs = np.mgrid[0:slide.height - px:px, 0:slide.width - px:px]
    coords = np.stack([xs.ravel(), ys.ravel()], 1)
    tt = tile_truth(truth, coords, px, slide.mpp)
    if cls_name == "mucinous":
        pure = tt["mucinous"] > 0.97
    else:
        pure = (tt[cls_name] > 0.97) & (tt["mucinous"] < 0.01)
    chosen = coords[pure.to_numpy()][:n]
    assert len(chosen) >= 2, f"no pure {cls_name} tiles"
    with openslide.OpenSlide(str(slide.path)) as o:
        return [np.asarray(o.read_region((int(x), int(y)), 0, (px, px)).convert("RGB"),
                           dtype=np.float32) for x, y in chosen]


def test_class_regions_differ_in_colour_and_texture_as_designed(slide_05):
    t = load_truth(slide_05.truth_path)
    stats = {}
    for name in ("background", "stroma", "tumor", "lymphocytes", "necrosis", "mucinous"):
        tiles = _pure_tiles(slide_05, t, name)
        rgb = np.mean([tl.reshape(-1, 3).mean(0) for tl in tiles], axis=0)
        lum = np.mean([tl.mean() for tl in tiles])
        tex = np.mean([tl.mean(axis=2).std() for tl in tiles])
        stats[name] = (rgb, lum, tex)
    assert stats["background"][1] > 225 and stats["background"][2] < 5  # bright, flat glass
    tissue = [k for k in stats if k != "background"]
    assert min(tissue, key=lambda k: stats[k][1]) == "lymphocytes"  # darkest: packed nuclei
    assert max(tissue, key=lambda k: stats[k][0][0] - stats[k][0][2]) == "stroma"  # pinkest
    r, g, b = stats["mucinous"][0]
    assert b > r  # blue-grey mucin
    assert stats["necrosis"][0][0] > stats["necrosis"][0][2]  # pinkish-grey
    assert stats["necrosis"][2] < stats["tumor"][2] and stats["necrosis"][2] < stats["stroma"][2]
    assert stats["tumor"][1] < stats["necrosis"][1]  # crowded nuclei darker than necrosis
    # every pair of tissue classes is far apart in mean colour
    for i, a in enumerate(tissue):
        for bname in tissue[i + 1:]:
            assert np.abs(stats[a][0] - stats[bname][0]).max() > 8, (a, bname)


def test_pen_marks_are_ink_coloured_and_in_the_truth(slide_025, tmp_path):
    """Same slide without pen: inside the pen mask red is absorbed most, elsewhere nothing changes."""
    t = load_truth(slide_025.truth_path)
    assert slide_025.pen_fraction > 0.01
    plain = make_slide(tmp_path / "plain.tiff", width=2600, height=2100, mpp=0.25, seed=3,
                       patch_um=256)
    assert not plain.load_truth()["pen_mask"].any()
    np.testing.assert_array_equal(plain.load_truth()["class_map"], t["class_map"])
    cell = t["truth_mpp"] / t["slide_mpp"]
    dist = ndimage.distance_transform_edt(~t["pen_mask"])
    inked = np.argwhere(ndimage.binary_erosion(t["pen_mask"], iterations=2))
    far = np.argwhere(dist > 40)
    rng = np.random.default_rng(1)
    with openslide.OpenSlide(str(slide_025.path)) as a, openslide.OpenSlide(str(plain.path)) as b:
        def px(o, iy, ix):
            x, y = int((ix + 0.5) * cell), int((iy + 0.5) * cell)
            return np.asarray(o.read_region((x - 4, y - 4), 0, (8, 8)).convert("RGB"),
                              float).reshape(-1, 3).mean(0)

        ratios = np.array([px(a, *inked[k]) / px(b, *inked[k])
                           for k in rng.choice(len(inked), 30, replace=False)])
        same = [np.abs(px(a, *far[k]) - px(b, *far[k])).max()
                for k in rng.choice(len(far), 30, replace=False)]
    r, g, bl = ratios.mean(0)
    assert r < 0.6 and max(g, bl) > r + 0.2  # blue / green ink
    assert max(same) < 1.0  # untouched away from the strokes


def test_same_seed_same_bytes_other_seed_other_slide(tmp_path):
    kw = dict(width=700, height=600, mpp=0.5, pen=True, patch_um=128)
    a = make_slide(tmp_path / "a.svs", seed=5, **kw)
    b = make_slide(tmp_path / "b.svs", seed=5, **kw)
    c = make_slide(tmp_path / "c.svs", seed=6, **kw)
    assert _sha(a.path) == _sha(b.path)
    assert _sha(a.truth_path) == _sha(b.truth_path)
    assert _sha(a.path) != _sha(c.path)
    assert not np.array_equal(a.load_truth()["class_map"], c.load_truth()["class_map"])


def test_invalid_arguments_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown keys.*lymph"):
        make_slide(tmp_path / "x.svs", width=512, height=512, seed=0, layout={"lymph": 0.3})
    with pytest.raises(ConfigError, match="too small"):
        make_slide(tmp_path / "x.svs", width=10, height=512, seed=0)
    with pytest.raises(ConfigError, match=r"downsamples \[1, 3\]"):
        make_slide(tmp_path / "x.svs", width=512, height=512, seed=0, downsamples=(1, 3),
                   patch_um=128)
    with pytest.raises(ConfigError, match="n_patients=1"):
        make_cohort(tmp_path / "c", n_patients=1)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_streaming_keeps_peak_memory_far_below_the_image(tmp_path):
    """An 8000 x 6000 slide (144 MB as RGB) needs little more memory than a 2000 x 1500 one."""
    code = textwrap.dedent(f"""
        import json, tracemalloc
        from pathstrat.synthetic import make_slide
        out = {{}}
        tracemalloc.start()  # first slide also builds the texture bank (cached for the others)
        make_slide({str(tmp_path / 'warm.svs')!r}, width=512, height=512, mpp=0.5, seed=1,
                   texture_seed=7)
        out["with_textures"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        for name, w, h in (("small", 2000, 1500), ("big", 8000, 6000)):
            tracemalloc.start()
            s = make_slide({str(tmp_path)!r} + f"/{{name}}.svs", width=w, height=h, mpp=0.5,
                           seed=2, texture_seed=7)
            out[name] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        out["levels"] = s.downsamples
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    peak = json.loads(res.stdout.strip().splitlines()[-1])
    full = 8000 * 6000 * 3
    assert peak["levels"] == [1, 4, 16, 32, 64]
    assert peak["with_textures"] < full * 0.7, peak  # texture bank: fixed, not per pixel
    assert peak["big"] < full * 0.2, peak  # the 144 MB image never sits in memory
    # 16x the pixels costs well under a tenth of the extra image size
    assert peak["big"] - peak["small"] < 0.1 * (full - 2000 * 1500 * 3), peak
    with openslide.OpenSlide(str(tmp_path / "big.svs")) as o:
        assert o.dimensions == (8000, 6000)
        assert o.level_dimensions[-1] == (8000 // 64, 6000 // 64)


# ---------------------------------------------------------------- cohorts


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    return make_cohort(d, small=True, seed=3, second_slide_fraction=0.4, workers=1,
                       texture_banks=2)


def test_small_cohort_manifest_and_files(small_cohort):
    m = pd.read_csv(small_cohort)
    assert list(m.columns) == list(MANIFEST_COLUMNS)
    assert m["patient_id"].nunique() == 12
    assert m["slide_id"].is_unique
    assert (m.groupby("patient_id").size() > 1).any()  # some patients have two slides
    for p in m["path"]:
        assert not Path(p).is_absolute()
        f = small_cohort.parent / p
        assert f.exists() and f.with_name(f.stem + ".truth.npz").exists()
    per_patient = m.groupby("patient_id")[["responder", "biomarker", "time", "event", "arm",
                                           "age", "stage", "site"]].nunique()
    assert (per_patient == 1).all().all()  # both slides of a patient share labels
    assert set(m["site"]) <= {0, 1, 2} and set(m["event"]) <= {0, 1} and (m["time"] > 0).all()
    truth = pd.read_csv(small_cohort.parent / "truth.csv")
    assert len(truth) == 12 and {"lymphocytes", "necrosis", "mucinous_of_tumor",
                                 "linear_predictor", "treatment_log_hr"} <= set(truth.columns)


def test_cohort_labels_follow_measured_slide_content(small_cohort):
    m = pd.read_csv(small_cohort)
    truth = pd.read_csv(small_cohort.parent / "truth.csv").set_index("patient_id")
    # recompute each patient's lymphocyte fraction from the written truth maps
    for pid, g in m.groupby("patient_id"):
        lym, tis = 0.0, 0.0
        for p in g["path"]:
            t = load_truth(small_cohort.parent / p)
            lym += (t["class_map"] == 3).sum()
            tis += (t["class_map"] > 0).sum()
        assert truth.loc[pid, "lymphocytes"] == pytest.approx(lym / tis, abs=0.02)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(truth["responder"], truth["lymphocytes"]) > 0.85
    assert roc_auc_score(truth["biomarker"], truth["mucinous_of_tumor"]) > 0.85


def test_cohort_rerun_reuses_and_params_change_regenerates(small_cohort):
    before = {p: p.stat().st_mtime_ns for p in (small_cohort.parent / "slides").iterdir()}
    again = make_cohort(small_cohort.parent, small=True, seed=3, second_slide_fraction=0.4,
                        texture_banks=2)
    assert again == small_cohort
    assert {p: p.stat().st_mtime_ns for p in (small_cohort.parent / "slides").iterdir()} == before
    meta = json.loads((small_cohort.parent / "cohort.json").read_text())
    assert meta["n_patients"] == 12 and meta["n_slides"] == len(pd.read_csv(small_cohort))


def test_cohort_is_deterministic_with_two_workers(tmp_path):
    a = make_cohort(tmp_path / "a", n_patients=3, width=600, height=500, seed=9, workers=2,
                    texture_banks=1)
    b = make_cohort(tmp_path / "b", n_patients=3, width=600, height=500, seed=9, workers=1,
                    texture_banks=1)
    pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))
    for p in pd.read_csv(a)["path"]:
        assert _sha(a.parent / p) == _sha(b.parent / p)


def test_planted_survival_model_is_recovered_by_cox():
    """Large simulated cohort (outcomes only): lifelines recovers the planted coefficients."""
    from lifelines import CoxPHFitter

    d = CohortDesign()
    rng = np.random.default_rng(0)
    pts = _draw_patients(1500, 0.0, d, rng)
    slides = pd.DataFrame({"patient_id": pts["patient_id"], "tissue_fraction": 0.5,
                           "lymphocytes": pts["plan_lymphocytes"],
                           "necrosis": pts["plan_necrosis"], "tumor": pts["plan_tumor"],
                           "stroma": 1 - pts["plan_lymphocytes"] - pts["plan_necrosis"]
                           - pts["plan_tumor"],
                           "mucinous": pts["plan_tumor"] * pts["plan_mucinous_of_tumor"]})
    t = _patient_outcomes(pts, slides, d, rng)
    t["arm_x_biomarker"] = t["arm"] * t["biomarker"]
    t["age_decade"] = (t["age"] - 64) / 10
    cph = CoxPHFitter().fit(t[["time", "event", "necrosis", "stage", "age_decade", "arm",
                               "biomarker", "arm_x_biomarker"]], "time", "event")
    lo, hi = cph.confidence_intervals_.iloc[:, 0], cph.confidence_intervals_.iloc[:, 1]
    for name, beta in (("necrosis", d.beta_necrosis), ("arm", d.beta_arm),
                       ("arm_x_biomarker", d.beta_interaction), ("stage", d.beta_stage)):
        assert lo[name] - 0.1 * abs(beta) < beta < hi[name] + 0.1 * abs(beta), name
    assert cph.params_["arm_x_biomarker"] < -1.5  # treatment helps only biomarker-positive
    assert 0.6 < t["event"].mean() < 0.9
    # responder / biomarker noise is small but not zero
    assert 0.0 < (t["responder"] != (t["lymphocytes"] > d.responder_threshold)).mean() < 0.08
    assert 0.0 < (t["biomarker"] != (t["mucinous_of_tumor"] > d.biomarker_threshold)).mean() < 0.08


def test_interrupted_cohort_resumes_with_identical_files(tmp_path):
    """A run killed after some slides: the rerun keeps finished slides and rebuilds the rest."""
    kw = dict(n_patients=3, width=600, height=500, seed=4, texture_banks=1)
    m = make_cohort(tmp_path, **kw)
    paths = [tmp_path / p for p in pd.read_csv(m)["path"]]
    digests = {p: _sha(p) for p in paths}
    kept = {p: p.stat().st_mtime_ns for p in paths[1:]}
    m.unlink()  # as if killed before the manifest was written ...
    paths[0].unlink()  # ... and before the first slide finished
    again = make_cohort(tmp_path, **kw)
    assert {p: _sha(p) for p in paths} == digests
    assert {p: p.stat().st_mtime_ns for p in paths[1:]} == kept
    assert not list(tmp_path.rglob(".tmp-*"))
    assert list(pd.read_csv(again)["path"]) == [str(p.relative_to(tmp_path)) for p in paths]
