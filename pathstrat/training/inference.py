"""`predict`: apply the fold models of a run to a new cohort (ensemble mean), leakage-guarded."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from pathstrat.errors import FeatureDimError, LeakageError, SchemaError, WeightsError
from pathstrat.io import (
    FailureLog,
    ensure_writable_dir,
    sha256_file,
    write_dataframe_atomic,
    write_json_atomic,
)
from pathstrat.mil import build_model
from pathstrat.mil.scaling import SCALER_KEYS
from pathstrat.mil.targets import TargetSpec
from pathstrat.training.data import BagDataset, load_bags, make_loader
from pathstrat.training.engine import evaluate, resolve_device
from pathstrat.training.evaluation import (
    compute_metrics,
    decode_outputs,
    prediction_rows,
    write_attention,
)

log = logging.getLogger(__name__)


def load_run_spec(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``checkpoints/model.json`` of a run (model, hparams, in_dim, encoder_id, targets, folds)."""
    path = Path(run_dir) / "checkpoints" / "model.json"
    if not path.exists():
        raise SchemaError(f"'{run_dir}' is not a training run: {path} is missing. Pass the RUNDIR "
                          "written by `pathstrat train`.")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path} is not valid JSON ({exc}); the run is damaged. Retrain it.") from exc
    missing = [k for k in ("model", "in_dim", "targets", "folds", "hparams") if k not in spec]
    if missing:
        raise SchemaError(f"{path} lacks {missing}; it was not written by `pathstrat train`.")
    return spec


def load_fold_model(run_dir: str | os.PathLike, fold: dict[str, Any] | str,
                    spec: dict[str, Any] | None = None, device: str = "cpu") -> nn.Module:
    """Rebuild one fold's model from its safetensors checkpoint (weights only, no pickle)."""

    spec = spec or load_run_spec(run_dir)
    if isinstance(fold, str):
        matches = [f for f in spec["folds"] if f["name"] == fold]
        if not matches:
            raise WeightsError(f"Fold '{fold}' not in run '{run_dir}'; folds are "
                               f"{[f['name'] for f in spec['folds']]}.")
        fold = matches[0]
    targets = [TargetSpec.from_dict(t) for t in spec["targets"]]
    hparams = dict(spec["hparams"])
    if spec["model"] in ("abmil", "abmil_gated") and "attention" not in hparams:
        hparams["attention"] = "shared"  # runs written before per-target attention existed
    model = build_model(spec["model"], spec["in_dim"], {t.name: t.n_outputs for t in targets},
                        **hparams)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = checkpoint_path(run_dir, fold)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:  # not safetensors bytes
        raise WeightsError(f"Checkpoint {path} is not a safetensors file ({type(exc).__name__}: "
                           f"{exc}); pathstrat never loads pickles. Restore the run's checkpoint or "
                           "retrain.") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - set(SCALER_KEYS):
        raise WeightsError(f"Checkpoint {path} does not fit model '{spec['model']}' (missing "
                           f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}).")
    return model.to(device).eval()  # runs before input scaling keep the identity scaler


def checkpoint_path(run_dir: str | os.PathLike, fold: dict[str, Any]) -> Path:
    """A fold's checkpoint inside ``run_dir/checkpoints``, its sha256 checked against model.json.

    A ``file`` that points outside the run directory is refused without being opened; a file
    whose hash differs from the one recorded at training is refused naming it."""
    ckpt_dir = (Path(run_dir) / "checkpoints").resolve()
    name = str(fold.get("file", ""))
    path = (ckpt_dir / name).resolve()
    if not name or Path(name).is_absolute() or path.parent != ckpt_dir:
        raise WeightsError(f"model.json of '{run_dir}' names checkpoint '{name}' outside "
                           f"{ckpt_dir}; refused (a run's checkpoints live in its checkpoints/ folder).")
    if not path.is_file():
        raise WeightsError(f"Checkpoint {path} is missing; the run directory is incomplete.")
    want = fold.get("sha256")
    if want and sha256_file(path) != want:
        raise WeightsError(f"Checkpoint {path} does not match the sha256 recorded in model.json: "
                           "it changed after training (or belongs to another run). Restore it or "
                           "retrain; do not predict with it.")
    return path


def _check_inputs(spec: dict[str, Any], store_dim: int, store_encoder: str | None) -> None:
    if int(spec["in_dim"]) != store_dim:
        raise FeatureDimError(f"Features have dimension {store_dim} but the run was trained on "
                              f"{spec['in_dim']} ({spec.get('encoder_id')}). Embed the cohort with "
                              "the same encoder as the training run.")
    want = spec.get("encoder_id")
    if want and store_encoder and want != store_encoder:
        raise FeatureDimError(f"Features come from encoder '{store_encoder}' but the run was "
                              f"trained on '{want}'. Embed the cohort with '{want}'.")


def predict(run_dir: str | os.PathLike, features_dir: str | os.PathLike,
            manifest: str | os.PathLike | pd.DataFrame, out_dir: str | os.PathLike, *,
            allow_overlap: bool = False, device: str = "auto", save_attention: bool = True,
            n_boot: int = 1000, model_cache: dict[str, nn.Module] | None = None) -> Path:
    """Predict a cohort with the mean of all fold models of ``run_dir``.

    Refuses features from another encoder or dimension (:class:`FeatureDimError`) and patients
    that were used in training (:class:`LeakageError`) unless ``allow_overlap``. Writes
    ``predictions.csv`` (``slide_id, patient_id, target, y_true, score[, risk, ...]``),
    ``attention/`` and, when the manifest carries the labels, ``metrics.json``.
    """
    from pathstrat.cohort import check_spec_targets, load_manifest

    spec = load_run_spec(run_dir)
    out = ensure_writable_dir(out_dir)
    df = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest, check_files=False)
    df = check_spec_targets(df, [TargetSpec.from_dict(t) for t in spec["targets"]],
                            source="prediction manifest", present_only=True)
    trained = set().union(*(f["training_patient_ids"] for f in spec["folds"]))
    overlap = sorted(set(df["patient_id"].astype(str)) & trained)
    same_slides = sorted(set(df["slide_id"].astype(str)) & set(spec.get("training_slide_ids", [])))
    if (overlap or same_slides) and not allow_overlap:
        what = (f"{len(overlap)} patient(s) ({', '.join(overlap[:10])})" if overlap else
                f"{len(same_slides)} slide(s) ({', '.join(same_slides[:10])})")
        raise LeakageError(f"{what} of this cohort were used to train run '{run_dir}'. "
                           "Predictions on them are not a validation; pass `allow_overlap` to "
                           "predict anyway.")
    if overlap or same_slides:
        log.warning("%d patient(s) / %d slide(s) overlap with the training data (--allow-overlap)",
                    len(overlap), len(same_slides))
    failures = FailureLog(out / "failures.csv", "predict")
    store = load_bags(df, features_dir, level=spec.get("level", "slide"),
                      expected_dim=int(spec["in_dim"]), expected_encoder=spec.get("encoder_id"),
                      failures=failures)
    _check_fingerprints(spec, store, run_dir, allow_overlap)
    _check_inputs(spec, store.dim, store.encoder_id)
    specs = [TargetSpec.from_dict(t) for t in spec["targets"]]
    device = resolve_device(device)
    loader = make_loader(BagDataset(store, np.arange(len(store))), 1)
    sums: dict[str, np.ndarray] = {}
    att_sum: list[np.ndarray] | None = None
    br_sum: list[np.ndarray | None] | None = None
    br_names: list[str] | None = None
    index = np.arange(len(store))
    for fold in spec["folds"]:
        if model_cache is not None and fold["name"] in model_cache:
            model = model_cache[fold["name"]]  # a service keeps its fold models loaded
        else:
            model = load_fold_model(run_dir, fold, spec, device)
            if model_cache is not None:
                model_cache[fold["name"]] = model
        ev = evaluate(model, loader, device=device, keep_attention=save_attention)
        scores = decode_outputs(specs, ev.outputs, fold["target_state"])
        for k, v in scores.items():
            sums[k] = sums.get(k, 0) + np.asarray(v, float)
        if save_attention:
            att_sum = ev.attention if att_sum is None else [a + b for a, b in zip(att_sum, ev.attention, strict=True)]
            br_sum, br_names = _add_branches(br_sum, ev.attention_branches), ev.branch_names
        index = ev.index
    n = len(spec["folds"])
    mean = {k: v / n for k, v in sums.items()}
    pred = pd.DataFrame(prediction_rows(store, index, mean, specs))
    write_dataframe_atomic(out / "predictions.csv", pred)
    if save_attention and att_sum is not None:
        branches = ([None] * len(index) if br_sum is None or br_names is None
                    else [None if b is None else b / n for b in br_sum])
        write_attention(out / "attention", store, index, [a / n for a in att_sum],
                        branches, {"model": spec["model"], "ensemble": n,
                                   "targets": [s.name for s in specs]},
                        br_names if br_sum is not None else None)
    if pred["y_true"].notna().any():
        metrics, _ = compute_metrics(pred, specs, n_boot=n_boot)
        write_json_atomic(out / "metrics.json", metrics)
    if len(failures):
        failures.write()
    return out


def _check_fingerprints(spec: dict[str, Any], store: Any, run_dir: Any, allow: bool) -> None:
    """Refuse slides whose feature content equals a training slide's (renamed copies)."""
    trained = set(spec.get("training_fingerprints", []))
    prints = store.attrs.get("fingerprints", {})
    same = sorted(s for s, fp in prints.items() if fp in trained)
    if not same:
        return
    if not allow:
        raise LeakageError(f"{len(same)} slide(s) of this cohort ({', '.join(same[:10])}) have the "
                           f"same feature content as slides used to train run '{run_dir}' (renamed "
                           "copies?). Predictions on them are not a validation; pass "
                           "`allow_overlap` to predict anyway.")
    log.warning("%d slide(s) have the feature content of training slides (--allow-overlap)", len(same))


def _add_branches(acc: list[np.ndarray | None] | None,
                  new: list[np.ndarray | None]) -> list[np.ndarray | None] | None:
    """Running sum of per-bag attention branches over fold models (None when a model has none)."""
    if not new or any(b is None for b in new):
        return None
    return list(new) if acc is None else [a + b for a, b in zip(acc, new, strict=True)]
