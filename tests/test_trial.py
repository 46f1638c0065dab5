"""Trial design: Schoenfeld events, mixed populations by hand, simulated power, CLI, sweep."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from lifelines.statistics import logrank_test
from scipy.stats import norm

from pathstrat.trial import (
    TrialInputs,
    compare_designs,
    logrank_chi2,
    run_trial_design,
    schoenfeld_events,
    simulate_all,
    sweep_thresholds,
)
from pathstrat.trial.uncertainty import bootstrap_draws


def test_schoenfeld_textbook_value():
    # the classic figure: HR 0.7, two-sided alpha 0.05, power 80%, 1:1 -> 247 events
    assert schoenfeld_events(0.7, 0.05, 0.8) == 247
    assert schoenfeld_events(0.5, 0.05, 0.9) == math.ceil((norm.ppf(0.975) + norm.ppf(0.9)) ** 2
                                                          / (0.25 * math.log(0.5) ** 2))


@pytest.mark.parametrize("hr", [0.5, 0.7, 0.8])
def test_perfect_model_enriched_equals_schoenfeld(hr):
    inp = TrialInputs(prevalence=0.3, sensitivity=1.0, specificity=1.0, hr_positive=hr,
                      hr_negative=1.0)
    want = math.ceil((norm.ppf(0.975) + norm.ppf(0.8)) ** 2 / (0.25 * math.log(hr) ** 2))
    res = compare_designs(inp)
    assert res["enriched"].events == want
    assert res["enriched"].hr_effective == pytest.approx(hr, rel=1e-12)
    # screened = enrolled / prevalence (every model-positive is marker-positive)
    assert res["enriched"].screened == math.ceil(res["enriched"].enrolled / 0.3 - 1e-9)
    # prevalence 1: all comers are all marker-positive
    allp = compare_designs(TrialInputs(prevalence=1.0, sensitivity=0.9, specificity=0.7,
                                       hr_positive=hr, hr_negative=1.0))
    assert allp["all_comers"].events == want


def _p_event(lam, a, f):
    return 1 - (math.exp(-lam * f) - math.exp(-lam * (a + f))) / (lam * a)


def test_mixed_case_by_hand():
    # prevalence 0.5, sens 0.8, spec 0.9 -> P(model+) = 0.45, PPV = 0.4 / 0.45
    inp = TrialInputs(prevalence=0.5, sensitivity=0.8, specificity=0.9, hr_positive=0.5,
                      hr_negative=1.0, median_control=12, accrual=24, follow_up=12)
    lam = math.log(2) / 12
    e_pos = 0.5 * _p_event(lam * 0.5, 24, 12) + 0.5 * _p_event(lam, 24, 12)
    e_neg = _p_event(lam, 24, 12)
    z2 = (norm.ppf(0.975) + norm.ppf(0.8)) ** 2
    for name, w in (("enriched", 0.4 / 0.45), ("all_comers", 0.5)):
        ev = w * e_pos + (1 - w) * e_neg
        hr_eff = math.exp(w * e_pos * math.log(0.5) / ev)
        d = math.ceil(z2 / (0.25 * math.log(hr_eff) ** 2))
        n = math.ceil(d / ev)
        r = compare_designs(inp)[name]
        assert r.hr_effective == pytest.approx(hr_eff, rel=1e-12)
        assert (r.events, r.enrolled) == (d, n)
    enr = compare_designs(inp)["enriched"]
    assert enr.screened == math.ceil(enr.enrolled / 0.45)
    assert enr.number_needed_to_screen == pytest.approx(enr.screened / enr.enrolled)
    # enrichment pays here: fewer enrolled, more screened than enrolled
    assert enr.enrolled < compare_designs(inp)["all_comers"].enrolled


def test_logrank_matches_lifelines():
    rng = np.random.default_rng(3)
    t = rng.exponential(1, (4, 60))
    e = rng.random((4, 60)) < 0.7
    g = rng.random((4, 60)) < 0.5
    ours = logrank_chi2(t, e, g)
    ref = [logrank_test(t[i][g[i]], t[i][~g[i]], e[i][g[i]], e[i][~g[i]]).test_statistic
           for i in range(4)]
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    # masking a stratum equals testing the subset
    v = rng.random((4, 60)) < 0.6
    sub = [logrank_test(t[i][g[i] & v[i]], t[i][~g[i] & v[i]], e[i][g[i] & v[i]],
                        e[i][~g[i] & v[i]]).test_statistic for i in range(4)]
    np.testing.assert_allclose(logrank_chi2(t, e, g, valid=v), sub, rtol=1e-10)


def test_simulated_power_and_type_i_error():
    inp = TrialInputs(prevalence=0.4, sensitivity=0.85, specificity=0.8, hr_positive=0.6,
                      hr_negative=0.9, accrual=18, follow_up=12)
    res = compare_designs(inp)
    n_trials = 800
    sim = simulate_all(inp, res, n_trials, seed=11)
    for name, s in sim.items():
        p, se = s["power"]["rejection_rate"], s["power"]["mc_se"]
        # Monte-Carlo error plus the stated accuracy of the Schoenfeld/mixture approximation (0.02)
        assert abs(p - s["power_analytic"]) <= 3 * se + 0.02, (name, p, s["power_analytic"])
        a = res[name].alpha_test
        t1 = s["type_i_error"]["rejection_rate"]
        assert abs(t1 - a) <= 3 * math.sqrt(a * (1 - a) / n_trials) + 0.005, (name, t1, a)


def test_bootstrap_draws_center_on_counts():
    c = {"tp": 40, "fn": 10, "fp": 15, "tn": 85}
    d = bootstrap_draws(c, 4000, seed=0)
    np.testing.assert_allclose(d.mean(axis=0), [50 / 150, 0.8, 85 / 100], atol=0.01)
    # binomial SD of the sensitivity: sqrt(p(1-p)/n_pos) ~ 0.057 (n_pos itself varies a little)
    assert d[:, 1].std() == pytest.approx(math.sqrt(0.8 * 0.2 / 50), rel=0.15)


def _selection_run(tmp_path):
    from pathstrat.selection import run_selection

    rng = np.random.default_rng(0)
    n = 120
    y = (rng.random(n) < 0.4).astype(int)
    score = y * 1.2 + rng.normal(size=n)
    preds = pd.DataFrame({"slide_id": [f"s{i}" for i in range(n)],
                          "patient_id": [f"p{i}" for i in range(n)], "score": score, "y_true": y,
                          "fold": np.arange(n) % 4, "target": "msi"})
    preds.to_csv(tmp_path / "predictions.csv", index=False)
    run_selection(tmp_path / "predictions.csv", tmp_path, target="msi", rule="sensitivity",
                  value=0.9)
    return tmp_path / "selection.json", tmp_path / "predictions.csv"


def test_run_from_selection_writes_intervals_and_sweep(tmp_path):
    sel, preds = _selection_run(tmp_path)
    s = json.loads(sel.read_text())["heldout"]
    doc = run_trial_design(tmp_path / "td", selection=sel, predictions=preds, hr_positive=0.6,
                           hr_negative=0.95, n_draws=300)
    assert doc["inputs"]["sensitivity"] == pytest.approx(s["tp"] / (s["tp"] + s["fn"]))
    assert doc["inputs"]["specificity"] == pytest.approx(s["tn"] / (s["tn"] + s["fp"]))
    for name, d in doc["designs"].items():
        iv = d["intervals"]["enrolled"]
        assert iv["low"] <= d["enrolled"] <= iv["high"], name
    # enrichment's enrolled count depends on the model: its interval is not a point
    assert doc["designs"]["enriched"]["intervals"]["screened"]["high"] > \
        doc["designs"]["enriched"]["intervals"]["screened"]["low"]
    tab = pd.read_csv(tmp_path / "td" / "trial_sweep.csv")
    assert set(tab["design"]) == {"all_comers", "enriched", "stratified"}
    # a higher threshold selects fewer patients: model-positive rate falls monotonically
    enr = tab[tab["design"] == "enriched"].sort_values("threshold")
    assert np.all(np.diff(enr["model_positive_rate"].to_numpy()) <= 1e-12)
    assert (tmp_path / "td" / "trial_sweep.png").stat().st_size > 1000
    csv = pd.read_csv(tmp_path / "td" / "trial_design.csv")
    assert list(csv["design"]) == ["all_comers", "enriched", "stratified"]


def test_sweep_recomputes_operating_point():
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.5).astype(int)
    s = y + rng.normal(size=200)
    inp = TrialInputs(prevalence=0.5, sensitivity=0.5, specificity=0.5, hr_positive=0.6)
    tab = sweep_thresholds(y, s, inp, n_points=5)
    row = tab.iloc[0]
    assert row["sensitivity"] == pytest.approx(np.mean(s[y == 1] >= row["threshold"]))
    assert row["specificity"] == pytest.approx(np.mean(s[y == 0] < row["threshold"]))


def test_cli_refuses_percent_prevalence(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pathstrat", "trial-design", "--out", str(tmp_path),
                           "--prevalence", "35", "--sensitivity", "0.9", "--specificity", "0.8",
                           "--hr-positive", "0.6"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "prevalence" in err[0] and "0.35" in err[0]
    assert not (tmp_path / "trial_design.json").exists()


def test_cli_needs_inputs_or_selection(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pathstrat", "trial-design", "--out", str(tmp_path),
                           "--hr-positive", "0.6"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--selection" in proc.stderr
