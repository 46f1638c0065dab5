"""Input standardisation travels with the model: fitted on training-fold patients only, saved in
the checkpoint, recorded in model.json, applied by `pathstrat predict` and the Python API."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from pathstrat.features import read_bag
from pathstrat.testing import make_feature_cohort
from pathstrat.train import load_fold_model, load_run_spec, train_cv

TINY = dict(epochs=3, lr=5e-3, batch_size=8, max_tiles=16, n_boot=20, save_attention=False,
            hparams={"dim": 16, "attn_dim": 8})
OFFSET = 1.0e4


def _shift(path, offset: float, scale: float = 1.0) -> None:
    with h5py.File(path, "r+") as f:
        x = f["features"][...].astype(np.float32)
        f["features"][...] = (x * scale + offset).astype(f["features"].dtype)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Cohort whose fold-0 test patients carry a +1e4 offset on every feature."""
    d = tmp_path_factory.mktemp("planted")
    fdir, manifest = make_feature_cohort(d, n_patients=30, dim=6, seed=1, tiles=(6, 12),
                                         tasks=("binary",))
    clean = train_cv(features=str(fdir), manifest=str(manifest), targets=["responder"], folds=3,
                     seed=0, out=str(d / "clean"), **TINY)
    folds = pd.read_csv(clean / "folds.csv")
    test_p = set(folds.query("fold == 0").patient_id.astype(str))
    df = pd.read_csv(manifest)
    for sid in df[df.patient_id.astype(str).isin(test_p)].slide_id:
        _shift(fdir / f"{sid}.h5", OFFSET)
    run = train_cv(features=str(fdir), manifest=str(manifest), targets=["responder"], folds=3,
                   seed=0, out=str(d / "run"), **TINY)
    return fdir, df, test_p, run


def _tile_mean_std(fdir, df, patients):
    x = np.concatenate([np.asarray(read_bag(fdir / f"{s}.h5").features, np.float64)
                        for s in df[df.patient_id.astype(str).isin(patients)].slide_id])
    return x.mean(0), x.std(0)


def test_offset_in_test_bags_does_not_move_the_fitted_mean(planted):
    fdir, df, test_p, run = planted
    assert set(pd.read_csv(run / "folds.csv").query("fold == 0").patient_id.astype(str)) == test_p
    spec = load_run_spec(run)
    fold0 = next(f for f in spec["folds"] if f["fold"] == 0)
    assert not set(fold0["training_patient_ids"]) & test_p
    state = load_file(str(run / "checkpoints" / fold0["file"]))
    fit_p = set(fold0["training_patient_ids"]) - set(fold0["validation_patient_ids"])
    mean, std = _tile_mean_std(fdir, df, fit_p)  # fitted on training (not inner-val) patients
    np.testing.assert_allclose(state["input_scaler.mean"].numpy(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state["input_scaler.std"].numpy(), std, rtol=1e-4, atol=1e-5)
    assert np.abs(state["input_scaler.mean"].numpy()).max() < 10  # nowhere near the 1e4 offset
    # the test has teeth: a fold that trains on the shifted patients does see the offset
    fold1 = next(f for f in spec["folds"] if f["fold"] == 1)
    assert (set(fold1["training_patient_ids"]) - set(fold1["validation_patient_ids"])) & test_p
    m1 = load_file(str(run / "checkpoints" / fold1["file"]))["input_scaler.mean"].numpy()
    fit1 = set(fold1["training_patient_ids"]) - set(fold1["validation_patient_ids"])
    np.testing.assert_allclose(m1, _tile_mean_std(fdir, df, fit1)[0], rtol=1e-5)
    assert m1.min() > 1000


def test_model_json_records_the_scaler_and_off_switch(planted, tmp_path):
    fdir, df, _, run = planted
    spec = load_run_spec(run)
    assert spec["scaler"]["kind"] == "standardize" and spec["scaler"]["setting"] == "auto"
    for f in spec["folds"]:
        assert f["scaler"]["kind"] == "standardize"
        assert f["scaler"]["tensors"] == ["input_scaler.mean", "input_scaler.std"]
        assert f["scaler"]["n_features"] == 6
    off = train_cv(features=str(fdir), manifest=str(fdir.parent.parent / "manifest.csv"),
                   targets=["responder"],
                   folds=3, seed=0, out=str(tmp_path / "off"), standardize="off", **TINY)
    spec_off = load_run_spec(off)
    assert spec_off["scaler"]["kind"] == "none"
    assert all(f["scaler"] == {"kind": "none"} for f in spec_off["folds"])
    assert not any(k.startswith("input_scaler") for k in
                   load_file(str(off / "checkpoints" / spec_off["folds"][0]["file"])))


def test_scaled_checkpoint_predicts_identically_via_cli_and_python_api(tmp_path):
    import torch

    from pathstrat.cli import main
    from pathstrat.mil import build_model
    from pathstrat.mil.targets import TargetSpec
    from pathstrat.train import BagDataset, evaluate, load_bags, make_loader
    from pathstrat.training.evaluation import decode_outputs

    fdir, manifest = make_feature_cohort(tmp_path / "a", n_patients=24, dim=6, seed=2,
                                         tiles=(6, 12), tasks=("binary",))
    for p in fdir.glob("*.h5"):  # another tool's scale: large offset and spread
        _shift(p, 300.0, 50.0)
    run = train_cv(features=str(fdir), manifest=str(manifest), targets=["responder"], folds=2,
                   seed=0, out=str(tmp_path / "run"), **TINY)
    new_f, new_m = make_feature_cohort(tmp_path / "b", n_patients=10, dim=6, seed=9, tiles=(6, 12),
                                       tasks=("binary",))
    for p in new_f.glob("*.h5"):
        _shift(p, 300.0, 50.0)
    rc = main(["predict", "--run", str(run), "--features", str(new_f), "--manifest", str(new_m),
               "--out", str(tmp_path / "pred"), "--allow-overlap", "--device", "cpu"])
    assert rc in (0, None)
    cli = pd.read_csv(tmp_path / "pred" / "predictions.csv").set_index("slide_id").score

    spec = load_run_spec(run)
    specs = [TargetSpec.from_dict(t) for t in spec["targets"]]
    store = load_bags(pd.read_csv(new_m), new_f)
    loader = make_loader(BagDataset(store, np.arange(len(store))), 1)
    api, manual = 0.0, 0.0
    for fold in spec["folds"]:
        model = load_fold_model(run, fold)  # the Python API: scaler applied by the model
        ev = evaluate(model, loader)
        api = api + decode_outputs(specs, ev.outputs, fold["target_state"])["responder"]
        # independent: a bare model fed (x - mean) / std computed here from the checkpoint
        state = load_file(str(run / "checkpoints" / fold["file"]))
        mean, std = state.pop("input_scaler.mean"), state.pop("input_scaler.std")
        bare = build_model(spec["model"], spec["in_dim"], {"responder": 1}, **spec["hparams"])
        bare.load_state_dict(state)
        bare.eval()
        logits = []
        with torch.no_grad():
            for i in ev.index:
                x = (store.bags[int(i)].features.float() - mean) / std
                logits.append(bare(x[None], torch.ones(1, len(x), dtype=torch.bool)).logits["responder"])
        manual = manual + decode_outputs(specs, {"responder": torch.cat(logits).numpy()},
                                         fold["target_state"])["responder"]
    keys = [store.bags[int(i)].key for i in ev.index]
    n = len(spec["folds"])
    api = pd.Series(np.asarray(api, float) / n, index=keys)
    manual = pd.Series(np.asarray(manual, float) / n, index=keys)
    np.testing.assert_allclose(cli.loc[keys].to_numpy(), api.to_numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(api.to_numpy(), manual.to_numpy(), rtol=1e-5, atol=1e-6)
    assert api.std() > 1e-4  # scores vary (the scaled model is not saturated by the raw scale)
