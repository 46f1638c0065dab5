"""`pathstrat demo`: a synthetic cohort with planted signal, run end to end with `builtin`."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from pathstrat.io import ensure_writable_dir
from pathstrat.runner.context import RunSummary

log = logging.getLogger(__name__)


def make_demo_cohort(out: str | Path, *, n_patients: int = 60, seed: int = 0,
                     workers: int = 2) -> Path:
    """Generate the synthetic cohort under ``out/cohort`` (reused when already complete)."""
    from pathstrat import synthetic

    return Path(synthetic.make_cohort(Path(out) / "cohort", n_patients=n_patients, seed=seed,
                                      workers=workers))


def run_demo(out: str | Path, *, n_patients: int = 60, seed: int = 0,
             overrides: list[str] | None = None, executor: str | None = None) -> RunSummary:
    """Generate the cohort under ``out`` and run configs/demo.yaml into ``out/run``."""
    from pathstrat.config import DEMO_CONFIG, load_config, shipped_config
    from pathstrat.runner.core import run_pipeline

    out = ensure_writable_dir(Path(out).resolve(), min_free_mb=300.0)
    manifest_path = out / "cohort" / "manifest.csv"
    before = manifest_path.stat().st_mtime_ns if manifest_path.exists() else None
    manifest = make_demo_cohort(out, n_patients=n_patients, seed=seed)
    run_dir = out / "run"
    if before != manifest.stat().st_mtime_ns and run_dir.exists():
        # The slides were (re)generated in place: tiles and features of the old slides would be
        # reused by path, so start the run afresh.
        log.warning("demo cohort was regenerated: removing the previous run in %s", run_dir)
        shutil.rmtree(run_dir)
    sets = [f"cohort.manifest={manifest}", f"out_dir={run_dir}", *(overrides or [])]
    cfg = load_config(shipped_config(DEMO_CONFIG), sets)
    return run_pipeline(cfg, executor=executor)


def run_spatial_demo(out: str | Path, run_command: Callable[[list[str]], int], *, n_samples: int = 4,
                     n_he: int = 1, seed: int = 0, device: str = "cpu") -> dict:
    """The spatial-transcriptomics demo step (``pathstrat demo --spatial``): generated Visium-like
    samples with planted programmes -> ``.h5ad`` with spot embeddings (``builtin``) -> ridge
    expression model with patient folds -> programme maps and slide columns on H&E-only slides.

    Runs through the public ``pathstrat spatial`` commands into ``out``, each given to
    ``run_command`` as its argv (:func:`pathstrat.cli.main`; the ``demo`` command passes the
    app it belongs to, so the runner never imports the CLI); returns the fitted model's
    benchmark row (out-of-fold Pearson per gene and per planted programme) and the output
    paths."""
    import pandas as pd

    from pathstrat.errors import PathstratError

    out = ensure_writable_dir(Path(out).resolve())
    steps = [
        ["spatial", "synth", "--out", str(out / "st"), "--n-samples", str(n_samples), "--n-he", str(n_he),
         "--seed", str(seed)],
        ["spatial", "build", "--samples", str(out / "st" / "samples.csv"), "--out", str(out / "h5ad"),
         "--encoder", "builtin", "--device", device],
        ["spatial", "fit", "--samples", str(out / "h5ad"), "--out", str(out / "model"), "--model", "ridge",
         "--programmes", "planted", "--folds", str(min(n_samples, 4)), "--n-boot", "50"],
        ["spatial", "predict", "--model", str(out / "model" / "model.npz"), "--manifest",
         str(out / "st" / "he_manifest.csv"), "--out", str(out / "maps"), "--device", device],
    ]
    for argv in steps:
        rc = run_command(["-q", *argv])
        if rc not in (0, 3):
            raise PathstratError(f"spatial demo step `pathstrat {' '.join(argv[:2])}` failed (exit {rc}); "
                                 "see the messages above.")
    bench = pd.read_csv(out / "model" / "benchmark.csv").iloc[0].to_dict()
    log.info("spatial demo: ridge over %d patients, programme Pearson %s; maps in %s",
             int(bench.get("n_patients", 0)),
             ", ".join(f"{k}={v:.2f}" for k, v in bench.items() if k.startswith("programme_")),
             out / "maps")
    return {"benchmark": bench, "model": out / "model" / "model.npz",
            "slide_columns": out / "maps" / "manifest_programmes.csv"}
