"""Survival statistics against lifelines' own calls and documented values; OOF cut-offs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_rossi
from lifelines.statistics import logrank_test, multivariate_logrank_test, proportional_hazard_test
from lifelines.utils import concordance_index
from sklearn.metrics import roc_auc_score

from pathstrat import survival as S
from pathstrat.errors import LeakageError, SchemaError


@pytest.fixture(scope="module")
def rossi() -> pd.DataFrame:
    d = load_rossi().reset_index().rename(columns={"index": "patient_id"})
    d["patient_id"] = "p" + d["patient_id"].astype(str)
    d["fold"] = np.random.default_rng(0).integers(0, 5, len(d))
    return d


@pytest.fixture(scope="module")
def rossi_result(rossi):
    """prio (+ noise) as a risk score, all other rossi columns as covariates, fin as arm."""
    pts = rossi.assign(score=rossi["prio"] + np.random.default_rng(1).normal(0, 1, len(rossi)))
    return S.analyse(pts, "week", "arrest", cutoff="median", arm_col="fin",
                     covariates=["age", "race"], n_boot=100, seed=0)


# ------------------------------------------------------------------ concordance sign
def test_c_index_sign_risk_predicting_early_death_is_above_half(rng):
    time = rng.exponential(10, 200)
    event = rng.random(200) < 0.7
    risk = -time + rng.normal(0, 2, 200)  # high risk = short time
    c = S.harrell_c(time, event, risk)
    assert c > 0.8
    assert c == pytest.approx(concordance_index(time, -risk, event))
    assert S.harrell_c(time, event, -risk) < 0.2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 100), st.booleans(), st.floats(-5, 5)),
                min_size=3, max_size=30))
def test_c_index_of_negated_risk_is_one_minus(rows):
    t, e, r = (np.array(x) for x in zip(*rows, strict=True))
    if not e.any():
        e[0] = True
    c = S.harrell_c(t, e, r)
    if np.isnan(c):  # no admissible pair (lifelines would raise): NaN both ways
        assert np.isnan(S.harrell_c(t, e, -r))
        return
    assert S.harrell_c(t, e, -r) == pytest.approx(1 - c, abs=1e-9)


# ------------------------------------------------------------------ equals lifelines' own calls
def test_statistics_equal_lifelines_calls(rossi_result):
    df = rossi_result.patients
    t, e, r = df["week"], df["arrest"], df["score"]
    s = rossi_result.summary
    assert s["c_index"] == pytest.approx(concordance_index(t, -r, e))
    lr = multivariate_logrank_test(t, df["risk_group"], e)
    assert s["logrank_chi2"] == pytest.approx(lr.test_statistic)
    assert s["logrank_p"] == pytest.approx(lr.p_value)
    two = logrank_test(t[df.risk_group == "low"], t[df.risk_group == "high"],
                       e[df.risk_group == "low"], e[df.risk_group == "high"])
    assert s["logrank_chi2"] == pytest.approx(two.test_statistic)
    cph = CoxPHFitter().fit(df[["score", "week", "arrest"]], "week", "arrest")
    row = cph.summary.loc["score"]
    assert s["cox_hr"] == pytest.approx(row["exp(coef)"])
    assert s["cox_ci_low"] == pytest.approx(row["exp(coef) lower 95%"])
    assert s["cox_ci_high"] == pytest.approx(row["exp(coef) upper 95%"])
    assert s["cox_p"] == pytest.approx(row["p"])
    assert s["cox_hr_per_sd"] == pytest.approx(row["exp(coef)"] ** df["score"].std(), rel=1e-4)
    for g in ("low", "high"):
        m = df.risk_group == g
        kmf = KaplanMeierFitter().fit(t[m], e[m])
        assert s["km_median"][g]["n"] == m.sum()
        assert s["km_median"][g]["median"] == kmf.median_survival_time_  # inf: > 50% event-free
    ph = proportional_hazard_test(cph, df[["score", "week", "arrest"]], time_transform="rank")
    assert s["cox"]["ph_test"][0]["p"] == pytest.approx(float(ph.summary["p"].iloc[0]))
    assert s["c_index_ci_low"] < s["c_index"] < s["c_index_ci_high"]


def test_km_median_and_ci_equal_lifelines(rng):
    t = rng.exponential(12, 120)
    e = (rng.random(120) < 0.8).astype(int)
    fit = S.kaplan_meier(t, e, np.zeros(120, int), ["all"])
    med = S.km_median(fit)["all"]
    kmf = KaplanMeierFitter().fit(t, e)
    from lifelines.utils import median_survival_times

    ci = median_survival_times(kmf.confidence_interval_)
    assert med["median"] == pytest.approx(kmf.median_survival_time_)
    assert (med["ci_low"], med["ci_high"]) == pytest.approx((ci.iloc[0, 0], ci.iloc[0, 1]))
    assert med["ci_low"] < med["median"] < med["ci_high"]


def test_rossi_multivariable_cox_matches_documented_values(rossi):
    """Coefficients of the full rossi model as documented by lifelines (and R's coxph)."""
    cph, _ = S.fit_cox(rossi.assign(score=rossi["prio"]),
                       ["fin", "age", "race", "wexp", "mar", "paro", "score"], "week", "arrest")
    coef = {r["term"]: r for r in S.cox_rows(cph)}
    documented = {"fin": -0.379, "age": -0.057, "race": 0.314, "wexp": -0.150, "mar": -0.434,
                  "paro": -0.085, "score": 0.091}
    for k, v in documented.items():
        assert coef[k]["coef"] == pytest.approx(v, abs=1.5e-3), k
    assert coef["score"]["hr"] == pytest.approx(1.10, abs=5e-3)  # prio HR ~1.10
    assert coef["age"]["hr"] == pytest.approx(0.94, abs=5e-3)
    assert coef["fin"]["p"] == pytest.approx(0.047, abs=2e-3)
    assert cph.concordance_index_ == pytest.approx(0.640, abs=1e-3)


def test_rossi_logrank_on_fin_matches_lifelines(rossi):
    pts = rossi.assign(score=rossi["fin"].astype(float))
    lr = S.logrank(pts["week"], pts["arrest"], pts["fin"])
    a, b = pts[pts.fin == 0], pts[pts.fin == 1]
    ref = logrank_test(a.week, b.week, a.arrest, b.arrest)
    assert lr["chi2"] == pytest.approx(ref.test_statistic)
    assert lr["p"] == pytest.approx(ref.p_value)
    assert lr["chi2"] == pytest.approx(3.84, abs=0.02)  # documented rossi fin log-rank ~3.84


def test_multivariable_and_interaction(rossi_result, rossi):
    s = rossi_result.summary
    terms = {r["term"] for r in s["cox"]["multivariable"]["terms"]}
    assert terms == {"score", "age", "race"}
    inter = s["cox"]["interaction"]
    # reparametrised model score*(1-arm) + score*arm + arm gives the per-arm HRs directly
    df = rossi_result.patients
    x = pd.DataFrame({"s0": df.score * (1 - df.fin), "s1": df.score * df.fin, "arm": df.fin,
                      "week": df.week, "arrest": df.arrest})
    ref = CoxPHFitter().fit(x, "week", "arrest").summary
    for arm, term in (("0", "s0"), ("1", "s1")):
        got = inter["hr_per_arm"][arm]
        assert got["hr"] == pytest.approx(ref.loc[term, "exp(coef)"], rel=1e-4)
        assert got["ci_low"] == pytest.approx(ref.loc[term, "exp(coef) lower 95%"], rel=1e-3)
        assert got["ci_high"] == pytest.approx(ref.loc[term, "exp(coef) upper 95%"], rel=1e-3)
        assert got["p"] == pytest.approx(ref.loc[term, "p"], rel=1e-3)


# ------------------------------------------------------------------ out-of-fold cut-offs
def test_oof_cutoff_is_not_fitted_on_stratified_patients():
    # fold 0 scores 1,2,3,10 ; fold 1 scores 4,5,6,7
    pts = pd.DataFrame({"patient_id": list("abcdefgh"), "fold": [0] * 4 + [1] * 4,
                        "score": [1, 2, 3, 10, 4, 5, 6, 7]})
    groups, info = S.oof_risk_groups(pts, "median")
    # OOF: fold 1 is cut at median(1,2,3,10)=2.5 -> all high; fold 0 at median(4..7)=5.5
    assert info["cutoffs_per_fold"] == {"0": [5.5], "1": [2.5]}
    assert groups.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    pooled = S.assign_groups(pts.score, S.fit_cutoffs(pts.score, "median"))  # median 4.5
    within = [S.assign_groups(pts.score[pts.fold == k], S.fit_cutoffs(pts.score[pts.fold == k],
                                                                      "median")) for k in (0, 1)]
    assert pooled.tolist() != groups.tolist()  # patient 'e' (score 4) differs
    assert np.concatenate(within).tolist() != groups.tolist()
    # moving fold-1 patients' own scores never moves fold 1's cut-off
    moved = pts.assign(score=pts.score.where(pts.fold == 0, pts.score * 100))
    assert S.oof_risk_groups(moved, "median")[1]["cutoffs_per_fold"]["1"] == [2.5]


def test_train_scores_are_used_and_leakage_refused():
    pts = pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "fold": [0, 0, 1, 1],
                        "score": [1.0, 3.0, 2.0, 4.0]})
    tr = pd.DataFrame({"patient_id": ["c", "d", "a", "b"], "fold": [0, 0, 1, 1],
                       "score": [0.0, 0.2, 5.0, 6.0]})
    groups, info = S.oof_risk_groups(pts, "median", train_scores=tr)
    assert info["source"] == "train_scores"
    assert info["cutoffs_per_fold"] == {"0": [pytest.approx(0.1)], "1": [5.5]}
    assert groups.tolist() == [1, 1, 0, 0]
    with pytest.raises(LeakageError, match="fold 0"):
        S.oof_risk_groups(pts, "median", train_scores=tr.assign(patient_id=["a", "d", "a", "b"]))


def test_external_cohort_cutoff_from_development_scores():
    ext = pd.DataFrame({"patient_id": ["x", "y", "z"], "score": [0.1, 0.5, 0.9]})
    dev = pd.DataFrame({"patient_id": ["a", "a", "b", "c"], "fold": [0, 0, 1, 1],
                        "score": [0.0, 0.2, 0.8, 0.3]})  # patient means 0.1, 0.8, 0.3 -> median 0.3
    groups, info = S.oof_risk_groups(ext, "median", train_scores=dev)
    assert info == {"method": "median", "source": "development", "n_cutoffs": 1, "cutoffs": [0.3]}
    assert groups.tolist() == [0, 1, 1]
    with pytest.raises(LeakageError):
        S.oof_risk_groups(ext, "median", train_scores=dev.assign(patient_id=["a", "a", "b", "x"]))


def test_fixed_and_tertile_cutoffs():
    pts = pd.DataFrame({"patient_id": list("abcdef"), "score": [0.1, 0.2, 0.5, 0.6, 0.9, 1.0]})
    g, info = S.oof_risk_groups(pts, S.parse_cutoff("0.5"))
    assert g.tolist() == [0, 0, 0, 1, 1, 1] and info["source"] == "given"
    with pytest.raises(SchemaError, match="out of fold"):
        S.oof_risk_groups(pts, "median")
    folds = pts.assign(fold=[0, 1, 2, 0, 1, 2])
    g, info = S.oof_risk_groups(folds, "tertiles")
    assert info["n_cutoffs"] == 2 and set(g) <= {0, 1, 2}
    assert S.group_labels(2) == ["low", "intermediate", "high"]


# ------------------------------------------------------------------ time-dependent AUC
def test_td_auc_without_censoring_equals_roc_auc(rng):
    t = rng.exponential(10, 300)
    r = -np.log(t) + rng.normal(0, 1, 300)
    e = np.ones(300, int)
    for tau in (3.0, 8.0, 15.0):
        auc = S.time_dependent_auc(t, e, r, [tau])[0]
        assert auc == pytest.approx(roc_auc_score(t <= tau, r))


def test_td_auc_ipcw_recovers_uncensored_auc():
    rng = np.random.default_rng(7)
    n = 3000
    r = rng.normal(0, 1, n)
    t_true = rng.exponential(np.exp(-r))  # higher risk -> earlier event
    c = rng.exponential(1.5, n)  # independent censoring
    t, e = np.minimum(t_true, c), (t_true <= c).astype(int)
    tau = 0.7
    truth = roc_auc_score(t_true <= tau, r)
    ipcw = S.time_dependent_auc(t, e, r, [tau])[0]
    naive = roc_auc_score((t <= tau)[(e == 1) | (t > tau)], r[(e == 1) | (t > tau)])
    assert ipcw == pytest.approx(truth, abs=0.02)
    assert abs(ipcw - truth) < abs(naive - truth)


# ------------------------------------------------------------------ CLI end to end
def test_stratify_cli_writes_contract(tmp_path, rossi):
    preds = pd.DataFrame({"slide_id": np.repeat(rossi.patient_id + "_s", 1), "patient_id": rossi.patient_id,
                          "fold": rossi.fold, "repeat": 0, "target": "os", "y_true": np.nan,
                          "risk": rossi.prio + 0.01 * np.arange(len(rossi))})
    # two slides for the first patient: aggregated by mean
    extra = preds.iloc[[0]].assign(slide_id="extra", risk=preds.risk.iloc[0] + 2)
    preds = pd.concat([preds, extra])
    preds.to_csv(tmp_path / "predictions.csv", index=False)
    clinical = rossi[["patient_id", "week", "arrest", "fin", "age", "race"]]  # no slide paths
    clinical.to_csv(tmp_path / "clinical.csv", index=False)
    from pathstrat.cli import main

    rc = main(["stratify", "--predictions", str(tmp_path / "predictions.csv"), "--manifest",
               str(tmp_path / "clinical.csv"), "--score-col", "risk", "--time-col", "week",
               "--event-col", "arrest", "--cutoff", "tertiles", "--arm-col", "fin",
               "--covariates", "age,race", "--n-boot", "50", "--out", str(tmp_path / "out")])
    assert rc == 0
    s = json.loads((tmp_path / "out" / "survival.json").read_text())
    for k in ("c_index", "logrank_chi2", "logrank_p", "cox_hr", "cox_ci_low", "cox_ci_high",
              "cox_p", "km_median"):
        assert k in s
    assert set(s["km_median"]) == {"low", "intermediate", "high"}
    assert s["n_patients"] == len(rossi)
    pr = pd.read_csv(tmp_path / "out" / "patients_risk.csv", dtype={"patient_id": str})
    first = pr.set_index("patient_id").loc[rossi.patient_id.iloc[0], "score"]
    assert first == pytest.approx(preds.risk.iloc[0] + 1)  # mean of the two slides
    fig = tmp_path / "out" / "figures"
    for name in ("km.png", "forest.png", "km_curves.csv", "km_at_risk.csv", "forest.csv"):
        assert (fig / name).stat().st_size > 0, name
    ar = pd.read_csv(fig / "km_at_risk.csv")
    assert ar[ar.time == 0].at_risk.sum() == len(rossi)
    # missing column -> one clear error line, exit 2
    rc = main(["stratify", "--predictions", str(tmp_path / "predictions.csv"), "--manifest",
               str(tmp_path / "clinical.csv"), "--score-col", "risk", "--time-col", "weeks",
               "--event-col", "arrest", "--out", str(tmp_path / "out2")])
    assert rc == 2


@pytest.mark.parametrize("ties", [False, True])
def test_td_auc_and_uno_c_equal_scikit_survival(ties):
    """Reference: scikit-survival (a test dependency only; GPL code never ships in pathstrat)."""
    sk = pytest.importorskip("sksurv.metrics")
    from sksurv.util import Surv

    rng = np.random.default_rng(7)
    n = 180
    z = rng.standard_normal(n)
    t_ev, cens = rng.exponential(np.exp(-z)) * 10, rng.uniform(0, 15, n)
    r = z + 0.5 * rng.standard_normal(n)
    if ties:  # times and scores on a coarse grid: tied times, event/censoring ties, tied risks
        t_ev, cens, r = np.round(t_ev, 0), np.round(cens, 0), np.round(r, 1)
    t, e = np.minimum(t_ev, cens), (t_ev <= cens).astype(int)
    y = Surv.from_arrays(e.astype(bool), t)
    times = np.quantile(t[e == 1], [0.25, 0.5, 0.75])
    ref_auc, _ = sk.cumulative_dynamic_auc(y, y, r, times)
    np.testing.assert_allclose(S.time_dependent_auc(t, e, r, times), ref_auc, atol=1e-12)
    for tau in (np.quantile(t, 0.8), None):
        ref = sk.concordance_index_ipcw(y, y, r, tau=tau)[0]
        assert S.uno_c(t, e, r, tau) == pytest.approx(ref, abs=1e-12)
