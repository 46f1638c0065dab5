"""Small pipeline cohorts for the runner, crash and executor tests (shared via conftest fixtures).

Twelve generated slides (one patient each; responders carry more tumour) plus, when the
real test slides are present, the files of ``bad/``, a slide without MPP, a slide without
tissue and a missing file: every kind of slide a batch must survive.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

N_GOOD = 12
# slide id -> (file under the real-slides folder, expected error type)
BAD_SLIDES = {
    "bad_unreadable": ("bad/unreadable.svs", "SlideReadError"),
    "bad_unopenable": ("bad/unopenable.tiff", "SlideReadError"),
    "bad_broken": ("bad/broken.svs", "SlideReadError"),
    "no_mpp": ("tcga-cr-7395-01a-01-ts1.svs", "MissingMPPError"),
    "no_tissue": ("tiny-small.svs", "EmptyTissueError"),
}
MISSING = "missing_file"


def make_small_cohort(out: Path, slides_dir: Path | None) -> Path:
    """Write the slides and ``manifest.csv`` under ``out``; return the manifest path."""
    from pathstrat.synthetic import make_slide

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_GOOD):
        resp = i % 2
        tum = 0.6 if resp else 0.1
        make_slide(out / f"p{i}.svs", width=768, height=768, mpp=0.5, seed=100 + i, patch_um=128,
                   layout={"tumor": tum, "stroma": 0.8 - tum, "lymphocytes": 0.1, "necrosis": 0.1})
        time = float(rng.exponential(20 if resp else 8))
        rows.append(dict(slide_id=f"p{i}", path=f"p{i}.svs", patient_id=f"P{i}", responder=resp,
                         time=round(time, 2), event=int(rng.random() < 0.8), arm=(i // 2) % 2,
                         age=50 + i))
    extra = dict(responder=0, time=5.0, event=1, arm=0, age=60)
    if slides_dir is not None:
        for sid, (rel, _) in BAD_SLIDES.items():
            rows.append(dict(slide_id=sid, path=str(slides_dir / rel), patient_id=sid, **extra))
        rows.append(dict(slide_id=MISSING, path=str(out / "gone.svs"), patient_id=MISSING, **extra))
    pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)
    return out / "manifest.csv"


def write_config(path: Path, manifest: Path, out_dir: Path, **sections) -> Path:
    """A fast pipeline config for the small cohort (tiny tiles, few epochs, CPU)."""
    cfg = {
        "name": "small",
        "out_dir": str(out_dir),
        "cohort": {"manifest": str(manifest)},
        "tiling": {"target_mpp": 2.0, "tile_px": 64, "min_tissue": 0.25, "workers": 1},
        "embed": {"encoder_id": "builtin", "workers": 0, "device": "cpu", "batch_size": 128},
        "train": {"targets": ["responder", "survival"], "time_col": "time", "event_col": "event",
                  "folds": 3, "epochs": 3, "device": "cpu", "amp": False, "n_boot": 50,
                  "batch_size": 4, "seed": 0},
        "stratify": {"arm_col": "arm", "covariates": ["age"], "n_boot": 50},
        "select": {"target": "responder", "value": 0.9},
        "heatmaps": {"n_extreme": 1, "top_k": 4},
        "report": {"n_boot": 50},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    path.write_text(yaml.safe_dump(cfg))
    return path


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
