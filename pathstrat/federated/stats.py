"""Aggregate statistics the sites share instead of raw values.

Global values that a head needs (survival time bins, class weights, regression scaling) are
agreed from per-site *counts* on grids every site knows in advance: histograms of survival times
on a shared time grid, label counts, first and second moments. Raw times, labels and scores never
leave a site. The same idea gives a pooled AUROC from per-site score histograms.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# the binned statistics live in pathstrat.metrics (target kinds use them too); re-exported here
from pathstrat.metrics import histogram, histogram_quantiles, score_histograms  # noqa: F401

# --- shared grids ------------------------------------------------------------------------


def time_grid(time_max: float, bins: int) -> np.ndarray:
    """Edges (bins+1,) of the shared survival-time grid [0, time_max]; later times go to the last bin."""
    return np.linspace(0.0, float(time_max), int(bins) + 1)


# --- pooled AUROC from score histograms ------------------------------------------------------


def auroc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC = P(score_pos > score_neg) + P(same bin) / 2, from binned scores (NaN if one class)."""
    p, n = np.asarray(pos, float), np.asarray(neg, float)
    if p.sum() == 0 or n.sum() == 0:
        return float("nan")
    neg_below = np.r_[0.0, np.cumsum(n)[:-1]]
    return float((p * (neg_below + 0.5 * n)).sum() / (p.sum() * n.sum()))


# --- per-site label statistics ----------------------------------------------------------------


def site_label_stats(spec: Any, df, *, edges: np.ndarray | None) -> tuple[dict[str, Any], dict[str, str]]:
    """Counts of one head on a site's training rows: (metric values, config values).

    binary/multilabel: positives and negatives per column; multiclass: counts per class name;
    regression: n, sum, sum of squares; survival: histograms of event times and all times on the
    shared grid (discrete) or nothing (Cox needs no global state).
    """
    return spec.impl.site_stats(spec, df, edges=edges)


def merge_site_stats(sites: Iterable[tuple[Mapping[str, Any], Mapping[str, str]]]) -> dict[str, Any]:
    """Sum the count vectors of all sites; multiclass counts are merged by class name."""
    merged: dict[str, Any] = {}
    class_counts: dict[str, dict[str, tuple[Any, int]]] = {}
    for metrics, config in sites:
        for key, val in metrics.items():
            if key.endswith(".class_counts"):
                name = key[: -len(".class_counts")]
                names = json.loads(config[f"{name}.classes"])
                bucket = class_counts.setdefault(name, {})
                for cls, cnt in zip(names, val, strict=True):
                    k = json.dumps(cls)
                    bucket[k] = (cls, bucket.get(k, (cls, 0))[1] + int(cnt))
                continue
            arr = np.asarray(val, float)
            merged[key] = arr if key not in merged else merged[key] + arr
    for name, bucket in class_counts.items():
        merged[f"{name}.class_counts"] = dict(bucket.values())
    return merged


def global_target_state(spec: Any, merged: Mapping[str, Any], *, edges: np.ndarray | None,
                        balanced: bool = True) -> tuple[dict[str, Any], list[Any] | None]:
    """The fold state of one head from merged counts (same keys as TargetSpec.fit/fit_raw).

    Returns (state, classes) where ``classes`` is the agreed class list of a multiclass head
    whose config left it empty (None otherwise).
    """
    return spec.impl.global_state(spec, merged, edges=edges, balanced=balanced)
