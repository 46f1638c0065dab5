"""Synthetic H&E slides and cohorts with known (planted) content, for tests and the demo.

``make_slide`` writes a pyramidal JPEG-tiled Aperio-style TIFF plus ``<stem>.truth.npz``;
``make_cohort`` writes many such slides with labels and survival driven by what was planted.
"""

from pathstrat.synthetic.cohort import MANIFEST_COLUMNS, CohortDesign, make_cohort
from pathstrat.synthetic.layout import CLASSES, PATTERNS, TISSUE_CLASSES
from pathstrat.synthetic.slide import (
    SyntheticSlide,
    load_truth,
    make_slide,
    tile_truth,
    truth_path_for,
)
from pathstrat.synthetic.spatial import (
    PLANTED_PROGRAMMES,
    SyntheticVisium,
    make_visium_cohort,
    make_visium_sample,
)
from pathstrat.synthetic.textures import Stain

__all__ = ["CLASSES", "MANIFEST_COLUMNS", "PATTERNS", "PLANTED_PROGRAMMES", "TISSUE_CLASSES",
           "CohortDesign", "Stain", "SyntheticSlide", "SyntheticVisium", "load_truth",
           "make_cohort", "make_slide", "make_visium_cohort", "make_visium_sample", "tile_truth",
           "truth_path_for"]
