"""Binary classification: one logit, BCE with a training-fold positive weight, AUROC metrics."""

from __future__ import annotations

from typing import Any

import numpy as np

from pathstrat.metrics import score_histograms
from pathstrat.mil.kinds.base import (
    BinaryLabelsKind,
    _isnan,
    class_indices,
    empty_loss,
    example_frame,
    pos_weights,
    register_kind,
    with_missing,
)


@register_kind
class Binary(BinaryLabelsKind):
    """Two classes (``spec.classes``, index 1 = positive); the score is P(positive)."""

    name = "binary"
    categorical = True
    default_classes = (0, 1)
    n_classes = 2
    pooled_auroc = True
    metric_set = "binary"

    def encode(self, spec, df, state):
        return class_indices(spec, df[spec.columns[0]]).astype(np.float32)

    def fit(self, spec, y, balanced):
        v = y[~np.isnan(y)]
        return {"pos_weight": pos_weights([(v == 1).sum()], [(v == 0).sum()], balanced)}

    def decode(self, spec, out, state):
        from scipy.special import expit

        return expit(np.asarray(out, np.float64))[:, 0]  # no overflow warning for large logits

    def loss(self, spec, logits, y, *, pos_weight=None, class_weight=None, ties="efron"):
        import torch.nn.functional as F

        ok = ~y.isnan()
        if not ok.any():
            return empty_loss(logits)
        return F.binary_cross_entropy_with_logits(logits[:, 0][ok], y[ok], pos_weight=pos_weight)

    def prediction_rows(self, spec, score, label):
        y = label(spec.columns[0])
        if not _isnan(y):  # the class index (0/1) of the manifest value
            y = int((spec.classes or [0, 1]).index(y)) if y in (spec.classes or []) else y
        return [{"target": spec.name, "y_true": y, "score": float(score)}]

    def federated_metrics(self, spec, rows, score, y, score_bins):
        from pathstrat import metrics as M

        name, nan = spec.name, float("nan")
        out: dict[str, Any] = {}
        ok = ~np.isnan(y)
        m = M.binary_metrics(y[ok], score[ok]) if ok.any() else {}
        for k in ("auroc", "auprc", "balanced_accuracy", "brier"):
            out[f"{name}.{k}"] = float(m.get(k, nan))
        pos, neg = score_histograms(y[ok], score[ok], score_bins)
        out[f"{name}.hist_pos"], out[f"{name}.hist_neg"] = pos.tolist(), neg.tolist()
        out[f"{name}.n"] = int(ok.sum())
        return out

    def example(self, n, seed=0):
        from pathstrat.mil.targets import TargetSpec

        rng, df = example_frame(n, seed)
        df["response"] = with_missing(rng.permutation(np.array(["no", "yes"])[np.arange(n) % 2]), rng)
        return TargetSpec("response", "binary", classes=["no", "yes"]), df

