"""Survival statistics: concordance (Harrell via :func:`pathstrat.metrics.harrell_c`, Uno),
time-dependent AUC, Kaplan-Meier, log-rank and Cox models (lifelines underneath).

Convention: ``risk`` is *higher = earlier event*; the only conversion to lifelines'
``concordance_index`` (higher = longer survival) lives in :func:`pathstrat.metrics.harrell_c`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import PathstratError
from pathstrat.metrics import harrell_c  # noqa: F401 - the package's one C-index (lifelines)

Z95 = 1.959963984540054


class SurvivalFitError(PathstratError, ValueError):
    """A survival model could not be fitted (too few events, collinear covariates, ...)."""


# ---------------------------------------------------------------- concordance and td-AUC
def _censoring_survival(time: np.ndarray, event: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Kaplan-Meier estimate of the censoring survival G(s) at ``at``.

    Conventions (those of Uno et al. and scikit-survival): at a time with both, events come
    before censorings (an event at ``u`` leaves the censoring risk set at ``u``), and G is
    right-continuous (G(T_i) counts censorings at T_i)."""
    cens_times = np.unique(time[event == 0])
    if cens_times.size == 0:
        return np.ones_like(at, dtype=float)
    d_cens = np.array([((time == u) & (event == 0)).sum() for u in cens_times], float)
    n_at_risk = np.array([(time > u).sum() for u in cens_times], float) + d_cens
    factors = np.cumprod(1.0 - d_cens / n_at_risk)
    idx = np.searchsorted(cens_times, at, side="right")  # number of censoring times <= at
    return np.where(idx == 0, 1.0, factors[np.maximum(idx - 1, 0)])


def time_dependent_auc(time: Sequence[float], event: Sequence[int], risk: Sequence[float],
                       times: Sequence[float]) -> np.ndarray:
    """Cumulative/dynamic AUC(t) with inverse-probability-of-censoring weights (Uno et al. 2007).

    Cases at ``t``: event observed at or before ``t`` (weighted by 1/G(T_i)); controls: still
    event-free after ``t``. Ties in risk count one half. NaN where there are no cases or controls.
    """
    t = np.asarray(time, float)
    e = np.asarray(event, int)
    r = np.asarray(risk, float)
    g_all = _censoring_survival(t, e, t)
    w_all = np.divide(1.0, g_all, out=np.zeros_like(g_all), where=g_all > 0)
    out = []
    for tau in np.asarray(times, float):
        cases = (t <= tau) & (e == 1)
        controls = t > tau
        if not cases.any() or not controls.any():
            out.append(np.nan)
            continue
        rc, rk, w = r[cases][:, None], r[controls][None, :], w_all[cases]
        conc = (rc > rk).sum(axis=1) + 0.5 * (rc == rk).sum(axis=1)
        out.append(float((w * conc).sum() / (w.sum() * controls.sum())))
    return np.asarray(out)


def uno_c(time: Sequence[float], event: Sequence[int], risk: Sequence[float],
          tau: float | None = None) -> float:
    """Uno's C (Uno et al. 2011): Harrell's pairs weighted by the inverse squared probability
    of remaining uncensored, G(T_i)^-2, over pairs whose earlier time is an event before
    ``tau`` (default: the last time). Unlike Harrell's C it does not depend on the censoring
    distribution. Ties in risk count one half; NaN without a usable pair."""
    t = np.asarray(time, float)
    e = np.asarray(event, int)
    r = np.asarray(risk, float)
    tau = float(t.max()) if tau is None else float(tau)
    g = _censoring_survival(t, e, t)
    w = np.zeros(len(t))
    ok = (e == 1) & (t < tau) & (g > 0)
    w[ok] = 1.0 / g[ok] ** 2
    num = den = 0.0
    for i in np.flatnonzero(w):
        later = (t > t[i]) | ((t == t[i]) & (e == 0))  # a censored tie outlives the event
        if not later.any():
            continue
        den += w[i] * later.sum()
        num += w[i] * ((r[i] > r[later]).sum() + 0.5 * (r[i] == r[later]).sum())
    return float(num / den) if den > 0 else float("nan")


def stat_ci(stat: Callable[[np.ndarray], float], n: int, *, n_boot: int = 500,
                 seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat(indices)`` resampling the ``n`` patients (the package's
    one bootstrap, :func:`pathstrat.metrics.bootstrap_ci`, for a single statistic)."""
    from pathstrat.metrics import bootstrap_ci as _bootstrap

    ci = _bootstrap(lambda i: {"v": stat(i)}, n, n_boot=n_boot, seed=seed, alpha=alpha)["v"]
    return ci["ci_low"], ci["ci_high"]


# ---------------------------------------------------------------- Kaplan-Meier and log-rank
def kaplan_meier(time: Sequence[float], event: Sequence[int], groups: Sequence[int],
                 labels: Sequence[str]) -> dict[str, Any]:
    """A fitted lifelines ``KaplanMeierFitter`` per non-empty group, keyed by label."""
    from lifelines import KaplanMeierFitter

    t, e, g = np.asarray(time, float), np.asarray(event, int), np.asarray(groups)
    fitters = {}
    for i, lab in enumerate(labels):
        m = g == i
        if m.any():
            fitters[lab] = KaplanMeierFitter(label=lab).fit(t[m], e[m], alpha=0.05)
    return fitters


def km_median(fitters: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Median survival with its 95% CI per group (inf when the curve never reaches 0.5)."""
    from lifelines.utils import median_survival_times

    out = {}
    for lab, kmf in fitters.items():
        ci = median_survival_times(kmf.confidence_interval_)
        out[lab] = {"median": float(kmf.median_survival_time_), "ci_low": float(ci.iloc[0, 0]),
                    "ci_high": float(ci.iloc[0, 1]), "n": int(kmf.event_table["at_risk"].iloc[0]),
                    "events": int(kmf.event_table["observed"].sum())}
    return out


def km_tables(fitters: dict[str, Any], times: Sequence[float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Curves (group, time, survival, ci_low, ci_high) and at-risk table at ``times``."""
    curves, risk = [], []
    for lab, kmf in fitters.items():
        sf, ci = kmf.survival_function_, kmf.confidence_interval_
        curves.append(pd.DataFrame({"group": lab, "time": sf.index.to_numpy(),
                                    "survival": sf.iloc[:, 0].to_numpy(),
                                    "ci_low": ci.iloc[:, 0].to_numpy(),
                                    "ci_high": ci.iloc[:, 1].to_numpy()}))
        d, e = np.asarray(kmf.durations, float), np.asarray(kmf.event_observed, int)
        for t in times:
            risk.append({"group": lab, "time": float(t), "at_risk": int((d >= t).sum()),
                         "events": int(((d < t) & (e == 1)).sum()),
                         "censored": int(((d < t) & (e == 0)).sum())})
    return pd.concat(curves, ignore_index=True), pd.DataFrame(risk)


def logrank(time: Sequence[float], event: Sequence[int], groups: Sequence[Any]) -> dict[str, float]:
    """Log-rank test across 2+ groups (lifelines ``multivariate_logrank_test``)."""
    from lifelines.statistics import multivariate_logrank_test

    g = np.asarray(groups)
    if len(np.unique(g)) < 2:
        return {"chi2": np.nan, "df": 0, "p": np.nan}
    res = multivariate_logrank_test(np.asarray(time, float), g, np.asarray(event, int))
    return {"chi2": float(res.test_statistic), "df": int(res.degrees_of_freedom),
            "p": float(res.p_value)}


# ---------------------------------------------------------------- Cox models
def _design(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """Numeric design matrix: categorical columns one-hot encoded (first level dropped)."""
    parts = []
    for c in dict.fromkeys(cols):
        s = df[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            parts.append(s.astype(float).rename(c))
        else:
            d = pd.get_dummies(s.astype(str), prefix=c, drop_first=True, dtype=float)
            parts.append(d)
    return pd.concat(parts, axis=1)


def fit_cox(df: pd.DataFrame, covariates: Sequence[str], time_col: str, event_col: str,
            *, design: pd.DataFrame | None = None):
    """Fit a lifelines CoxPHFitter on ``covariates`` (rows with missing values dropped)."""
    from lifelines import CoxPHFitter

    x = design if design is not None else _design(df, covariates)
    data = pd.concat([x, df[[time_col, event_col]].astype(float)], axis=1).dropna()
    if data[event_col].sum() < 2:
        raise SurvivalFitError(f"only {int(data[event_col].sum())} events among {len(data)} "
                               f"patients: too few to fit a Cox model on {list(covariates)}.")
    try:
        return CoxPHFitter().fit(data, duration_col=time_col, event_col=event_col), data
    except Exception as exc:  # lifelines raises ConvergenceError and linear-algebra errors
        raise SurvivalFitError(f"Cox model on {list(covariates)} did not converge: "
                               f"{str(exc).splitlines()[0]}. Check for collinear or constant "
                               "covariates, or groups without events.") from exc


def cox_rows(cph) -> list[dict[str, float]]:
    """HR, 95% CI and p per term of a fitted CoxPHFitter."""
    s = cph.summary
    return [{"term": str(k), "coef": float(r["coef"]), "se": float(r["se(coef)"]),
             "hr": float(r["exp(coef)"]), "ci_low": float(r["exp(coef) lower 95%"]),
             "ci_high": float(r["exp(coef) upper 95%"]), "p": float(r["p"])}
            for k, r in s.iterrows()]


def cox_interaction(df: pd.DataFrame, score_col: str, arm_col: str, time_col: str,
                    event_col: str) -> dict[str, Any]:
    """Cox model ``score + arm + score x arm`` and the HR of the score within each arm.

    A significant interaction means the score is *predictive* (its effect depends on the
    treatment); a score effect without interaction is *prognostic*.
    """
    levels = sorted(df[arm_col].dropna().unique(), key=str)
    if len(levels) != 2:
        raise SurvivalFitError(f"arm column '{arm_col}' must have exactly 2 levels, found {levels}.")
    arm = (df[arm_col] == levels[1]).astype(float)
    arm[df[arm_col].isna()] = np.nan
    x = pd.DataFrame({"score": df[score_col].astype(float), "arm": arm})
    x["score_x_arm"] = x["score"] * x["arm"]
    cph, _ = fit_cox(df, ["score", "arm", "score_x_arm"], time_col, event_col, design=x)
    b, v = cph.params_, cph.variance_matrix_
    per_arm = {}
    for lev, (coef, var) in zip(levels, [
            (b["score"], v.loc["score", "score"]),
            (b["score"] + b["score_x_arm"], v.loc["score", "score"] + v.loc["score_x_arm", "score_x_arm"]
             + 2 * v.loc["score", "score_x_arm"])], strict=True):
        se = float(np.sqrt(var))
        from scipy.stats import norm

        per_arm[str(lev)] = {"hr": float(np.exp(coef)), "ci_low": float(np.exp(coef - Z95 * se)),
                             "ci_high": float(np.exp(coef + Z95 * se)),
                             "p": float(2 * norm.sf(abs(coef) / se))}
    p_int = float(cph.summary.loc["score_x_arm", "p"])
    return {"reference_arm": str(levels[0]), "terms": cox_rows(cph), "hr_per_arm": per_arm,
            "interaction_p": p_int,
            "interpretation": "predictive (score effect differs by arm, p<0.05)" if p_int < 0.05
            else "no evidence of interaction: prognostic at most"}


def ph_check(cph, data: pd.DataFrame) -> list[dict[str, float]]:
    """Schoenfeld-residual proportional-hazards test per term (lifelines, rank time transform)."""
    from lifelines.statistics import proportional_hazard_test

    res = proportional_hazard_test(cph, data, time_transform="rank")
    return [{"term": str(k if not isinstance(k, tuple) else k[0]),
             "chi2": float(r["test_statistic"]), "p": float(r["p"])}
            for k, r in res.summary.iterrows()]
