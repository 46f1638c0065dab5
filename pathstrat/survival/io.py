"""Survival inputs and outputs: predictions -> one score per patient, the per-patient clinical
table, and the written results (``survival.json``, ``patients_risk.csv``, KM/forest CSV + PNG)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import LeakageError, SchemaError

log = logging.getLogger(__name__)


@dataclass
class StratifyResult:
    """Summary (the ``survival.json`` content), per-patient table and KM fitters."""

    summary: dict[str, Any]
    patients: pd.DataFrame
    fitters: dict[str, Any] = field(default_factory=dict)


def require_columns(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    """Refuse ``df`` (a :class:`SchemaError` naming the columns it has) when it lacks ``cols``."""
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
        require_columns(df, ["slide_id"], "predictions table")
        df["patient_id"] = df["slide_id"].astype(str)
    require_columns(df, [score_col], "predictions table")
    if "target" in df.columns and (df["target"].nunique() > 1 or target is not None):
        if target is None:
            with_score = df.loc[df[score_col].notna(), "target"].unique()
            if len(with_score) != 1:
                raise SchemaError(f"predictions hold targets {sorted(df['target'].unique())}; "
                                  "choose one with `target`.")
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
        require_columns(df, ["slide_id"], "manifest")
        df["patient_id"] = df["slide_id"].astype(str)
    df["patient_id"] = df["patient_id"].astype(str)
    cols = list(dict.fromkeys([time_col, event_col] + ([arm_col] if arm_col else [])
                              + list(covariates)))
    require_columns(df, cols, "manifest")
    from pathstrat.cohort import check_targets

    # the shared label/time/event checks (numbers, >= 0, finite, 0/1, one value per patient,
    # at least one event)
    df = check_targets(df, label_cols=[c for c in cols if c not in (time_col, event_col)],
                       time_col=time_col, event_col=event_col, source="clinical table",
                       require_events=True)
    return df.groupby("patient_id", as_index=False)[cols].first()


def write_outputs(result: StratifyResult, out_dir: Any, *, time_label: str = "time") -> dict[str, str]:
    """Write ``survival.json``, ``patients_risk.csv`` and KM/forest figures (PNG + CSV)."""
    from matplotlib.figure import Figure

    from pathstrat.io import atomic_path, write_dataframe_atomic, write_json_atomic
    from pathstrat.survival.plots import at_risk_times, forest_rows, plot_forest, plot_km
    from pathstrat.survival.stats import km_tables

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
