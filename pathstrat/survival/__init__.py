"""Survival analysis of model scores: risk groups, Kaplan-Meier, log-rank, Cox, C-index, td-AUC.

Convention: inside pathstrat ``risk`` is *higher = earlier event*. lifelines'
``concordance_index`` expects the opposite (higher = longer survival); the only conversion
lives in :func:`pathstrat.metrics.harrell_c`. Risk-group cut-offs are fitted out of fold: the
patients of fold ``k`` are split by a cut-off computed from scores of patients that were *not*
in fold ``k`` (see :func:`oof_risk_groups`), never from the patients being stratified.

Modules by concern: :mod:`~pathstrat.survival.stats` (concordance, td-AUC, KM, log-rank, Cox),
:mod:`~pathstrat.survival.groups` (cut-offs and risk groups), :mod:`~pathstrat.survival.plots`
(KM and forest plots, each taking and returning a matplotlib ``Axes``),
:mod:`~pathstrat.survival.io` (patient scores and clinical table in, ``survival.json`` and
figures out) and :mod:`~pathstrat.survival.analysis` (:func:`analyse`, :func:`stratify`). The
names below are the package's public API.
"""

from __future__ import annotations

from pathstrat.metrics import harrell_c
from pathstrat.survival.analysis import analyse, stratify
from pathstrat.survival.groups import (
    GROUP_LABELS,
    assign_groups,
    fit_cutoffs,
    group_labels,
    oof_risk_groups,
    parse_cutoff,
)
from pathstrat.survival.io import StratifyResult, clinical_table, patient_scores, write_outputs
from pathstrat.survival.plots import at_risk_times, forest_rows, plot_forest, plot_km
from pathstrat.survival.stats import (
    Z95,
    SurvivalFitError,
    cox_interaction,
    cox_rows,
    fit_cox,
    kaplan_meier,
    km_median,
    km_tables,
    logrank,
    ph_check,
    time_dependent_auc,
    uno_c,
)

__all__ = [
    "GROUP_LABELS", "Z95", "StratifyResult", "SurvivalFitError", "analyse", "assign_groups",
    "at_risk_times", "clinical_table", "cox_interaction", "cox_rows", "fit_cox", "fit_cutoffs",
    "forest_rows", "group_labels", "harrell_c", "kaplan_meier", "km_median", "km_tables",
    "logrank", "oof_risk_groups", "parse_cutoff", "patient_scores", "ph_check", "plot_forest",
    "plot_km", "stratify", "time_dependent_auc", "uno_c", "write_outputs",
]
