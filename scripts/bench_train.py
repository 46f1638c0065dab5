"""Benchmark: ABMIL training epoch through pathstrat's data path vs pure forward/backward.

Generates ``--n-bags`` bags of ``--tiles`` x ``--dim`` float16 features in memory (the issue's
figure is 1,000 x 5,000 x 1,024), then times, in the same run and on the same model settings:

* baseline: forward/backward/step over float32 tensors already on the device, no data loader;
* pathstrat: ``BagDataset`` (random ``--max-tiles`` subsample by index) -> ``make_loader`` (pad,
  cast) -> ``train_one_epoch`` (transfer, forward, loss, backward, step).

Epochs alternate (``--rounds``, best of) so a shared machine's load hits both alike. Prints
seconds per epoch for both, the ratio baseline/pathstrat (goal >= 0.9) and peak memory.
Usage: python scripts/bench_train.py [--n-bags 1000 --tiles 5000 --dim 1024 --device auto]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np
import psutil
import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-bags", type=int, default=1000)
    ap.add_argument("--tiles", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--max-tiles", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed epochs (best of)")
    ap.add_argument("--no-preload", action="store_true",
                    help="on CUDA keep features in host memory (batches cross the bus)")
    args = ap.parse_args()

    from pathstrat.mil import build_model
    from pathstrat.mil.losses import make_loss
    from pathstrat.mil.targets import TargetSpec
    from pathstrat.training import BagDataset, make_loader, resolve_device, train_one_epoch
    from pathstrat.training.data import Bag, BagStore

    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    feats = [torch.randn(args.tiles, args.dim, generator=g).to(torch.float16) for _ in range(args.n_bags)]
    labels = np.arange(args.n_bags) % 2
    gen_s = time.perf_counter() - t0
    import pandas as pd

    bags = [Bag(f"b{i}", f"b{i}", [f"b{i}"], f, np.zeros((args.tiles, 2), np.int64), [0, args.tiles])
            for i, f in enumerate(feats)]
    store = BagStore(bags, pd.DataFrame({"patient_id": [b.key for b in bags]}), args.dim, None)
    spec = TargetSpec("y", "binary", classes=[0, 1])
    loss_fn = make_loss([spec]).to(device)

    def fresh():
        torch.manual_seed(args.seed)
        m = build_model("abmil_gated", args.dim, {"y": 1}).to(device)
        return m, torch.optim.AdamW(m.parameters(), lr=1e-4)

    # baseline: preloaded device tensors, same tile count per bag, no loader. A float32 copy of
    # the cohort is made when it fits (40% of free memory); otherwise (the 1,000 x 5,000 x
    # 1,024 on a 24 GiB machine) the baseline casts the same float16 tensors inside its step.
    n = min(args.max_tiles or args.tiles, args.tiles)
    fp32_bytes = args.n_bags * n * args.dim * 4
    free = (torch.cuda.mem_get_info()[0] if device.startswith("cuda")
            else psutil.virtual_memory().available)
    copy_fp32 = fp32_bytes < 0.4 * free
    pre = [f[:n].float().to(device) if copy_fp32 else f[:n].to(device) for f in feats]
    ys = [torch.tensor([float(v)], device=device) for v in labels]
    mask = torch.ones(1, n, dtype=torch.bool, device=device)
    base_model, base_opt = fresh()

    def baseline_epoch(limit: int | None = None):
        base_model.train()
        for x, y in list(zip(pre, ys, strict=True))[:limit]:
            out = base_model(x[None].float(), mask)
            loss, _ = loss_fn(out.logits, {"y": y})
            base_opt.zero_grad(set_to_none=True)
            loss.backward()
            base_opt.step()

    if device.startswith("cuda") and not args.no_preload:
        store.to(device)  # what train_cv does when the cohort fits in GPU memory
    model, opt = fresh()
    ds = BagDataset(store, np.arange(args.n_bags), {"y": labels.astype(np.float32)},
                    max_tiles=args.max_tiles, train=True, seed=args.seed)
    loader = make_loader(ds, args.batch_size, shuffle=True, seed=args.seed,
                         pin_memory=device.startswith("cuda") and not store.on_device)
    warm = make_loader(BagDataset(store, np.arange(3), {"y": labels.astype(np.float32)},
                                  max_tiles=args.max_tiles, train=True, seed=args.seed), args.batch_size)
    baseline_epoch(limit=3)  # warm-up (allocator, kernels)
    train_one_epoch(model, warm, loss_fn, opt, device=device, amp=False)

    def timed(fn) -> float:
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t

    base_times, pipe_times = [], []
    for _ in range(args.rounds):  # alternate so load changes on a shared machine hit both alike
        base_times.append(timed(baseline_epoch))
        pipe_times.append(timed(lambda: train_one_epoch(model, loader, loss_fn, opt,
                                                        device=device, amp=False)))
    base_s, pipe_s = min(base_times), min(pipe_times)

    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    res = {
        "bags": args.n_bags, "tiles": args.tiles, "dim": args.dim, "max_tiles": args.max_tiles,
        "batch_size": args.batch_size, "device": device, "store_on_device": store.on_device,
        "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "generate_s": round(gen_s, 1),
        "baseline_input": "float32 copy" if copy_fp32 else "float16 views cast in the step",
        "rounds": args.rounds, "baseline_epochs_s": [round(t, 2) for t in base_times],
        "pathstrat_epochs_s": [round(t, 2) for t in pipe_times],
        "baseline_s_per_epoch": round(base_s, 2), "pathstrat_s_per_epoch": round(pipe_s, 2),
        "ratio_baseline_over_pathstrat": round(base_s / pipe_s, 3),
        "peak_rss_gib": round(peak_rss_gib, 2),
        "feature_store_gib": round(args.n_bags * args.tiles * args.dim * 2 / 2**30, 2),
    }
    if device.startswith("cuda"):
        res["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        res["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
