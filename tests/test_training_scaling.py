"""Input scaling that travels with the model, learning curves, divergence, checkpoint integrity
and byte-identical checkpoints."""

from __future__ import annotations

import hashlib
import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from pathstrat.cli import main
from pathstrat.errors import TrainingDivergedError, WeightsError
from pathstrat.testing import make_feature_cohort
from pathstrat.training import load_fold_model, load_run_spec, predict, train_cv

FAST = dict(targets=["responder"], model="abmil", folds=3, epochs=5, lr=1e-2, batch_size=8,
            max_tiles=16, n_boot=50, hparams={"dim": 16, "attn_dim": 8}, seed=0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    fdir, man = make_feature_cohort(d, n_patients=30, dim=10, seed=4, tiles=(6, 12), tasks=("binary",),
                                    dtype="float32", split=True)
    # features on their own scales: feature j multiplied by 10**(j-3), shifted by 50*j
    for p in fdir.glob("*.h5"):
        with h5py.File(p, "r+") as f:
            x = f["features"][()]
            f["features"][...] = x * (10.0 ** (np.arange(x.shape[1]) - 3)) + 50.0 * np.arange(x.shape[1])
    return fdir, man


def _tiles(fdir, slide_ids) -> np.ndarray:
    out = []
    for s in slide_ids:
        with h5py.File(fdir / f"{s}.h5", "r") as f:
            out.append(f["features"][()].astype(np.float64))
    return np.concatenate(out)


def test_scaler_is_fitted_on_training_patients_only(cohort, tmp_path):
    fdir, man = cohort
    df = pd.read_csv(man, dtype={"slide_id": str, "patient_id": str})
    # plant a huge offset in the test patients' bags: it must not move the fitted mean
    planted = tmp_path / "feats"
    shutil.copytree(fdir, planted)
    test_slides = df.loc[df["split"] == "test", "slide_id"]
    for s in test_slides:
        with h5py.File(planted / f"{s}.h5", "r+") as f:
            f["features"][...] = f["features"][()] + 1e4
    run = train_cv(features=str(planted), manifest=str(man), out=str(tmp_path / "run"),
                   split_col="split", **{**FAST, "folds": 1})
    spec = load_run_spec(run)
    assert spec["input_scaling"]["method"] == "standardize"
    fold = spec["folds"][0]
    train_only = set(fold["training_patient_ids"]) - set(fold["validation_patient_ids"])
    assert not train_only & set(df.loc[df["split"] != "train", "patient_id"])
    x = _tiles(planted, df.loc[df["patient_id"].isin(train_only), "slide_id"])
    model = load_fold_model(run, fold, spec)
    np.testing.assert_allclose(model.input_mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(model.input_inv_std.numpy(), 1 / x.std(0), rtol=1e-4)
    assert abs(float(model.input_mean[0])) < 1.0  # feature 0 is ~1e-3 scale: +1e4 of test bags would show


def test_kfold_scalers_use_each_folds_training_patients(cohort, tmp_path):
    fdir, man = cohort
    df = pd.read_csv(man, dtype={"slide_id": str, "patient_id": str})
    run = train_cv(features=str(fdir), manifest=str(man), out=str(tmp_path / "run"), **FAST)
    spec = load_run_spec(run)
    means = []
    for fold in spec["folds"]:
        train_only = set(fold["training_patient_ids"]) - set(fold["validation_patient_ids"])
        x = _tiles(fdir, df.loc[df["patient_id"].isin(train_only), "slide_id"])
        m = load_fold_model(run, fold, spec).input_mean.numpy()
        np.testing.assert_allclose(m, x.mean(0), rtol=1e-5, atol=1e-4)
        means.append(m)
    assert not np.allclose(means[0], means[1])  # per fold, not once on the cohort
    hist = pd.read_csv(run / "history.csv")
    assert {"repeat", "fold", "epoch", "train_loss", "val_loss"} <= set(hist.columns)
    assert len(hist) == sum(f["epochs_trained"] for f in spec["folds"])
    assert np.isfinite(hist["train_loss"]).all()


def test_predict_cli_equals_the_python_api_on_raw_features(cohort, tmp_path):
    fdir, man = cohort
    run = train_cv(features=str(fdir), manifest=str(man), out=str(tmp_path / "run"), **FAST)
    df = pd.read_csv(man, dtype={"slide_id": str, "patient_id": str})
    ext = df.assign(patient_id="X" + df["patient_id"], slide_id=df["slide_id"]).head(6)
    ext.to_csv(tmp_path / "ext.csv", index=False)
    assert main(["predict", "--run", str(run), "--features", str(fdir), "--manifest", str(tmp_path / "ext.csv"),
                 "--out", str(tmp_path / "pred"), "--allow-overlap"]) == 0
    pred = pd.read_csv(tmp_path / "pred" / "predictions.csv").set_index("slide_id")
    spec = load_run_spec(run)
    models = [load_fold_model(run, f, spec) for f in spec["folds"]]
    for sid in ext["slide_id"]:
        x = torch.from_numpy(_tiles(fdir, [sid]).astype(np.float32))[None]
        with torch.no_grad():  # raw features in: the checkpoint's scaler is applied by the model
            p = np.mean([torch.sigmoid(m(x, torch.ones(x.shape[:2], dtype=torch.bool)).logits["responder"]).item()
                         for m in models])
        assert pred.loc[sid, "score"] == pytest.approx(p, abs=1e-6)


def test_scaling_off_keeps_the_identity(cohort, tmp_path):
    fdir, man = cohort
    run = train_cv(features=str(fdir), manifest=str(man), out=str(tmp_path / "run"), input_scaling="none",
                   **FAST)
    spec = load_run_spec(run)
    assert spec["input_scaling"]["method"] == "none"
    m = load_fold_model(run, spec["folds"][0], spec)
    assert torch.all(m.input_mean == 0) and torch.all(m.input_inv_std == 1)


def test_identical_runs_write_byte_identical_checkpoints(cohort, tmp_path):
    fdir, man = cohort
    a = train_cv(features=str(fdir), manifest=str(man), out=str(tmp_path / "a"), **FAST)
    b = train_cv(features=str(fdir), manifest=str(man), out=str(tmp_path / "b"), **FAST)
    for f in load_run_spec(a)["folds"]:
        ha = hashlib.sha256((a / "checkpoints" / f["file"]).read_bytes()).hexdigest()
        hb = hashlib.sha256((b / "checkpoints" / f["file"]).read_bytes()).hexdigest()
        assert ha == hb == f["sha256"]


def test_non_finite_loss_stops_training_and_saves_nothing(cohort, tmp_path, monkeypatch, capsys):
    import pathstrat.training.engine as E

    fdir, man = cohort
    real = E.MultiTaskLoss.forward
    calls = {"n": 0}

    def poisoned(self, logits, targets):
        calls["n"] += 1
        total, parts = real(self, logits, targets)
        return (total * float("nan") if calls["n"] > 3 else total), parts

    monkeypatch.setattr(E.MultiTaskLoss, "forward", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"repeat 0, fold 0, epoch \d+, step \d+: the training loss is nan"):
        train_cv(features=str(fdir), manifest=str(man), out=str(tmp_path / "run"), **FAST)
    assert not (tmp_path / "run" / "checkpoints" / "model.json").exists()
    assert not list((tmp_path / "run" / "checkpoints").glob("*.safetensors"))
    calls["n"] = 0
    capsys.readouterr()
    rc = main(["train", "--features", str(fdir), "--manifest", str(man), "--out", str(tmp_path / "cli"),
               "--target", "responder", "--folds", "2", "--epochs", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "training loss is nan" in err and "lower --lr" in err


def test_checkpoint_integrity_is_checked_on_load(cohort, tmp_path):
    fdir, man = cohort
    run = train_cv(features=str(fdir), manifest=str(man), out=str(tmp_path / "run"), **FAST)
    spec = load_run_spec(run)
    f0 = run / "checkpoints" / spec["folds"][0]["file"]
    ext = tmp_path / "ext.csv"
    pd.read_csv(man).assign(patient_id=lambda d: "X" + d["patient_id"].astype(str)).head(3).to_csv(ext, index=False)
    original = f0.read_bytes()
    f0.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(WeightsError, match="does not match the sha256"):
        predict(run, fdir, ext, tmp_path / "p1", allow_overlap=True)
    f0.write_bytes(b"\x80\x04not a safetensors file")  # e.g. a pickle
    doc = json.loads((run / "checkpoints" / "model.json").read_text())
    doc["folds"][0]["sha256"] = hashlib.sha256(f0.read_bytes()).hexdigest()
    (run / "checkpoints" / "model.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match="not a safetensors file"):
        predict(run, fdir, ext, tmp_path / "p2", allow_overlap=True)
    doc["folds"][0]["file"] = "../../outside.safetensors"
    (run / "checkpoints" / "model.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match="outside"):
        predict(run, fdir, ext, tmp_path / "p3", allow_overlap=True)
