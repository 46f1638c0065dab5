"""Cox proportional hazards: one risk output, partial likelihood within the batch, Harrell's C."""

from __future__ import annotations

import numpy as np

from pathstrat.mil.kinds.base import SurvivalKind, register_kind


@register_kind
class Cox(SurvivalKind):
    """Survival by the Cox partial likelihood (Efron or Breslow ties); the output is the log
    hazard ratio (risk, higher = earlier event). Encoded labels are ``(time, event)``."""

    name = "cox"
    time_index = 0

    def encode(self, spec, df, state):
        t = df[spec.time_col].to_numpy(float)
        e = df[spec.event_col].to_numpy(float)
        return np.stack([t, e], 1).astype(np.float32)

    def fit_raw(self, spec, df, balanced):
        return {}  # no fold state

    def decode(self, spec, out, state):
        return np.asarray(out, np.float64)[:, 0]

    def loss(self, spec, logits, y, *, pos_weight=None, class_weight=None, ties="efron"):
        from pathstrat.mil.losses import cox_ph_loss

        return cox_ph_loss(logits[:, 0], y[:, 0], y[:, 1], ties)
