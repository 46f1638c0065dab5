"""Trial patient selection: pick a score threshold on development data, apply it elsewhere.

For pre-screening and enrichment (e.g. ruling out biomarker testing for patients the model
calls negative at 95% sensitivity). A patient is *selected* (model-positive) when
``score >= threshold``; the others are *spared* confirmatory testing. The threshold is chosen
on development predictions and applied to held-out patients (a ``--holdout`` table, or out of
fold: for fold k the threshold comes from the patients of the other folds).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import SchemaError
from pathstrat.metrics import proportion_ci
from pathstrat.registry import Registry

log = logging.getLogger(__name__)


#: Rules that choose a threshold for a target value of a metric: ``rule(y, score, value)``.
RULES: Registry[Callable[[np.ndarray, np.ndarray, float], float]] = Registry("selection rule")


# ---------------------------------------------------------------- confidence intervals
def proportion(k: int, n: int) -> dict[str, float]:
    """A proportion with its Wilson and exact 95% CIs."""
    w, cp = proportion_ci(k, n, "wilson"), proportion_ci(k, n, "exact")
    return {"value": k / n if n else np.nan, "k": int(k), "n": int(n),
            "wilson_low": w[0], "wilson_high": w[1], "exact_low": cp[0], "exact_high": cp[1]}


# ---------------------------------------------------------------- threshold rules
def _confusion(y: np.ndarray, s: np.ndarray, thr: float) -> tuple[int, int, int, int]:
    sel = s >= thr
    tp = int((sel & (y == 1)).sum())
    fp = int((sel & (y == 0)).sum())
    fn = int((~sel & (y == 1)).sum())
    tn = int((~sel & (y == 0)).sum())
    return tp, fp, tn, fn


def _candidates(s: np.ndarray) -> np.ndarray:
    """Thresholds that give distinct selections: each unique score, plus +inf (select none)."""
    return np.append(np.unique(s), np.inf)


@RULES.register("sensitivity")
def _rule_sensitivity(y: np.ndarray, s: np.ndarray, value: float) -> float:
    """Largest threshold whose sensitivity is at least ``value`` (spares the most patients)."""
    ok = [t for t in _candidates(s) if _sens(y, s, t) >= value - 1e-12]
    return float(max(ok))


@RULES.register("specificity")
def _rule_specificity(y: np.ndarray, s: np.ndarray, value: float) -> float:
    """Smallest threshold whose specificity is at least ``value`` (keeps the most positives)."""
    ok = [t for t in _candidates(s) if _spec(y, s, t) >= value - 1e-12]
    return float(min(ok))


def _predictive_value_thresholds(y: np.ndarray, s: np.ndarray, value: float, which: str) -> list[float]:
    """Thresholds at which NPV (``which="npv"``) or PPV (``"ppv"``) is at least ``value``."""
    ok = []
    for t in _candidates(s):
        tp, fp, tn, fn = _confusion(y, s, t)
        hit, called = (tn, tn + fn) if which == "npv" else (tp, tp + fp)
        if called > 0 and hit / called >= value - 1e-12:
            ok.append(t)
    if not ok:
        hint = "lower `value` or use the sensitivity `rule`." if which == "npv" else "lower `value`."
        raise SchemaError(f"no threshold reaches {which.upper()} >= {value} on the development "
                          f"data; {hint}")
    return ok


@RULES.register("npv")
def _rule_npv(y: np.ndarray, s: np.ndarray, value: float) -> float:
    """Largest threshold whose NPV is at least ``value`` (spares the most patients)."""
    return float(max(_predictive_value_thresholds(y, s, value, "npv")))


@RULES.register("ppv")
def _rule_ppv(y: np.ndarray, s: np.ndarray, value: float) -> float:
    """Smallest threshold whose PPV is at least ``value`` (selects the most patients)."""
    return float(min(_predictive_value_thresholds(y, s, value, "ppv")))


def _sens(y: np.ndarray, s: np.ndarray, t: float) -> float:
    pos = y == 1
    return float((s[pos] >= t).mean()) if pos.any() else np.nan


def _spec(y: np.ndarray, s: np.ndarray, t: float) -> float:
    neg = y == 0
    return float((s[neg] < t).mean()) if neg.any() else np.nan


def choose_threshold(y_true: Sequence[int], score: Sequence[float], rule: str = "sensitivity",
                     value: float = 0.95) -> float:
    """Threshold (select when ``score >= threshold``) meeting ``rule >= value`` on these data."""
    y, s = np.asarray(y_true, int), np.asarray(score, float)
    if not 0 < value <= 1:
        raise SchemaError(f"`value` {value} must be a proportion in (0, 1].")
    if (y == 1).sum() == 0 or (y == 0).sum() == 0:
        raise SchemaError("development data need both positive and negative patients to choose "
                          "a threshold.")
    return RULES.get(rule)(y, s, value)


# ---------------------------------------------------------------- evaluation
def evaluate(y_true: Sequence[int], score: Sequence[float], threshold: float, *,
             response: Sequence[float] | None = None) -> dict[str, Any]:
    """Selection metrics at ``threshold`` with Wilson and exact 95% CIs.

    ``fraction_selected`` = model-positive / all; ``fraction_spared`` = model-negative / all
    (spared confirmatory testing). ``number_needed_to_screen`` = all / true positives: patients
    pre-screened to find one confirmed positive. ``tests_per_positive`` = selected / true
    positives (1/PPV) versus ``tests_per_positive_without_model`` = 1/prevalence.
    """
    y, s = np.asarray(y_true, int), np.asarray(score, float)
    tp, fp, tn, fn = _confusion(y, s, threshold)
    n, n_sel = len(y), tp + fp
    out: dict[str, Any] = {
        "threshold": float(threshold), "n": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "n_selected": n_sel, "n_spared": tn + fn,
        "sensitivity": proportion(tp, tp + fn), "specificity": proportion(tn, tn + fp),
        "ppv": proportion(tp, n_sel), "npv": proportion(tn, tn + fn),
        "prevalence": proportion(tp + fn, n),
        "fraction_selected": proportion(n_sel, n), "fraction_spared": proportion(tn + fn, n),
        "positive_rate_selected": proportion(tp, n_sel), "positive_rate_all": proportion(tp + fn, n),
        "number_needed_to_screen": n / tp if tp else np.inf,
        "tests_per_positive": n_sel / tp if tp else np.inf,
        "tests_per_positive_without_model": n / (tp + fn) if tp + fn else np.inf,
    }
    out["enrichment"] = (out["ppv"]["value"] / out["prevalence"]["value"]
                         if n_sel and tp + fn else np.nan)
    if response is not None:
        r = np.asarray(response, float)
        ok = np.isfinite(r)
        sel = s >= threshold
        out["response_rate_selected"] = proportion(int(r[ok & sel].sum()), int((ok & sel).sum()))
        out["response_rate_all"] = proportion(int(r[ok].sum()), int(ok.sum()))
    return out


METRIC_ORDER = ("sensitivity", "specificity", "ppv", "npv", "prevalence", "fraction_selected",
                "fraction_spared", "positive_rate_selected", "positive_rate_all",
                "response_rate_selected", "response_rate_all")


def to_rows(result: dict[str, Any], set_name: str) -> list[dict[str, Any]]:
    """Flatten one :func:`evaluate` result to CSV rows (set, metric, value, k, n, CIs)."""
    rows = []
    for m in METRIC_ORDER:
        if m in result:
            rows.append({"set": set_name, "metric": m, **result[m]})
    for m in ("number_needed_to_screen", "tests_per_positive", "tests_per_positive_without_model",
              "enrichment", "threshold"):
        rows.append({"set": set_name, "metric": m, "value": result[m]})
    return rows


# ---------------------------------------------------------------- patient tables
def patient_labels(predictions: pd.DataFrame, *, target: str | None = None,
                   score_col: str = "score", label_col: str = "y_true",
                   agg: str = "mean") -> pd.DataFrame:
    """Per-patient ``score`` (slide scores aggregated), ``y`` and ``fold`` (when present)."""
    from pathstrat.survival import patient_scores

    pts = patient_scores(predictions, score_col, target=target, agg=agg)
    if label_col in predictions.columns:
        df = predictions if target is None or "target" not in predictions.columns else \
            predictions[predictions["target"] == target]
        if "patient_id" not in df.columns:
            df = df.assign(patient_id=df["slide_id"].astype(str))
        lab = df.groupby("patient_id")[label_col].first().rename("y")
        pts = pts.merge(lab, left_on="patient_id", right_index=True, how="left")
    return pts


def select(development: pd.DataFrame, *, rule: str = "sensitivity", value: float = 0.95,
           holdout: pd.DataFrame | None = None) -> dict[str, Any]:
    """Choose the threshold on ``development`` and evaluate it on held-out patients.

    Both tables have per-patient ``y``, ``score`` and optional ``response``. Without
    ``holdout``, held-out evaluation is out of fold: each fold is scored with the threshold
    chosen on the other folds' patients, and the confusion counts are pooled.
    """
    dev = development.dropna(subset=["y", "score"])
    resp = "response" in dev.columns
    thr = choose_threshold(dev["y"], dev["score"], rule, value)
    res: dict[str, Any] = {
        "schema": "pathstrat.selection/1", "rule": rule, "target_value": value,
        "selected_when": "score >= threshold", "threshold": thr,
        "development": evaluate(dev["y"], dev["score"], thr,
                                response=dev["response"] if resp else None)}
    if holdout is not None:
        ho = holdout.dropna(subset=["y", "score"])
        res["heldout_mode"] = "holdout table"
        res["heldout"] = evaluate(ho["y"], ho["score"], thr,
                                  response=ho["response"] if "response" in ho.columns else None)
        return res
    if "fold" not in dev.columns or dev["fold"].nunique() < 2:
        res["heldout_mode"] = "not available: no --holdout table and no folds to apply out of fold"
        res["heldout"] = None
        return res
    thr_fold = np.empty(len(dev))
    per_fold = {}
    for k in sorted(dev["fold"].unique()):
        in_k = (dev["fold"] == k).to_numpy()
        t = choose_threshold(dev.loc[~in_k, "y"], dev.loc[~in_k, "score"], rule, value)
        per_fold[str(k)] = t
        thr_fold[in_k] = t
    # score - per-fold threshold >= 0  <=>  score >= that fold's threshold
    margin = dev["score"].to_numpy(float) - thr_fold
    res["heldout_mode"] = "out of fold (threshold of fold k chosen on the other folds)"
    res["heldout"] = evaluate(dev["y"], margin, 0.0,
                              response=dev["response"] if resp else None)
    res["heldout"]["threshold"] = float("nan")
    res["thresholds_per_fold"] = per_fold
    return res


def run_selection(predictions: pd.DataFrame | str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                  target: str | None = None, rule: str = "sensitivity", value: float = 0.95,
                  holdout: pd.DataFrame | str | os.PathLike[str] | None = None,
                  manifest: pd.DataFrame | str | os.PathLike[str] | None = None, label_col: str | None = None,
                  response_col: str | None = None, score_col: str = "score") -> dict[str, Any]:
    """Read tables, run :func:`select`, write ``selection.json`` and ``selection.csv``."""
    from pathlib import Path

    from pathstrat.cohort import read_table
    from pathstrat.io import ensure_writable_dir, write_dataframe_atomic, write_json_atomic

    out = ensure_writable_dir(out_dir)
    clin = None
    if manifest is not None:
        clin = manifest if isinstance(manifest, pd.DataFrame) else read_table(manifest, what="Table")
        if "patient_id" not in clin.columns:
            clin = clin.assign(patient_id=clin["slide_id"].astype(str))

    def load(src: Any) -> pd.DataFrame:
        df = src if isinstance(src, pd.DataFrame) else read_table(src, what="Table")
        pts = patient_labels(df, target=target, score_col=score_col)
        extra = [c for c in (label_col, response_col) if c]
        if extra:
            if clin is None:
                raise SchemaError(f"`label_col`/`response_col` {extra} need `manifest`.")
            missing = [c for c in extra if c not in clin.columns]
            if missing:
                raise SchemaError(f"manifest lacks column(s) {missing}; it has {list(clin.columns)}.")
            from pathstrat.cohort import check_targets

            pc = check_targets(clin, label_cols=extra, source="manifest").groupby("patient_id")[extra].first()
            pts = pts.drop(columns=[c for c in ("y",) if label_col and c in pts.columns])
            pts = pts.merge(pc, left_on="patient_id", right_index=True, how="left")
            pts = pts.rename(columns={k: v for k, v in ((label_col, "y"), (response_col, "response"))
                                      if k})
        if "y" not in pts.columns:
            raise SchemaError("no label: predictions lack 'y_true'; give `manifest` and `label_col`.")
        return pts

    dev = load(predictions)
    ho = load(holdout) if holdout is not None else None
    res = select(dev, rule=rule, value=value, holdout=ho)
    res.update({"target": target, "score_col": score_col, "label_col": label_col or "y_true",
                "response_col": response_col,
                "development_source": str(predictions) if not isinstance(predictions, pd.DataFrame) else "dataframe",
                "heldout_source": None if holdout is None else str(holdout) if not isinstance(holdout, pd.DataFrame) else "dataframe"})
    rows = to_rows(res["development"], "development")
    if res.get("heldout"):
        rows += to_rows(res["heldout"], "heldout")
    write_json_atomic(Path(out) / "selection.json", res)
    write_dataframe_atomic(Path(out) / "selection.csv", pd.DataFrame(rows))
    return res
