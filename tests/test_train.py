"""Cross-validated training on generated features with planted signal: recovery, contracts,
leakage guards, checkpoint round trip, determinism, prediction and the CLI."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from lifelines.utils import concordance_index
from sklearn import metrics as skm

from pathstrat.errors import FeatureDimError, LeakageError
from pathstrat.testing import make_feature_cohort
from pathstrat.training import (
    TrainConfig,
    check_no_overlap,
    evaluate,
    load_fold_model,
    load_run_spec,
    make_splits,
    predict,
    train_cv,
)

FAST = dict(epochs=16, lr=1e-2, batch_size=8, max_tiles=16, n_boot=100, patience=6,
            hparams={"dim": 16, "attn_dim": 8})
TARGETS = ["responder", "subtype", "marker_a,marker_b", "score", "survival"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    return make_feature_cohort(d, n_patients=60, dim=12, seed=3, tiles=(10, 24),
                               slides_per_patient=(1, 2), strength=4.0)


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory):
    fdir, manifest = cohort
    out = tmp_path_factory.mktemp("run") / "run"
    return train_cv(features=str(fdir), manifest=str(manifest), targets=TARGETS, model="abmil_gated",
                    folds=3, seed=0, out=str(out), time_col="time", event_col="event", **FAST)


def _patient(pred: pd.DataFrame, target: str) -> pd.DataFrame:
    d = pred[pred["target"] == target]
    agg = {c: "mean" for c in d.columns if c in ("score", "risk") or c.startswith("prob_")}
    agg.update({c: "first" for c in ("y_true", "time", "event")})
    return d.groupby("patient_id").agg(agg)


def test_multitask_run_recovers_planted_signal(run):
    m = json.loads((run / "metrics.json").read_text())
    assert set(m) == {"responder", "subtype", "marker_a", "marker_b", "score", "survival"}
    for tgt in m.values():
        for v in tgt.values():
            assert {"mean", "std", "ci_low", "ci_high"} <= set(v)
    assert m["responder"]["auroc"]["mean"] > 0.85
    assert {"auroc", "auprc", "balanced_accuracy", "accuracy", "f1", "brier"} <= set(m["responder"])
    assert m["subtype"]["auroc"]["mean"] > 0.85
    assert m["marker_a"]["auroc"]["mean"] > 0.7 and m["marker_b"]["auroc"]["mean"] > 0.7
    assert m["score"]["pearson_r"]["mean"] > 0.45
    # six heads share one small model here; the survival-only tests below assert more
    assert m["survival"]["c_index"]["mean"] > 0.55


def test_metrics_json_equals_sklearn_and_lifelines_on_predictions(run):
    pred = pd.read_csv(run / "predictions.csv")
    m = json.loads((run / "metrics.json").read_text())
    b = _patient(pred, "responder")
    b, ml = b.astype({"y_true": float}), None
    assert m["responder"]["auroc"]["mean"] == pytest.approx(skm.roc_auc_score(b.y_true, b.score))
    assert m["responder"]["auprc"]["mean"] == pytest.approx(
        skm.average_precision_score(b.y_true, b.score))
    assert m["responder"]["balanced_accuracy"]["mean"] == pytest.approx(
        skm.balanced_accuracy_score(b.y_true, b.score >= 0.5))
    assert m["responder"]["brier"]["mean"] == pytest.approx(skm.brier_score_loss(b.y_true, b.score))
    ml = _patient(pred, "marker_a").astype({"y_true": float}).dropna(subset=["y_true"])
    assert m["marker_a"]["auroc"]["mean"] == pytest.approx(skm.roc_auc_score(ml.y_true, ml.score))
    s = _patient(pred, "survival")
    assert m["survival"]["c_index"]["mean"] == pytest.approx(
        concordance_index(s.time, -s.risk, s.event))
    s = s.astype({"y_true": float})
    r = _patient(pred, "score").astype({"y_true": float})
    assert m["score"]["mae"]["mean"] == pytest.approx(skm.mean_absolute_error(r.y_true, r.score))
    c = _patient(pred, "subtype")
    probs = c[["prob_A", "prob_B", "prob_C"]].to_numpy()
    y = c.y_true.map({"A": 0, "B": 1, "C": 2}).to_numpy()
    assert m["subtype"]["auroc"]["mean"] == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr"))
    folds = pd.read_csv(run / "metrics_folds.csv")
    f0 = pred[(pred.fold == 0) & (pred.target == "responder")].groupby("patient_id").agg(
        {"y_true": "first", "score": "mean"}).astype({"y_true": float})
    got = folds.query("fold == 0 and target == 'responder' and metric == 'auroc'")["value"].item()
    assert got == pytest.approx(skm.roc_auc_score(f0.y_true, f0.score))


def test_run_directory_contract(run, cohort):
    pred = pd.read_csv(run / "predictions.csv")
    assert list(pred.columns[:7]) == ["slide_id", "patient_id", "fold", "repeat", "target",
                                      "y_true", "score"]
    surv = pred[pred.target == "survival"]
    assert {"risk", "time", "event"} <= set(pred.columns) and np.allclose(surv.risk, surv.score)
    manifest = pd.read_csv(cohort[1])
    assert set(pred.slide_id) == set(manifest.slide_id)
    assert len(pred) == len(manifest) * 6  # one row per slide and label (1 repeat)
    folds = pd.read_csv(run / "folds.csv")
    assert list(folds.columns) == ["patient_id", "repeat", "fold"]
    assert folds.patient_id.is_unique and set(folds.fold) == {0, 1, 2}
    spec = load_run_spec(run)
    assert spec["in_dim"] == 12 and spec["encoder_id"] == "synthetic" and spec["model"] == "abmil_gated"
    assert spec["hparams"]["attention"] == "per_target"  # resolved from "auto" (5 heads)
    assert [f["file"] for f in spec["folds"]] == ["fold0.safetensors", "fold1.safetensors",
                                                  "fold2.safetensors"]
    for f in spec["folds"]:
        test_p = set(folds.loc[folds.fold == f["fold"], "patient_id"])
        assert not test_p & set(f["training_patient_ids"])
        assert len(test_p) + len(f["training_patient_ids"]) == 60
    sid = manifest.slide_id.iloc[0]
    with h5py.File(run / "attention" / f"{sid}.h5") as h:
        att, coords = h["attention"][()], h["coords"][()]
    assert att.shape == (len(coords),) and att.sum() == pytest.approx(1.0, abs=1e-5)
    heads = ["responder", "subtype", "marker_a+marker_b", "score", "survival"]
    with h5py.File(run / "attention" / f"{sid}.h5") as h:  # per-target attention (multi-head default)
        assert json.loads(h.attrs["branch_names"]) == heads
        branches = h["attention_branches"][()]
        assert branches.shape == (5, len(coords))
        for i, name in enumerate(heads):
            own = h[f"attention_{name}"][()]
            assert own.sum() == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(own, branches[i] / branches[i].sum(), rtol=1e-5)
        np.testing.assert_allclose(att, branches.mean(0) / branches.mean(0).sum(), rtol=1e-5)
    assert (run / "config.yaml").exists() and (run / "run.log").stat().st_size > 0


def test_train_scores_are_each_fold_models_training_patients(run):
    """train_scores.csv: fold k's model on exactly fold k's training patients (for cut-offs)."""
    tr = pd.read_csv(run / "train_scores.csv")
    folds = pd.read_csv(run / "folds.csv")
    spec = load_run_spec(run)
    for f in spec["folds"]:
        k = f["fold"]
        rows = tr[(tr.fold == k) & (tr.target == "survival")]
        assert set(rows.patient_id.astype(str)) == set(map(str, f["training_patient_ids"]))
        assert not set(rows.patient_id) & set(folds.loc[folds.fold == k, "patient_id"])
    assert tr.loc[tr.target == "survival", "risk"].notna().all()


def test_checkpoint_round_trip_equals_end_of_training_predictions(run, cohort):
    from pathstrat.cohort import load_manifest
    from pathstrat.mil.targets import TargetSpec
    from pathstrat.training import BagDataset, load_bags, make_loader
    from pathstrat.training.evaluation import decode_outputs

    spec = load_run_spec(run)
    fold = spec["folds"][1]
    model = load_fold_model(run, "fold1")
    df = load_manifest(cohort[1], check_files=False)
    test_p = set(pd.read_csv(run / "folds.csv").query("fold == 1").patient_id.astype(str))
    store = load_bags(df[df.patient_id.isin(test_p)].reset_index(drop=True), cohort[0])
    ev = evaluate(model, make_loader(BagDataset(store, np.arange(len(store))), 1))
    specs = [TargetSpec.from_dict(t) for t in spec["targets"]]
    scores = decode_outputs(specs, ev.outputs, fold["target_state"])
    pred = pd.read_csv(run / "predictions.csv").query("fold == 1 and target == 'responder'")
    want = pred.set_index("slide_id").score
    got = pd.Series(scores["responder"], index=[store.bags[i].key for i in ev.index])
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=1e-6, atol=1e-7)


def test_predict_writes_per_target_attention_of_the_fold_ensemble(run, cohort, tmp_path):
    """`predict` averages each head's attention branch over the fold models."""
    import torch

    from pathstrat.features import read_bag

    fdir, manifest = cohort
    out = predict(run, fdir, manifest, tmp_path / "pred", allow_overlap=True, device="cpu")
    sid = pd.read_csv(manifest).slide_id.iloc[0]
    x = torch.as_tensor(np.asarray(read_bag(fdir / f"{sid}.h5").features, np.float32))[None]
    maps = []
    for f in load_run_spec(run)["folds"]:
        with torch.no_grad():
            maps.append(load_fold_model(run, f["name"]).eval()(x).attention_branches[0, 0].numpy())
    want = np.mean(maps, axis=0)
    with h5py.File(out / "attention" / f"{sid}.h5") as h:
        got = h["attention_responder"][()]
        assert json.loads(h.attrs["branch_names"])[0] == "responder"
    np.testing.assert_allclose(got, want / want.sum(), rtol=1e-4, atol=1e-7)


def test_fixed_split_predict_round_trip_and_guards(tmp_path):
    fdir, manifest = make_feature_cohort(tmp_path / "c", n_patients=30, dim=8, seed=1,
                                         tasks=("binary", "survival"), tiles=(8, 16), split=True)
    run = train_cv(features=str(fdir), manifest=str(manifest), targets=["responder", "survival"],
                   time_col="time", event_col="event", model="meanpool", split_col="split",
                   out=str(tmp_path / "run"), **{**FAST, "epochs": 4, "hparams": {"dim": 8}})
    assert set(pd.read_csv(run / "folds.csv").columns) >= {"patient_id", "fold", "role"}
    df = pd.read_csv(manifest)
    test = df[df.split == "test"]
    test.to_csv(tmp_path / "test.csv", index=False)
    out = predict(run, fdir, tmp_path / "test.csv", tmp_path / "pred", device="cpu")
    got = pd.read_csv(out / "predictions.csv").set_index(["slide_id", "target"]).score
    want = pd.read_csv(run / "predictions.csv").set_index(["slide_id", "target"]).score
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=1e-6, atol=1e-7)
    assert (out / "metrics.json").exists() and (out / "attention").is_dir()
    # training patients are refused unless --allow-overlap
    with pytest.raises(LeakageError, match="`allow_overlap`"):
        predict(run, fdir, manifest, tmp_path / "pred2", device="cpu")
    predict(run, fdir, manifest, tmp_path / "pred3", allow_overlap=True, device="cpu")
    # features of another dimension or encoder are refused
    f2, m2 = make_feature_cohort(tmp_path / "c2", n_patients=4, dim=6, seed=9, tasks=("binary",))
    with pytest.raises(FeatureDimError):
        predict(run, f2, m2, tmp_path / "pred4", device="cpu", allow_overlap=True)
    f3, m3 = make_feature_cohort(tmp_path / "c3", n_patients=4, dim=8, seed=9, tasks=("binary",),
                                 encoder_id="other")
    with pytest.raises(FeatureDimError, match="other|synthetic"):
        predict(run, f3, m3, tmp_path / "pred5", device="cpu", allow_overlap=True)


def test_leakage_patient_in_two_roles_is_an_error(tmp_path):
    fdir, manifest = make_feature_cohort(tmp_path / "c", n_patients=10, dim=8, seed=2,
                                         tasks=("binary",), slides_per_patient=2, split=True)
    df = pd.read_csv(manifest)
    p = df.patient_id.iloc[0]
    df.loc[df.patient_id == p, "split"] = ["train", "test"]  # one patient, two roles
    with pytest.raises(LeakageError, match=p):
        make_splits(df, split_col="split")
    df.to_csv(manifest, index=False)
    with pytest.raises(LeakageError, match=p):
        train_cv(features=str(fdir), manifest=str(manifest), targets=["responder"],
                 split_col="split", out=str(tmp_path / "run"), epochs=1)
    with pytest.raises(LeakageError, match="P1"):
        check_no_overlap(["P1", "P2"], ["P3", "P1"])


def test_kfold_keeps_all_slides_of_a_patient_in_one_fold():
    rng = np.random.default_rng(0)
    pats = [f"P{i}" for i in range(40) for _ in range(int(rng.integers(1, 4)))]
    df = pd.DataFrame({"slide_id": [f"s{i}" for i in range(len(pats))], "patient_id": pats,
                       "y": [int(p[1:]) % 2 for p in pats]})
    folds = make_splits(df, folds=4, repeats=3, seed=7, strat_col="y")
    assert len(folds) == 40 * 3
    for _, g in folds.groupby("repeat"):
        assert g.patient_id.is_unique and g.fold.nunique() == 4
        # stratified: each fold holds both classes in similar numbers
        lab = g.patient_id.map(lambda p: int(p[1:]) % 2)
        assert lab.groupby(g.fold).mean().between(0.3, 0.7).all()
    r0 = folds[folds.repeat == 0].set_index("patient_id").fold
    r1 = folds[folds.repeat == 1].set_index("patient_id").fold
    assert not r0.loc[r1.index].equals(r1)  # repeats use different seeds


def test_cpu_training_is_deterministic_for_a_seed(tmp_path):
    fdir, manifest = make_feature_cohort(tmp_path / "c", n_patients=16, dim=8, seed=4,
                                         tasks=("binary",), tiles=(8, 20))
    kw = dict(features=str(fdir), manifest=str(manifest), targets=["responder"], model="clam_sb",
              folds=2, seed=11, device="cpu", schedule="onecycle", balanced_sampling=True,
              store="mmap", **{**FAST, "epochs": 3, "n_boot": 20,
                               "hparams": {"dim": 8, "attn_dim": 4, "k_sample": 2}})
    a = pd.read_csv(train_cv(out=str(tmp_path / "a"), **kw) / "predictions.csv")
    b = pd.read_csv(train_cv(out=str(tmp_path / "b"), **kw) / "predictions.csv")
    pd.testing.assert_frame_equal(a, b)
    c = pd.read_csv(train_cv(out=str(tmp_path / "c2"), **{**kw, "seed": 12}) / "predictions.csv")
    assert not np.allclose(a.score, c.score)


@pytest.fixture(scope="module")
def survival_cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("surv")
    return make_feature_cohort(d, n_patients=60, dim=8, seed=5, tasks=("survival",), tiles=(10, 20),
                               slides_per_patient=(1, 2), strength=4.0)


def test_cox_survival_patient_level_bags_via_cli(survival_cohort, tmp_path):
    from pathstrat.cli import main

    fdir, manifest = survival_cohort
    rc = main(["train", "--features", str(fdir), "--manifest", str(manifest), "--target", "survival",
               "--time-col", "time", "--event-col", "event", "--model", "meanpool", "--folds", "3",
               "--seed", "0", "--out", str(tmp_path / "run"), "--level", "patient", "--epochs", "20",
               "--lr", "0.01", "--batch-size", "16", "--max-tiles", "32", "--hparam", "dim=16"])
    assert rc == 0
    run = tmp_path / "run"
    m = json.loads((run / "metrics.json").read_text())
    assert m["survival"]["c_index"]["mean"] > 0.68 and m["survival"]["c_index"]["ci_low"] > 0.5
    pred = pd.read_csv(run / "predictions.csv")
    # patient-level bags: every slide of a patient carries the patient's risk
    assert (pred.groupby("patient_id").risk.nunique() == 1).all()
    assert set(pred.slide_id) == set(pd.read_csv(manifest).slide_id)
    rc = main(["predict", "--run", str(run), "--features", str(fdir), "--manifest", str(manifest),
               "--out", str(tmp_path / "pred")])
    assert rc == 2  # training patients refused with one error line


def test_discrete_time_survival_bins_per_training_fold(survival_cohort, tmp_path):
    fdir, manifest = survival_cohort
    run = train_cv(features=str(fdir), manifest=str(manifest), targets=["survival"],
                   time_col="time", event_col="event", survival_loss="discrete", model="meanpool",
                   level="patient", folds=3, seed=0, out=str(tmp_path / "run"), epochs=20, lr=1e-2,
                   max_tiles=32, n_boot=100, hparams={"dim": 16})
    m = json.loads((run / "metrics.json").read_text())
    assert m["survival"]["c_index"]["mean"] > 0.6
    spec = load_run_spec(run)
    cuts = [f["target_state"]["survival"]["cuts"] for f in spec["folds"]]
    assert all(len(c) == 3 for c in cuts) and cuts[0] != cuts[1]  # bins per training fold
    df = pd.read_csv(manifest)
    for f in spec["folds"]:  # the cut points are quantiles of the fold's training event times
        fit_on = set(f["training_patient_ids"]) - set(f["validation_patient_ids"])
        tr = df[df.patient_id.isin(fit_on)].drop_duplicates("patient_id")
        ev = tr.loc[tr.event == 1, "time"]
        assert f["target_state"]["survival"]["cuts"][1] == pytest.approx(float(np.quantile(ev, 0.5)))


def test_missing_feature_file_is_recorded_and_config_is_strict(tmp_path):
    from pathstrat.cli import main
    from pathstrat.encoders.model import RandomWeightsWarning

    fdir, manifest = make_feature_cohort(tmp_path / "c", n_patients=12, dim=8, seed=6,
                                         tasks=("binary",), tiles=(6, 10), weights_random=True)
    df = pd.read_csv(manifest)
    (fdir / f"{df.slide_id.iloc[0]}.h5").unlink()
    with pytest.warns(RandomWeightsWarning):
        rc = main(["train", "--features", str(fdir), "--manifest", str(manifest), "--target",
                   "responder", "--model", "maxpool", "--folds", "2", "--epochs", "1",
                   "--out", str(tmp_path / "run"), "--hparam", "dim=8"])
    assert rc == 3
    fails = pd.read_csv(tmp_path / "run" / "failures.csv")
    assert fails.slide_id.tolist() == [df.slide_id.iloc[0]]
    with pytest.raises(ValueError):
        TrainConfig(features="f", manifest="m", targets=["y"], out="o", epochz=3)


def test_repeats_write_one_prediction_per_slide_fold_and_repeat(tmp_path):
    fdir, manifest = make_feature_cohort(tmp_path / "c", n_patients=12, dim=8, seed=8,
                                         tasks=("binary",), tiles=(6, 10), slides_per_patient=(1, 2))
    run = train_cv(features=str(fdir), manifest=str(manifest), targets=["responder"],
                   model="dsmil", folds=2, repeats=2, seed=3, out=str(tmp_path / "run"),
                   **{**FAST, "epochs": 1, "n_boot": 20, "hparams": {"dim": 8, "q_dim": 4}})
    pred = pd.read_csv(run / "predictions.csv")
    n_slides = len(pd.read_csv(manifest))
    assert len(pred) == 2 * n_slides and set(pred["repeat"]) == {0, 1}
    assert pred.groupby("repeat").slide_id.nunique().eq(n_slides).all()
    assert sorted(p.name for p in (run / "checkpoints").glob("*.safetensors")) == [
        "fold0_r0.safetensors", "fold0_r1.safetensors", "fold1_r0.safetensors", "fold1_r1.safetensors"]
    m = json.loads((run / "metrics.json").read_text())
    assert m["responder"]["auroc"]["n"] == 12  # pooled over repeats at patient level
    assert len(pd.read_csv(run / "metrics_folds.csv").query("metric == 'auroc'")) == 4


def test_cli_config_file_and_flags(tmp_path):
    import yaml

    from pathstrat.cli import main

    fdir, manifest = make_feature_cohort(tmp_path / "c", n_patients=10, dim=8, seed=0,
                                         tasks=("binary",), tiles=(5, 8))
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"epochs": 2, "n_boot": 10, "hparams": {"dim": 8}, "folds": 4}))
    rc = main(["train", "--config", str(cfg), "--features", str(fdir), "--manifest", str(manifest),
               "--target", "responder", "--folds", "2", "--model", "meanpool",
               "--out", str(tmp_path / "run")])
    assert rc == 0
    used = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert used["epochs"] == 2 and used["folds"] == 2 and used["hparams"] == {"dim": 8}
    assert main(["train", "--features", str(fdir), "--manifest", str(manifest), "--target",
                 "responder", "--model", "abmill", "--out", str(tmp_path / "r2")]) == 2


def test_default_policy_fixed_epochs_below_threshold_early_stopping_above(cohort, tmp_path):
    """Defaults (docs/mil.md, "Defaults chosen on four datasets"): a training fold below
    ``early_stop_min_patients`` (300) trains the fixed epochs on every training patient with a
    constant lr; at or above it, 0.2 of the training patients are held out for early stopping."""
    from pathstrat.training.cv import _val_fraction

    cfg = TrainConfig(features="f", manifest="m", targets=["y"], out="o")
    assert (cfg.schedule, cfg.early_stop_min_patients, cfg.val_fraction) == ("constant", 300, None)
    assert _val_fraction(cfg, 299) == 0.0 and _val_fraction(cfg, 300) == 0.2
    assert _val_fraction(cfg.model_copy(update={"val_fraction": 0.1}), 10) == 0.1
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="early_stop_min_patients"):
        TrainConfig(features="f", manifest="m", targets=["y"], out="o", early_stop_min_patients=-1)

    fdir, manifest = cohort
    small = {**FAST, "epochs": 3, "patience": 1, "save_attention": False, "workers": 1}
    fixed = train_cv(features=str(fdir), manifest=str(manifest), targets=["responder"], folds=3,
                     seed=0, out=str(tmp_path / "fixed"), **small)
    h = pd.read_csv(fixed / "history.csv")
    assert h.groupby(["repeat", "fold"]).size().tolist() == [3, 3, 3]  # every epoch, no stopping
    assert h["val_loss"].isna().all()
    early = train_cv(features=str(fdir), manifest=str(manifest), targets=["responder"], folds=3,
                     seed=0, out=str(tmp_path / "early"), early_stop_min_patients=10, **small)
    assert pd.read_csv(early / "history.csv")["val_loss"].notna().all()
    import yaml

    used = yaml.safe_load((fixed / "config.yaml").read_text())  # the run records what it used
    assert (used["schedule"], used["early_stop_min_patients"]) == ("constant", 300)
