#!/usr/bin/env python
"""Benchmark slide reading + tiling on a generated 40,000 x 30,000 px slide at 0.25 µm/px.

    .venv/bin/python scripts/bench_tiling.py [--cache-dir /tmp/pathstrat-bench] [--max-tiles N]

Prints (1) seconds for tissue mask + tile grid (pathstrat.tiling.compute_grid, median of 3, fresh
slide handle each run), (2) tiles/s per core reading every 224-px tile at 0.5 µm/px through
pathstrat's reader vs a plain loop of ``openslide.read_region(level 0, 448 px)`` + ``cv2.resize``
in the same run, as a ratio (goal >= 3.5x), and (3) peak RSS of a fresh process that opens the
slide and reads every tile (goal < 1 GiB). The slide is generated once, tile by tile (never whole
in memory), into --cache-dir, outside the repository. Everything runs single-threaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
cv2.setNumThreads(1)

TILE = 256
LEVEL_DOWNSAMPLES = (1, 4, 16, 32)  # like the shared peer benchmark: no 0.5 µm/px level


# -- streamed synthetic slide (used when pathstrat.synthetic.make_slide is not available) --------
def _blobs_field(w0: int, h0: int, cell: int, seed: int) -> np.ndarray:
    """Boolean tissue map, one cell per `cell` level-0 px: a few smooth-edged blobs (~35 %)."""
    rng = np.random.default_rng(seed)
    gw, gh = -(-w0 // cell), -(-h0 // cell)
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    field = np.zeros((gh, gw), np.float32)
    for _ in range(6):
        cx, cy = rng.uniform(0.15, 0.85) * gw, rng.uniform(0.15, 0.85) * gh
        rx, ry = rng.uniform(0.08, 0.2) * gw, rng.uniform(0.08, 0.2) * gh
        field = np.maximum(field, 1 - ((xx - cx) / rx) ** 2 - ((yy - cy) / ry) ** 2)
    noise = cv2.GaussianBlur(rng.standard_normal((gh, gw)).astype(np.float32), (0, 0), 4)
    return field + 0.6 * noise / (noise.std() + 1e-6) * 0.3 > 0.05


def _texture(seed: int, n: int = 512) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    t = cv2.GaussianBlur(rng.random((n, n)).astype(np.float32), (0, 0), 1.5)
    return (t - t.min()) / (t.max() - t.min() + 1e-6)


def _tiles(level_w: int, level_h: int, ds: int, tissue: np.ndarray, cell: int, tex: np.ndarray):
    """Yield (256, 256, 3) tiles of one level, row-major, computed from level-0 positions."""
    n = tex.shape[0]
    for ty in range(0, level_h, TILE):
        y0 = ((np.arange(ty, ty + TILE) + 0.5) * ds).astype(np.int64)
        my = np.clip(y0 // cell, 0, tissue.shape[0] - 1)
        for tx in range(0, level_w, TILE):
            x0 = ((np.arange(tx, tx + TILE) + 0.5) * ds).astype(np.int64)
            mx = np.clip(x0 // cell, 0, tissue.shape[1] - 1)
            m = tissue[my[:, None], mx[None, :]]
            t = tex[(y0 // ds % n)[:, None], (x0 // ds % n)[None, :]]
            out = np.empty((TILE, TILE, 3), np.uint8)
            out[...] = (236 + 8 * t)[..., None].astype(np.uint8)
            if m.any():
                r, g, b = 150 + 90 * t, 60 + 110 * t, 130 + 80 * t
                out[m] = np.stack([r, g, b], -1)[m].astype(np.uint8)
            yield out


def generate_slide(path: Path, width: int, height: int, mpp: float, seed: int = 0) -> None:
    """Aperio-style pyramidal JPEG TIFF written tile by tile (bounded memory)."""
    import tifffile

    cell = 64
    tissue = _blobs_field(width, height, cell, seed)
    tex = _texture(seed)
    desc = (f"Aperio Image Library v10.0.51\r\n{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) "
            f"JPEG/RGB Q=85|AppMag = {40 if mpp <= 0.3 else 20}|MPP = {mpp}")
    tmp = path.with_name(f".tmp-{path.name}")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for i, ds in enumerate(LEVEL_DOWNSAMPLES):
            lw, lh = width // ds, height // ds
            tw.write(_tiles(lw, lh, ds, tissue, cell, tex), shape=(lh, lw, 3), dtype=np.uint8,
                     tile=(TILE, TILE), compression="jpeg", compressionargs={"level": 85},
                     photometric="rgb", description=desc if i == 0 else None,
                     subfiletype=0 if i == 0 else 1, metadata=None)
    os.replace(tmp, path)


def get_slide(cache: Path, width: int, height: int, mpp: float, generator: str) -> tuple[Path, str]:
    cache.mkdir(parents=True, exist_ok=True)
    use_synth = False
    if generator in ("auto", "synthetic"):
        try:
            from pathstrat.synthetic import make_slide  # noqa: F401
            use_synth = True
        except ImportError:
            if generator == "synthetic":
                raise
    name = f"{'synthetic' if use_synth else 'builtin'}-{width}x{height}-{mpp}.svs"
    path = cache / name
    if not path.exists():
        t0 = time.perf_counter()
        if use_synth:
            from pathstrat.synthetic import make_slide

            make_slide(path, width=width, height=height, mpp=mpp, seed=0, downsamples=LEVEL_DOWNSAMPLES)
        else:
            generate_slide(path, width, height, mpp)
        print(f"# generated {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path, ("pathstrat.synthetic.make_slide" if use_synth else "built-in streamed generator")


# -- measurements -------------------------------------------------------------------------------
def mask_and_grid(path: Path, target_mpp: float, tile_px: int, min_tissue: float, repeats: int = 3):
    """Median seconds of tissue mask + grid, and the coordinates (None if tiling is missing)."""
    from pathstrat.slide import open_slide

    try:
        from pathstrat.tiling import TilingParams, compute_grid
    except ImportError as exc:
        print(f"# pathstrat.tiling not available ({exc}): part (1) skipped, all grid tiles read",
              file=sys.stderr)
        return None, None
    params = TilingParams(target_mpp=target_mpp, tile_px=tile_px, min_tissue=min_tissue)
    times, grid = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        with open_slide(path) as s:
            grid = compute_grid(s, params)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), np.asarray(grid.coords, dtype=np.int64)


def read_ours(path: Path, coords: np.ndarray, size0: float, tile_px: int, backend: str = "auto"):
    from pathstrat.slide import open_slide

    acc = 0
    with open_slide(path, backend=backend) as s:  # fresh handle: cold decode cache
        t0 = time.perf_counter()
        for tile in s.read_tiles(coords, size0, tile_px):
            acc += int(tile[0, 0, 0])
        return time.perf_counter() - t0, s.backend


def read_baseline(path: Path, coords: np.ndarray, size0: int, tile_px: int) -> float:
    import openslide

    osr = openslide.OpenSlide(str(path))
    acc = 0
    t0 = time.perf_counter()
    for x, y in coords:
        im = np.asarray(osr.read_region((int(x), int(y)), 0, (size0, size0)))[:, :, :3]
        im = cv2.resize(im, (tile_px, tile_px), interpolation=cv2.INTER_AREA)
        acc += int(im[0, 0, 0])
    dt = time.perf_counter() - t0
    osr.close()
    return dt


def agreement(path: Path, coords: np.ndarray, size0: int, tile_px: int, n: int = 64) -> float:
    """Mean abs difference (grey levels) between our tiles and the baseline's on n tiles."""
    import openslide

    from pathstrat.slide import open_slide

    osr = openslide.OpenSlide(str(path))
    diffs = []
    with open_slide(path) as s:
        for (x, y), ours in zip(coords[:n], s.read_tiles(coords[:n], float(size0), tile_px), strict=True):
            ref = np.asarray(osr.read_region((int(x), int(y)), 0, (size0, size0)))[:, :, :3]
            ref = cv2.resize(ref, (tile_px, tile_px), interpolation=cv2.INTER_AREA)
            diffs.append(np.abs(ours.astype(np.int16) - ref).mean())
    osr.close()
    return float(np.mean(diffs))


def child_read(path: str, coords_npy: str, size0: float, tile_px: int) -> None:
    """--child mode: import, open, read every tile, print peak RSS (MiB) of this process."""
    import resource

    coords = np.load(coords_npy)
    from pathstrat.slide import open_slide

    with open_slide(path) as s:
        for _ in s.read_tiles(coords, size0, tile_px):
            pass
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, load {os.getloadavg()[0]:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("PATHSTRAT_BENCH_CACHE", "/tmp/pathstrat-bench")))
    ap.add_argument("--width", type=int, default=40_000)
    ap.add_argument("--height", type=int, default=30_000)
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--target-mpp", type=float, default=0.5)
    ap.add_argument("--tile-px", type=int, default=224)
    ap.add_argument("--min-tissue", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=2, help="alternating baseline/ours rounds (best kept)")
    ap.add_argument("--max-tiles", type=int, default=0, help="read only the first N tiles (0 = all)")
    ap.add_argument("--generator", choices=["auto", "synthetic", "builtin"], default="auto")
    ap.add_argument("--child", nargs=4, metavar=("SLIDE", "COORDS", "SIZE0", "TILE_PX"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child_read(a.child[0], a.child[1], float(a.child[2]), int(a.child[3]))
        return

    path, gen = get_slide(a.cache_dir, a.width, a.height, a.mpp, a.generator)
    from pathstrat.slide import open_slide

    with open_slide(path) as s:
        plan = s.tile_read_plan(a.target_mpp, a.tile_px)
        dims, levels = s.dimensions, s.level_downsamples
    sec_grid, coords = mask_and_grid(path, a.target_mpp, a.tile_px, a.min_tissue)
    size0 = int(round(plan.tile_size_level0))
    if coords is None:  # no tiling module: every grid position
        xs, ys = np.arange(0, dims[0] - size0 + 1, size0), np.arange(0, dims[1] - size0 + 1, size0)
        coords = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    if a.max_tiles:
        coords = coords[: a.max_tiles]
    n = len(coords)

    base_t, ours_t, backend = [], [], "?"
    for _ in range(a.rounds):
        base_t.append(read_baseline(path, coords, size0, a.tile_px))
        t, backend = read_ours(path, coords, plan.tile_size_level0, a.tile_px)
        ours_t.append(t)
    base_rate, ours_rate = n / min(base_t), n / min(ours_t)
    mad = agreement(path, coords, size0, a.tile_px)

    npy = a.cache_dir / f"coords-{os.getpid()}.npy"
    np.save(npy, coords)
    try:
        out = subprocess.run([sys.executable, __file__, "--child", str(path), str(npy),
                              str(plan.tile_size_level0), str(a.tile_px)],
                             check=True, capture_output=True, text=True).stdout
        rss = json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]
    finally:
        npy.unlink(missing_ok=True)

    res = {
        "slide": f"{dims[0]}x{dims[1]} @ {a.mpp} um/px, levels {list(levels)} ({gen})",
        "plan": plan.attrs(),
        "tiles": n,
        "sec_mask_grid": None if sec_grid is None else round(sec_grid, 3),
        "baseline_tiles_per_s": round(base_rate, 1),
        "ours_tiles_per_s": round(ours_rate, 1),
        "ratio": round(ours_rate / base_rate, 2),
        "backend": backend,
        "mean_abs_diff_vs_baseline": round(mad, 3),
        "peak_rss_mib_read_all": round(rss, 1),
        "machine": machine(),
    }
    print(f"slide: {res['slide']}")
    print(f"(1) mask + grid: {res['sec_mask_grid']} s (goal < 1 s), {n} tiles")
    print(f"(2) read {n} tiles of {a.tile_px} px at {a.target_mpp} um/px (level {plan.level}, "
          f"{plan.read_size_px} px read): baseline openslide+cv2 {base_rate:.0f} tiles/s/core, "
          f"pathstrat[{backend}] {ours_rate:.0f} tiles/s/core -> {res['ratio']:.2f}x (goal >= 3.5x); "
          f"mean |diff| vs baseline {mad:.2f} grey levels")
    print(f"(3) peak RSS reading every tile (fresh process, imports included): {rss:.0f} MiB (goal < 1024)")
    print(f"machine: {res['machine']}")
    print("RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
