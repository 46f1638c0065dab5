"""The whole survival analysis of a score: :func:`analyse` (in memory) and :func:`stratify`
(read tables, analyse, write ``survival.json`` and figures)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.cohort import read_table
from pathstrat.errors import SchemaError
from pathstrat.metrics import harrell_c
from pathstrat.survival.groups import group_labels, oof_risk_groups, parse_cutoff
from pathstrat.survival.io import StratifyResult, clinical_table, patient_scores, write_outputs
from pathstrat.survival.stats import (
    SurvivalFitError,
    cox_interaction,
    cox_rows,
    fit_cox,
    kaplan_meier,
    km_median,
    logrank,
    ph_check,
    stat_ci,
    time_dependent_auc,
    uno_c,
)

log = logging.getLogger(__name__)


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
                     "test; choose another `cutoff` (e.g. median) or check the scores vary")
        log.warning("%s", notes[-1])
    c = harrell_c(t, e, r)
    c_uno = uno_c(t, e, r)
    c_lo, c_hi = stat_ci(lambda i: harrell_c(t[i], e[i], r[i]) if e[i].any() else np.nan,
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
        lo, hi = stat_ci(lambda i, tau=tau: time_dependent_auc(t[i], e[i], r[i], [tau])[0],
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



def stratify(predictions: pd.DataFrame | str | Path, manifest: pd.DataFrame | str | Path, *, score_col: str, time_col: str, event_col: str,
             out_dir: str | Path, cutoff: str = "median", arm_col: str | None = None,
             covariates: Sequence[str] = (), target: str | None = None,
             train_scores: pd.DataFrame | str | Path | None = None, td_auc_times: Sequence[float] | None = None,
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
    preds = predictions if isinstance(predictions, pd.DataFrame) else read_table(predictions, what="Table")
    clin = manifest if isinstance(manifest, pd.DataFrame) else read_table(manifest, what="Table")
    pts = patient_scores(preds, score_col, target=target, agg=agg)
    tr = None
    if train_scores is not None:
        tr_df = train_scores if isinstance(train_scores, pd.DataFrame) else read_table(train_scores, what="Table")
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
