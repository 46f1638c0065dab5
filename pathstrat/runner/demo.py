"""`pathstrat demo`: a synthetic cohort with planted signal, run end to end with `builtin`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pathstrat.io import ensure_writable_dir, write_json_atomic
from pathstrat.runner.context import RunSummary

log = logging.getLogger(__name__)


def make_demo_cohort(out: str | Path, *, n_patients: int = 60, seed: int = 0) -> Path:
    """Generate (once) the synthetic cohort under ``out/cohort``; return its manifest path.

    A stamp with the generator's arguments lets a second demo reuse the slides.
    """
    from pathstrat import synthetic

    cohort_dir = Path(out) / "cohort"
    stamp = cohort_dir / ".pathstrat-cohort.json"
    want = {"n_patients": n_patients, "seed": seed}
    if stamp.exists():
        info = json.loads(stamp.read_text())
        manifest = Path(info.get("manifest", ""))
        if info.get("params") == want and manifest.is_file():
            log.info("demo cohort: reusing %s", manifest)
            return manifest
    log.info("demo cohort: generating %d synthetic patients (seed %d) in %s", n_patients, seed, cohort_dir)
    manifest = Path(synthetic.make_cohort(cohort_dir, n_patients=n_patients, seed=seed))
    write_json_atomic(stamp, {"params": want, "manifest": str(manifest.resolve())})
    return manifest


def run_demo(out: str | Path, *, n_patients: int = 60, seed: int = 0,
             overrides: list[str] | None = None, executor: str | None = None) -> RunSummary:
    """Generate the cohort under ``out`` and run configs/demo.yaml into ``out/run``."""
    from pathstrat.commands.pipeline import DEMO_CONFIG, find_config
    from pathstrat.config import load_config
    from pathstrat.runner.core import run_pipeline

    out = ensure_writable_dir(Path(out).resolve(), min_free_mb=300.0)
    manifest = make_demo_cohort(out, n_patients=n_patients, seed=seed)
    sets = [f"cohort.manifest={manifest}", f"out_dir={out / 'run'}", *(overrides or [])]
    cfg = load_config(find_config(DEMO_CONFIG), sets)
    return run_pipeline(cfg, executor=executor)
