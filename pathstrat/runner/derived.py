"""Derived stages the report shows but a run may lack: survival and selection with defaults.

A training run directory (``pathstrat train``) has ``predictions.csv`` but no ``survival.json``
or ``selection.json`` unless ``pathstrat stratify``/``select`` (or the runner's ``stratify``/
``select`` stages) wrote them. :func:`derive_missing` computes them with documented defaults
before the report is rendered, so that :mod:`pathstrat.report` only reads files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pathstrat.report.files import RunFiles

log = logging.getLogger(__name__)


def derive_missing(run_dir: str | Path, *, n_boot: int = 200, seed: int = 0) -> dict[str, str]:
    """Run survival / selection with defaults when the run has the inputs but not the outputs.

    Survival: the first target with ``risk``, ``time`` and ``event`` in predictions.csv, median
    cut-off out of fold, into ``<run>/survival/``. Selection: the first binary target, 95%
    sensitivity out of fold, into ``<run>/selection/``. Outputs found anywhere the report looks
    (the run folder, ``survival/``, ``selection/``, ``trial/``) are kept. Returns notes for the
    report by section key (what was computed, or why it failed: a failure must not stop the
    report).
    """
    rf = RunFiles(Path(run_dir), n_boot=n_boot, seed=seed)
    notes: dict[str, str] = {}
    preds = rf.csv("predictions.csv")
    if preds is None or "target" not in preds.columns:
        return notes
    if rf.json("survival.json") is None and {"risk", "time", "event"} <= set(preds.columns):
        surv_t = [t for t, d in preds.groupby("target") if d["risk"].notna().any()
                  and d["time"].notna().any()]
        if surv_t:
            from pathstrat.survival import stratify

            d = preds[preds["target"] == surv_t[0]]
            try:
                stratify(d, d, score_col="risk", time_col="time", event_col="event",
                         out_dir=rf.run / "survival", target=surv_t[0], n_boot=rf.n_boot, seed=rf.seed)
                notes["survival"] = (f"computed by `pathstrat report` for target '{surv_t[0]}' "
                                     "with defaults (median cut-off out of fold); run "
                                     "`pathstrat stratify` for covariates, arms or other cut-offs.")
            except Exception as exc:  # noqa: BLE001 - the report must still render
                log.warning("automatic survival analysis failed: %s", exc)
                notes["survival"] = f"automatic survival analysis failed: {exc}"
    if rf.json("selection.json") is None and "y_true" in preds.columns:
        binary = [t for t, d in preds.groupby("target")
                  if ("risk" not in d or d["risk"].isna().all())
                  and set(pd.to_numeric(d["y_true"], errors="coerce").dropna().unique()) == {0, 1}]
        if binary:
            from pathstrat.selection import run_selection

            try:
                run_selection(preds, rf.run / "selection", target=binary[0])
                notes["selection"] = (f"computed by `pathstrat report` for target '{binary[0]}' "
                                      "with defaults (95% sensitivity, out of fold); run "
                                      "`pathstrat select` for other rules or a held-out set.")
            except Exception as exc:  # noqa: BLE001 - the report must still render
                log.warning("automatic selection analysis failed: %s", exc)
                notes["selection"] = f"automatic selection analysis failed: {exc}"
    return notes
