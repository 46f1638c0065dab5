"""Risk groups: cut-off rules (median, tertiles, fixed values) fitted out of fold.

The patients of fold ``k`` are split by a cut-off computed from scores of patients that were
*not* in fold ``k`` (see :func:`oof_risk_groups`), never from the patients being stratified.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pathstrat.errors import LeakageError, SchemaError
from pathstrat.survival.io import require_columns

GROUP_LABELS = {1: ["low", "high"], 2: ["low", "intermediate", "high"]}


def parse_cutoff(spec: str | float | Sequence[float]) -> str | list[float]:
    """``"median"``, ``"tertiles"`` or fixed value(s) (``"0.3"`` or ``"0.2,0.6"``)."""
    if isinstance(spec, str) and spec.strip().lower() in {"median", "tertiles"}:
        return spec.strip().lower()
    try:
        vals = [float(spec)] if isinstance(spec, (int, float)) else (
            [float(v) for v in spec.split(",")] if isinstance(spec, str) else [float(v) for v in spec])
    except ValueError as exc:
        raise SchemaError(f"`cutoff` '{spec}' is not median, tertiles or a number "
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
        raise SchemaError(f"`cutoff` {method} must be fitted out of fold, but the predictions "
                          "have no 'fold' column with 2+ folds. Give a fixed `cutoff` VALUE "
                          "(e.g. from the development cohort) or a `train_scores` table.")
    groups = np.zeros(len(patients), int)
    per_fold: dict[str, list[float]] = {}
    for k in sorted(patients["fold"].unique()):
        in_k = (patients["fold"] == k).to_numpy()
        if train_scores is not None:
            require_columns(train_scores, ["fold"], "train scores table")
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
