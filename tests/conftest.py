"""Shared test fixtures. Stage-specific factories live in pathstrat.testing / pathstrat.synthetic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pathstrat.executors.base import SlideWork

ROOT = Path(__file__).resolve().parents[1]

# Keep each test process light on a 2-core machine and never touch the network hub.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def _slides_dir() -> Path:
    return Path(os.environ.get("PATHSTRAT_TEST_SLIDES", ROOT.parent / "shared" / "data" / "slides"))


@pytest.fixture(scope="session")
def slides_dir() -> Path:
    """Folder of real slides (PATHSTRAT_TEST_SLIDES); skips with a reason when absent."""
    d = _slides_dir()
    if not d.is_dir():
        pytest.skip(f"real test slides not found at {d}: set PATHSTRAT_TEST_SLIDES to the folder "
                    "holding cmu-1-small-region.svs (see ../shared/data/README.md)")
    return d


@pytest.fixture
def real_slide(slides_dir: Path):
    """Return a function name -> path that skips when that slide is absent."""

    def get(name: str) -> Path:
        p = slides_dir / name
        if not p.exists():
            pytest.skip(f"real test slide {p} is absent")
        return p

    return get


@pytest.fixture
def rng() -> np.random.Generator:
    """Seeded random generator (tests never depend on global random state)."""
    return np.random.default_rng(12345)


def write_aperio_tiff(path: Path, rgb: np.ndarray, *, mpp: float | None = 0.25,
                      factors: tuple[int, ...] = (4, 4), tile: int = 256) -> Path:
    """Small pyramidal JPEG-tiled TIFF with an Aperio description (OpenSlide reads its MPP)."""
    import cv2
    import tifffile

    levels = [np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)]
    for f in factors:
        p = levels[-1]
        levels.append(cv2.resize(p, (max(1, p.shape[1] // f), max(1, p.shape[0] // f)),
                                 interpolation=cv2.INTER_AREA))
    h, w = rgb.shape[:2]
    desc = f"Aperio Image Library v10.0.51\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90|AppMag = 40"
    if mpp is not None:
        desc += f"|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tw:
        for i, lv in enumerate(levels):
            tw.write(lv, tile=(tile, tile), compression="jpeg", compressionargs={"level": 90},
                     photometric="rgb", description=desc if i == 0 else None,
                     subfiletype=0 if i == 0 else 1, metadata=None)
    return Path(path)


@pytest.fixture(scope="session")
def aperio_tiff():
    """The :func:`write_aperio_tiff` writer (path, rgb, mpp=0.25, factors=(4, 4), tile=256)."""
    return write_aperio_tiff


# -- pipeline fixtures (issue 6): one small cohort and one uninterrupted run, shared by
#    tests/test_runner.py and tests/test_crash.py so the expensive run happens once per session.

@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """Manifest of 12 generated slides plus bad/no-MPP/no-tissue/missing slides when available."""
    from _pipeline_helpers import make_small_cohort

    d = _slides_dir()
    return make_small_cohort(tmp_path_factory.mktemp("small_cohort"), d if d.is_dir() else None)


@pytest.fixture(scope="session")
def small_run(small_cohort, tmp_path_factory):
    """(config path, RunSummary) of one uninterrupted local `pathstrat run` on the small cohort."""
    from _pipeline_helpers import write_config

    from pathstrat.config import load_config
    from pathstrat.runner import run_pipeline

    d = tmp_path_factory.mktemp("small_run")
    cfg_path = write_config(d / "config.yaml", small_cohort, d / "run")
    return cfg_path, run_pipeline(load_config(cfg_path))


@pytest.fixture(scope="session")
def synthetic_pen_slide(tmp_path_factory):
    """A make_slide slide (2400 x 1800 px at 0.5 µm/px, seed 3) with pen strokes and its truth."""
    try:
        from pathstrat.synthetic import make_slide
    except ImportError as exc:  # pragma: no cover - synthetic is part of the package
        pytest.skip(f"pathstrat.synthetic unavailable: {exc}")
    path = tmp_path_factory.mktemp("synthetic-pen") / "pen.svs"
    return make_slide(path, width=2400, height=1800, mpp=0.5, seed=3, pen=2)


class CrashOnSlideC(SlideWork):
    """Per-slide work (test_tiling) that dies like a segfaulting decoder on slide 'c'; defined
    in this light module so spawned pool workers import it quickly."""

    stage = "tile"
    verb = "tiling"
    processes = 2

    def process(self, row: dict) -> dict:
        if row["slide_id"] == "c":
            os._exit(139)
        return {"slide_id": row["slide_id"], "n_tiles": 1}
