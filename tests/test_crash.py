"""Kill -9 a `pathstrat run` in the middle of a randomly chosen stage, rerun it, and get the same
features, predictions and metrics as an uninterrupted run (deterministic training on CPU)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from _pipeline_helpers import write_config

# stage -> first output it writes (relative to the run dir); polled to time the kill
FIRST_OUTPUT = {
    "tile": "tiles/*.h5",
    "embed": "features/builtin/*.h5",
    "train": "folds.csv",
    "stratify": "figures/*",
    "heatmaps": "heatmaps/*.png",
}
SEED = int(os.environ.get("PATHSTRAT_CRASH_SEED", "6"))


def _run_cmd(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "pathstrat.cli", "-q", "run", str(cfg)]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")


def _started(run: Path, stage: str) -> bool:
    log = run / "pipeline.log"
    if not log.exists() or f"stage {stage}: running" not in log.read_text(errors="replace"):
        return False
    return any(run.glob(FIRST_OUTPUT[stage]))


def _kill_during(cfg: Path, run: Path, stage: str, timeout_s: float = 400) -> int:
    proc = subprocess.Popen(_run_cmd(cfg), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if _started(run, stage):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode


def _features(run: Path) -> dict[str, np.ndarray]:
    out = {}
    for p in sorted((run / "features" / "builtin").glob("*.h5")):
        with h5py.File(p) as f:
            out[p.stem] = f["features"][:]
    return out


def test_kill_at_random_stage_then_rerun_matches_uninterrupted(small_run, tmp_path):
    cfg_ref, ref = small_run
    stage = random.Random(SEED).choice(sorted(FIRST_OUTPUT))
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "config.yaml", _manifest(cfg_ref), run)

    rc = _kill_during(cfg, run, stage)
    assert rc == -signal.SIGKILL, f"the run ended ({rc}) before stage {stage} was seen"
    assert not (run / "report.html").exists()

    done = subprocess.run(_run_cmd(cfg), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr[-2000:]  # finished; the bad slides stay failed
    assert not list(run.rglob(".tmp-*")), "a partial file survived"

    fa, fb = _features(ref.run_dir), _features(run)
    assert sorted(fa) == sorted(fb) and len(fa) >= 12
    for sid in fa:
        np.testing.assert_array_equal(fa[sid], fb[sid])
    pa = pd.read_csv(ref.run_dir / "predictions.csv")
    pb = pd.read_csv(run / "predictions.csv")
    pd.testing.assert_frame_equal(pa, pb)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((ref.run_dir / "metrics.json").read_text())
    sa = json.loads((ref.run_dir / "survival.json").read_text())
    sb = json.loads((run / "survival.json").read_text())
    for k in ("c_index", "logrank_p", "cox_hr"):
        assert sa[k] == sb[k], k
    assert (run / "report.html").is_file()


def _manifest(cfg_path: Path) -> Path:
    import yaml

    return Path(yaml.safe_load(cfg_path.read_text())["cohort"]["manifest"])
