"""Metrics against scikit-learn and lifelines on the same predictions; bootstrap behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines.utils import concordance_index
from sklearn import metrics as skm

from pathstrat.metrics import (
    average_precision,
    binary_metrics,
    bootstrap_ci,
    harrell_c,
    histogram,
    histogram_quantiles,
    multiclass_metrics,
    regression_metrics,
    score_histograms,
)


def test_binary_metrics_equal_sklearn(rng):
    y = rng.integers(0, 2, 200)
    s = np.round(np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1), 2)  # rounded -> tied scores
    m = binary_metrics(y, s)
    pred = s >= 0.5
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert m["auprc"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, s))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=40))
def test_average_precision_property(pairs):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs], float)
    if y.any():
        assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


def test_multiclass_metrics_equal_sklearn(rng):
    y = rng.integers(0, 3, 150)
    p = rng.dirichlet(np.ones(3), 150)
    p[np.arange(150), y] += 0.3
    p /= p.sum(1, keepdims=True)
    m = multiclass_metrics(y, p)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["brier"] == pytest.approx(np.mean(((p - np.eye(3)[y]) ** 2).sum(1)))


def test_regression_metrics_equal_sklearn_scipy(rng):
    from scipy.stats import pearsonr

    y = rng.standard_normal(100)
    p = y + 0.5 * rng.standard_normal(100)
    m = regression_metrics(y, p)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert m["pearson_r"] == pytest.approx(pearsonr(y, p)[0])
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, p)))


def test_harrell_c_equals_lifelines_with_ties(rng):
    t = np.round(rng.exponential(10, 120))  # tied times
    e = rng.integers(0, 2, 120)
    risk = np.round(rng.standard_normal(120), 1)  # tied risks
    # lifelines wants higher = longer survival: pass -risk (the named convention adapter)
    assert harrell_c(t, e, risk) == pytest.approx(concordance_index(t, -risk, e), abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.booleans(), st.integers(-3, 3)), min_size=3, max_size=30))
def test_harrell_c_symmetry(rows):
    t = np.array([r[0] for r in rows], float)
    e = np.array([r[1] for r in rows], float)
    r = np.array([r[2] for r in rows], float)
    c = harrell_c(t, e, r)
    if not np.isnan(c):
        assert harrell_c(t, e, -r) == pytest.approx(1 - c)
        assert c == pytest.approx(concordance_index(t, -r, e))


def test_patient_bootstrap_keeps_patients_together_and_covers_point(rng):
    y = np.repeat(rng.integers(0, 2, 60), 2)  # two slides per patient, same label
    s = y * 0.4 + rng.random(120)
    groups = np.repeat(np.arange(60), 2)
    seen = []

    def fn(idx):
        seen.append(idx)
        return binary_metrics(y[idx], s[idx])

    res = bootstrap_ci(fn, 120, groups, n_boot=200, seed=1)
    a = res["auroc"]
    assert a["ci_low"] <= a["mean"] <= a["ci_high"] and a["std"] > 0
    assert a["mean"] == pytest.approx(skm.roc_auc_score(y, s))
    for idx in seen[1:20]:  # every resampled patient brings both slides
        counts = np.bincount(groups[idx], minlength=60)
        assert set(np.unique(counts[counts > 0] % 2)) == {0}
    res2 = bootstrap_ci(lambda idx: binary_metrics(y[idx], s[idx]), 120, groups, n_boot=200, seed=1)
    assert res2 == res  # seeded


def test_binned_statistics_equal_numpy(rng):
    """The counts target kinds and federated sites share (``metrics.histogram`` and friends)."""
    edges = np.linspace(0.0, 60.0, 121)
    t = np.r_[rng.exponential(10.0, 500), np.nan, 75.0]  # NaN dropped, 75 clipped to the last bin
    counts = histogram(t, edges)
    want = np.histogram(np.clip(t[np.isfinite(t)], 0, 60), edges)[0]
    np.testing.assert_array_equal(counts, want)
    qs = [0.25, 0.5, 0.75]
    got = histogram_quantiles(counts, edges, qs)
    assert np.all(np.abs(np.asarray(got) - np.quantile(t[np.isfinite(t)], qs)) <= edges[1] + 1e-9)
    assert histogram_quantiles(np.zeros(4), np.linspace(0, 1, 5), qs) == []
    y = rng.integers(0, 2, 300).astype(float)
    score = rng.random(300)
    y[0], score[1] = np.nan, np.nan
    pos, neg = score_histograms(y, score, 20)
    ok = np.isfinite(y) & np.isfinite(score)
    unit = np.linspace(0, 1, 21)
    np.testing.assert_array_equal(pos, np.histogram(score[ok & (y == 1)], unit)[0])
    np.testing.assert_array_equal(neg, np.histogram(score[ok & (y == 0)], unit)[0])


def test_federated_stats_share_the_metrics_helpers():
    from pathstrat.federated import stats

    assert stats.histogram is histogram and stats.score_histograms is score_histograms
    assert stats.histogram_quantiles is histogram_quantiles
