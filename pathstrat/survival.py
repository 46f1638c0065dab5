"""Survival analysis of model scores: risk groups, Kaplan-Meier, log-rank, Cox, C-index, td-AUC.

Convention: inside pathstrat ``risk`` is *higher = earlier event*. lifelines'
``concordance_index`` expects the opposite (higher = longer survival); the only conversion
lives in :func:`harrell_c`. Risk-group cut-offs are fitted out of fold: the patients of fold
``k`` are split by a cut-off computed from scores of patients that were *not* in fold ``k``
(see :func:`oof_risk_groups`), never from the patients being stratified.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import LeakageError, PathstratError, SchemaError
from pathstrat.metrics import harrell_c  # the package's one C-index (lifelines)

log = logging.getLogger(__name__)

Z95 = 1.959963984540054
GROUP_LABELS = {1: ["low", "high"], 2: ["low", "intermediate", "high"]}


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


def _stat_ci(stat: Callable[[np.ndarray], float], n: int, *, n_boot: int = 500,
                 seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat(indices)`` resampling the ``n`` patients (the package's
    one bootstrap, :func:`pathstrat.metrics.bootstrap_ci`, for a single statistic)."""
    from pathstrat.metrics import bootstrap_ci as _bootstrap

    ci = _bootstrap(lambda i: {"v": stat(i)}, n, n_boot=n_boot, seed=seed, alpha=alpha)["v"]
    return ci["ci_low"], ci["ci_high"]


# ---------------------------------------------------------------- inputs
def read_table(path: str | Any) -> pd.DataFrame:
    """A CSV or Parquet table with ids kept as strings (:func:`pathstrat.cohort.read_table`)."""
    from pathstrat.cohort import read_table as _read

    return _read(path, what="Table")


def _require(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SchemaError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}. "
                          "Name the right column with the matching --*-col option.")


def patient_scores(predictions: pd.DataFrame, score_col: str, *, target: str | None = None,
                   repeat: int | None = None, agg: str = "mean",
                   check_folds: bool = True) -> pd.DataFrame:
    """One row per patient: ``patient_id``, ``fold`` (if known) and the aggregated ``score``.

    Slide scores are aggregated by ``agg`` (mean by default). With several targets, ``target``
    selects one; with repeated CV, ``repeat`` (default: the first) selects one repeat so that
    each patient has exactly one out-of-fold score.
    """
    df = predictions.copy()
    if "patient_id" not in df.columns:
        _require(df, ["slide_id"], "predictions table")
        df["patient_id"] = df["slide_id"].astype(str)
    _require(df, [score_col], "predictions table")
    if "target" in df.columns and (df["target"].nunique() > 1 or target is not None):
        if target is None:
            with_score = df.loc[df[score_col].notna(), "target"].unique()
            if len(with_score) != 1:
                raise SchemaError(f"predictions hold targets {sorted(df['target'].unique())}; "
                                  "choose one with --target.")
            target = with_score[0]
        df = df[df["target"] == target]
        if df.empty:
            raise SchemaError(f"predictions have no rows for target '{target}'; targets are "
                              f"{sorted(predictions['target'].astype(str).unique())}.")
    if "repeat" in df.columns and df["repeat"].nunique() > 1:
        rep = df["repeat"].min() if repeat is None else repeat
        df = df[df["repeat"] == rep]
    vals = pd.to_numeric(df[score_col], errors="coerce").to_numpy(float)
    bad = ~np.isfinite(vals)
    if bad.any():
        ids = df["slide_id"] if "slide_id" in df.columns else df["patient_id"]
        shown = ", ".join(f"'{v}'" for v in ids[bad].astype(str).head(10))
        raise SchemaError(f"{int(bad.sum())} of {len(df)} rows have no finite '{score_col}' "
                          f"(slides {shown}): a prediction is missing or non-finite. Re-run "
                          "`pathstrat predict` for them, or drop those rows from the table.")
    df = df.assign(**{score_col: vals})
    keys = ["patient_id"] + (["fold"] if "fold" in df.columns else [])
    if check_folds and "fold" in df.columns and df.groupby("patient_id")["fold"].nunique().max() > 1:
        raise LeakageError("a patient has slides in several folds of the same repeat; "
                           "folds must be patient-level (check folds.csv).")
    out = df.groupby(keys, as_index=False)[score_col].agg(agg).rename(columns={score_col: "score"})
    return out.reset_index(drop=True)


def clinical_table(manifest: pd.DataFrame, time_col: str, event_col: str, *,
                   arm_col: str | None = None, covariates: Sequence[str] = ()) -> pd.DataFrame:
    """Per-patient clinical columns from a manifest or clinical table (slide paths not needed).

    Raises :class:`SchemaError` when a patient's slides disagree on a patient-level column.
    """
    df = manifest.copy()
    if "patient_id" not in df.columns:
        _require(df, ["slide_id"], "manifest")
        df["patient_id"] = df["slide_id"].astype(str)
    df["patient_id"] = df["patient_id"].astype(str)
    cols = list(dict.fromkeys([time_col, event_col] + ([arm_col] if arm_col else [])
                              + list(covariates)))
    _require(df, cols, "manifest")
    from pathstrat.cohort import check_targets

    # the shared label/time/event checks (numbers, >= 0, finite, 0/1, one value per patient,
    # at least one event)
    df = check_targets(df, label_cols=[c for c in cols if c not in (time_col, event_col)],
                       time_col=time_col, event_col=event_col, source="clinical table",
                       require_events=True)
    return df.groupby("patient_id", as_index=False)[cols].first()


# ---------------------------------------------------------------- risk groups
def parse_cutoff(spec: str | float | Sequence[float]) -> str | list[float]:
    """``"median"``, ``"tertiles"`` or fixed value(s) (``"0.3"`` or ``"0.2,0.6"``)."""
    if isinstance(spec, str) and spec.strip().lower() in {"median", "tertiles"}:
        return spec.strip().lower()
    try:
        vals = [float(spec)] if isinstance(spec, (int, float)) else (
            [float(v) for v in spec.split(",")] if isinstance(spec, str) else [float(v) for v in spec])
    except ValueError as exc:
        raise SchemaError(f"--cutoff '{spec}' is not median, tertiles or a number "
                          "(or comma-separated numbers).") from exc
    return sorted(vals)


def fit_cutoffs(scores: Sequence[float], method: str | Sequence[float]) -> list[float]:
    """Cut-offs from ``scores``: median (1 value), tertiles (2 values) or the given values."""
    s = np.asarray(scores, float)
    s = s[np.isfinite(s)]
    if not isinstance(method, str):
        return [float(v) for v in method]
    if s.size == 0:
        raise SchemaError("no scores to fit a risk cut-off on.")
    q = {"median": [0.5], "tertiles": [1 / 3, 2 / 3]}[method]
    return [float(v) for v in np.quantile(s, q)]


def assign_groups(scores: Sequence[float], cutoffs: Sequence[float]) -> np.ndarray:
    """Group index per score: 0 = lowest risk; a score equal to a cut-off goes below it."""
    return np.digitize(np.asarray(scores, float), np.asarray(cutoffs, float), right=True)


def group_labels(n_cutoffs: int) -> list[str]:
    """Names of the risk groups for ``n_cutoffs`` cut-offs."""
    return GROUP_LABELS.get(n_cutoffs, [f"g{i}" for i in range(n_cutoffs + 1)])


def oof_risk_groups(patients: pd.DataFrame, method: str | Sequence[float], *,
                    train_scores: pd.DataFrame | None = None) -> tuple[np.ndarray, dict]:
    """Assign risk groups out of fold; return group indices and a description of the cut-offs.

    ``patients`` has ``patient_id``, ``score`` and (for fitted cut-offs) ``fold``. For fold k the
    cut-off is fitted on ``train_scores`` rows with ``fold == k`` (the fold-k model's scores of
    its own training patients) when given, otherwise on the out-of-fold scores of the patients
    of all other folds. Without folds (an external cohort), ``train_scores`` are the development
    cohort's scores (patient means) and none of its patients may be stratified. A fixed value is
    applied to everyone.
    """
    if not isinstance(method, str):
        cut = fit_cutoffs([], method)
        return assign_groups(patients["score"], cut), {"method": "value", "source": "given",
                                                        "n_cutoffs": len(cut), "cutoffs": cut}
    no_folds = "fold" not in patients.columns or patients["fold"].nunique() < 2
    if no_folds and train_scores is not None:  # e.g. external cohort, cut-off from development
        overlap = set(train_scores["patient_id"]) & set(patients["patient_id"])
        if overlap:
            raise LeakageError(f"development scores include stratified patients "
                               f"{sorted(overlap)[:5]}; the cut-off would be fitted on them.")
        dev = train_scores.groupby("patient_id")["score"].mean()
        cut = fit_cutoffs(dev.to_numpy(), method)
        return assign_groups(patients["score"], cut), {"method": method, "source": "development",
                                                        "n_cutoffs": len(cut), "cutoffs": cut}
    if no_folds:
        raise SchemaError(f"--cutoff {method} must be fitted out of fold, but the predictions "
                          "have no 'fold' column with 2+ folds. Give a fixed --cutoff VALUE "
                          "(e.g. from the development cohort) or a --train-scores table.")
    groups = np.zeros(len(patients), int)
    per_fold: dict[str, list[float]] = {}
    for k in sorted(patients["fold"].unique()):
        in_k = (patients["fold"] == k).to_numpy()
        if train_scores is not None:
            _require(train_scores, ["fold"], "train scores table")
            tr = train_scores[train_scores["fold"] == k]
            overlap = set(tr["patient_id"]) & set(patients.loc[in_k, "patient_id"])
            if overlap:
                raise LeakageError(f"train scores of fold {k} include held-out patients "
                                   f"{sorted(overlap)[:5]}; the cut-off would be fitted on the "
                                   "patients it stratifies.")
            fit_on = tr["score"].to_numpy()
        else:
            fit_on = patients.loc[~in_k, "score"].to_numpy()
        cut = fit_cutoffs(fit_on, method)
        per_fold[str(k)] = cut
        groups[in_k] = assign_groups(patients.loc[in_k, "score"], cut)
    source = "train_scores" if train_scores is not None else "other_folds_oof"
    return groups, {"method": method, "source": source, "n_cutoffs": len(cut),
                    "cutoffs_per_fold": per_fold}


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


def at_risk_times(time: Sequence[float], n: int = 6) -> list[float]:
    """Round tick times from 0 to the longest follow-up for the at-risk table."""
    from matplotlib.ticker import MaxNLocator

    tmax = float(np.max(time))
    ticks = MaxNLocator(nbins=n - 1, min_n_ticks=3).tick_values(0.0, tmax)
    return [float(t) for t in ticks if 0 <= t <= tmax]


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


# ---------------------------------------------------------------- plots (take an ax, return it)
def plot_km(fitters: dict[str, Any], ax, *, times: Sequence[float] | None = None,
            at_risk: bool = True, xlabel: str = "time"):
    """Kaplan-Meier curves with 95% bands and (optionally) the at-risk table under the axes."""
    from lifelines.plotting import add_at_risk_counts

    for kmf in fitters.values():
        kmf.plot_survival_function(ax=ax, ci_show=True, show_censors=True,
                                   censor_styles={"ms": 4, "marker": "|"})
    ax.set_xlabel(xlabel)
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    if times is not None:
        ax.set_xticks(list(times))
    if at_risk and fitters:
        add_at_risk_counts(*fitters.values(), ax=ax, fig=ax.figure,
                           rows_to_show=["At risk", "Events"],
                           xticks=list(times) if times is not None else None)
    return ax


def plot_forest(rows: Sequence[dict[str, Any]], ax):
    """Forest plot of hazard ratios (log x axis) with 95% CIs; rows need label/hr/ci_low/ci_high."""
    rows = [r for r in rows if np.isfinite(r.get("hr", np.nan))]
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows, strict=True):
        ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color="0.2", lw=1.5)
        ax.plot([r["hr"]], [yi], "s", color="tab:blue", ms=6)
    ax.axvline(1.0, color="0.5", ls="--", lw=1)
    ax.set_xscale("log")
    lo = min([r["ci_low"] for r in rows if r["ci_low"] > 0] + [1.0])
    hi = max([r["ci_high"] for r in rows if np.isfinite(r["ci_high"])] + [1.0])
    nice = [v * m for m in (0.01, 0.1, 1, 10, 100) for v in (1, 2, 5)]
    ticks = [t for t in nice if lo / 1.05 <= t <= hi * 1.05] or [1.0]
    ticks = ticks if len(ticks) >= 3 else sorted({round(lo, 2), 1.0, round(hi, 2)} | set(ticks))
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['label']}  {r['hr']:.2f} ({r['ci_low']:.2f}-{r['ci_high']:.2f})"
                        for r in rows])
    ax.set_xlabel("hazard ratio (95% CI)")
    return ax


# ---------------------------------------------------------------- whole analysis
@dataclass
class StratifyResult:
    """Summary (the ``survival.json`` content), per-patient table and KM fitters."""

    summary: dict[str, Any]
    patients: pd.DataFrame
    fitters: dict[str, Any] = field(default_factory=dict)


def _safe(fn: Callable[[], Any], what: str) -> Any:
    try:
        return fn()
    except SurvivalFitError as exc:
        log.warning("%s not available: %s", what, exc)
        return {"error": str(exc)}


def analyse(patients: pd.DataFrame, time_col: str, event_col: str, *,
            cutoff: str | Sequence[float] = "median", arm_col: str | None = None,
            covariates: Sequence[str] = (), train_scores: pd.DataFrame | None = None,
            td_auc_times: Sequence[float] | None = None, n_boot: int = 500,
            seed: int = 0) -> StratifyResult:
    """Full survival analysis of the per-patient ``score`` joined with clinical columns."""
    df = patients.dropna(subset=["score", time_col, event_col]).reset_index(drop=True)
    if len(df) < 3:
        raise SchemaError(f"only {len(df)} patients have a score, '{time_col}' and "
                          f"'{event_col}': check that patient_id matches between the tables.")
    t, e, r = df[time_col].to_numpy(float), df[event_col].to_numpy(int), df["score"].to_numpy(float)
    method = parse_cutoff(cutoff) if isinstance(cutoff, str) else list(cutoff)
    groups, cut_info = oof_risk_groups(df, method, train_scores=train_scores)
    labels = group_labels(cut_info["n_cutoffs"])
    df["risk_group"] = [labels[g] for g in groups]
    fitters = kaplan_meier(t, e, groups, labels)
    lr = logrank(t, e, groups)
    notes: list[str] = []
    if len(np.unique(groups)) < 2:
        notes.append(f"all {len(df)} patients fall in one risk group '{labels[int(groups[0])]}' "
                     f"(cut-off {cut_info.get('values', cut_info.get('method'))}): no log-rank "
                     "test; choose another --cutoff (e.g. median) or check the scores vary")
        log.warning("%s", notes[-1])
    c = harrell_c(t, e, r)
    c_uno = uno_c(t, e, r)
    c_lo, c_hi = _stat_ci(lambda i: harrell_c(t[i], e[i], r[i]) if e[i].any() else np.nan,
                              len(df), n_boot=n_boot, seed=seed)
    uni, data_uni = fit_cox(df, ["score"], time_col, event_col)
    u = cox_rows(uni)[0]
    sd = float(np.std(r, ddof=1))
    per_sd = cox_rows(fit_cox(df.assign(score_per_sd=r / sd), ["score_per_sd"], time_col, event_col)[0])[0]
    grp_design = pd.get_dummies(pd.Categorical(df["risk_group"], categories=labels),
                                prefix="group", dtype=float).iloc[:, 1:]
    grp_design = grp_design.loc[:, grp_design.sum() > 0]
    cox_group = _safe(lambda: cox_rows(fit_cox(df, ["group"], time_col, event_col,
                                               design=grp_design)[0]), "Cox on risk group")
    multi = None
    if covariates:
        def _multi():
            cph, data = fit_cox(df, ["score", *covariates], time_col, event_col)
            return {"terms": cox_rows(cph), "ph_test": ph_check(cph, data), "n": len(data)}
        multi = _safe(_multi, "multivariable Cox")
    inter = _safe(lambda: cox_interaction(df, "score", arm_col, time_col, event_col),
                  "treatment interaction") if arm_col else None
    if td_auc_times is None:
        td_auc_times = [float(v) for v in np.quantile(t[e == 1], [0.25, 0.5, 0.75])] if e.any() else []
    auc = time_dependent_auc(t, e, r, td_auc_times)
    td = []
    for j, tau in enumerate(td_auc_times):
        lo, hi = _stat_ci(lambda i, tau=tau: time_dependent_auc(t[i], e[i], r[i], [tau])[0],
                              len(df), n_boot=min(n_boot, 200), seed=seed + 1 + j)
        td.append({"time": float(tau), "auc": float(auc[j]), "ci_low": lo, "ci_high": hi})
    summary = {
        "schema": "pathstrat.survival/1", "n_patients": len(df), "n_events": int(e.sum()),
        "notes": notes, "time_col": time_col, "event_col": event_col, "arm_col": arm_col,
        "covariates": list(covariates), "risk_convention": "higher score = earlier event",
        "cutoff": cut_info, "groups": labels,
        "c_index": c, "c_index_ci_low": c_lo, "c_index_ci_high": c_hi, "c_index_uno": c_uno,
        "logrank_chi2": lr["chi2"], "logrank_df": lr["df"], "logrank_p": lr["p"],
        "cox_hr": u["hr"], "cox_ci_low": u["ci_low"], "cox_ci_high": u["ci_high"], "cox_p": u["p"],
        "cox_hr_per_sd": per_sd["hr"], "cox_per_sd_ci_low": per_sd["ci_low"],
        "cox_per_sd_ci_high": per_sd["ci_high"], "cox_per_sd_p": per_sd["p"], "score_sd": sd,
        "km_median": km_median(fitters),
        "cox": {"score": u, "score_per_sd": per_sd, "group": cox_group,
                "ph_test": ph_check(uni, data_uni), "multivariable": multi, "interaction": inter},
        "td_auc": td,
    }
    return StratifyResult(summary, df, fitters)


def forest_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Hazard ratios of a survival summary as forest-plot rows (label, hr, ci_low, ci_high, p)."""
    cox = summary["cox"]
    rows = [{"label": "score (per SD)", **cox["score_per_sd"]}]
    if isinstance(cox.get("group"), list):
        rows += [{"label": r["term"].replace("group_", "") + " vs " + summary["groups"][0], **r}
                 for r in cox["group"]]
    if isinstance(cox.get("multivariable"), dict) and "terms" in cox["multivariable"]:
        rows += [{"label": f"adj. {r['term']}", **r} for r in cox["multivariable"]["terms"]]
    if isinstance(cox.get("interaction"), dict) and "hr_per_arm" in cox["interaction"]:
        rows += [{"label": f"score in arm {k}", **v}
                 for k, v in cox["interaction"]["hr_per_arm"].items()]
    return [{k: r[k] for k in ("label", "hr", "ci_low", "ci_high", "p")} for r in rows]


def write_outputs(result: StratifyResult, out_dir: Any, *, time_label: str = "time") -> dict[str, str]:
    """Write ``survival.json``, ``patients_risk.csv`` and KM/forest figures (PNG + CSV)."""
    from pathlib import Path

    from matplotlib.figure import Figure

    from pathstrat.io import atomic_path, write_dataframe_atomic, write_json_atomic

    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    t = result.patients[result.summary["time_col"]].to_numpy(float)
    times = at_risk_times(t)
    curves, risk = km_tables(result.fitters, times)
    paths = {"km_curves_csv": fig_dir / "km_curves.csv", "km_at_risk_csv": fig_dir / "km_at_risk.csv",
             "km_png": fig_dir / "km.png", "forest_png": fig_dir / "forest.png",
             "forest_csv": fig_dir / "forest.csv", "patients_csv": out / "patients_risk.csv",
             "survival_json": out / "survival.json"}
    write_dataframe_atomic(paths["km_curves_csv"], curves)
    write_dataframe_atomic(paths["km_at_risk_csv"], risk)
    fig = Figure(figsize=(7, 5.5))
    ax = fig.add_subplot(111)
    plot_km(result.fitters, ax, times=times, xlabel=time_label)
    s = result.summary
    ax.set_title(f"C-index {s['c_index']:.3f} ({s['c_index_ci_low']:.3f}-{s['c_index_ci_high']:.3f}),"
                 f" log-rank p={s['logrank_p']:.3g}", fontsize=10)
    with atomic_path(paths["km_png"]) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    rows = forest_rows(s)
    write_dataframe_atomic(paths["forest_csv"], pd.DataFrame(rows))
    fig = Figure(figsize=(7, 0.5 * len(rows) + 1.2))
    plot_forest(rows, fig.add_subplot(111))
    with atomic_path(paths["forest_png"]) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    write_dataframe_atomic(paths["patients_csv"], result.patients)
    summary = dict(s, files={k: str(v.relative_to(out)) for k, v in paths.items()})
    write_json_atomic(paths["survival_json"], summary)
    return {k: str(v) for k, v in paths.items()}


def stratify(predictions: Any, manifest: Any, *, score_col: str, time_col: str, event_col: str,
             out_dir: Any, cutoff: str = "median", arm_col: str | None = None,
             covariates: Sequence[str] = (), target: str | None = None,
             train_scores: Any | None = None, td_auc_times: Sequence[float] | None = None,
             agg: str = "mean", n_boot: int = 500, seed: int = 0) -> StratifyResult:
    """Read predictions + clinical table, analyse, and write ``out_dir/survival.json`` + figures.

    ``predictions``/``manifest``/``train_scores`` are paths or DataFrames. When ``train_scores``
    is None and a ``train_scores.csv`` lies beside the predictions file, it is used.
    """
    from pathlib import Path

    from pathstrat.io import ensure_writable_dir

    ensure_writable_dir(out_dir)
    if train_scores is None and not isinstance(predictions, pd.DataFrame):
        beside = Path(predictions).with_name("train_scores.csv")
        train_scores = beside if beside.exists() else None
    preds = predictions if isinstance(predictions, pd.DataFrame) else read_table(predictions)
    clin = manifest if isinstance(manifest, pd.DataFrame) else read_table(manifest)
    pts = patient_scores(preds, score_col, target=target, agg=agg)
    tr = None
    if train_scores is not None:
        tr_df = train_scores if isinstance(train_scores, pd.DataFrame) else read_table(train_scores)
        tr = patient_scores(tr_df, score_col, target=target, agg=agg, check_folds=False)
    clin_pt = clinical_table(clin, time_col, event_col, arm_col=arm_col, covariates=covariates)
    joined = pts.merge(clin_pt, on="patient_id", how="inner")
    n_missing = len(pts) - len(joined)
    if n_missing:
        log.warning("%d of %d scored patients are not in the clinical table and are left out",
                    n_missing, len(pts))
    result = analyse(joined, time_col, event_col, cutoff=cutoff, arm_col=arm_col,
                     covariates=covariates, train_scores=tr, td_auc_times=td_auc_times,
                     n_boot=n_boot, seed=seed)
    result.summary.update({"score_col": score_col, "target": target, "aggregation": agg,
                           "n_scored_patients_without_clinical": n_missing})
    write_outputs(result, out_dir, time_label=time_col)
    return result
