"""`pathstrat demo`: a synthetic cohort with planted signal, run end to end with `builtin`."""

from __future__ import annotations

import logging
import shutil
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
    from pathstrat.config import DEMO_CONFIG, shipped_config
    from pathstrat.config import load_config
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
