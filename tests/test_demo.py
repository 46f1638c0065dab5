"""Integration: `pathstrat demo` recovers what the synthetic cohort planted.

One demo run (60 patients, built-in encoder, every stage) is shared by all assertions. The
thresholds come from the issue and are never lowered: out-of-fold responder and biomarker
AUROC >= 0.85, attention ranks planted tiles above the rest (tile-level AUROC >= 0.8), risk
groups separate (log-rank p < 0.01), treatment interaction in the planted direction.
Each number is recomputed independently (scikit-learn, lifelines) from the run's files.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

pytestmark = pytest.mark.slow

PLANTED = {"responder": ("lymphocytes",), "biomarker": ("mucinous",), "survival": ("necrosis",)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(out dir, RunSummary) of one `pathstrat demo` run, via the CLI entry point."""
    from pathstrat.cli import main

    out = tmp_path_factory.mktemp("demo")
    rc = main(["-q", "demo", "--out", str(out)])
    assert rc == 0
    return out


def _patient_level(preds: pd.DataFrame, target: str, col: str = "score") -> pd.DataFrame:
    p = preds[preds["target"] == target]
    return p.groupby("patient_id").agg(y=("y_true", "first"), s=(col, "mean")).reset_index()


def test_demo_writes_the_run_directory(demo: Path):
    run = demo / "run"
    for name in ("metrics.json", "predictions.csv", "survival.json", "selection.json",
                 "report.html", "pipeline.yaml", "pipeline.log", "predictive/survival.json"):
        assert (run / name).is_file(), name
    manifest = pd.read_csv(demo / "cohort" / "manifest.csv")
    assert manifest["patient_id"].nunique() == 60
    assert (manifest.groupby("patient_id").size() == 2).any()  # some patients have two slides
    preds = pd.read_csv(run / "predictions.csv")
    assert set(preds["slide_id"]) == set(manifest["slide_id"].astype(str))


@pytest.mark.parametrize("target", ["responder", "biomarker"])
def test_out_of_fold_auroc(demo: Path, target: str):
    run = demo / "run"
    pt = _patient_level(pd.read_csv(run / "predictions.csv"), target)
    auc = roc_auc_score(pt["y"], pt["s"])  # independent of pathstrat.metrics
    reported = json.loads((run / "metrics.json").read_text())[target]["auroc"]["mean"]
    assert reported == pytest.approx(auc, abs=1e-6)
    assert auc >= 0.85, f"{target} out-of-fold AUROC {auc:.3f} < 0.85"


def _attention_auroc(run: Path, cohort: Path, classes: tuple[str, ...],
                     dataset: str = "attention") -> float:
    """Mean over slides of the AUROC of ``dataset`` for tiles mostly made of ``classes``."""
    from pathstrat.synthetic import tile_truth, truth_path_for
    from pathstrat.tiles import read_tiles

    man = pd.read_csv(cohort / "manifest.csv", dtype={"slide_id": str})
    aucs = []
    for row in man.itertuples():
        att = run / "attention" / f"{row.slide_id}.h5"
        with h5py.File(att) as f:
            a, coords = f[dataset][:], f["coords"][:]
        ts = read_tiles(run / "tiles" / f"{row.slide_id}.h5")
        np.testing.assert_array_equal(coords, ts.coords)
        truth = tile_truth(truth_path_for(cohort / row.path), coords, ts.attrs["tile_size_level0"],
                           ts.attrs["slide_mpp"])
        planted = truth[list(classes)].sum(axis=1).to_numpy() >= 0.5
        if 0 < planted.sum() < len(planted):
            aucs.append(roc_auc_score(planted, a))
    assert len(aucs) >= 20
    return float(np.mean(aucs))


@pytest.mark.parametrize("target", ["responder", "survival"])
def test_attention_ranks_planted_tiles(demo: Path, target: str):
    """Each target has its own attention map (multi-task ABMIL, per-target attention). The
    responder is planted as lymphocyte-dense tissue and the hazard as necrosis: each target's
    attention must rank tiles mostly made of its planted tissue (truth masks) above the rest.
    (The biomarker is planted as a mucinous tumour variant covering few whole tiles; its map is
    reported in docs/benchmarks.md, not asserted.)"""
    auc = _attention_auroc(demo / "run", demo / "cohort", PLANTED[target], f"attention_{target}")
    assert auc >= 0.8, f"{target} attention tile-level AUROC vs planted masks {auc:.3f} < 0.8"


def test_risk_groups_separate(demo: Path):
    from lifelines.statistics import logrank_test

    run = demo / "run"
    surv = json.loads((run / "survival.json").read_text())
    pts = pd.read_csv(run / surv["files"]["patients_csv"])
    groups = sorted(pts["risk_group"].unique())
    assert len(groups) == 2
    a, b = (pts[pts["risk_group"] == g] for g in groups)
    lr = logrank_test(a["time"], b["time"], a["event"], b["event"])
    assert surv["logrank_p"] == pytest.approx(lr.p_value, rel=1e-6)
    assert lr.p_value < 0.01, f"log-rank p {lr.p_value:.3g} >= 0.01"
    assert surv["c_index"] > 0.5


def test_treatment_interaction_in_planted_direction(demo: Path):
    """Planted: treatment lowers the hazard only for biomarker-positive patients, so the
    biomarker score x treatment interaction has HR < 1 and the score is predictive."""
    cohort_info = json.loads((demo / "cohort" / "cohort.json").read_text())
    planted = cohort_info["design"]["beta_interaction"]
    assert planted < 0
    pred = json.loads((demo / "run" / "predictive" / "survival.json").read_text())
    inter = pred["cox"]["interaction"]
    term = next(t for t in inter["terms"] if t["term"] == "score_x_arm")
    assert term["hr"] < 1, f"interaction HR {term['hr']:.3f} not in the planted direction"
    # within the treated arm, a higher biomarker score means a lower hazard than in control
    hr = inter["hr_per_arm"]
    assert hr[str(1)]["hr"] < hr[str(0)]["hr"]


def test_demo_trial_design_from_its_selection_rule(demo: Path):
    """The demo sizes a trial from its own selection rule; the report shows the comparison."""
    run = demo / "run"
    doc = json.loads((run / "trial" / "trial_design.json").read_text())
    sel = json.loads((run / "selection.json").read_text())
    c = sel["heldout"]
    assert doc["inputs"]["sensitivity"] == pytest.approx(c["tp"] / (c["tp"] + c["fn"]))
    assert doc["inputs"]["specificity"] == pytest.approx(c["tn"] / (c["tn"] + c["fp"]))
    assert set(doc["designs"]) == {"all_comers", "enriched", "stratified"}
    enr = doc["designs"]["enriched"]
    assert enr["screened"] >= enr["enrolled"]
    assert "power" in doc["simulation"]["enriched"]
    html = (run / "report.html").read_text()
    assert 'id="trial"' in html and "enriched" in html and "Trial design" in html
