"""Evaluation metrics with patient-bootstrap confidence intervals.

Metrics are computed with small vectorised numpy implementations (fast enough for 1,000
bootstrap replicates); tests check them against scikit-learn and lifelines. Survival risk is
higher = earlier event everywhere in pathstrat. The binned statistics at the end
(``histogram``, ``histogram_quantiles``, ``score_histograms``) are what target kinds and
federated sites share instead of raw values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from pathstrat.registry import Registry

MetricFn = Callable[..., dict[str, float]]
METRIC_SETS: Registry[MetricFn] = Registry("metric set")


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney with average ranks for ties); NaN if one class."""
    y, s = np.asarray(y, bool), np.asarray(score, float)
    n1, n0 = y.sum(), (~y).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    ranks = np.empty(len(s))
    # average ranks of ties
    _, first, counts = np.unique(ss, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision = sum over thresholds of (R_k - R_{k-1}) P_k (scikit-learn's definition)."""
    y, s = np.asarray(y, bool), np.asarray(score, float)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]  # last index of each distinct score
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUROC, AUPRC, balanced accuracy, accuracy, F1 (at ``threshold``), Brier score."""
    y = np.asarray(y, float)
    s = np.asarray(score, float)
    ok = ~(np.isnan(y) | np.isnan(s))
    y, s = y[ok].astype(bool), s[ok]
    pred = s >= threshold
    tp, tn = float((pred & y).sum()), float((~pred & ~y).sum())
    fp, fn = float((pred & ~y).sum()), float((~pred & y).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return {
        "auroc": auroc(y, s),
        "auprc": average_precision(y, s),
        "balanced_accuracy": float(np.nanmean([sens, spec])) if tp + fn and tn + fp else float("nan"),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "f1": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0,
        "brier": float(np.mean((s - y) ** 2)) if len(y) else float("nan"),
    }


def multiclass_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1, macro one-vs-rest AUROC, multi-class Brier."""
    y = np.asarray(y, float)
    p = np.asarray(probs, float)
    ok = (y >= 0) & ~np.isnan(y)
    y, p = y[ok].astype(int), p[ok]
    k = p.shape[1]
    pred = p.argmax(1)
    present = [c for c in range(k) if (y == c).any()]
    recalls = [float((pred[y == c] == c).mean()) for c in present]
    f1s = []
    for c in range(k):
        tp = float(((pred == c) & (y == c)).sum())
        den = float((pred == c).sum() + (y == c).sum())
        if (y == c).any() or (pred == c).any():
            f1s.append(2 * tp / den if den else 0.0)
    aucs = [auroc(y == c, p[:, c]) for c in present]
    onehot = np.eye(k)[y]
    return {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "f1": float(np.mean(f1s)) if f1s else float("nan"),
        "auroc": float(np.nanmean(aucs)) if len(present) > 1 else float("nan"),
        "brier": float(np.mean(((p - onehot) ** 2).sum(1))) if len(y) else float("nan"),
    }


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Mean absolute error, Pearson r, root mean squared error."""
    y, p = np.asarray(y, float), np.asarray(pred, float)
    ok = ~(np.isnan(y) | np.isnan(p))
    y, p = y[ok], p[ok]
    if len(y) < 2 or y.std() == 0 or p.std() == 0:
        r = float("nan")
    else:
        r = float(np.corrcoef(y, p)[0, 1])
    return {"mae": float(np.abs(y - p).mean()) if len(y) else float("nan"), "pearson_r": r,
            "rmse": float(np.sqrt(((y - p) ** 2).mean())) if len(y) else float("nan")}


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance index; ``risk`` higher = earlier event. The one C-index of the
    package (training metrics, ``stratify``, federated sites).

    Computed by lifelines' ``concordance_index`` (which wants higher = longer survival, hence
    ``-risk``): a pair is comparable when the shorter time is an event, tied risks count one
    half. Rows with a missing value are dropped; NaN when no pair is comparable.
    """
    from lifelines.utils import concordance_index

    t, e, r = (np.asarray(a, float) for a in (time, event, risk))
    ok = ~(np.isnan(t) | np.isnan(e) | np.isnan(r))
    t, e, r = t[ok], e[ok], r[ok]
    if len(t) < 2 or not e.any():
        return float("nan")
    try:
        return float(concordance_index(t, -r, e))
    except ZeroDivisionError:  # lifelines: "No admissable pairs in the dataset."
        return float("nan")


@METRIC_SETS.register("binary")
def _binary_set(y, score, **_):
    return binary_metrics(y, score)


@METRIC_SETS.register("multiclass")
def _multiclass_set(y, score, **_):
    return multiclass_metrics(y, score)


@METRIC_SETS.register("regression")
def _regression_set(y, score, **_):
    return regression_metrics(y, score)


@METRIC_SETS.register("survival")
def _survival_set(y, score, *, time, **_):
    return {"c_index": harrell_c(time, y, score)}


def proportion_ci(k: int, n: int, method: str = "wilson",
                  confidence: float = 0.95) -> tuple[float, float]:
    """Interval of a proportion ``k/n`` from ``scipy.stats.binomtest`` (``"wilson"`` score or
    ``"exact"`` Clopper-Pearson); NaN when ``n == 0``."""
    from scipy.stats import binomtest

    if n == 0:
        return (float("nan"), float("nan"))
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method=method)
    return float(ci.low), float(ci.high)


def patient_resamples(n: int, groups: np.ndarray | None = None, *, n_boot: int,
                      seed: int = 0) -> Iterator[np.ndarray]:
    """Row indices of ``n_boot`` patient-bootstrap resamples of ``n`` rows: *groups* (patients;
    default one per row) drawn with replacement, each bringing all its rows. The one resampling
    rule of the package (metrics, survival, report bands)."""
    rng = np.random.default_rng(seed)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    if len(uniq) == n:  # one row per patient: draw rows (same draws as the general case)
        order = np.argsort(inv)
        for _ in range(n_boot):
            yield order[rng.integers(0, n, n)]
        return
    members = [np.nonzero(inv == g)[0] for g in range(len(uniq))]
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), len(uniq))
        yield np.concatenate([members[g] for g in pick]) if len(pick) else np.array([], int)


def bootstrap_ci(metric_fn: Callable[[np.ndarray], dict[str, float]], n: int,
                 groups: np.ndarray | None = None, *, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, min_valid: int | None = None) -> dict[str, dict[str, float]]:
    """Point estimate and bootstrap spread of every metric returned by ``metric_fn(indices)``.

    Resamples *groups* (patients) with replacement and keeps all their rows, so slides of one
    patient move together (:func:`patient_resamples`). Returns ``{metric: {mean, std, ci_low,
    ci_high}}`` where ``mean`` is the point estimate on all rows and the interval is the
    percentile ``1 - alpha`` interval of the finite replicates; NaN when fewer than
    ``min_valid`` (default ``max(10, n_boot // 10)``, at most ``n_boot``) are finite.
    """
    need = min(n_boot, max(10, n_boot // 10)) if min_valid is None else min_valid
    point = metric_fn(np.arange(n))
    reps: dict[str, list[float]] = {k: [] for k in point}
    for idx in patient_resamples(n, groups, n_boot=n_boot, seed=seed):
        vals = metric_fn(idx)
        for k in reps:
            reps[k].append(vals.get(k, np.nan))
    out = {}
    for k, v in point.items():
        arr = np.asarray(reps[k], float)
        arr = arr[np.isfinite(arr)]
        lo, hi = (np.percentile(arr, [100 * alpha / 2, 100 * (1 - alpha / 2)])
                  if arr.size and arr.size >= need else (np.nan, np.nan))
        out[k] = {"mean": float(v), "std": float(arr.std(ddof=1)) if arr.size > 1 else float("nan"),
                  "ci_low": float(lo), "ci_high": float(hi)}
    return out


# --- binned statistics (counts on grids every party knows: federated sites, target kinds) ------


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


def score_histograms(y: np.ndarray, score: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positive and negative bags per score bin on [0, 1]."""
    y, s = np.asarray(y, float), np.asarray(score, float)
    ok = np.isfinite(y) & np.isfinite(s)
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    return histogram(s[ok & (y == 1)], edges), histogram(s[ok & (y == 0)], edges)
