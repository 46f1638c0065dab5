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

# --- shared grids ------------------------------------------------------------------------


def time_grid(time_max: float, bins: int) -> np.ndarray:
    """Edges (bins+1,) of the shared survival-time grid [0, time_max]; later times go to the last bin."""
    return np.linspace(0.0, float(time_max), int(bins) + 1)


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of finite ``values`` per grid bin (values beyond the grid are clipped into the end bins)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(idx, minlength=len(edges) - 1).astype(np.int64)


def histogram_quantiles(counts: np.ndarray, edges: np.ndarray, qs: Iterable[float]) -> list[float]:
    """Quantiles of the distribution behind ``counts``, assuming values uniform inside a bin.

    The error against the raw-data quantile is at most one bin width.
    """
    c = np.asarray(counts, float)
    total = c.sum()
    if total <= 0:
        return []
    cdf = np.r_[0.0, np.cumsum(c)] / total  # at the edges
    out = []
    for q in qs:
        k = int(np.clip(np.searchsorted(cdf, q, side="left"), 1, len(edges) - 1))
        lo, hi = cdf[k - 1], cdf[k]
        frac = 0.0 if hi <= lo else (q - lo) / (hi - lo)
        out.append(float(edges[k - 1] + frac * (edges[k] - edges[k - 1])))
    return out


# --- pooled AUROC from score histograms ------------------------------------------------------


def score_histograms(y: np.ndarray, score: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positive and negative bags per score bin on [0, 1]."""
    y, s = np.asarray(y, float), np.asarray(score, float)
    ok = np.isfinite(y) & np.isfinite(s)
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    return histogram(s[ok & (y == 1)], edges), histogram(s[ok & (y == 0)], edges)


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
