"""``make_cohort``: patients whose labels and survival follow from what is planted in their slides.

Each patient gets latent tissue composition (lymphocyte, necrosis, tumour fractions and the share
of tumour drawn as the mucinous variant); every slide of the patient is drawn around it. Labels are
computed from the fractions *measured* on the written truth maps:

- ``responder`` ~ Bernoulli(sigmoid((lymphocytes - threshold) / scale)), a few labels flipped;
- ``biomarker`` ~ Bernoulli(sigmoid((mucinous share of tumour - threshold) / scale)), a few flipped;
- survival: Weibull proportional hazards with log-hazard
  ``b_nec * (necrosis - centre) + b_stage * (stage - 2.5) + b_age * (age - 64) / 10
  + arm * (b_arm + b_interaction * biomarker)``, administrative plus random censoring.
"""

from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import ConfigError
from pathstrat.io import ensure_writable_dir, params_hash, write_dataframe_atomic, write_json_atomic
from pathstrat.progress import Progress
from pathstrat.synthetic.layout import TISSUE_CLASSES
from pathstrat.synthetic.slide import load_truth, make_slide, truth_path_for

log = logging.getLogger(__name__)

COHORT_SCHEMA = "pathstrat.synthetic-cohort/1"
MANIFEST_COLUMNS = ("slide_id", "patient_id", "path", "responder", "biomarker", "time", "event",
                    "arm", "age", "stage", "site")
N_SITES = 3
#: Per-site staining centres: the batch effect a federated or stain-normalised model must absorb.
SITE_STAINS = (
    {"h_scale": 1.0, "e_scale": 1.0, "hue_shift": 0.0, "brightness": 243.0},
    {"h_scale": 0.93, "e_scale": 1.12, "hue_shift": 0.02, "brightness": 240.0},
    {"h_scale": 1.08, "e_scale": 0.92, "hue_shift": -0.02, "brightness": 237.0},
)


@dataclass(frozen=True)
class CohortDesign:
    """The planted biology. Fractions are of the tissue area; ranges are uniform draws."""

    lymph_low: tuple[float, float] = (0.0, 0.06)
    lymph_high: tuple[float, float] = (0.15, 0.35)
    p_lymph_high: float = 0.5
    responder_threshold: float = 0.10
    responder_scale: float = 0.012
    mucinous_neg: tuple[float, float] = (0.0, 0.08)  # share of tumour drawn mucinous
    mucinous_pos: tuple[float, float] = (0.45, 0.9)
    p_mucinous: float = 0.5
    biomarker_threshold: float = 0.25
    biomarker_scale: float = 0.04
    label_flip: float = 0.02
    necrosis: tuple[float, float] = (0.02, 0.30)
    tumor: tuple[float, float] = (0.22, 0.34)
    min_stroma: float = 0.12
    slide_jitter: float = 0.10  # relative log-normal jitter of a slide around its patient
    tissue: tuple[float, float] = (0.3, 0.42)
    # survival (months)
    baseline_median: float = 30.0
    weibull_shape: float = 1.3
    beta_necrosis: float = 22.0  # per unit fraction: +0.1 necrosis -> hazard x 9
    necrosis_centre: float = 0.16
    beta_stage: float = 0.2
    beta_age_decade: float = 0.1
    beta_arm: float = 0.4  # treatment alone: a little harm (toxicity) ...
    beta_interaction: float = -2.6  # ... clear benefit if biomarker-positive (HR 0.11)
    admin_censor: float = 96.0
    random_censor_mean: float = 500.0


@dataclass
class _SlideTask:
    slide_id: str
    patient_id: str
    path: Path
    seed: int
    texture_seed: int
    width: int
    height: int
    mpp: float
    layout: dict[str, float]
    stain: dict[str, float]
    pen: bool
    kwargs: dict[str, Any] = field(default_factory=dict)


def make_cohort(out_dir: str | os.PathLike, *, n_patients: int | None = None, seed: int = 0,
                second_slide_fraction: float = 0.25, width: int | None = None,
                height: int | None = None, mpp: float = 0.5, workers: int = 1,
                small: bool = False, design: CohortDesign | None = None,
                pen_fraction: float = 0.0, texture_banks: int = 4) -> Path:
    """Generate slides, ``manifest.csv``, ``truth.csv`` and ``cohort.json`` under ``out_dir``.

    ``small=True`` defaults to 12 patients on 1024 x 768 px slides (fast tests); otherwise 60
    patients on 4000 x 3000 px at 0.5 µm/px (about 60-110 tissue tiles of 224 px at 0.5 µm/px).
    A rerun with the same parameters returns the existing manifest; slides already written
    (truth present with the same seed) are reused after an interruption.
    """
    design = design or CohortDesign()
    n_patients = n_patients if n_patients is not None else (12 if small else 60)
    width = width if width is not None else (1024 if small else 4000)
    height = height if height is not None else (768 if small else 3000)
    if n_patients < 2:
        raise ConfigError(f"n_patients={n_patients}: a cohort needs at least 2 patients")
    if not 0.0 <= second_slide_fraction <= 1.0 or not 0.0 <= pen_fraction <= 1.0:
        raise ConfigError("second_slide_fraction and pen_fraction must lie in [0, 1]")
    out = ensure_writable_dir(out_dir)
    params = {"schema": COHORT_SCHEMA, "n_patients": n_patients, "seed": seed,
              "second_slide_fraction": second_slide_fraction, "width": width, "height": height,
              "mpp": mpp, "pen_fraction": pen_fraction, "texture_banks": texture_banks,
              "design": asdict(design)}
    phash = params_hash(params)
    manifest_path = out / "manifest.csv"
    if _is_complete(out, manifest_path, phash):
        log.info("synthetic cohort in %s already complete (params %s): reusing it", out, phash)
        return manifest_path

    rng = np.random.default_rng([int(seed), 0xC0407])
    patients = _draw_patients(n_patients, second_slide_fraction, design, rng)
    tasks = _slide_tasks(patients, out / "slides", seed, width, height, mpp, pen_fraction,
                         texture_banks, design, rng)
    measured = _run_tasks(tasks, workers)
    slides = pd.DataFrame([{"slide_id": t.slide_id, "patient_id": t.patient_id,
                            "path": str(t.path.relative_to(out)), **measured[t.slide_id]}
                           for t in tasks])
    truth = _patient_outcomes(patients, slides, design, rng)
    manifest = slides[["slide_id", "patient_id", "path"]].merge(
        truth[["patient_id", "responder", "biomarker", "time", "event", "arm", "age", "stage",
               "site"]], on="patient_id", how="left")[list(MANIFEST_COLUMNS)]
    write_dataframe_atomic(out / "truth.csv", truth)
    write_json_atomic(out / "cohort.json", {**params, "params_hash": phash,
                                            "n_slides": len(manifest)})
    write_dataframe_atomic(manifest_path, manifest)
    log.info("synthetic cohort: %d patients, %d slides in %s", n_patients, len(manifest), out)
    return manifest_path


def _is_complete(out: Path, manifest_path: Path, phash: str) -> bool:
    meta = out / "cohort.json"
    if not (manifest_path.exists() and meta.exists()):
        return False
    try:
        if json.loads(meta.read_text()).get("params_hash") != phash:
            return False
        df = pd.read_csv(manifest_path)
    except (OSError, ValueError):
        return False
    return all((out / p).exists() and truth_path_for(out / p).exists() for p in df["path"])


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _draw_patients(n: int, second: float, d: CohortDesign, rng: np.random.Generator) -> pd.DataFrame:
    """Latent composition, covariates, site and randomised arm of each patient."""
    rows = []
    sites = rng.permutation(np.arange(n) % N_SITES)
    arms = rng.permutation(np.arange(n) % 2)
    for i in range(n):
        lymph = _uniform(rng, d.lymph_high if rng.random() < d.p_lymph_high else d.lymph_low)
        muc = _uniform(rng, d.mucinous_pos if rng.random() < d.p_mucinous else d.mucinous_neg)
        nec = _uniform(rng, d.necrosis)
        tum = _uniform(rng, d.tumor)
        tum = min(tum, max(0.05, 1.0 - d.min_stroma - lymph - nec))
        rows.append({"patient_id": f"P{i + 1:03d}", "n_slides": 2 if rng.random() < second else 1,
                     "plan_lymphocytes": lymph, "plan_necrosis": nec, "plan_tumor": tum,
                     "plan_mucinous_of_tumor": muc, "site": int(sites[i]), "arm": int(arms[i]),
                     "age": int(np.clip(np.rint(rng.normal(64, 10)), 30, 90)),
                     "stage": int(rng.choice([1, 2, 3, 4], p=[0.15, 0.35, 0.35, 0.15]))})
    return pd.DataFrame(rows)


def _slide_tasks(patients: pd.DataFrame, slide_dir: Path, seed: int, width: int, height: int,
                 mpp: float, pen_fraction: float, banks: int, d: CohortDesign,
                 rng: np.random.Generator) -> list[_SlideTask]:
    tasks: list[_SlideTask] = []
    for p in patients.itertuples(index=False):
        for k in range(p.n_slides):
            j = lambda v: float(v * math.exp(d.slide_jitter * rng.standard_normal()))  # noqa: E731
            lym, nec, tum = j(p.plan_lymphocytes), j(p.plan_necrosis), j(p.plan_tumor)
            scale = min(1.0, (1.0 - d.min_stroma) / max(lym + nec + tum, 1e-9))
            lym, nec, tum = lym * scale, nec * scale, tum * scale
            layout = {"lymphocytes": lym, "necrosis": nec, "tumor": tum,
                      "stroma": 1.0 - lym - nec - tum,
                      "mucinous": float(np.clip(j(p.plan_mucinous_of_tumor), 0.0, 1.0)),
                      "tissue": _uniform(rng, d.tissue), "n_blobs": int(rng.integers(1, 4))}
            idx = len(tasks)
            sid = f"{p.patient_id}-S{k + 1}"
            tasks.append(_SlideTask(
                slide_id=sid, patient_id=p.patient_id, path=slide_dir / f"{sid}.svs",
                seed=int(np.random.SeedSequence([seed, idx]).generate_state(1)[0]),
                texture_seed=seed * 1000 + idx % max(1, banks), width=width, height=height,
                mpp=mpp, layout=layout, stain=dict(SITE_STAINS[p.site]),
                pen=bool(rng.random() < pen_fraction)))
    return tasks


def _make_one(task: _SlideTask) -> tuple[str, dict[str, float]]:
    """Worker: write one slide (or reuse a finished one) and return its measured composition."""
    tpath = truth_path_for(task.path)
    if task.path.exists() and tpath.exists():
        try:
            t = load_truth(tpath)
            if int(t["seed"]) == task.seed and int(t["slide_width"]) == task.width:
                return task.slide_id, _measured(t["class_fractions"], t["mucinous_fraction"],
                                                t["tissue_fraction"])
        except (OSError, ValueError, KeyError):
            pass
    s = make_slide(task.path, width=task.width, height=task.height, mpp=task.mpp, seed=task.seed,
                   layout=task.layout, pen=task.pen, stain=task.stain, stain_jitter=0.03,
                   texture_seed=task.texture_seed)
    return task.slide_id, _measured([s.class_fractions[k] for k in TISSUE_CLASSES],
                                    s.mucinous_fraction, s.tissue_fraction)


def _measured(fractions: Any, mucinous: float, tissue: float) -> dict[str, float]:
    out = {k: float(v) for k, v in zip(TISSUE_CLASSES, fractions, strict=True)}
    out["mucinous"] = float(mucinous)
    out["tissue_fraction"] = float(tissue)
    return out


def _run_tasks(tasks: list[_SlideTask], workers: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    prog = Progress(total=len(tasks), desc="synthetic slides", unit="slide")
    try:
        if workers <= 1:
            for t in tasks:
                sid, m = _make_one(t)
                results[sid] = m
                prog.update(1)
        else:
            # spawn: safe even when the caller already runs threads (torch, BLAS)
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as ex:
                for sid, m in ex.map(_make_one, tasks, chunksize=1):
                    results[sid] = m
                    prog.update(1)
    finally:
        prog.close()
    return results


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _patient_outcomes(patients: pd.DataFrame, slides: pd.DataFrame, d: CohortDesign,
                      rng: np.random.Generator) -> pd.DataFrame:
    """Labels and survival from the measured, tissue-weighted composition of each patient."""
    w = slides["tissue_fraction"].clip(lower=1e-6)
    cols = [*TISSUE_CLASSES, "mucinous"]
    pooled = slides[cols].mul(w, axis=0).groupby(slides["patient_id"]).sum().div(
        w.groupby(slides["patient_id"]).sum(), axis=0).reset_index()
    t = patients.merge(pooled, on="patient_id", how="left")
    t["mucinous_of_tumor"] = t["mucinous"] / t["tumor"].clip(lower=1e-6)
    n = len(t)
    t["p_responder"] = _sigmoid((t["lymphocytes"] - d.responder_threshold) / d.responder_scale)
    t["p_biomarker"] = _sigmoid((t["mucinous_of_tumor"] - d.biomarker_threshold)
                                / d.biomarker_scale)
    flip_r, flip_b = rng.random(n) < d.label_flip, rng.random(n) < d.label_flip
    t["responder"] = ((rng.random(n) < t["p_responder"]) ^ flip_r).astype(int)
    t["biomarker"] = ((rng.random(n) < t["p_biomarker"]) ^ flip_b).astype(int)
    t["treatment_log_hr"] = d.beta_arm + d.beta_interaction * t["biomarker"]
    t["linear_predictor"] = (d.beta_necrosis * (t["necrosis"] - d.necrosis_centre)
                             + d.beta_stage * (t["stage"] - 2.5)
                             + d.beta_age_decade * (t["age"] - 64) / 10.0
                             + t["arm"] * t["treatment_log_hr"])
    k = d.weibull_shape
    scale = d.baseline_median / math.log(2) ** (1 / k)
    u = rng.random(n)
    t_event = scale * (-np.log(u) / np.exp(t["linear_predictor"])) ** (1 / k)
    t_cens = np.minimum(rng.exponential(d.random_censor_mean, n), d.admin_censor)
    t["time"] = np.round(np.minimum(t_event, t_cens), 2).clip(lower=0.01)
    t["event"] = (t_event <= t_cens).astype(int)
    t["interaction_log_hr"] = d.beta_interaction
    t["interaction_direction"] = ("treatment lowers hazard only if biomarker-positive"
                                  if d.beta_interaction < 0 else "treatment raises hazard if "
                                  "biomarker-positive")
    front = ["patient_id", "n_slides", "site", "arm", "age", "stage", "responder", "biomarker",
             "time", "event"]
    return t[front + [c for c in t.columns if c not in front]]
