"""One self-contained HTML report of a run directory (``pathstrat report RUNDIR``).

Every image is embedded as base64 PNG, the CSS is inline and there is no JavaScript, so the
file opens offline and can be mailed. Each section is built from documented run files; a
section whose input is missing still appears and says ``not available: <why>``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.registry import Registry

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1150px;padding:1.5em;color:#1d2433;line-height:1.45}
h1{border-bottom:3px solid #2c5d8f;padding-bottom:.3em}h2{color:#2c5d8f;margin-top:1.8em}
section{border-top:1px solid #d5dbe3;padding-top:.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
td,th{border:1px solid #c9d1db;padding:.25em .6em;text-align:right}
th{background:#eef2f7}td.t{text-align:left}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #e3e7ec;margin:.3em 0}
.na{color:#8a5300;background:#fff5e0;border-left:4px solid #e0a030;padding:.4em .8em}
.warn{color:#7a0010;background:#ffe9ec;border-left:4px solid #d0203a;padding:.4em .8em}
.grid{display:flex;flex-wrap:wrap;gap:1em}.grid>div{flex:1 1 480px}
pre{background:#f5f7fa;padding:.8em;overflow-x:auto;font-size:.8em}
nav a{margin-right:1em}
"""


@dataclass
class RunFiles:
    """Lazily read files of a run directory (None when absent)."""

    run: Path
    manifest: pd.DataFrame | None = None
    n_boot: int = 200
    seed: int = 0
    notes: dict[str, str] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    def path(self, *names: str) -> Path | None:
        """First existing file among ``names`` (also under ``survival/``, ``selection/``, ``trial/``)."""
        for n in names:
            for p in (self.run / n, self.run / "survival" / n, self.run / "selection" / n,
                      self.run / "trial" / n):
                if p.exists():
                    return p
        return None

    def csv(self, name: str) -> pd.DataFrame | None:
        if name not in self._cache:
            p = self.path(name)
            try:
                self._cache[name] = (pd.read_csv(p, dtype={"slide_id": str, "patient_id": str})
                                     if p else None)
            except pd.errors.EmptyDataError:
                self._cache[name] = pd.DataFrame()
        return self._cache[name]

    def config(self) -> dict[str, Any]:
        """The run's config.yaml (empty when absent)."""
        if "config.yaml" not in self._cache:
            import yaml

            p = self.path("config.yaml")
            self._cache["config.yaml"] = (yaml.safe_load(p.read_text()) or {}) if p else {}
        return self._cache["config.yaml"]

    def json(self, name: str) -> Any:
        if name not in self._cache:
            p = self.path(name)
            self._cache[name] = json.loads(p.read_text()) if p else None
        return self._cache[name]


# ---------------------------------------------------------------- html helpers
def esc(x: Any) -> str:
    return html.escape(str(x))


def na(why: str) -> str:
    """The standard 'not available' note."""
    return f'<p class="na">not available: {esc(why)}</p>'


def fmt(v: Any, nd: int = 3) -> str:
    if isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer() and abs(v) < 1e7:
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{v:.{nd}g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{nd}f}"
    return esc(v) if v is not None else "–"


def table(df: pd.DataFrame, nd: int = 3) -> str:
    """A DataFrame as an HTML table with numbers rounded."""
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v, nd)}</td>" if not isinstance(v, str)
                                    else f'<td class="t">{esc(v)}</td>' for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img_tag(png: bytes, alt: str) -> str:
    """An <img> with the PNG embedded as a data URI."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def fig_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def file_img(p: Path | None, alt: str) -> str:
    return img_tag(p.read_bytes(), alt) if p and p.exists() else na(f"{alt}: file missing")


# ---------------------------------------------------------------- classification figures
def _patient_level(df: pd.DataFrame) -> pd.DataFrame:
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
    rng = np.random.default_rng(seed)
    rocs, prs, aucs, aps = [], [], [], []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) < 2:
            continue
        a, b, c, d = curves(y[i], s[i])
        rocs.append(a), prs.append(b), aucs.append(c), aps.append(d)
    q = [2.5, 97.5]
    return {"grid": grid, "roc": roc, "pr": pr, "auc": auc, "ap": ap,
            "roc_band": np.percentile(rocs, q, axis=0), "pr_band": np.percentile(prs, q, axis=0),
            "auc_ci": np.percentile(aucs, q), "ap_ci": np.percentile(aps, q),
            "prevalence": float(y.mean())}


def plot_roc(c: dict[str, Any], ax):
    """ROC curve with bootstrap band; returns ``ax``."""
    ax.fill_between(c["grid"], *c["roc_band"], alpha=0.25, color="tab:blue", label="95% band")
    ax.plot(c["grid"], c["roc"], color="tab:blue",
            label=f"AUC {c['auc']:.3f} ({c['auc_ci'][0]:.3f}-{c['auc_ci'][1]:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="0.6", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right", fontsize=8)
    return ax


def plot_pr(c: dict[str, Any], ax):
    """Precision-recall curve with bootstrap band and prevalence line; returns ``ax``."""
    ax.fill_between(c["grid"], *c["pr_band"], alpha=0.25, color="tab:green", label="95% band")
    ax.plot(c["grid"], c["pr"], color="tab:green",
            label=f"AP {c['ap']:.3f} ({c['ap_ci'][0]:.3f}-{c['ap_ci'][1]:.3f})")
    ax.axhline(c["prevalence"], ls="--", color="0.6", lw=1, label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    return ax


def plot_calibration(y: np.ndarray, s: np.ndarray, ax, n_bins: int = 8):
    """Reliability diagram (quantile bins) with Wilson CIs per bin; returns ``ax``."""
    from pathstrat.selection import wilson_ci

    edges = np.unique(np.quantile(s, np.linspace(0, 1, n_bins + 1)))
    b = np.clip(np.digitize(s, edges[1:-1], right=True), 0, len(edges) - 2)
    for k in np.unique(b):
        m = b == k
        lo, hi = wilson_ci(int(y[m].sum()), int(m.sum()))
        p = y[m].mean()  # Wilson bounds can sit a rounding error inside p at 0 or 1 observed
        ax.errorbar(s[m].mean(), p, yerr=[[max(p - lo, 0.0)], [max(hi - p, 0.0)]],
                    fmt="o", color="tab:purple", ms=4, capsize=2)
    ax.plot([0, 1], [0, 1], "--", color="0.6", lw=1)
    ax.set(xlabel="predicted probability", ylabel="observed fraction", title="Calibration",
           xlim=(0, 1), ylim=(0, 1))
    return ax


# ---------------------------------------------------------------- sections
Section = Callable[[RunFiles], str]
SECTIONS: Registry[tuple[str, Section]] = Registry("report section")
ORDER: list[str] = []


def section(key: str, title: str) -> Callable[[Section], Section]:
    """Register a report section (rendered in registration order)."""
    def deco(fn: Section) -> Section:
        SECTIONS.add(key, (title, fn))
        ORDER.append(key)
        return fn
    return deco


@section("cohort", "Cohort flow")
def _cohort(rf: RunFiles) -> str:
    rows: list[tuple[str, Any]] = []
    man, qc, preds = rf.manifest, rf.csv("qc.csv"), rf.csv("predictions.csv")
    if qc is None:
        qc_path = next((d / "qc.csv" for d in _data_dirs(rf.config()) if (d / "qc.csv").exists()), None)
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
        pt = _patient_level(df)
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
    return "".join(parts) + _learning_curves(rf)


def _learning_curves(rf: RunFiles) -> str:
    """Per-epoch loss and first-head metric per fold from ``history.csv`` (empty when absent)."""
    from matplotlib.figure import Figure

    h = rf.csv("history.csv")
    if h is None or h.empty or "train_loss" not in h.columns:
        return ""
    fig = Figure(figsize=(10, 3.4))
    ax = fig.subplots(1, 2)
    metric = str(h["metric"].dropna().iloc[0]) if "metric" in h and h["metric"].notna().any() else "metric"
    for (r, k), g in h.groupby(["repeat", "fold"], sort=True):
        for col, a, style in (("train_loss", ax[0], "-"), ("val_loss", ax[0], "--"),
                              ("train_metric", ax[1], "-"), ("val_metric", ax[1], "--")):
            if col in g and g[col].notna().any():
                a.plot(g["epoch"], g[col], style, lw=0.8, alpha=0.7,
                       label=col.split("_")[0] if (r, k) == (0, 0) else None)
    ax[0].set(xlabel="epoch", ylabel="loss", title="loss per fold")
    ax[1].set(xlabel="epoch", ylabel=metric, title=f"{metric} per fold (first target)")
    for a in ax:
        if a.get_legend_handles_labels()[0]:
            a.legend()
    return ("<h3>Learning curves (history.csv)</h3>"
            + img_tag(fig_png(fig), "learning curves: loss and metric per epoch and fold"))


@section("survival", "Survival: Kaplan-Meier and risk groups")
def _survival(rf: RunFiles) -> str:
    s = rf.json("survival.json")
    if not s:
        return na("survival.json absent: run `pathstrat stratify ... --out RUNDIR`")
    keys = ["n_patients", "n_events", "c_index", "c_index_ci_low", "c_index_ci_high",
            "logrank_chi2", "logrank_df", "logrank_p", "cox_hr", "cox_ci_low", "cox_ci_high",
            "cox_p", "cox_hr_per_sd", "cox_per_sd_ci_low", "cox_per_sd_ci_high"]
    out = table(pd.DataFrame([(k, s.get(k)) for k in keys], columns=["statistic", "value"]))
    cut = s.get("cutoff", {})
    out += f"<p>Risk groups: cut-off {esc(cut.get('method'))} fitted on {esc(cut.get('source'))} " \
           "(never on the patients stratified).</p>"
    med = pd.DataFrame([{"group": g, **v} for g, v in s.get("km_median", {}).items()])
    if len(med):
        out += "<h3>Median survival (95% CI)</h3>" + table(med)
    out += file_img(rf.path("figures/km.png"), "Kaplan-Meier curves")
    ar = rf.csv("figures/km_at_risk.csv")
    out += ("<h3>At risk</h3>" + table(ar.pivot(index="group", columns="time", values="at_risk")
                                       .reset_index())) if ar is not None else na("km_at_risk.csv absent")
    if s.get("td_auc"):
        out += "<h3>Time-dependent AUC (cumulative/dynamic, IPCW)</h3>" + table(pd.DataFrame(s["td_auc"]))
    return out


@section("forest", "Hazard ratios (forest plot)")
def _forest(rf: RunFiles) -> str:
    s = rf.json("survival.json")
    if not s:
        return na("survival.json absent")
    out = file_img(rf.path("figures/forest.png"), "forest plot of hazard ratios")
    fc = rf.csv("figures/forest.csv")
    if fc is not None:
        out += table(fc)
    ph = s.get("cox", {}).get("ph_test")
    if ph:
        out += "<h3>Proportional-hazards check (Schoenfeld, rank time)</h3>" + table(pd.DataFrame(ph))
    inter = s.get("cox", {}).get("interaction")
    if isinstance(inter, dict) and "interaction_p" in inter:
        out += f"<p>Treatment interaction p = {fmt(inter['interaction_p'])}: {esc(inter['interpretation'])}.</p>"
    return out


@section("selection", "Trial patient selection")
def _selection(rf: RunFiles) -> str:
    sel, tab = rf.json("selection.json"), rf.csv("selection.csv")
    if not sel or tab is None:
        return na("selection.json/selection.csv absent: run `pathstrat select ... --out RUNDIR`")
    out = (f"<p>Rule: {esc(sel['rule'])} ≥ {fmt(sel['target_value'])} on development data; "
           f"threshold {fmt(sel['threshold'], 4)} ({esc(sel['selected_when'])}); held out: "
           f"{esc(sel.get('heldout_mode'))}.</p>")
    cols = [c for c in ("set", "metric", "value", "k", "n", "wilson_low", "wilson_high",
                        "exact_low", "exact_high") if c in tab.columns]
    return out + table(tab[cols])


@section("trial", "Trial design")
def _trial(rf: RunFiles) -> str:
    doc = rf.json("trial_design.json")
    if not doc:
        return na("trial_design.json absent: run `pathstrat trial-design --selection "
                  "RUNDIR/selection.json --hr-positive HR --out RUNDIR/trial`")
    inp = doc["inputs"]
    out = (f"<p>Prevalence {fmt(inp['prevalence'])}, sensitivity {fmt(inp['sensitivity'])}, "
           f"specificity {fmt(inp['specificity'])}; HR {fmt(inp['hr_positive'])} in marker-positive and "
           f"{fmt(inp['hr_negative'])} in marker-negative patients; alpha {fmt(inp['alpha'])}, power "
           f"{fmt(inp['power'])}. Intervals: {esc(doc['source'].get('uncertainty', 'none'))}.</p>")
    rows = []
    sim = doc.get("simulation", {})
    for name, d in doc["designs"].items():
        iv = d.get("intervals", {})

        def ci(f: str) -> str:
            return f"{fmt(iv[f]['low'], 0)}-{fmt(iv[f]['high'], 0)}" if f in iv else ""
        row = {"design": name.replace("_", " "), "HR eff.": d["hr_effective"], "events": d["events"],
               "enrolled": d["enrolled"], "enrolled 95% CI": ci("enrolled"), "screened": d["screened"],
               "screened 95% CI": ci("screened"), "duration": d["duration"], "cost": d.get("cost"),
               "power (analytic)": d["power_analytic"]}
        if name in sim and "power" in sim[name]:
            p = sim[name]["power"]
            row["power (simulated)"] = f"{p['rejection_rate']:.3f} ± {p['mc_se']:.3f}"
            row["type-I (simulated)"] = sim[name]["type_i_error"]["rejection_rate"]
        rows.append(row)
    out += table(pd.DataFrame(rows), nd=3)
    out += f"<p><small>{esc(doc['method'])}</small></p>"
    return out + file_img(rf.path("trial_sweep.png"), "trial size against the selection threshold")


@section("heatmaps", "Heatmaps and top tiles")
def _heatmaps(rf: RunFiles) -> str:
    idx = rf.csv("heatmaps/index.csv")
    fails = rf.csv("heatmaps/failures.csv")
    if idx is None or not len(idx):
        why = ("heatmaps/index.csv absent or empty: run `pathstrat heatmap --run RUNDIR ...`"
               if fails is None or not len(fails) else
               f"heatmaps failed for all {len(fails)} slide(s), e.g. {fails['slide_id'].iloc[0]}: "
               f"{fails['reason'].iloc[0]}")
        return na(why)
    hdir = rf.run / "heatmaps"
    rank: dict[str, str] = {}
    if "patient_score" in idx.columns:
        idx = idx.sort_values("patient_score", ascending=False)
        pts = list(dict.fromkeys(idx["patient_id"].astype(str)))
        half = (len(pts) + 1) // 2
        rank = {p: ("highest-scored" if i < half else "lowest-scored") for i, p in enumerate(pts)}
    parts = []
    for r in idx.itertuples(index=False):
        d = r._asdict()
        head = f"slide {esc(d['slide_id'])}"
        if d.get("patient_id") is not None and "patient_score" in d:
            head = (f"{rank.get(str(d['patient_id']), '')} patient {esc(d['patient_id'])} "
                    f"(score {fmt(d['patient_score'])}), {head}")
        parts.append(f"<div><h3>{head} ({esc(d['value'])})</h3>"
                     + file_img(hdir / d["heatmap_png"], f"heatmap {d['slide_id']}")
                     + file_img(hdir / d["tiles_png"], f"top and bottom tiles {d['slide_id']}")
                     + f"<p>QuPath GeoJSON: heatmaps/{esc(d.get('geojson', ''))}</p></div>")
    out = '<div class="grid">' + "".join(parts) + "</div>"
    if fails is not None and len(fails):
        out += na(f"{len(fails)} slide(s) without heatmap (heatmaps/failures.csv)")
    return out


def _find(obj: Any, keys: tuple[str, ...]) -> Any:
    """First value of any of ``keys`` in a nested dict/list."""
    if isinstance(obj, dict):
        for k in keys:
            if k in obj and not isinstance(obj[k], (dict, list)):
                return obj[k]
        for v in obj.values():
            r = _find(v, keys)
            if r is not None:
                return r
    elif isinstance(obj, list):
        for v in obj:
            r = _find(v, keys)
            if r is not None:
                return r
    return None


def _data_dirs(cfg: dict[str, Any]) -> list[Path]:
    """Tiling/embedding output folders named by a run config (for qc.csv): ``tiles_root``,
    ``features_root`` or the grand-parent of ``features`` (``<root>/features/<encoder_id>``)."""
    dirs = [cfg.get("tiles_root"), cfg.get("features_root")]
    if cfg.get("features"):
        dirs.append(Path(cfg["features"]).parent.parent)
    return [Path(d) for d in dirs if d and Path(d).is_dir()]


def _features_attrs(cfg: Any) -> dict[str, Any] | None:
    """Provenance attrs (encoder id, weights sha256, random flag) of one of the run's feature files."""
    feats = cfg.get("features") if isinstance(cfg, dict) else None
    if not feats or not Path(feats).is_dir():
        return None
    first = next(iter(sorted(Path(feats).glob("*.h5"))), None)
    if first is None:
        return None
    import h5py

    with h5py.File(first, "r") as f:
        keys = ("encoder_id", "weights_sha256", "weights_random", "encoder_dim", "transform")
        return {k: (f.attrs[k].item() if hasattr(f.attrs[k], "item") else f.attrs[k])
                for k in keys if k in f.attrs}


@section("config", "Configuration and encoder provenance")
def _config(rf: RunFiles) -> str:

    cfg_p = rf.path("config.yaml")
    cfg = rf.config() or None
    model = rf.json("checkpoints/model.json")
    sources = [x for x in (model, _features_attrs(cfg), cfg) if x]
    prov = {name: next((v for v in (_find(s, keys) for s in sources) if v is not None), None)
            for name, keys in (("encoder", ("encoder_id", "encoder")),
                               ("weights sha256", ("weights_sha256",)),
                               ("random weights", ("weights_random",)),
                               ("MIL model", ("model", "arch", "mil_model")))}
    out = ""
    if not sources:
        out += na("config.yaml and checkpoints/model.json absent")
    if prov["random weights"] in (True, "true", "True", 1) or str(prov.get("weights sha256")) == "random":
        out += ('<p class="warn">Warning: the encoder used RANDOM weights; these results show the '
                "pipeline works, not that the model has learned pathology.</p>")
    out += table(pd.DataFrame([(k, v) for k, v in prov.items()], columns=["provenance", "value"]))
    out += (f"<h3>config.yaml</h3><pre>{esc(cfg_p.read_text())}</pre>" if cfg_p
            else na("config.yaml absent"))
    if model:
        out += f"<h3>checkpoints/model.json</h3><pre>{esc(json.dumps(model, indent=2))}</pre>"
    return out


def render(rf: RunFiles) -> str:
    """The report HTML: every registered section, each isolated from the others' failures."""
    body, nav = [], []
    for key in ORDER:
        title, fn = SECTIONS.get(key)
        try:
            content = fn(rf)
        except Exception as exc:  # noqa: BLE001 - a broken input must not hide the other sections
            log.warning("report section '%s' failed: %s", key, exc)
            content = na(f"{type(exc).__name__}: {exc}")
        if key in rf.notes:
            content = f"<p><em>{esc(rf.notes[key])}</em></p>" + content
        nav.append(f'<a href="#{key}">{esc(title)}</a>')
        body.append(f'<section id="{key}"><h2>{esc(title)}</h2>{content}</section>')
    from datetime import datetime

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>pathstrat report: {esc(rf.run.name)}</title><style>{CSS}</style></head><body>"
            f"<h1>pathstrat report: {esc(rf.run.name)}</h1><p>Run directory {esc(rf.run)}, "
            f"generated {stamp}.</p><nav>{''.join(nav)}</nav>{''.join(body)}</body></html>\n")


def compute_missing(rf: RunFiles) -> None:
    """Run survival / selection with defaults when the run has the inputs but not the outputs.

    Survival: the first target with ``risk``, ``time`` and ``event`` in predictions.csv, median
    cut-off out of fold, into ``<run>/survival/``. Selection: the first binary target, 95%
    sensitivity out of fold, into ``<run>/selection/``. Failures become report notes.
    """
    preds = rf.csv("predictions.csv")
    if preds is None or "target" not in preds.columns:
        return
    if rf.json("survival.json") is None and {"risk", "time", "event"} <= set(preds.columns):
        surv_t = [t for t, d in preds.groupby("target") if d["risk"].notna().any()
                  and d["time"].notna().any()]
        if surv_t:
            from pathstrat.survival import stratify

            d = preds[preds["target"] == surv_t[0]]
            try:
                stratify(d, d, score_col="risk", time_col="time", event_col="event",
                         out_dir=rf.run / "survival", target=surv_t[0], n_boot=rf.n_boot, seed=rf.seed)
                rf.notes["survival"] = (f"computed by `pathstrat report` for target '{surv_t[0]}' "
                                        "with defaults (median cut-off out of fold); run "
                                        "`pathstrat stratify` for covariates, arms or other cut-offs.")
            except Exception as exc:  # noqa: BLE001 - the report must still render
                rf.notes["survival"] = f"automatic survival analysis failed: {exc}"
            rf._cache.pop("survival.json", None)
    if rf.json("selection.json") is None and "y_true" in preds.columns:
        binary = [t for t, d in preds.groupby("target")
                  if ("risk" not in d or d["risk"].isna().all())
                  and set(pd.to_numeric(d["y_true"], errors="coerce").dropna().unique()) == {0, 1}]
        if binary:
            from pathstrat.selection import run_selection

            try:
                run_selection(preds, rf.run / "selection", target=binary[0])
                rf.notes["selection"] = (f"computed by `pathstrat report` for target '{binary[0]}' "
                                         "with defaults (95% sensitivity, out of fold); run "
                                         "`pathstrat select` for other rules or a held-out set.")
            except Exception as exc:  # noqa: BLE001
                rf.notes["selection"] = f"automatic selection analysis failed: {exc}"
            rf._cache.pop("selection.json", None)
            rf._cache.pop("selection.csv", None)


def build_report(run_dir: str | Path, *, manifest: Any | None = None, out: str | Path | None = None,
                 n_boot: int = 200, seed: int = 0, compute: bool = True) -> Path:
    """Write ``<run>/report.html`` (or ``out``) and return its path.

    With ``compute`` (default), missing survival/selection outputs are computed with defaults
    first (see :func:`compute_missing`).
    """
    from pathstrat.errors import SchemaError
    from pathstrat.io import write_text_atomic

    run = Path(run_dir)
    if not run.is_dir():
        raise SchemaError(f"run directory '{run}' does not exist.")
    man = None
    if manifest is not None:
        from pathstrat.survival import read_table

        man = manifest if isinstance(manifest, pd.DataFrame) else read_table(manifest)
    rf = RunFiles(run, man, n_boot=n_boot, seed=seed)
    if man is None:
        cfg = rf.config()
        cand = cfg.get("manifest") or (cfg.get("cohort") or {}).get("manifest")
        if cand and Path(cand).is_file():
            from pathstrat.survival import read_table

            rf.manifest = read_table(cand)
    if compute:
        compute_missing(rf)
    return write_text_atomic(Path(out) if out else run / "report.html", render(rf))
