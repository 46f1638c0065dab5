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
from pathstrat.mil.targets import TargetSpec
from pathstrat.training.data import BagDataset, load_bags, make_loader
from pathstrat.training.engine import evaluate, resolve_device
from pathstrat.training.evaluation import (
    compute_metrics,
    decode_outputs,
    prediction_rows,
    write_attention,
)
from pathstrat.training.scaling import attach_from_state

log = logging.getLogger(__name__)


def load_run_spec(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``checkpoints/model.json`` of a run (model, hparams, in_dim, encoder_id, targets, folds)."""
    path = Path(run_dir) / "checkpoints" / "model.json"
    if not path.exists():
        raise SchemaError(f"'{run_dir}' is not a training run: {path} is missing. Pass the RUNDIR "
                          "written by `pathstrat train`.")
    return json.loads(path.read_text(encoding="utf-8"))


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
    path = checkpoint_path(run_dir, fold)
    state = read_checkpoint(path, fold.get("sha256"))
    attach_from_state(model, state)
    model.load_state_dict(state)
    return model.to(device).eval()


def checkpoint_path(run_dir: str | os.PathLike, fold: dict[str, Any]) -> Path:
    """The checkpoint file of ``fold``, refused (never opened) when it lies outside the run."""
    ckpt = (Path(run_dir) / "checkpoints").resolve()
    name = str(fold.get("file", ""))
    path = (ckpt / name).resolve()
    if not name or Path(name).is_absolute() or not path.is_relative_to(ckpt):
        raise WeightsError(f"model.json of run '{run_dir}' points fold '{fold.get('name')}' at "
                           f"'{name}', outside {ckpt}; a run's checkpoints must lie in its "
                           "checkpoints/ folder (re-run `pathstrat train`).")
    if not path.exists():
        raise WeightsError(f"Checkpoint {path} is missing; the run directory is incomplete.")
    return path


def read_checkpoint(path: Path, sha256: str | None) -> dict[str, Any]:
    """Tensors of a safetensors checkpoint after checking its recorded sha256 (no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if sha256:
        got = sha256_file(path)
        if got != sha256:
            raise WeightsError(f"Checkpoint {path} has sha256 {got[:12]}... but model.json records "
                               f"{sha256[:12]}...; the file was changed or the run directory mixes "
                               "two runs. Re-run `pathstrat train` into a fresh --out.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"Checkpoint {path} is not a safetensors file ({exc}); pathstrat "
                           "loads model weights only from safetensors. Re-run `pathstrat train`.") from exc


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
            n_boot: int = 1000) -> Path:
    """Predict a cohort with the mean of all fold models of ``run_dir``.

    Refuses features from another encoder or dimension (:class:`FeatureDimError`) and patients
    that were used in training (:class:`LeakageError`) unless ``allow_overlap``. Writes
    ``predictions.csv`` (``slide_id, patient_id, target, y_true, score[, risk, ...]``),
    ``attention/`` and, when the manifest carries the labels, ``metrics.json``.
    """
    from pathstrat.cohort import load_manifest

    spec = load_run_spec(run_dir)
    out = ensure_writable_dir(out_dir)
    df = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest, check_files=False)
    trained = set().union(*(f["training_patient_ids"] for f in spec["folds"]))
    overlap = sorted(set(df["patient_id"].astype(str)) & trained)
    if overlap and not allow_overlap:
        raise LeakageError(f"{len(overlap)} patient(s) of this cohort were used to train run "
                           f"'{run_dir}': {', '.join(overlap[:10])}. Predictions on them are not "
                           "a validation; pass --allow-overlap to predict anyway.")
    if overlap:
        log.warning("%d patient(s) overlap with the training patients (--allow-overlap)", len(overlap))
    failures = FailureLog(out / "failures.csv", "predict")
    store = load_bags(df, features_dir, level=spec.get("level", "slide"),
                      expected_dim=int(spec["in_dim"]), expected_encoder=spec.get("encoder_id"),
                      failures=failures)
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
        model = load_fold_model(run_dir, fold, spec, device)
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


def _add_branches(acc: list[np.ndarray | None] | None,
                  new: list[np.ndarray | None]) -> list[np.ndarray | None] | None:
    """Running sum of per-bag attention branches over fold models (None when a model has none)."""
    if not new or any(b is None for b in new):
        return None
    return list(new) if acc is None else [a + b for a, b in zip(acc, new, strict=True)]
