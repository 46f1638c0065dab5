"""Shared test fixtures. Stage-specific factories live in pathstrat.testing / pathstrat.synthetic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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
