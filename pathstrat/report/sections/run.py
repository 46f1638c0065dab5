"""Report sections about the run itself: cohort flow, classification performance, learning
curves, adaptation (fine-tuning)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pathstrat.layout import TilesLayout
from pathstrat.report.curves import (
    patient_level,
    plot_calibration,
    plot_learning_curves,
    plot_pr,
    plot_roc,
    roc_pr_bands,
)
from pathstrat.report.files import RunFiles, data_dirs
from pathstrat.report.markup import esc, fig_png, fmt, img_tag, na, section, table


@section("cohort", "Cohort flow")
def _cohort(rf: RunFiles) -> str:
    rows: list[tuple[str, Any]] = []
    man, qc, preds = rf.manifest, rf.csv("qc.csv"), rf.csv("predictions.csv")
    if qc is None:
        qc_path = next((q for q in (TilesLayout(d).qc_table for d in data_dirs(rf.config())) if q.exists()),
                       None)
        qc = pd.read_csv(qc_path, dtype={"slide_id": str}) if qc_path else None
    fails = rf.csv("failures.csv")
    if man is not None:
        rows.append(("slides in manifest", man["slide_id"].nunique() if "slide_id" in man else len(man)))
    if qc is not None:
        rows.append(("slides tiled (qc.csv)", qc["slide_id"].nunique()))
        if "n_tiles" in qc.columns:
            rows.append(("tiles per slide, median", float(qc["n_tiles"].median())))
        if "tissue_area_mm2" in qc.columns:
            rows.append(("tissue area mm², median", float(qc["tissue_area_mm2"].median())))
    if fails is not None and len(fails):
        for stage, n in fails.groupby("stage")["slide_id"].nunique().items():
            rows.append((f"slides failed at {stage}", int(n)))
    elif fails is not None:
        rows.append(("slides failed (failures.csv)", 0))
    if preds is not None:
        rows.append(("slides with predictions", preds["slide_id"].nunique()))
        if "patient_id" in preds.columns:
            rows.append(("patients with predictions", preds["patient_id"].nunique()))
    surv = rf.json("survival.json")
    if surv:
        rows.append(("patients in survival analysis", surv["n_patients"]))
        rows.append(("events", surv["n_events"]))
    if not rows:
        return na("no manifest, qc.csv, failures.csv or predictions.csv in the run directory")
    out = table(pd.DataFrame(rows, columns=["step", "count"]))
    if fails is not None and len(fails):
        out += "<h3>Failures</h3>" + table(fails[["stage", "slide_id", "error_type", "reason"]].head(50))
    elif fails is None:
        out += na("failures.csv absent: QC failures unknown")
    return out


def _metrics_table(rf: RunFiles, target: str) -> str:
    m = rf.json("metrics.json")
    if not m or target not in m:
        return na(f"metrics.json has no entry for target '{target}'")
    rows = [{"metric": k, **{c: v.get(c) for c in ("mean", "std", "ci_low", "ci_high")}}
            for k, v in m[target].items() if isinstance(v, dict)]
    return table(pd.DataFrame(rows))


def _operating_point(rf: RunFiles, target: str, y: np.ndarray, s: np.ndarray) -> tuple[float, str]:
    sel = rf.json("selection.json")
    if sel and sel.get("target") in (None, target) and np.isfinite(sel.get("threshold") or np.nan):
        return float(sel["threshold"]), f"selection rule {sel['rule']} >= {sel['target_value']}"
    if s.min() >= 0 and s.max() <= 1:
        return 0.5, "probability 0.5 (no selection.json)"
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, s)
    return float(thr[np.argmax(tpr - fpr)]), "Youden's J (no selection.json)"


@section("performance", "Classification performance")
def _performance(rf: RunFiles) -> str:
    from matplotlib.figure import Figure

    preds = rf.csv("predictions.csv")
    if preds is None:
        return na("predictions.csv absent")
    targets = preds["target"].unique() if "target" in preds.columns else [None]
    parts = []
    for t in targets:
        df = preds if t is None else preds[preds["target"] == t]
        parts.append(f"<h3>target: {esc(t)}</h3>" + _metrics_table(rf, str(t)))
        if "y_true" not in df.columns or "score" not in df.columns:
            parts.append(na("predictions lack y_true/score"))
            continue
        pt = patient_level(df)
        yv = pt["y"].to_numpy()
        if ("risk" in df.columns and df["risk"].notna().any()) or len(np.unique(yv)) != 2:
            parts.append(na("not a binary target (survival or multi-class): see the survival "
                            "section for risk scores"))
            continue
        y, s = yv.astype(int), pt["s"].to_numpy(float)
        c = roc_pr_bands(y, s, n_boot=rf.n_boot, seed=rf.seed)
        fig = Figure(figsize=(13, 3.9))
        ax = fig.subplots(1, 3)
        plot_roc(c, ax[0])
        plot_pr(c, ax[1])
        if s.min() >= 0 and s.max() <= 1:
            plot_calibration(y, s, ax[2])
        else:
            ax[2].text(0.5, 0.5, "calibration not available:\nscores are not probabilities",
                       ha="center", va="center")
            ax[2].set_axis_off()
        parts.append(img_tag(fig_png(fig), f"ROC, PR and calibration of {t}"))
        thr, why = _operating_point(rf, str(t), y, s)
        pred = s >= thr
        cm = pd.DataFrame({"": ["true positive (y=1)", "true negative (y=0)"],
                           "model positive": [int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())],
                           "model negative": [int((~pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())]})
        parts.append(f"<p>Confusion at threshold {thr:.4g} ({esc(why)}), patient level "
                     f"(n={len(y)}):</p>" + table(cm))
    return "".join(parts)


@section("learning", "Learning curves")
def _learning(rf: RunFiles) -> str:
    hist = rf.csv("history.csv")
    if hist is None or hist.empty:
        return na("history.csv absent: written by `pathstrat train`")
    ax = plot_learning_curves(hist)
    last = hist.groupby(["repeat", "fold"]).tail(1)
    summary = pd.DataFrame({"folds": [len(last)], "epochs (median)": [float(last["epoch"].median() + 1)],
                            "final training loss (median)": [float(last["train_loss"].median())]})
    if "val_loss" in hist and hist["val_loss"].notna().any():
        summary["best validation loss (median)"] = float(hist.groupby(["repeat", "fold"])["val_loss"].min().median())
    return img_tag(fig_png(ax.figure), "learning curves") + table(summary)


@section("adaptation", "Adaptation to this cohort (fine-tuning)")
def _adaptation(rf: RunFiles) -> str:
    comp = rf.json("comparison.json")
    if not comp:
        return na("comparison.json absent: written by `pathstrat finetune --package`")
    tab = rf.csv("comparison.csv")
    out = (f"<p>Package {esc(comp['package'])} {esc(comp['package_version'])}, "
           f"{comp['n_patients']} patients, trainable: {esc(comp['trainable'])}; primary metric "
           f"{esc(comp['primary_metric'])} on target {esc(comp['target'])}.</p>")
    rows = [{"model": m, "mean": v["mean"], "95% CI low": v["ci_low"], "95% CI high": v["ci_high"]}
            for m, v in comp["models"].items() if v]
    out += table(pd.DataFrame(rows))
    d = comp.get("fine_tuned_minus_as_is")
    if d:
        out += (f"<p>Fine-tuned minus as-is (paired patient bootstrap): {fmt(d['difference'])} "
                f"[{fmt(d['ci_low'])}, {fmt(d['ci_high'])}] on {d['n_patients']} patients.</p>")
    if tab is not None and len(tab):
        out += "<h3>All metrics</h3>" + table(tab)
    return out
