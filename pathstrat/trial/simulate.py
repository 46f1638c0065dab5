"""Monte-Carlo check of the analytic designs: simulate trials, test with the log-rank test.

Each simulated trial draws the enrolled patients of a design (marker status, model call, arm,
uniform entry, exponential survival), censors at the analysis time ``accrual + follow_up`` and runs
a two-sided log-rank test. Empirical power (and type-I error when both hazard ratios are 1) comes
with its Monte-Carlo standard error ``sqrt(p (1 - p) / N)``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
from scipy.stats import chi2

from pathstrat.trial.design import DesignResult, TrialInputs


def logrank_chi2(time: np.ndarray, event: np.ndarray, group: np.ndarray,
                 valid: np.ndarray | None = None) -> np.ndarray:
    """Two-sample log-rank chi-square for each row of ``(n_trials, n)`` arrays, vectorised.

    ``group`` is 1 for treatment; ``valid`` masks patients out of a row (not enrolled in that
    stratum). Continuous times: ties have probability zero, so each event time has one event.
    """
    t = np.asarray(time, float)
    e = np.asarray(event, bool)
    g = np.asarray(group, bool)
    v = np.ones_like(e) if valid is None else np.asarray(valid, bool)
    t = np.where(v, t, np.inf)
    order = np.argsort(-t, axis=1)  # descending: cumulative sums give the at-risk counts
    e_s = np.take_along_axis(e & v, order, 1)
    g_s = np.take_along_axis(g & v, order, 1)
    v_s = np.take_along_axis(v, order, 1)
    n_risk = np.cumsum(v_s, axis=1)
    n1_risk = np.cumsum(g_s, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p1 = np.where(n_risk > 0, n1_risk / n_risk, 0.0)
        o_minus_e = np.sum(e_s * (g_s - p1), axis=1)
        var = np.sum(e_s * p1 * (1 - p1), axis=1)
        return np.where(var > 0, o_minus_e ** 2 / var, 0.0)


def _draw(inp: TrialInputs, n: int, n_trials: int, share_pos: float, accrual: float,
          hr_pos: float, hr_neg: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    shape = (n_trials, n)
    pos = rng.random(shape) < share_pos
    treat = rng.random(shape) < inp.p_treat
    hr = np.where(pos, hr_pos, hr_neg)
    lam = inp.hazard_control * np.where(treat, hr, 1.0)
    surv = rng.exponential(1.0, shape) / lam
    entry = rng.uniform(0.0, accrual, shape)
    horizon = accrual + inp.follow_up - entry
    return {"time": np.minimum(surv, horizon), "event": surv <= horizon, "treat": treat, "pos": pos}


def simulate_design(inp: TrialInputs, res: DesignResult, n_trials: int, *, seed: int = 0,
                    hr_positive: float | None = None, hr_negative: float | None = None
                    ) -> dict[str, Any]:
    """Empirical rejection rate of ``res``'s primary test(s) over ``n_trials`` simulated trials.

    The trial size is the design's (``res.enrolled``, ``res.accrual``); the truth used to draw
    survival is ``hr_positive``/``hr_negative`` (default: the inputs'), so passing 1 and 1 gives the
    type-I error.
    """
    rng = np.random.default_rng(seed)
    hp = inp.hr_positive if hr_positive is None else hr_positive
    hn = inp.hr_negative if hr_negative is None else hr_negative
    n = int(res.enrolled)
    out: dict[str, Any] = {"design": res.design, "n_trials": n_trials, "enrolled": n,
                           "hr_positive_true": hp, "hr_negative_true": hn}
    if res.design == "all_comers":
        d = _draw(inp, n, n_trials, inp.prevalence, res.accrual, hp, hn, rng)
        stat = logrank_chi2(d["time"], d["event"], d["treat"])
        rej = stat > chi2.ppf(1 - res.alpha_test, 1)
    elif res.design == "enriched":
        d = _draw(inp, n, n_trials, inp.ppv, res.accrual, hp, hn, rng)
        stat = logrank_chi2(d["time"], d["event"], d["treat"])
        rej = stat > chi2.ppf(1 - res.alpha_test, 1)
    elif res.design == "stratified":
        d = _draw(inp, n, n_trials, inp.prevalence, res.accrual, hp, hn, rng)
        # model call: M+ called positive with prob sens, M- with prob 1 - spec
        call = np.where(d["pos"], rng.random(d["pos"].shape) < inp.sensitivity,
                        rng.random(d["pos"].shape) < 1 - inp.specificity)
        s_pos = logrank_chi2(d["time"], d["event"], d["treat"], valid=call)
        rej_pos = s_pos > chi2.ppf(1 - res.tests["positive_stratum"]["alpha"], 1)
        rej = rej_pos
        out["positive_stratum"] = _rate(rej_pos)
        if "overall" in res.tests:
            s_all = logrank_chi2(d["time"], d["event"], d["treat"])
            rej_all = s_all > chi2.ppf(1 - res.tests["overall"]["alpha"], 1)
            out["overall"] = _rate(rej_all)
            out["either"] = _rate(rej_pos | rej_all)
    else:  # pragma: no cover - designs are a closed set
        raise ValueError(res.design)
    out.update(_rate(rej))
    return out


def _rate(rej: np.ndarray) -> dict[str, float]:
    p = float(np.mean(rej))
    return {"rejection_rate": p, "mc_se": math.sqrt(max(p * (1 - p), 1e-12) / rej.size)}


def simulate_all(inp: TrialInputs, results: dict[str, DesignResult], n_trials: int, *,
                 seed: int = 0) -> dict[str, Any]:
    """Power under the inputs and type-I error under HR 1 / 1 for every finite design."""
    out: dict[str, Any] = {}
    for k, (name, res) in enumerate(results.items()):
        if not math.isfinite(res.enrolled):
            out[name] = {"skipped": "design needs infinite patients (hazard ratio 1)"}
            continue
        pw = simulate_design(inp, res, n_trials, seed=seed + 2 * k)
        t1 = simulate_design(replace(inp), res, n_trials, seed=seed + 2 * k + 1,
                             hr_positive=1.0, hr_negative=1.0)
        out[name] = {"power": pw, "type_i_error": t1, "power_analytic": res.power_analytic}
    return out
