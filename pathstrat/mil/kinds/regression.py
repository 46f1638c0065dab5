"""Regression: standardised on the training fold, MSE loss, MAE/RMSE/Pearson r metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pathstrat.mil.kinds.base import (
    TargetKind,
    empty_loss,
    example_frame,
    register_kind,
    with_missing,
)


@register_kind
class Regression(TargetKind):
    """A continuous label; the head predicts it standardised by the training fold's mean and
    standard deviation, and scores are de-standardised back to the label's units."""

    name = "regression"
    metric_set = "regression"
    primary_metric = "pearson_r"

    def encode(self, spec, df, state):
        y = pd.to_numeric(df[spec.columns[0]], errors="coerce").to_numpy(float)
        st = state or {}
        return ((y - st.get("mean", 0.0)) / st.get("std", 1.0)).astype(np.float32)

    def fit_raw(self, spec, df, balanced):
        y = pd.to_numeric(df[spec.columns[0]], errors="coerce").to_numpy(float)
        y = y[~np.isnan(y)]
        sd = float(y.std()) if y.size > 1 else 1.0
        return {"mean": float(y.mean()) if y.size else 0.0, "std": sd if sd > 0 else 1.0}

    def decode(self, spec, out, state):
        s = np.asarray(out, np.float64)[:, 0]
        if state is not None:
            s = s * state.get("std", 1.0) + state.get("mean", 0.0)
        return s

    def loss(self, spec, logits, y, *, pos_weight=None, class_weight=None, ties="efron"):
        import torch.nn.functional as F

        ok = ~y.isnan()
        if not ok.any():
            return empty_loss(logits)
        return F.mse_loss(logits[:, 0][ok], y[ok])

    def strata(self, spec):
        return spec.columns[0], "regression"  # quartiles of the label

    def epoch_metric(self, spec, y, scores):
        def r(i, o):
            yi, si = y[i], scores(i, o)
            ok = ~np.isnan(yi)
            if ok.sum() < 3 or np.std(si[ok]) == 0:
                return float("nan")
            return float(np.corrcoef(yi[ok], si[ok])[0, 1])
        return "pearson_r", r

    def site_stats(self, spec, df, *, edges):
        y = pd.to_numeric(df[spec.columns[0]], errors="coerce").to_numpy(float)
        y = y[np.isfinite(y)]
        return {f"{spec.name}.moments": [float(y.size), float(y.sum()), float((y**2).sum())]}, {}

    def global_state(self, spec, merged, *, edges, balanced):
        n, s, ss = (float(x) for x in merged[f"{spec.name}.moments"])
        mean = s / n if n else 0.0
        var = ss / n - mean**2 if n else 0.0
        sd = float(np.sqrt(max(var, 0.0)))
        return {"mean": mean, "std": sd if sd > 0 else 1.0}, None

    def federated_metrics(self, spec, rows, score, y, score_bins):
        from pathstrat import metrics as M

        name, nan = spec.name, float("nan")
        out: dict[str, Any] = {}
        yt = pd.to_numeric(rows[spec.columns[0]], errors="coerce").to_numpy(float)
        ok = np.isfinite(yt)
        m = M.regression_metrics(yt[ok], score[ok]) if ok.sum() > 1 else {}
        for k in ("mae", "rmse", "pearson_r"):
            out[f"{name}.{k}"] = float(m.get(k, nan))
        out[f"{name}.n"] = int(ok.sum())
        return out

    def example(self, n, seed=0):
        from pathstrat.mil.targets import TargetSpec

        rng, df = example_frame(n, seed)
        df["score"] = with_missing(rng.normal(50.0, 10.0, n), rng).astype(float)
        return TargetSpec("score", "regression"), df
