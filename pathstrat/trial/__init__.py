"""Trial design from a biomarker model: screened, enrolled, events, duration and cost.

``run_trial_design`` is what ``pathstrat trial-design`` calls: it compares all-comers, enriched
(model-positive only) and biomarker-stratified designs, propagates the uncertainty of the model's
operating characteristics, optionally simulates the trials, sweeps the selection threshold, and
writes ``trial_design.json`` and ``trial_design.csv`` (plus ``trial_sweep.csv``/``.png``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.trial.design import (
    DESIGNS,
    DesignResult,
    TrialInputs,
    compare_designs,
    event_probability,
    logrank_power,
    schoenfeld_events,
)
from pathstrat.trial.simulate import logrank_chi2, simulate_all, simulate_design
from pathstrat.trial.sweep import plot_sweep, sweep_thresholds
from pathstrat.trial.uncertainty import (
    beta_draws,
    bootstrap_draws,
    counts_from_selection,
    design_intervals,
)

__all__ = ["DESIGNS", "DesignResult", "TrialInputs", "compare_designs", "event_probability",
           "logrank_power", "schoenfeld_events", "logrank_chi2", "simulate_all", "simulate_design",
           "plot_sweep", "sweep_thresholds", "bootstrap_draws", "beta_draws", "design_intervals",
           "run_trial_design"]

log = logging.getLogger(__name__)

METHOD = ("Effective HR: event-weighted mean of the marker groups' log hazard ratios in the enrolled "
          "population (the log-rank drift under local alternatives); events: Schoenfeld (1983); "
          "patients: events / P(event) with uniform accrual and exponential survival (Lachin & "
          "Foulkes 1986); enriched population's marker-positive share = PPV; stratified design tests "
          "the model-positive stratum and all comers with a Bonferroni alpha split.")


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return _clean(x.item())
    return x


def run_trial_design(out_dir: str | Path, *, inputs: TrialInputs | None = None,
                     selection: str | Path | None = None, predictions: str | Path | None = None,
                     sensitivity_ci: tuple[float, float] | None = None,
                     specificity_ci: tuple[float, float] | None = None,
                     prevalence_ci: tuple[float, float] | None = None,
                     n_draws: int = 1000, simulate: int = 0, seed: int = 0,
                     **params: Any) -> dict[str, Any]:
    """Compare the designs and write ``trial_design.json``/``.csv`` into ``out_dir``.

    With ``selection`` (a run's ``selection.json``), sensitivity and specificity (and prevalence,
    unless given in ``params``) come from its held-out confusion counts and their uncertainty from
    a patient bootstrap of those counts. ``predictions`` (out-of-fold ``predictions.csv``) adds the
    threshold sweep. ``params`` are :class:`TrialInputs` fields.
    """
    from pathstrat.io import ensure_writable_dir, write_dataframe_atomic, write_json_atomic

    out = ensure_writable_dir(out_dir)
    source: dict[str, Any] = {"selection": None}
    draws = None
    sel = None
    if selection is not None:
        from pathstrat.errors import SchemaError

        try:
            sel = json.loads(Path(selection).read_text())
        except (OSError, ValueError) as exc:
            raise SchemaError(f"`selection` {Path(selection).name}: cannot read JSON ({exc}); "
                              "give the selection.json written by `pathstrat select`.") from exc
        c = counts_from_selection(sel)
        n = sum(c.values())
        params.setdefault("sensitivity", c["tp"] / (c["tp"] + c["fn"]))
        params.setdefault("specificity", c["tn"] / (c["tn"] + c["fp"]))
        params.setdefault("prevalence", (c["tp"] + c["fn"]) / n)
        draws = bootstrap_draws(c, n_draws, seed)
        source = {"selection": Path(selection).name, "counts": c, "threshold": sel.get("threshold"),
                  "rule": sel.get("rule"), "target_value": sel.get("target_value"),
                  "uncertainty": f"patient bootstrap of the confusion table ({len(draws)} draws)"}
    inp = inputs or TrialInputs(**params)
    if draws is None:
        rng = np.random.default_rng(seed)
        if any(ci is not None for ci in (prevalence_ci, sensitivity_ci, specificity_ci)):
            draws = np.column_stack([beta_draws(inp.prevalence, prevalence_ci, n_draws, rng),
                                     beta_draws(inp.sensitivity, sensitivity_ci, n_draws, rng),
                                     beta_draws(inp.specificity, specificity_ci, n_draws, rng)])
            source["uncertainty"] = "Beta draws matched to the given 95% intervals"
    results = compare_designs(inp)
    intervals = design_intervals(inp, draws) if draws is not None and len(draws) else {}
    doc: dict[str, Any] = {
        "schema": "pathstrat.trial_design/1", "method": METHOD, "inputs": asdict(inp),
        "derived": {"model_positive_rate": inp.model_positive_rate, "ppv": inp.ppv,
                    "hazard_control": inp.hazard_control, "p_treat": inp.p_treat},
        "source": source,
        "designs": {k: {**r.to_dict(), "intervals": intervals.get(k, {})} for k, r in results.items()},
    }
    if simulate:
        doc["simulation"] = simulate_all(inp, results, int(simulate), seed=seed)
    rows = []
    for k, r in results.items():
        row = {"design": k, **{f: getattr(r, f) for f in ("hr_effective", "events", "enrolled",
                                                          "screened", "accrual", "duration",
                                                          "number_needed_to_screen", "cost",
                                                          "power_analytic", "alpha_test")}}
        for f, iv in intervals.get(k, {}).items():
            row[f"{f}_low"], row[f"{f}_high"] = iv["low"], iv["high"]
        if simulate and "power" in doc["simulation"].get(k, {}):
            row["power_simulated"] = doc["simulation"][k]["power"]["rejection_rate"]
            row["power_simulated_se"] = doc["simulation"][k]["power"]["mc_se"]
            row["type_i_simulated"] = doc["simulation"][k]["type_i_error"]["rejection_rate"]
        rows.append(row)
    write_dataframe_atomic(out / "trial_design.csv", pd.DataFrame(rows))
    if predictions is not None:
        _sweep(predictions, inp, out, sel, doc)
    write_json_atomic(out / "trial_design.json", _clean(doc))
    return doc


def _sweep(predictions: str | Path, inp: TrialInputs, out: Path, sel: dict[str, Any] | None,
           doc: dict[str, Any]) -> None:
    from pathstrat.cohort import read_table
    from pathstrat.io import atomic_path, write_dataframe_atomic
    from pathstrat.selection import patient_labels

    target = (sel or {}).get("target")
    pts = patient_labels(read_table(predictions, what="Table"), target=target).dropna(subset=["y", "score"])
    tab = sweep_thresholds(pts["y"].to_numpy(), pts["score"].to_numpy(), inp)
    write_dataframe_atomic(out / "trial_sweep.csv", tab)
    if len(tab):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        plot_sweep(tab, ax)
        fig.tight_layout()
        with atomic_path(out / "trial_sweep.png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
    doc["sweep"] = {"file": "trial_sweep.csv", "n_thresholds": int(tab["threshold"].nunique()) if len(tab) else 0,
                    "patients": int(len(pts))}
