"""Discrete-time survival: hazards per time bin (cut at training-fold event-time quantiles)."""

from __future__ import annotations

import numpy as np

from pathstrat.metrics import histogram, histogram_quantiles
from pathstrat.mil.kinds.base import SurvivalKind, register_kind


def discrete_survival(logits: np.ndarray) -> np.ndarray:
    """Survival curve S_k = prod_{j<=k} (1 - h_j) from discrete hazard logits (n, K)."""
    h = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    return np.cumprod(1 - h, axis=1)


@register_kind
class Discrete(SurvivalKind):
    """``spec.n_bins`` hazard logits; the NLL of Zadeh & Schmid (2020). Encoded labels are
    ``(bin, event, time)``; the risk is minus the expected survival (higher = earlier event).
    Federated sites agree the bins from event-time histograms on the shared time grid."""

    name = "discrete"
    time_index = 2
    needs_time_grid = True

    def n_outputs(self, spec):
        return int(spec.n_bins)

    def encode(self, spec, df, state):
        t = df[spec.time_col].to_numpy(float)
        e = df[spec.event_col].to_numpy(float)
        cuts = np.asarray((state or {}).get("cuts", []), float)
        b = np.searchsorted(cuts, t, side="right").astype(float)
        b[np.isnan(t)] = np.nan
        return np.stack([b, e, t], 1).astype(np.float32)

    def fit_raw(self, spec, df, balanced):
        t, e = df[spec.time_col].to_numpy(float), df[spec.event_col].to_numpy(float)
        ev = t[(e == 1) & ~np.isnan(t)]
        ev = ev if ev.size else t[~np.isnan(t)]
        qs = np.quantile(ev, np.linspace(0, 1, spec.n_bins + 1)[1:-1]) if ev.size else []
        return {"cuts": [float(q) for q in qs]}

    def decode(self, spec, out, state):
        return -discrete_survival(np.asarray(out, np.float64)).sum(1)

    def loss(self, spec, logits, y, *, pos_weight=None, class_weight=None, ties="efron"):
        from pathstrat.mil.losses import discrete_nll

        return discrete_nll(logits, y[:, 0], y[:, 1])

    def site_stats(self, spec, df, *, edges):
        t = df[spec.time_col].to_numpy(float)
        e = df[spec.event_col].to_numpy(float)
        return {f"{spec.name}.event_hist": histogram(t[e == 1], edges).tolist(),
                f"{spec.name}.time_hist": histogram(t, edges).tolist()}, {}

    def global_state(self, spec, merged, *, edges, balanced):
        ev = np.asarray(merged[f"{spec.name}.event_hist"], float)
        counts = ev if ev.sum() > 0 else np.asarray(merged[f"{spec.name}.time_hist"], float)
        qs = np.linspace(0, 1, spec.n_bins + 1)[1:-1]
        return {"cuts": histogram_quantiles(counts, edges, qs)}, None
