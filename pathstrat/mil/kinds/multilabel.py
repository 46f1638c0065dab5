"""Multi-label classification: one 0/1 column per label, masked BCE, mean AUROC over labels."""

from __future__ import annotations

from typing import Any

import numpy as np

from pathstrat.mil.kinds.base import (
    BinaryLabelsKind,
    binary01,
    empty_loss,
    example_frame,
    pos_weights,
    register_kind,
    with_missing,
)


@register_kind
class Multilabel(BinaryLabelsKind):
    """Several binary labels (``spec.columns``) in one head; each label is its own
    predictions.csv/metrics.json target, scored with the binary metric set."""

    name = "multilabel"
    metric_set = "binary"

    def n_outputs(self, spec):
        return len(spec.columns)

    def label_names(self, spec):
        return list(spec.columns)

    def encode(self, spec, df, state):
        return np.stack([binary01(df[c], c) for c in spec.columns], 1).astype(np.float32)

    def fit(self, spec, y, balanced):
        pos = [(y[:, j][~np.isnan(y[:, j])] == 1).sum() for j in range(y.shape[1])]
        neg = [(y[:, j][~np.isnan(y[:, j])] == 0).sum() for j in range(y.shape[1])]
        return {"pos_weight": pos_weights(pos, neg, balanced)}

    def decode(self, spec, out, state):
        from scipy.special import expit

        return expit(np.asarray(out, np.float64))

    def loss(self, spec, logits, y, *, pos_weight=None, class_weight=None, ties="efron"):
        import torch
        import torch.nn.functional as F

        ok = ~torch.isnan(y)
        if not ok.any():
            return empty_loss(logits)
        pw = None if pos_weight is None else pos_weight.expand_as(logits)
        per = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(y), pos_weight=pw,
                                                 reduction="none")
        return per[ok].mean()

    def prediction_rows(self, spec, score, label):
        return [{"target": c, "y_true": label(c), "score": float(score[i])}
                for i, c in enumerate(spec.columns)]

    def federated_metrics(self, spec, rows, score, y, score_bins):
        from pathstrat import metrics as M

        name, nan = spec.name, float("nan")
        out: dict[str, Any] = {}
        aucs = [M.auroc(y[:, j][~np.isnan(y[:, j])], score[:, j][~np.isnan(y[:, j])])
                for j in range(y.shape[1])] if len(y) else []
        finite = [a for a in aucs if np.isfinite(a)]
        out[f"{name}.macro_auroc"] = float(np.mean(finite)) if finite else nan
        out[f"{name}.n"] = int((~np.isnan(y)).any(1).sum()) if len(y) else 0
        return out

    def example(self, n, seed=0):
        from pathstrat.mil.targets import TargetSpec

        rng, df = example_frame(n, seed)
        cols = ["marker_a", "marker_b"]
        for j, c in enumerate(cols):
            df[c] = with_missing(rng.permutation((np.arange(n) + j) % 2), rng).astype(float)
        return TargetSpec("+".join(cols), "multilabel", columns=cols), df
