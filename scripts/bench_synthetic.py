"""Benchmark the synthetic slide generator against plain JPEG-tile writing, in the same run.

Prints, for one slide (default: the 40,000 x 30,000 px, 0.25 µm/px benchmark slide):
  - make_slide wall and CPU seconds, level-0 megapixels per CPU second, peak RSS;
  - the baseline: tifffile writing the same level-0 tile count from one pre-rendered tile
    (JPEG encoding + file writing only), and the ratio generator / baseline;
and optionally (``--cohort``) the CPU seconds of the 60-patient demo cohort.

    .venv/bin/python scripts/bench_synthetic.py [--width 40000 --height 30000 --mpp 0.25]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(kind: str, width: int, height: int, mpp: float, out: str) -> None:
    """Run one measurement in this (fresh) process and print a JSON line."""
    import numpy as np

    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "generator":
        from pathstrat.synthetic import make_slide

        make_slide(Path(out) / "bench.svs", width=width, height=height, mpp=mpp, seed=0)
    elif kind == "baseline":
        import tifffile

        tile = np.random.default_rng(0).integers(90, 230, (256, 256, 3), dtype=np.uint8)
        n = -(-width // 256) * -(-height // 256)
        with tifffile.TiffWriter(Path(out) / "base.tif", bigtiff=True) as tw:
            tw.write((tile for _ in range(n)), shape=(height, width, 3), dtype=np.uint8,
                     tile=(256, 256), photometric="rgb", compression="jpeg",
                     compressionargs={"level": 88}, metadata=None)
    elif kind == "cohort":
        from pathstrat.synthetic import make_cohort

        make_cohort(Path(out) / "cohort", seed=0, workers=2)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    child_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu += child_cpu.ru_utime + child_cpu.ru_stime
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss}))


def _run(kind: str, args: argparse.Namespace, out: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--width", str(args.width), "--height",
           str(args.height), "--mpp", str(args.mpp), "--out", out]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=40000)
    ap.add_argument("--height", type=int, default=30000)
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--cohort", action="store_true", help="also time the 60-patient demo cohort")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.width, args.height, args.mpp, args.out)
        return
    with tempfile.TemporaryDirectory() as out:
        gen = _run("generator", args, out)
        base = _run("baseline", args, out)
        mpx = args.width * args.height / 1e6
        print(f"slide {args.width}x{args.height} px at {args.mpp} um/px ({mpx:.0f} Mpx)")
        print(f"make_slide: {gen['wall_s']:.1f} s wall, {gen['cpu_s']:.1f} s CPU, "
              f"{mpx / gen['cpu_s']:.1f} Mpx per CPU s, peak RSS {gen['peak_rss_mb']:.0f} MiB")
        print(f"baseline (JPEG tiles only): {base['wall_s']:.1f} s wall, {base['cpu_s']:.1f} s CPU")
        print(f"ratio generator / baseline CPU: {gen['cpu_s'] / base['cpu_s']:.2f}x")
        if args.cohort:
            c = _run("cohort", args, out)
            print(f"demo cohort (60 patients, workers=2): {c['wall_s']:.1f} s wall, "
                  f"{c['cpu_s']:.1f} s CPU (parent + workers)")


if __name__ == "__main__":
    main()
