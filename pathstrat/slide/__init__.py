"""Slide access at physical resolution: open any OpenSlide format, resolve MPP, read tiles.

    from pathstrat.slide import open_slide
    with open_slide("a.svs", mpp=None) as s:
        plan = s.tile_read_plan(target_mpp=0.5, tile_px=224)
        tile = s.read_tile(x0, y0, plan.tile_size_level0, 224)
"""

from pathstrat.slide.backends import BACKENDS, OpenSlideBackend, TiffJpegBackend
from pathstrat.slide.core import ReadPlan, Slide, open_slide, resize_tile
from pathstrat.slide.mpp import KEYS_TRIED, MPP_SOURCES, MPPInfo, resolve_mpp, tiff_resolution_mpp

__all__ = [
    "BACKENDS",
    "KEYS_TRIED",
    "MPP_SOURCES",
    "MPPInfo",
    "OpenSlideBackend",
    "ReadPlan",
    "Slide",
    "TiffJpegBackend",
    "open_slide",
    "resize_tile",
    "resolve_mpp",
    "tiff_resolution_mpp",
]
