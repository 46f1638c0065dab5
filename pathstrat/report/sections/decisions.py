"""Report sections about the decisions taken from the scores: survival, forest plot, trial
selection, trial design, heatmaps. They only read the files those stages wrote."""

from __future__ import annotations

import pandas as pd

from pathstrat.report.files import RunFiles
from pathstrat.report.markup import esc, file_img, fmt, na, section, table


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

        def ci(f: str, iv: dict = iv) -> str:
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
