"""Turn model outputs into prediction rows, patient-level metrics with bootstrap CIs, attention files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.io import atomic_path
from pathstrat.metrics import bootstrap_ci
from pathstrat.mil.targets import TargetSpec
from pathstrat.training.data import BagStore

BASE_COLUMNS = ["slide_id", "patient_id", "fold", "repeat", "target", "y_true", "score"]


def decode_outputs(specs: Sequence[TargetSpec], outputs: dict[str, np.ndarray],
                   states: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """Raw head outputs -> scores per head (probabilities, values in target units, risks)."""
    return {s.name: s.decode_with_state(outputs[s.name], states.get(s.name, {})) for s in specs}


def prediction_rows(store: BagStore, index: np.ndarray, scores: dict[str, np.ndarray],
                    specs: Sequence[TargetSpec], *, fold: int | None = None,
                    repeat: int | None = None, with_labels: bool = True) -> list[dict[str, Any]]:
    """One row per slide, target (label) and bag, following the predictions.csv contract."""
    rows: list[dict[str, Any]] = []
    for j, b in enumerate(index):
        bag, rec = store.bags[int(b)], store.table.iloc[int(b)]
        for spec in specs:
            for row in _target_rows(spec, scores[spec.name][j], rec, with_labels):
                for sid in bag.slide_ids:
                    r = {"slide_id": sid, "patient_id": bag.patient_id}
                    if fold is not None:
                        r.update(fold=fold, repeat=repeat)
                    rows.append({**r, **row})
    return rows


def _label(rec: pd.Series, col: str | None, with_labels: bool):
    if not with_labels or col is None or col not in rec.index:
        return np.nan
    v = rec[col]
    return v.item() if isinstance(v, np.generic) else v


def _target_rows(spec: TargetSpec, score, rec: pd.Series, with_labels: bool) -> list[dict[str, Any]]:
    return spec.impl.prediction_rows(spec, score, lambda col: _label(rec, col, with_labels))


def metric_set(spec: TargetSpec) -> str:
    """Name of the :data:`pathstrat.metrics.METRIC_SETS` entry scoring ``spec``."""
    return spec.impl.metric_set


def patient_level(d: pd.DataFrame) -> pd.DataFrame:
    """Average scores per patient (over slides and repeats); labels are per patient."""
    num = [c for c in d.columns if c == "score" or c == "risk" or c.startswith("prob_")]
    agg = {c: "mean" for c in num}
    agg.update({c: "first" for c in ("y_true", "time", "event") if c in d.columns})
    return d.groupby("patient_id", sort=True).agg(agg).reset_index()


def _metric_fn(spec: TargetSpec, pat: pd.DataFrame):
    return spec.impl.metric_fn(spec, pat)


def compute_metrics(pred: pd.DataFrame, specs: Sequence[TargetSpec], *, n_boot: int = 1000,
                    seed: int = 0) -> tuple[dict[str, Any], pd.DataFrame]:
    """``metrics.json`` content and the per-fold table (``repeat, fold, target, metric, value``).

    ``mean`` is the point estimate on pooled out-of-fold patient-level predictions; ``std`` and
    ``ci_low``/``ci_high`` come from a patient bootstrap; ``fold_mean``/``fold_std`` summarise
    the per-fold values.
    """
    metrics: dict[str, Any] = {}
    fold_rows: list[dict[str, Any]] = []
    for spec in specs:
        for label in spec.label_names:
            d = pred[pred["target"] == label]
            sub = TargetSpec(label, spec.kind, columns=[label], time_col=spec.time_col,
                             event_col=spec.event_col, classes=spec.classes, n_bins=spec.n_bins)
            per_fold: dict[str, list[float]] = {}
            if "fold" in d.columns:
                for (r, k), g in d.groupby(["repeat", "fold"], sort=True):
                    pat = patient_level(g)
                    vals = _metric_fn(sub, pat)(np.arange(len(pat)))
                    for m, v in vals.items():
                        per_fold.setdefault(m, []).append(v)
                        fold_rows.append({"repeat": r, "fold": k, "target": label, "metric": m,
                                          "value": v})
            pat = patient_level(d)
            res = bootstrap_ci(_metric_fn(sub, pat), len(pat), n_boot=n_boot, seed=seed)
            for m, v in res.items():
                fv = np.asarray(per_fold.get(m, []), float)
                fv = fv[~np.isnan(fv)]
                v["fold_mean"] = float(fv.mean()) if fv.size else float("nan")
                v["fold_std"] = float(fv.std(ddof=1)) if fv.size > 1 else float("nan")
                v["n"] = int(len(pat))
            metrics[label] = res
    return metrics, pd.DataFrame(fold_rows, columns=["repeat", "fold", "target", "metric", "value"])


def write_attention(out_dir: Path, store: BagStore, index: np.ndarray, attention: list[np.ndarray],
                    branches: list[np.ndarray | None], attrs: dict[str, Any],
                    branch_names: Sequence[str] | None = None) -> None:
    """``attention/<slide_id>.h5`` per slide: coords, attention (sums to 1), optional branches.

    With ``branch_names`` (per-target attention: one branch per head) each branch is also
    written as ``attention_<name>`` (N,), normalised to sum to 1 over the slide's tiles, so a
    heatmap or a test reads the responder's own map as ``attention_responder``.
    """
    import h5py

    out_dir.mkdir(parents=True, exist_ok=True)
    for j, b in enumerate(index):
        bag = store.bags[int(b)]
        for s, sid in enumerate(bag.slide_ids):
            lo, hi = bag.offsets[s], bag.offsets[s + 1]
            a = np.asarray(attention[j][lo:hi], np.float32)
            mass = float(a.sum())
            extra = {"branch_names": list(branch_names)} if branch_names else {}
            with atomic_path(out_dir / f"{sid}.h5") as tmp, h5py.File(tmp, "w") as f:
                f["coords"] = bag.coords[lo:hi]
                f["attention"] = _normalised(a)
                if branches[j] is not None:
                    ab = np.asarray(branches[j][:, lo:hi], np.float32)
                    f["attention_branches"] = ab
                    for name, row in zip(branch_names or [], ab, strict=False):
                        f[f"attention_{name}"] = _normalised(row)
                for k, v in {**attrs, **extra, "slide_id": sid, "bag_mass": mass}.items():
                    f.attrs[k] = json.dumps(v) if isinstance(v, (list, dict)) else v


def _normalised(a: np.ndarray) -> np.ndarray:
    """``a`` scaled to sum to 1 (a slide of a patient-level bag holds part of the bag's mass)."""
    mass = float(a.sum())
    return (a / mass if mass > 0 else a).astype(np.float32)


def epoch_metric(spec: TargetSpec, y: np.ndarray, state: dict[str, Any]):
    """``(name, fn(index, outputs) -> float)``: the first head's per-epoch learning-curve metric.

    ``y`` is the head's encoded labels over all bags of the store (``TargetSpec.encode``):
    AUROC (binary; multi-label: mean over labels), accuracy (multiclass), Pearson r
    (regression), Harrell's C (survival), as the kind defines it. NaN when undefined (e.g. one
    class in the subset).
    """

    def scores(index: np.ndarray, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(decode_outputs([spec], outputs, {spec.name: state})[spec.name], float)

    return spec.impl.epoch_metric(spec, y, scores)
