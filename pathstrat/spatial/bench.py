"""Spot-tile reading speed: pathstrat's reader vs a plain OpenSlide loop (for docs/spatial.md).

    python -m pathstrat.spatial.bench SLIDE SPACERANGER_OUTS [--repeats 3]

Both read the same spot tiles (112 µm at 0.5 µm/px) in the same order; the plain loop is
``OpenSlide.read_region`` per spot, RGBA -> RGB, resized to the tile size when needed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def spot_read_rates(slide_path: str | Path, centres_level0: np.ndarray, *, tile_um: float = 112.0,
                    tile_mpp: float = 0.5, repeats: int = 3) -> dict[str, Any]:
    """Best-of-``repeats`` spots/s of :meth:`Slide.read_tiles` and of a plain OpenSlide loop,
    plus the largest pixel difference between the two (JPEG decoders may round differently)."""
    import openslide

    from pathstrat.slide import open_slide, resize_tile
    from pathstrat.spatial.spots import SpotTiling

    with open_slide(slide_path) as slide:
        tiling = SpotTiling.for_slide(slide.mpp, tile_um, tile_mpp)
        coords = tiling.top_left(centres_level0)
        backend = slide.backend
        level = slide.best_level_for_downsample(tiling.tile_size_level0 / tiling.tile_px)
        ds = slide.level_downsamples[level]
    fast, ours = [], None
    for _ in range(repeats):
        with open_slide(slide_path) as slide:  # fresh handle and decode cache each time
            t0 = time.perf_counter()
            ours = list(slide.read_tiles(coords, tiling.tile_size_level0, tiling.tile_px))
            fast.append(time.perf_counter() - t0)
    n = max(1, int(round(tiling.tile_size_level0 / ds)))
    plain, ref = [], None
    for _ in range(repeats):
        osr = openslide.OpenSlide(str(slide_path))  # fresh handle: no warm cache across repeats
        t0 = time.perf_counter()
        ref = [resize_tile(np.asarray(osr.read_region((int(x), int(y)), level, (n, n))
                                      .convert("RGB")), tiling.tile_px) for x, y in coords]
        plain.append(time.perf_counter() - t0)
        osr.close()
    diff = max(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
               for a, b in zip(ours, ref, strict=True)) if len(coords) else 0
    k = len(coords)
    return {"spots": k, "backend": backend, "pathstrat_spots_per_s": k / min(fast),
            "openslide_spots_per_s": k / min(plain), "max_abs_pixel_diff": diff}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from pathstrat.slide import open_slide
    from pathstrat.spatial.ingest import map_to_slide, read_spaceranger

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide")
    ap.add_argument("spaceranger")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    sr = read_spaceranger(a.spaceranger, load_hires=True)
    with open_slide(a.slide) as s:
        xy, _ = map_to_slide(sr, s)
    r = spot_read_rates(a.slide, xy, repeats=a.repeats)
    sys.stdout.write(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in r.items()) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
