"""Spatial transcriptomics: generated Space Ranger layout, ingest, spot tiles, prediction, maps.

Every number is checked against an independent computation: scanpy's own readers and
normalisation, the generator's known truth, scipy.stats, sklearn, or a hand calculation.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sc = pytest.importorskip("scanpy")
anndata = pytest.importorskip("anndata")

from pathstrat.synthetic import make_slide, make_visium_cohort, make_visium_sample  # noqa: E402
from pathstrat.synthetic.spatial import planted_genes, programme_gene_sets  # noqa: E402

SIZE = 3000  # px at 0.5 µm/px: 1.5 mm slides, ~150 in-tissue spots each
N_NOISE_TESTED = 30
PLANTED_MIN_PEARSON = 0.5  # stated threshold; generated data gives ~0.8 with the builtin encoder
NOISE_MAX_ABS_PEARSON = 0.15


@pytest.fixture(scope="session")
def st(tmp_path_factory):
    """Four generated ST samples (one patient each) built into .h5ad with the builtin encoder."""
    from pathstrat.spatial.spots import build_sample

    root = tmp_path_factory.mktemp("st")
    samples, table = make_visium_cohort(root, n_samples=4, seed=0, width=SIZE, height=SIZE)
    h5 = root / "h5ad"
    for s in samples:
        build_sample(s.outs, s.slide.path, h5 / f"{s.sample_id}.h5ad", sample_id=s.sample_id,
                     patient_id=s.patient_id, device="cpu")
    return {"root": root, "samples": samples, "table": table, "h5ad": h5}


@pytest.fixture(scope="session")
def st_data(st):
    from pathstrat.spatial.predict import prepare
    from pathstrat.spatial.spots import read_samples

    ad = read_samples(sorted(st["h5ad"].glob("*.h5ad")))
    genes = planted_genes() + [f"NOISE{i + 1:04d}" for i in range(N_NOISE_TESTED)]
    return ad, prepare(ad, genes=genes)


@pytest.fixture(scope="session")
def he_slide(tmp_path_factory):
    """An H&E-only slide (no expression) from the same generator, lymphocyte-rich."""
    d = tmp_path_factory.mktemp("he")
    return make_slide(d / "HE1.tiff", width=SIZE, height=SIZE, mpp=0.5, seed=777, texture_seed=0,
                      layout={"tissue": 0.6, "lymphocytes": 0.3})


def _read_visium(outs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sc.read_visium(outs)


# ------------------------------------------------------------------------------ layout + ingest


def test_generated_layout_reads_with_scanpy_and_our_ingest_identically(st):
    from pathstrat.spatial.ingest import read_spaceranger

    s = st["samples"][0]
    ref = _read_visium(s.outs)
    ours = read_spaceranger(s.outs)
    assert ours.library_id == s.sample_id and s.sample_id in ref.uns["spatial"]
    assert list(ours.adata.obs_names) == list(ref.obs_names)
    # scanpy's obsm["spatial"] is (pxl_col, pxl_row) = (x, y) in full-resolution pixels
    np.testing.assert_array_equal(ours.fullres_xy, np.asarray(ref.obsm["spatial"], float))
    np.testing.assert_array_equal(ours.adata.X.toarray(), ref.X.toarray())
    assert ours.scalefactors == ref.uns["spatial"][s.sample_id]["scalefactors"]
    assert ref.uns["spatial"][s.sample_id]["images"]["hires"].shape[:2] == ours.hires.shape[:2]
    assert (ref.obs["in_tissue"] == 1).all() and ref.n_obs == s.n_spots
    assert list(ref.var_names) == s.genes + s.noise_genes


@pytest.mark.parametrize("downsample", [1, 2])
def test_spot_to_level0_mapping_is_exact(tmp_path, downsample):
    from pathstrat.slide import open_slide
    from pathstrat.spatial.ingest import map_to_slide, read_spaceranger

    v = make_visium_sample(tmp_path, sample_id="M", seed=5, width=2000, height=2400,
                           fullres_downsample=downsample, n_noise_genes=5)
    sr = read_spaceranger(v.outs)
    assert sr.fullres_mpp == pytest.approx(0.5 * downsample, rel=5e-3)  # from the spot pitch
    truth = v.truth().set_index("barcode").loc[sr.adata.obs_names]
    with open_slide(v.slide.path) as slide:
        xy, m = map_to_slide(sr, slide)
    assert m.scale == downsample and m.how == ("same image" if downsample == 1 else
                                               "integer downsample")
    np.testing.assert_array_equal(xy, truth[["x_level0", "y_level0"]].to_numpy())
    assert m.content_corr > 0.9


def test_visium_hd_bins_read_from_parquet_and_map_exactly(tmp_path):
    from pathstrat.slide import open_slide
    from pathstrat.spatial.ingest import map_to_slide, read_spaceranger

    v = make_visium_sample(tmp_path, sample_id="HD", seed=2, width=1200, height=1000,
                           bin_size_um=16, n_noise_genes=5)
    assert v.outs.name == "square_016um" and not (v.outs / "spatial" / "tissue_positions.csv").exists()
    sr = read_spaceranger(tmp_path / "HD", bin_size_um=16)  # finds binned_outputs/square_016um
    assert sr.bin_size_um == 16 and sr.fullres_mpp == 0.5 and sr.spot_diameter_um == 16
    pos = pd.read_parquet(v.outs / "spatial" / "tissue_positions.parquet").set_index("barcode")
    assert sr.adata.n_obs == int(pos["in_tissue"].sum())
    truth = v.truth().set_index("barcode").loc[sr.adata.obs_names]
    with open_slide(v.slide.path) as slide:
        xy, _ = map_to_slide(sr, slide)
    np.testing.assert_array_equal(xy, truth[["x_level0", "y_level0"]].to_numpy())
    ref = sc.read_10x_h5(v.outs / "filtered_feature_bc_matrix.h5")
    np.testing.assert_array_equal(sr.adata.X.toarray(), ref.X.toarray())


def test_parquet_and_legacy_position_files_give_the_same_spots(st, tmp_path):
    from pathstrat.spatial.ingest import read_spaceranger

    s = st["samples"][1]
    ref = read_spaceranger(s.outs)
    pq = tmp_path / "pq"
    shutil.copytree(s.outs, pq)
    (pq / "spatial" / "tissue_positions.csv").unlink()
    legacy = tmp_path / "legacy"
    shutil.copytree(pq, legacy)
    (legacy / "spatial" / "tissue_positions.parquet").unlink()
    pos = pd.read_csv(s.outs / "spatial" / "tissue_positions.csv")
    pos.to_csv(legacy / "spatial" / "tissue_positions_list.csv", header=False, index=False)
    for d, name in ((pq, "tissue_positions.parquet"), (legacy, "tissue_positions_list.csv")):
        got = read_spaceranger(d)
        assert Path(got.files["positions"]).name == name
        np.testing.assert_array_equal(got.fullres_xy, ref.fullres_xy)
        np.testing.assert_array_equal(got.adata.obs["array_row"], ref.adata.obs["array_row"])


def test_wrong_slide_is_refused_with_one_clear_line(st, tmp_path, capsys):
    from pathstrat.cli import main
    from pathstrat.slide import open_slide
    from pathstrat.spatial.ingest import SlideMismatchError, map_to_slide, read_spaceranger

    a, b = st["samples"][0], st["samples"][1]
    sr = read_spaceranger(a.outs)
    with open_slide(b.slide.path) as other:  # same size and MPP, other tissue
        with pytest.raises(SlideMismatchError, match="correlates .* with the slide"):
            map_to_slide(sr, other)
    small = make_slide(tmp_path / "small.tiff", width=2000, height=SIZE, mpp=0.5, seed=3)
    with open_slide(small.path) as s2, pytest.raises(SlideMismatchError, match="µm"):
        map_to_slide(sr, s2)
    with open_slide(a.slide.path, mpp=0.25) as s3, pytest.raises(SlideMismatchError):
        map_to_slide(sr, s3)  # right pixels, wrong MPP: the physical size disagrees
    csv = tmp_path / "samples.csv"
    pd.DataFrame({"sample_id": ["X"], "patient_id": ["P"], "slide": [str(b.slide.path)],
                  "spaceranger": [str(a.outs)]}).to_csv(csv, index=False)
    rc = main(["-q", "spatial", "build", "--samples", str(csv), "--out", str(tmp_path / "o"),
               "--device", "cpu"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]  # log lines aside
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: Space Ranger sample")
    assert not (tmp_path / "o" / "X.h5ad").exists()


# ------------------------------------------------------------------------------ spot tiles / h5ad


def test_h5ad_holds_counts_positions_embeddings_and_provenance(st):
    import openslide

    from pathstrat.encoders import build_encoder
    from pathstrat.spatial.ingest import read_spaceranger

    s = st["samples"][2]
    ad = anndata.read_h5ad(st["h5ad"] / f"{s.sample_id}.h5ad")
    truth = s.truth().set_index("barcode")
    bc = [n.split(":", 1)[1] for n in ad.obs_names]
    np.testing.assert_array_equal(ad.obsm["spatial"], truth.loc[bc, ["x_level0", "y_level0"]])
    np.testing.assert_array_equal(ad.layers["counts"].toarray(),
                                  read_spaceranger(s.outs).adata.X.toarray())
    meta = ad.uns["pathstrat"]
    assert meta["tile_um"] == 112.0 and meta["tile_px"] == 224 and meta["tile_size_level0"] == 224
    assert meta["encoder"]["encoder_id"] == "builtin" and meta["patient_id"] == s.patient_id
    assert meta["mapping"] == "same image" and ad.obsm["X_builtin"].shape == (ad.n_obs, 62)
    # independent read: OpenSlide at level 0, 224 px around the spot centre, same encoder
    enc = build_encoder("builtin", device="cpu")
    idx = np.arange(0, ad.n_obs, 37)
    with openslide.OpenSlide(str(s.slide.path)) as osr:
        tiles = np.stack([np.asarray(osr.read_region((int(round(x - 112)), int(round(y - 112))),
                                                     0, (224, 224)).convert("RGB"))
                          for x, y in ad.obsm["spatial"][idx]])
    ref = np.asarray(enc(tiles))
    got = ad.obsm["X_builtin"][idx]
    corr = [np.corrcoef(r, g)[0, 1] for r, g in zip(ref, got, strict=True)]
    assert min(corr) > 0.99  # same pixels up to JPEG decoder rounding


def test_build_with_a_random_timm_encoder_records_it(st, tmp_path):
    from pathstrat.encoders import build_encoder, custom_timm_spec
    from pathstrat.spatial.spots import build_sample

    spec = custom_timm_spec("st_test_vit", "vit_tiny_patch16_224", dim=192, dtype="fp32",
                            build_kwargs={"img_size": 32, "depth": 1}, input_px=32)
    enc = build_encoder(spec.id, weights="random", device="cpu")
    s = st["samples"][3]
    ad = build_sample(s.outs, s.slide.path, tmp_path / "t.h5ad", encoder=enc)
    back = anndata.read_h5ad(tmp_path / "t.h5ad")
    assert back.obsm["X_st_test_vit"].shape == (ad.n_obs, 192)
    assert bool(back.uns["pathstrat"]["encoder"]["weights_random"]) is True
    np.testing.assert_allclose(back.obsm["X_st_test_vit"][:4],
                               np.asarray(enc(_spot_tiles(s.slide.path, back.obsm["spatial"][:4]))),
                               rtol=1e-4, atol=1e-5)


def _spot_tiles(path, centres):
    from pathstrat.slide import open_slide

    with open_slide(path) as sl:
        return np.stack([sl.read_tile(int(round(x - 112)), int(round(y - 112)), 224, 224)
                         for x, y in centres])


def test_h5ad_loads_in_squidpy_and_builds_the_spatial_graph(st):
    sq = pytest.importorskip("squidpy")
    from scipy.spatial import cKDTree

    ad = anndata.read_h5ad(st["h5ad"] / "ST01.h5ad")
    radius = 110.0 / 0.5  # neighbours 100 µm apart, in level-0 px
    sq.gr.spatial_neighbors(ad, coord_type="generic", radius=radius)
    a = ad.obsp["spatial_connectivities"]
    pairs = cKDTree(ad.obsm["spatial"]).query_pairs(radius)
    assert a.nnz == 2 * len(pairs) and all(a[i, j] for i, j in list(pairs)[:50])


# ------------------------------------------------------------------------------ prediction


def test_log1p_normalise_and_hvg_match_scanpy(st_data):
    from pathstrat.spatial.predict import log1p_normalise, select_genes

    ad, _ = st_data
    ref = sc.AnnData(ad.layers["counts"].copy())
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    np.testing.assert_allclose(log1p_normalise(ad.layers["counts"]), ref.X.toarray(), rtol=1e-5)
    # with one mean bin, dispersion ranks genes directly: the 24 planted genes come first
    assert set(select_genes(ad, 24, n_bins=1)) == set(planted_genes())
    hv = select_genes(ad, 20)
    ref2 = sc.AnnData(log1p_normalise(ad.layers["counts"]).astype(np.float32),
                      var=pd.DataFrame(index=ad.var_names))
    sc.pp.highly_variable_genes(ref2, n_top_genes=20, flavor="seurat")
    assert set(hv) == set(ref2.var_names[ref2.var["highly_variable"]])


def test_planted_genes_are_predicted_and_noise_genes_are_not(st_data):
    from scipy.stats import pearsonr, spearmanr

    from pathstrat.spatial.predict import cross_validate, gene_metrics

    _, d = st_data
    oof, folds = cross_validate(d, "ridge", n_folds=4)
    for k in np.unique(folds):  # patient-level folds: no patient on both sides
        assert not set(d.patients[folds == k]) & set(d.patients[folds != k])
    gm = gene_metrics(d.Y, oof, d.genes, d.patients, n_boot=100).set_index("gene")
    for j, g in enumerate(d.genes):
        assert gm.loc[g, "pearson"] == pytest.approx(pearsonr(d.Y[:, j], oof[:, j])[0], abs=1e-9)
        assert gm.loc[g, "spearman"] == pytest.approx(spearmanr(d.Y[:, j], oof[:, j])[0], abs=1e-9)
    planted = gm.loc[planted_genes()]
    noise = gm.drop(index=planted_genes())
    assert (planted["pearson"] > PLANTED_MIN_PEARSON).all(), planted["pearson"].min()
    assert (noise["pearson"].abs() < NOISE_MAX_ABS_PEARSON).all(), noise["pearson"].abs().max()
    assert noise["pearson"].abs().mean() < 0.07
    assert ((planted["pearson_ci_low"] <= planted["pearson"])
            & (planted["pearson"] <= planted["pearson_ci_high"])).all()


@pytest.mark.parametrize("model", ["mlp", "ridge_smooth"])
def test_other_models_recover_planted_genes(st_data, model):
    from pathstrat.spatial.predict import cross_validate, gene_metrics

    _, d = st_data
    oof, _ = cross_validate(d, model, n_folds=4)
    gm = gene_metrics(d.Y, oof, d.genes, d.patients, n_boot=10).set_index("gene")
    assert gm.loc[planted_genes(), "pearson"].mean() > PLANTED_MIN_PEARSON
    assert gm.drop(index=planted_genes())["pearson"].abs().mean() < 0.1


def test_ridge_state_equals_sklearn_pipeline_and_survives_save_load(st_data, tmp_path):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pathstrat.spatial.predict import FittedExpressionModel, fit_expression_model

    _, d = st_data
    fm = fit_expression_model(d, "ridge", programmes=programme_gene_sets())
    alpha = float(fm.state["alpha"])
    k = fm.state["pca_components"].shape[0]
    ref = make_pipeline(StandardScaler(), PCA(n_components=k, random_state=0),
                        Ridge(alpha=alpha)).fit(d.X.astype(np.float64), d.Y)
    np.testing.assert_allclose(fm.predict_genes(d.X), ref.predict(d.X.astype(np.float64)),
                               atol=1e-6)
    loaded = FittedExpressionModel.load(fm.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(loaded.predict_genes(d.X), fm.predict_genes(d.X))
    assert loaded.levels == fm.levels and set(loaded.levels) == set(programme_gene_sets())
    assert loaded.meta["encoder"]["encoder_id"] == "builtin"


def test_smoothing_and_programme_scores_by_hand():
    from pathstrat.spatial.predict import programme_scores, smooth_features

    x = np.array([[0.0], [3.0], [10.0]], np.float32)
    xy = np.array([[0.0, 0.0], [100.0, 0.0], [1000.0, 0.0]])
    got = smooth_features(x, xy, np.zeros(3, int), sigma_um=100.0)
    w = np.exp(-0.5)  # one sigma apart; the third point is beyond 3 sigma
    np.testing.assert_allclose(got[:, 0], [(0 + 3 * w) / (1 + w), (3 + 0 * w) / (1 + w), 10.0],
                               rtol=1e-6)
    expr = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    sc_ = programme_scores(expr, ["a", "b", "c"], {"p": ["a", "c", "zz"]}, np.array([2.0, 0, 2.0]),
                           np.array([1.0, 1, 2.0]))
    np.testing.assert_allclose(sc_["p"], [((1 - 2) + (3 - 2) / 2) / 2, ((3 - 2) + (1 - 2) / 2) / 2])


def test_pseudobulk_targets_by_hand_and_as_regression_targets(st, st_data):
    from pathstrat.mil.targets import infer_target
    from pathstrat.spatial.maps import pseudobulk_targets

    ad, _ = st_data
    progs = programme_gene_sets()
    df = pseudobulk_targets(ad, progs)
    samples = sorted(set(ad.obs["sample_id"]))
    assert list(df["path"]) == [str(s.slide.path.resolve()) for s in st["samples"]]
    assert list(df["slide_id"]) == samples and list(df["patient_id"]) == [
        f"P{i + 1:02d}" for i in range(4)]
    counts = ad.layers["counts"].toarray().astype(np.float64)
    bulk = np.stack([counts[np.asarray(ad.obs["sample_id"]) == s].sum(axis=0) for s in samples])
    logb = np.log1p(bulk / bulk.sum(axis=1, keepdims=True) * 1e4)
    z = (logb - logb.mean(axis=0)) / logb.std(axis=0)
    genes = list(ad.var_names)
    for p, gs in progs.items():
        np.testing.assert_allclose(df[f"pb_{p}"], z[:, [genes.index(g) for g in gs]].mean(axis=1))
        assert infer_target(df, f"pb_{p}").kind == "regression"
    # the planted immune programme follows the samples' lymphocyte share under the spots
    lymph = [s.truth().query("in_tissue == 1")["frac_lymphocytes"].mean() for s in st["samples"]]
    assert np.corrcoef(lymph, df["pb_immune"])[0, 1] > 0.9


# ------------------------------------------------------------------------------ H&E-only slides


def test_programme_map_on_he_only_slide_finds_the_planted_class(st_data, he_slide, tmp_path):
    from sklearn.metrics import roc_auc_score

    from pathstrat.metrics import auroc
    from pathstrat.spatial.maps import programme_map, slide_summaries, write_map_outputs
    from pathstrat.spatial.predict import fit_expression_model
    from pathstrat.synthetic import tile_truth
    from pathstrat.synthetic.spatial import PLANTED_PROGRAMMES

    _, d = st_data
    fm = fit_expression_model(d, "ridge", programmes=programme_gene_sets())
    pm = programme_map(he_slide.path, fm, slide_id="HE1")
    truth = tile_truth(he_slide.truth_path, pm.coords, pm.tile_size_level0)
    for prog, (cls, _) in PLANTED_PROGRAMMES.items():
        y = (truth[cls] > 0.5).to_numpy()
        assert 0 < y.sum() < len(y), prog
        a = auroc(y, pm.scores[prog].to_numpy())
        assert a == pytest.approx(roc_auc_score(y, pm.scores[prog]))
        assert a > 0.9, (prog, a)
    summ = slide_summaries(pm, [("immune", "tumour")])
    v = pm.scores["immune"].to_numpy()
    assert summ["prog_immune_mean"] == pytest.approx(v.mean())
    assert summ["prog_immune_high_frac"] == pytest.approx((v > fm.levels["immune"]).mean())
    assert "prog_immune__tumour_coloc" in summ
    paths = write_map_outputs(pm, tmp_path, slide_path=he_slide.path, heatmaps=False)
    gj = json.loads(paths["geojson"].read_text())
    tiles = [f for f in gj["features"] if f["properties"]["objectType"] == "tile"]
    assert len(tiles) == len(v)
    assert tiles[3]["properties"]["measurements"]["programme_immune"] == pytest.approx(v[3])


def test_colocalisation_by_hand():
    from pathstrat.spatial.maps import colocalisation

    # a 1 x 5 row of tiles of size 10: a-high at 0, b-high at 1 and 4
    coords = np.array([[0, 0], [10, 0], [20, 0], [30, 0], [40, 0]])
    a = np.array([1, 0, 0, 0, 0], bool)
    b = np.array([0, 1, 0, 0, 1], bool)
    # tiles with a b-high tile in their 3x3 neighbourhood: 0 (via 1), 1 (itself), 2 (via 1),
    # 3 (via 4), 4 (itself): 5 of 5, and the a-high tile is one of them -> 1 / 1
    assert colocalisation(coords, 10, a, b) == pytest.approx(1.0)
    b2 = np.array([0, 0, 0, 0, 1], bool)  # near: tiles 3, 4 -> 2/5; a-high tile 0 is not near
    assert colocalisation(coords, 10, a, b2) == pytest.approx(0.0)
    a3 = np.array([0, 0, 0, 1, 0], bool)  # tile 3 is near -> 1 / (2/5)
    assert colocalisation(coords, 10, a3, b2) == pytest.approx(2.5)


def test_cli_fit_predict_pseudobulk(st, he_slide, tmp_path, aperio_tiff):
    from pathstrat.cli import main
    from pathstrat.mil.targets import infer_target

    run = tmp_path / "run"
    assert main(["-q", "spatial", "fit", "--samples", str(st["h5ad"]), "--out", str(run),
                 "--model", "ridge", "--genes", ",".join(planted_genes()),
                 "--programmes", "planted", "--folds", "2", "--n-boot", "20"]) == 0
    bench = pd.read_csv(run / "benchmark.csv")
    assert bench.loc[0, "model"] == "ridge" and bench.loc[0, "n_patients"] == 4
    gm = pd.read_csv(run / "gene_metrics_ridge.csv")
    assert bench.loc[0, "pearson_mean"] == pytest.approx(gm["pearson"].mean())
    man = tmp_path / "he.csv"
    blank = aperio_tiff(tmp_path / "blank.svs", np.full((512, 512, 3), 245, np.uint8), mpp=0.5)
    pd.DataFrame({"slide_id": ["HE1", "BLANK"], "patient_id": ["H1", "H2"],
                  "path": [str(he_slide.path), str(blank)], "time": [12.0, 30.0],
                  "event": [1, 0]}).to_csv(man, index=False)
    out = tmp_path / "pred"
    # the blank slide has no tissue: recorded in failures.csv, the batch goes on, exit 3
    assert main(["-q", "spatial", "predict", "--model", str(run / "model.npz"), "--manifest",
                 str(man), "--out", str(out), "--device", "cpu", "--no-heatmaps"]) == 3
    fails = pd.read_csv(out / "failures.csv")
    assert list(fails["slide_id"]) == ["BLANK"] and fails.loc[0, "error_type"] == "EmptyTissueError"
    merged = pd.read_csv(out / "manifest_programmes.csv")
    assert merged["prog_immune_mean"].isna().tolist() == [False, True]
    merged = merged.iloc[:1]
    assert {"time", "event", "prog_immune_high_frac", "prog_immune_mean"} <= set(merged.columns)
    assert (out / "maps" / "HE1.programmes.geojson").is_file()
    pb = tmp_path / "pb.csv"
    assert main(["-q", "spatial", "pseudobulk", "--samples", str(st["h5ad"]), "--programmes",
                 "planted", "--out", str(pb)]) == 0
    targets = pd.read_csv(pb)
    assert infer_target(targets, "pb_immune").kind == "regression" and len(targets) == 4
    from pathstrat.cohort import load_manifest
    from pathstrat.survival import clinical_table

    man_pb = load_manifest(pb)  # slide paths present: a manifest for tile / embed / train
    assert list(man_pb["slide_id"]) == [s.sample_id for s in st["samples"]]
    assert Path(man_pb["path"][0]) == st["samples"][0].slide.path.resolve()
    ct = clinical_table(merged, "time", "event", covariates=["prog_immune_high_frac"])
    assert ct.loc[0, "prog_immune_high_frac"] == pytest.approx(
        pd.read_csv(out / "slide_programmes.csv").loc[0, "prog_immune_high_frac"])


def test_spatial_demo_step_runs_the_public_commands(tmp_path):
    """`pathstrat demo --spatial`'s step: generated samples -> h5ad -> ridge -> maps; the planted
    programmes are learned (out-of-fold Pearson > 0.7) and slide columns are written."""
    from pathstrat.cli import main
    from pathstrat.runner.demo import run_spatial_demo

    res = run_spatial_demo(tmp_path / "spatial", main, n_samples=4, n_he=1)
    b = res["benchmark"]
    assert b["n_patients"] == 4
    # planted programmes are predicted out of fold (noise genes pull the all-gene mean down)
    assert min(b[f"programme_{p}_pearson"] for p in ("stromal", "tumour", "immune", "hypoxia")) > 0.7
    cols = pd.read_csv(res["slide_columns"])
    assert len(cols) == 1 and {"prog_immune_mean", "prog_immune_high_frac"} <= set(cols.columns)
    assert res["model"].is_file()
