"""Patient selection: thresholds, counts and CIs against hand computation on a small table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pathstrat import selection as sel
from pathstrat.errors import SchemaError, UnknownNameError

# 10 patients, 5 positives; sorted by score
Y = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0])
S = np.array([0.95, 0.90, 0.80, 0.70, 0.65, 0.60, 0.40, 0.30, 0.20, 0.10])
R = np.array([1, 0, 1, 1, 0, 0, 0, 1, 0, 0])  # responders


def test_thresholds_by_hand():
    # sensitivity >= 0.8: four of five positives need score >= 0.70 (largest such threshold)
    assert sel.choose_threshold(Y, S, "sensitivity", 0.8) == 0.70
    # sensitivity >= 0.95: all five positives -> 0.60
    assert sel.choose_threshold(Y, S, "sensitivity", 0.95) == 0.60
    # specificity >= 0.8: four negatives below -> smallest threshold 0.60 (0.40 gives 3/5)
    assert sel.choose_threshold(Y, S, "specificity", 0.8) == 0.60
    # NPV >= 0.8: at 0.70 the 6 model-negatives hold 5 negatives (5/6); at 0.80 it is 5/7
    assert sel.choose_threshold(Y, S, "npv", 0.8) == 0.70
    # PPV >= 0.8: smallest threshold with PPV >= .8 is 0.60 (5/6), 0.40 gives 5/7
    assert sel.choose_threshold(Y, S, "ppv", 0.8) == 0.60
    with pytest.raises(UnknownNameError, match="sensitivity"):
        sel.choose_threshold(Y, S, "sensitivty", 0.8)
    with pytest.raises(SchemaError):
        sel.choose_threshold(np.ones(4), S[:4], "sensitivity", 0.9)


def test_evaluate_matches_hand_computation():
    r = sel.evaluate(Y, S, 0.70, response=R)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (4, 0, 5, 1)
    assert r["sensitivity"]["value"] == 0.8
    assert r["specificity"]["value"] == 1.0
    assert r["ppv"]["value"] == 1.0
    assert r["npv"]["value"] == pytest.approx(5 / 6)
    assert r["fraction_selected"]["value"] == 0.4
    assert r["fraction_spared"]["value"] == 0.6
    assert r["prevalence"]["value"] == 0.5
    assert r["positive_rate_selected"]["value"] == 1.0
    assert r["enrichment"] == 2.0
    assert r["number_needed_to_screen"] == 2.5  # 10 screened / 4 positives found
    assert r["tests_per_positive"] == 1.0
    assert r["tests_per_positive_without_model"] == 2.0
    # responders among the 4 selected: scores .95 .90 .80 .70 -> 1,0,1,1 = 3/4; all: 4/10
    assert r["response_rate_selected"]["value"] == 0.75
    assert r["response_rate_all"]["value"] == 0.4
    # Wilson 95% CI of 4/5 = (0.3755, 0.9638); exact (Clopper-Pearson) = (0.2836, 0.9949)
    assert r["sensitivity"]["wilson_low"] == pytest.approx(0.3755, abs=1e-4)
    assert r["sensitivity"]["wilson_high"] == pytest.approx(0.9638, abs=1e-4)
    assert r["sensitivity"]["exact_low"] == pytest.approx(0.2836, abs=1e-4)
    assert r["sensitivity"]["exact_high"] == pytest.approx(0.9949, abs=1e-4)
    # 4/4 -> exact upper bound is 1, Wilson lower (0.5101)
    assert r["ppv"]["exact_high"] == 1.0
    assert r["ppv"]["wilson_low"] == pytest.approx(0.5101, abs=1e-4)


@pytest.mark.parametrize("k,n", [(0, 7), (3, 7), (7, 7), (19, 40), (1, 1)])
def test_intervals_equal_scipy(k, n):
    # independent references: the Wilson score formula by hand, Clopper-Pearson from beta quantiles
    from scipy.stats import beta

    z, p = 1.959963984540054, k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    hi = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    r = sel.proportion(k, n)
    assert (r["wilson_low"], r["wilson_high"]) == pytest.approx((max(0, centre - half), min(1, centre + half)), abs=1e-9)
    assert (r["exact_low"], r["exact_high"]) == pytest.approx((lo, hi), abs=1e-9)


def test_out_of_fold_thresholds_come_from_other_folds():
    dev = pd.DataFrame({"patient_id": [str(i) for i in range(10)], "y": Y, "score": S,
                        "fold": [0, 1] * 5})
    res = sel.select(dev, rule="sensitivity", value=0.95)
    assert res["threshold"] == 0.60
    f0, f1 = dev[dev.fold == 0], dev[dev.fold == 1]
    # fold 0 threshold from fold-1 patients: scores .90 .70 .60 .30 .10 / y 1 1 1 0 0 -> 0.60
    assert res["thresholds_per_fold"] == {"0": sel.choose_threshold(f1.y, f1.score, "sensitivity", 0.95),
                                          "1": sel.choose_threshold(f0.y, f0.score, "sensitivity", 0.95)}
    assert res["thresholds_per_fold"] == {"0": 0.60, "1": 0.80}
    # pooled held-out confusion by hand: fold 0 (.95 .80 .65 .40 .20 / 1 1 0 0 0) at .60 -> TP2 FP1 TN2;
    # fold 1 (.90 .70 .60 .30 .10 / 1 1 1 0 0) at .80 -> TP1 FN2 TN2
    h = res["heldout"]
    assert (h["tp"], h["fp"], h["tn"], h["fn"]) == (3, 1, 4, 2)
    assert h["sensitivity"]["value"] == 0.6


def test_select_cli_holdout_json_and_csv(tmp_path):
    dev = pd.DataFrame({"slide_id": [f"s{i}" for i in range(10)], "patient_id": [f"p{i}" for i in range(10)],
                        "fold": [0, 1] * 5, "repeat": 0, "target": "msi", "y_true": Y, "score": S})
    ho = pd.DataFrame({"slide_id": ["h1", "h2", "h3", "h4"], "patient_id": ["q1", "q2", "q3", "q4"],
                       "target": "msi", "y_true": [1, 0, 1, 0], "score": [0.9, 0.7, 0.5, 0.1]})
    dev.to_csv(tmp_path / "dev.csv", index=False)
    ho.to_csv(tmp_path / "ho.csv", index=False)
    from pathstrat.cli import main

    rc = main(["select", "--predictions", str(tmp_path / "dev.csv"), "--holdout", str(tmp_path / "ho.csv"),
               "--rule", "sensitivity", "--value", "0.8", "--out", str(tmp_path / "out")])
    assert rc == 0
    res = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert res["threshold"] == 0.70
    h = res["heldout"]  # 0.9 (pos) and 0.7 (neg) selected
    assert (h["tp"], h["fp"], h["tn"], h["fn"]) == (1, 1, 1, 1)
    tab = pd.read_csv(tmp_path / "out" / "selection.csv")
    row = tab[(tab.set == "heldout") & (tab.metric == "npv")].iloc[0]
    assert (row.value, row.k, row.n) == (0.5, 1, 2)
    assert set(tab.set) == {"development", "heldout"}


def test_npv_and_ppv_rules_match_hand_computation():
    """y/score table worked by hand: NPV/PPV at every candidate threshold (select if s >= t)."""
    from pathstrat.errors import SchemaError
    from pathstrat.selection import choose_threshold

    y = [0, 0, 0, 1, 0, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    # NPV 1: everything below 0.4 is negative (3/3); at 0.5 it is 3/4.
    assert choose_threshold(y, s, "npv", 1.0) == 0.4
    # NPV >= 0.75: t=0.5 -> 3/4, t=0.6 -> 4/5, t=0.7 -> 4/6: the largest passing is 0.6.
    assert choose_threshold(y, s, "npv", 0.75) == 0.6
    # PPV 1: 0.6, 0.7, 0.8 are all positive; 0.5 is not.
    assert choose_threshold(y, s, "ppv", 1.0) == 0.6
    # PPV >= 0.75: t=0.4 -> 4/5, t=0.3 -> 4/6: the smallest passing is 0.4.
    assert choose_threshold(y, s, "ppv", 0.75) == 0.4
    with pytest.raises(SchemaError, match="PPV >= 1.0"):
        choose_threshold([1, 0], [0.1, 0.9], "ppv", 1.0)
