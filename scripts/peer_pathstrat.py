#!/usr/bin/env python
"""pathstrat as a peer in the shared WSI-tiling comparison (/work/shared/bench/peers).

Same task and output as the other peers: tissue detection + 224-px grid at 0.5 µm/px with
>= 25 % tissue (pathstrat.tiling.compute_grid: saturation/Otsu mask at 8 µm/px, pen filter,
integral-image tissue fraction), then every tile read once through pathstrat's reader
(Slide.read_tiles; fast tifffile+libjpeg-turbo backend for JPEG-tiled TIFF/SVS). Prints the
``RESULT {json}`` line of common.py, which is imported from the peers folder, not copied.

run_peers.sh only runs ``peer_<tool>.py`` beside itself, and /work/shared is read-only, so run
it from a folder of links (see docs/benchmarks.md):

    mkdir -p /tmp/peers-bin && ln -sf /work/shared/bench/peers/* /tmp/peers-bin/ \\
      && ln -sf "$PWD/scripts/peer_pathstrat.py" /tmp/peers-bin/
    PEERS="reference pathstrat" PEER_PY_pathstrat="$PWD/.venv/bin/python" \\
      bash /tmp/peers-bin/run_peers.sh SLIDE /tmp/peers-out
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PEERS_DIR = os.environ.get("PATHSTRAT_PEERS_DIR", "/work/shared/bench/peers")
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), PEERS_DIR]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when run from a link
from common import base_parser, emit, median_time, save_coords, single_thread  # noqa: E402

single_thread()

import cv2  # noqa: E402

cv2.setNumThreads(1)


def mask_and_grid(path: str, patch: int, mpp: float, min_tissue: float, slide_mpp: float | None):
    from pathstrat.slide import open_slide
    from pathstrat.tiling import TilingParams, compute_grid

    params = TilingParams(target_mpp=mpp, tile_px=patch, min_tissue=min_tissue)
    with open_slide(path, mpp=slide_mpp) as s:  # fresh handle each run
        grid = compute_grid(s, params)
    return grid.coords, float(grid.tile_size_level0)


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--slide-mpp", type=float, default=None, help="level-0 µm/px if the slide has none")
    a = ap.parse_args()
    import pathstrat
    from pathstrat.slide import open_slide

    sec, (xy, size0), _ = median_time(
        lambda: mask_and_grid(a.slide, a.patch, a.mpp, a.min_tissue, a.slide_mpp), a.repeats)
    save_coords(a.out_npz, xy, tile_size_level0=size0)
    sec_read, backend = None, None
    with open_slide(a.slide, mpp=a.slide_mpp) as s:
        backend = s.backend
        if not a.no_read:
            acc = 0
            t0 = time.perf_counter()
            for tile in s.read_tiles(xy, size0, a.patch):
                acc += int(tile[0, 0, 0])
            sec_read = time.perf_counter() - t0
    version = f"pathstrat {getattr(pathstrat, '__version__', '?')} ({backend})"
    emit("pathstrat", version, len(xy), sec, sec_read, tile_size_level0=size0, backend=backend)


if __name__ == "__main__":
    main()
