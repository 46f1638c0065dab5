"""Benchmark `pathstrat embed`: end-to-end tiles/s vs model-only forward vs a naive loop.

All three use the same encoder, batch size and device, in one run:

* model-only: the encoder module on random float tensors already normalised, shape
  (batch, 3, input_px, input_px): the ceiling for this model on this device;
* end-to-end: ``embed_cohort`` over generated slides (read, resize, normalise, forward, write);
* naive: for each tile open the slide, read the tile, close, forward a batch of one.

Prints tiles/s and the ratios end-to-end / model-only (goal >= 0.9) and end-to-end / naive.
Also measures the ``builtin`` encoder (end-to-end and descriptor-only, one thread).

    .venv/bin/python scripts/bench_embed.py --arch vit_small_patch16_224 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def _cohort(root: Path, n_slides: int, px: int):
    from pathstrat.synthetic import make_slide
    from pathstrat.tiling import TilingParams, tile_cohort

    rows = []
    for i in range(n_slides):
        p = root / f"bench{i}.svs"
        make_slide(p, width=px, height=px, mpp=0.5, seed=100 + i, layout={"tissue": 0.9})
        rows.append({"slide_id": f"bench{i}", "path": str(p)})
    df = pd.DataFrame(rows)
    tile_cohort(df, root / "tiling", TilingParams(target_mpp=0.5, tile_px=224, min_tissue=0.0),
                progress=False)
    return df


def _model_only(enc, batch: int, n_batches: int) -> float:
    x = torch.randn(batch, 3, enc.spec.input_px, enc.spec.input_px, device=enc.device)
    with torch.inference_mode():
        enc.module(x)  # warm-up
        _sync(enc)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            enc.module(x)
        _sync(enc)
    return batch * n_batches / (time.perf_counter() - t0)


def _sync(enc) -> None:
    if enc.device.type == "cuda":
        torch.cuda.synchronize()


def _naive(enc, df, tiles_dir: Path, limit: int) -> float:
    from pathstrat.slide import open_slide
    from pathstrat.tiles import read_tiles

    n, t0 = 0, time.perf_counter()
    for row in df.itertuples():
        ts = read_tiles(tiles_dir / f"{row.slide_id}.h5")
        a = ts.attrs
        for x, y in ts.coords:
            with open_slide(row.path) as s:
                tile = s.read_tile(int(x), int(y), a["tile_size_level0"], a["tile_px"])
            enc(tile[None])
            n += 1
            if n >= limit:
                return n / (time.perf_counter() - t0)
    return n / (time.perf_counter() - t0)


def _end_to_end(enc, df, tiling: Path, out: Path, batch: int, workers: int) -> tuple[float, int]:
    from pathstrat.encoders.embed import embed_cohort

    res = embed_cohort(df, tiling, out, enc.spec.id, batch_size=batch, workers=workers,
                       encoder=enc, overwrite=True)
    if res.failed:
        raise SystemExit(f"benchmark slides failed: {res.failed}")
    return res.tiles_per_s, res.n_tiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vit_small_patch16_224", help="timm arch, random init")
    ap.add_argument("--encoder", default=None, help="registered encoder id instead of --arch")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n-slides", type=int, default=3)
    ap.add_argument("--slide-px", type=int, default=2240)
    ap.add_argument("--naive-tiles", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pathstrat import encoders as E

    enc_id = args.encoder or E.custom_timm_spec(f"bench_{args.arch}", args.arch,
                                                dim=_timm_dim(args.arch), dtype="fp16").id
    enc = E.build_encoder(enc_id, weights=args.weights, device=args.device)
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        root = Path(tmp)
        df = _cohort(root, args.n_slides, args.slide_px)
        tiles_dir = root / "tiling" / "tiles"
        model = _model_only(enc, args.batch_size, n_batches=max(4, 256 // args.batch_size))
        e2e, n_tiles = _end_to_end(enc, df, root / "tiling", root / "out", args.batch_size,
                                   args.workers)
        naive = _naive(enc, df, tiles_dir, args.naive_tiles)
        builtin = E.build_encoder("builtin", device="cpu")
        b_e2e, _ = _end_to_end(builtin, df, root / "tiling", root / "out_builtin",
                               max(args.batch_size, 64), args.workers)
        b_desc = _builtin_descriptor_rate(builtin)
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
                   f"torch threads {torch.get_num_threads()}, device {enc.device}",
        "encoder": enc_id, "batch_size": args.batch_size, "workers": args.workers,
        "tiles": n_tiles, "model_only_tiles_s": model, "end_to_end_tiles_s": e2e,
        "naive_tiles_s": naive, "ratio_e2e_over_model": e2e / model,
        "ratio_e2e_over_naive": e2e / naive, "builtin_end_to_end_tiles_s": b_e2e,
        "builtin_descriptor_tiles_s_1thread": b_desc,
    }
    for k, v in res.items():
        print(f"{k:>36}: {v:.3f}" if isinstance(v, float) else f"{k:>36}: {v}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


def _timm_dim(arch: str) -> int:
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=0).num_features


def _builtin_descriptor_rate(enc, n: int = 256) -> float:
    """Descriptor-only tiles/s on one thread (tiles already resized to the encoder input)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = np.random.default_rng(0).integers(0, 256, (n, enc.spec.input_px, enc.spec.input_px, 3),
                                              dtype=np.uint8)
        enc.forward_uint8(x[:16])
        t0 = time.perf_counter()
        enc.forward_uint8(x)
        return n / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
