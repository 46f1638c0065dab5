"""Multiclass classification: softmax over ``spec.classes``, weighted cross-entropy, accuracy."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from pathstrat.mil.kinds.base import (
    TargetKind,
    _isnan,
    _key,
    _py,
    _sort_key,
    class_indices,
    empty_loss,
    example_frame,
    register_kind,
    with_missing,
)


def class_weights(counts: np.ndarray, balanced: bool) -> list[float]:
    """Inverse-frequency class weights ``N / (C * n_c)`` (0 for an absent class; 1 unbalanced)."""
    w = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
    return (w if balanced else np.ones_like(w)).tolist()


@register_kind
class Multiclass(TargetKind):
    """One of ``spec.classes`` (fixed for the run, so heads of all folds align); the score of a
    predictions row is the top probability, ``pred`` the class and ``prob_<class>`` each one."""

    name = "multiclass"
    categorical = True
    metric_set = "multiclass"
    primary_metric = "accuracy"

    def n_outputs(self, spec):
        return len(spec.classes or [])

    def encode(self, spec, df, state):
        out = class_indices(spec, df[spec.columns[0]])
        return np.where(np.isnan(out), -1, out).astype(np.float32)

    def fit(self, spec, y, balanced):
        v = y[y >= 0].astype(int)
        counts = np.bincount(v, minlength=self.n_outputs(spec)).astype(float)
        return {"class_weight": class_weights(counts, balanced)}

    def decode(self, spec, out, state):
        out = np.asarray(out, np.float64)
        z = np.exp(out - out.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def loss(self, spec, logits, y, *, pos_weight=None, class_weight=None, ties="efron"):
        import torch.nn.functional as F

        yi = y.long()
        if not (yi >= 0).any():
            return empty_loss(logits)
        return F.cross_entropy(logits, yi, weight=class_weight, ignore_index=-1)

    def prediction_rows(self, spec, score, label):
        classes = spec.classes or []
        row = {"target": spec.name, "y_true": label(spec.columns[0]),
               "score": float(np.max(score)), "pred": classes[int(np.argmax(score))]}
        row.update({f"prob_{c}": float(p) for c, p in zip(classes, score, strict=True)})
        return [row]

    def metric_fn(self, spec, pat):
        from pathstrat.metrics import METRIC_SETS

        fn = METRIC_SETS.get(self.metric_set)
        lookup = {str(c): i for i, c in enumerate(spec.classes or [])}
        y = np.array([lookup.get(str(v), -1) if not _isnan(v) else -1 for v in pat["y_true"]], float)
        probs = pat[[f"prob_{c}" for c in spec.classes or []]].to_numpy(float)
        return lambda idx: fn(y[idx], probs[idx])

    def epoch_metric(self, spec, y, scores):
        def acc(i, o):
            yi, ok = y[i], y[i] >= 0
            return float((scores(i, o).argmax(1)[ok] == yi[ok]).mean()) if ok.any() else float("nan")
        return "accuracy", acc

    def site_stats(self, spec, df, *, edges):
        col = df[spec.columns[0]].dropna()
        vals, counts = np.unique(col.to_numpy(), return_counts=True)
        return ({f"{spec.name}.class_counts": [int(c) for c in counts]},
                {f"{spec.name}.classes": json.dumps([_py(v) for v in vals])})

    def global_state(self, spec, merged, *, edges, balanced):
        counts_by_class: dict[Any, int] = merged.get(f"{spec.name}.class_counts", {})
        classes = list(spec.classes) if spec.classes else sorted(counts_by_class, key=_sort_key)
        lookup = {_key(c): n for c, n in counts_by_class.items()}
        counts = np.array([lookup.get(_key(c), 0) for c in classes], float)
        return {"class_weight": class_weights(counts, balanced)}, (classes if not spec.classes else None)

    def federated_metrics(self, spec, rows, score, y, score_bins):
        from pathstrat import metrics as M

        name, nan = spec.name, float("nan")
        out: dict[str, Any] = {}
        ok = y >= 0
        m = M.multiclass_metrics(y[ok].astype(int), score[ok]) if ok.sum() > 1 else {}
        for k in ("accuracy", "balanced_accuracy", "auroc"):
            out[f"{name}.{k}"] = float(m.get(k, nan))
        out[f"{name}.n"] = int(ok.sum())
        return out

    def example(self, n, seed=0):
        from pathstrat.mil.targets import TargetSpec

        rng, df = example_frame(n, seed)
        df["subtype"] = with_missing(rng.permutation(np.array(["A", "B", "C"])[np.arange(n) % 3]), rng)
        return TargetSpec("subtype", "multiclass", classes=["A", "B", "C"]), df
