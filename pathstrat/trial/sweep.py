"""Trial size against the selection threshold, from a run's out-of-fold scores.

Why: the threshold that maximises AUROC-style criteria is rarely the one that minimises the cost or
duration of a trial. For each candidate threshold the patient table gives sensitivity and
specificity; the designs are recomputed at that operating point.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pathstrat.trial.design import TrialInputs, compare_designs

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def sweep_thresholds(y: np.ndarray, score: np.ndarray, inp: TrialInputs, *, n_points: int = 25,
                     prevalence: float | None = None) -> pd.DataFrame:
    """One row per (threshold, design): sensitivity, specificity and the design's figures.

    Thresholds are score quantiles (so every row selects a different share of patients);
    ``prevalence`` defaults to the inputs' (the target population), not the run's.
    """
    y = np.asarray(y, int)
    s = np.asarray(score, float)
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    pos, neg = y == 1, y == 0
    thr = np.unique(np.quantile(s, np.linspace(0.02, 0.9, n_points)))
    rows: list[dict[str, Any]] = []
    for t in thr:
        sens = float(np.mean(s[pos] >= t))
        spec = float(np.mean(s[neg] < t))
        if sens <= 0 or spec <= 0:
            continue
        sub = replace(inp, sensitivity=sens, specificity=spec,
                      prevalence=inp.prevalence if prevalence is None else prevalence)
        for name, r in compare_designs(sub).items():
            rows.append({"threshold": float(t), "sensitivity": sens, "specificity": spec,
                         "model_positive_rate": sub.model_positive_rate, "design": name,
                         "events": r.events, "enrolled": r.enrolled, "screened": r.screened,
                         "duration": r.duration, "cost": r.cost})
    return pd.DataFrame(rows)


def plot_sweep(table: pd.DataFrame, ax: Axes | None = None, *, y: str = "screened") -> Axes:
    """Patients ``y`` (screened, enrolled, ...) against threshold per design; returns ``ax``
    (a new pyplot-free figure's axes when None)."""
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(5.5, 3.6)).add_subplot(111)
    for name, g in table.groupby("design"):
        ax.plot(g["threshold"], g[y], marker="o", ms=3, label=name.replace("_", " "))
    ax.set_xlabel("selection threshold (score >= threshold is model-positive)")
    ax.set_ylabel(f"patients {y}")
    ax.set_yscale("log")
    ax.legend(frameon=False, fontsize=8)
    return ax
