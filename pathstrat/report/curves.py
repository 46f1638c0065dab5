"""Figures the report draws itself: ROC / precision-recall with patient-bootstrap bands,
calibration, learning curves. Each plot draws into ``ax`` (a new figure's axes when None)
and returns it, as lifelines' plots do."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pathstrat.metrics import patient_resamples

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _new_axes(figsize: tuple[float, float]) -> Axes:
    """Axes of a new (pyplot-free) figure, for a plot called without ``ax``."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize).subplots()


def patient_level(df: pd.DataFrame) -> pd.DataFrame:
    """One row per patient (``patient_id``, else ``slide_id``): first ``y_true`` as ``y``, mean ``score`` as ``s``."""
    pid = df["patient_id"] if "patient_id" in df.columns else df["slide_id"]
    return df.groupby(pid.astype(str)).agg(y=("y_true", "first"), s=("score", "mean")).dropna()


def roc_pr_bands(y: np.ndarray, s: np.ndarray, *, n_boot: int, seed: int) -> dict[str, Any]:
    """ROC and PR curves on fixed grids with percentile bootstrap bands (patient resampling)."""
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    grid = np.linspace(0, 1, 101)

    def curves(yy: np.ndarray, ss: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        fpr, tpr, _ = roc_curve(yy, ss)
        prec, rec, _ = precision_recall_curve(yy, ss)
        roc = np.interp(grid, fpr, tpr)
        pr = np.interp(grid, rec[::-1], prec[::-1])
        return roc, pr, roc_auc_score(yy, ss), average_precision_score(yy, ss)

    roc, pr, auc, ap = curves(y, s)
    rocs, prs, aucs, aps = [], [], [], []
    for i in patient_resamples(len(y), n_boot=n_boot, seed=seed):
        if len(np.unique(y[i])) < 2:
            continue
        a, b, c, d = curves(y[i], s[i])
        rocs.append(a), prs.append(b), aucs.append(c), aps.append(d)
    q = [2.5, 97.5]
    return {"grid": grid, "roc": roc, "pr": pr, "auc": auc, "ap": ap,
            "roc_band": np.percentile(rocs, q, axis=0), "pr_band": np.percentile(prs, q, axis=0),
            "auc_ci": np.percentile(aucs, q), "ap_ci": np.percentile(aps, q),
            "prevalence": float(y.mean())}


def plot_roc(c: dict[str, Any], ax: Axes | None = None) -> Axes:
    """ROC curve with bootstrap band (``c`` from :func:`roc_pr_bands`); returns ``ax``."""
    ax = ax if ax is not None else _new_axes((4.4, 3.9))
    ax.fill_between(c["grid"], *c["roc_band"], alpha=0.25, color="tab:blue", label="95% band")
    ax.plot(c["grid"], c["roc"], color="tab:blue",
            label=f"AUC {c['auc']:.3f} ({c['auc_ci'][0]:.3f}-{c['auc_ci'][1]:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="0.6", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right", fontsize=8)
    return ax


def plot_pr(c: dict[str, Any], ax: Axes | None = None) -> Axes:
    """Precision-recall curve with bootstrap band and prevalence line; returns ``ax``."""
    ax = ax if ax is not None else _new_axes((4.4, 3.9))
    ax.fill_between(c["grid"], *c["pr_band"], alpha=0.25, color="tab:green", label="95% band")
    ax.plot(c["grid"], c["pr"], color="tab:green",
            label=f"AP {c['ap']:.3f} ({c['ap_ci'][0]:.3f}-{c['ap_ci'][1]:.3f})")
    ax.axhline(c["prevalence"], ls="--", color="0.6", lw=1, label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    return ax


def plot_calibration(y: np.ndarray, s: np.ndarray, ax: Axes | None = None,
                     n_bins: int = 8) -> Axes:
    """Reliability diagram (quantile bins) with Wilson CIs per bin; returns ``ax``."""
    from pathstrat.metrics import proportion_ci

    ax = ax if ax is not None else _new_axes((4.4, 3.9))

    edges = np.unique(np.quantile(s, np.linspace(0, 1, n_bins + 1)))
    b = np.clip(np.digitize(s, edges[1:-1], right=True), 0, len(edges) - 2)
    for k in np.unique(b):
        m = b == k
        lo, hi = proportion_ci(int(y[m].sum()), int(m.sum()), "wilson")
        p = y[m].mean()  # Wilson bounds can sit a rounding error inside p at 0 or 1 observed
        ax.errorbar(s[m].mean(), p, yerr=[[max(p - lo, 0.0)], [max(hi - p, 0.0)]],
                    fmt="o", color="tab:purple", ms=4, capsize=2)
    ax.plot([0, 1], [0, 1], "--", color="0.6", lw=1)
    ax.set(xlabel="predicted probability", ylabel="observed fraction", title="Calibration",
           xlim=(0, 1), ylim=(0, 1))
    return ax


def plot_learning_curves(history: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Per-fold training (solid) and validation (dashed) loss by epoch (``history.csv``);
    returns ``ax``."""
    ax = ax if ax is not None else _new_axes((6, 3.2))
    for (r, k), d in history.groupby(["repeat", "fold"], sort=True):
        line = ax.plot(d["epoch"] + 1, d["train_loss"], lw=1, alpha=0.8, label=f"fold {k}" if r == 0 else None)[0]
        if "val_loss" in d and d["val_loss"].notna().any():
            ax.plot(d["epoch"] + 1, d["val_loss"], lw=1, ls="--", color=line.get_color(), alpha=0.8)
    ax.set(xlabel="epoch", ylabel="loss", title="Learning curves (solid: training, dashed: validation)")
    if history["fold"].nunique() <= 10:
        ax.legend(fontsize=7, ncol=2)
    return ax
