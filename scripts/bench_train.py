"""Benchmark: ABMIL training epoch through pathstrat's data path vs pure forward/backward.

Generates ``--n-bags`` bags of ``--tiles`` x ``--dim`` float16 features in memory (the issue's
figure is 1,000 x 5,000 x 1,024), then times, in the same run and on the same model settings:

* baseline: forward/backward/step over float32 tensors already on the device, no data loader;
* pathstrat: ``BagDataset`` (random ``--max-tiles`` subsample by index) -> ``make_loader`` (pad,
  cast) -> ``train_one_epoch`` (transfer, forward, loss, backward, step).

Epochs alternate (``--rounds``, best of) so a shared machine's load hits both alike. Prints
seconds per epoch for both, the ratio baseline/pathstrat (goal >= 0.9) and peak memory.
Usage: python scripts/bench_train.py [--n-bags 1000 --tiles 5000 --dim 1024 --device auto]

``--cv`` times a whole K-fold run instead: ``train_cv`` (the CLI's path, defaults) on a generated
cohort of ``--n-bags`` small bags (3-40 tiles) against :func:`plain_cv`, a plain PyTorch loop doing
the same folds and epochs (same model and optimiser), measured in the same run; prints both wall
times, accuracies and the ratio pathstrat/plain (goal <= 1.3).
Usage: python scripts/bench_train.py --cv [--n-bags 100 --dim 166 --folds 10 --repeats 1 --model abmil]

``--zoo`` times a ``--folds`` x ``--repeats`` (default 10 x 5) run of every model of the registry
(``--models`` to choose) through ``train_cv`` with its defaults on ``--n-bags`` small bags (goal:
each under 2 minutes on 2 cores). The folds run in ``train_cv``'s worker processes (``--workers``,
default auto: one per core, one thread each); the wall time is reported beside the CPU seconds
of the run and its workers, and CPU seconds / workers (the wall time on that many free cores:
on a machine shared with other jobs the wall time mostly measures those jobs). For
``--plain-models`` (default abmil, transmil): the ratio of ``train_cv`` with fixed epochs
(``val_fraction=0``, serial) over :func:`plain_cv` doing the same folds and epochs,
``--plain-repeats`` repeats. Both modes also print the padded over unpadded compute
of the training batches (random batches, length-bucketed, bucketed + length-grouped forward).
Usage: python scripts/bench_train.py --zoo [--n-bags 100 --dim 166 --folds 10 --repeats 5]
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


def plain_cv(bags: list[torch.Tensor], y: np.ndarray, folds: np.ndarray, *, model: str = "abmil",
             epochs: int = 30, batch_size: int = 8, lr: float = 2e-4, zscore: bool = True,
             seed: int = 0) -> float:
    """A plain PyTorch K-fold loop (the issue's 40-line baseline); returns pooled OOF accuracy."""
    from pathstrat.mil import build_model

    correct = 0
    for k in np.unique(folds):
        tr, te = np.nonzero(folds != k)[0], np.nonzero(folds == k)[0]
        xs = [b.float() for b in bags]
        if zscore:
            cat = torch.cat([xs[i] for i in tr])
            mu, sd = cat.mean(0), cat.std(0).clamp_min(1e-6)
            xs = [(x - mu) / sd for x in xs]
        torch.manual_seed(seed + int(k))
        m = build_model(model, xs[0].shape[1], {"y": 1})
        opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-2)
        lossf = torch.nn.BCEWithLogitsLoss()
        for _ in range(epochs):
            m.train()
            perm = tr[torch.randperm(len(tr)).numpy()]
            for s in range(0, len(perm), batch_size):
                idx = perm[s:s + batch_size]
                n = max(xs[i].shape[0] for i in idx)
                x = torch.zeros(len(idx), n, xs[0].shape[1])
                mask = torch.zeros(len(idx), n, dtype=torch.bool)
                for j, i in enumerate(idx):
                    x[j, :len(xs[i])], mask[j, :len(xs[i])] = xs[i], True
                out = m(x, mask).logits["y"][:, 0]
                loss = lossf(out, torch.as_tensor(y[idx], dtype=torch.float32))
                opt.zero_grad()
                loss.backward()
                opt.step()
        m.eval()
        with torch.no_grad():
            for i in te:
                p = m(xs[i][None], torch.ones(1, len(xs[i]), dtype=torch.bool)).logits["y"][0, 0]
                correct += int((p > 0).item() == bool(y[i]))
    return correct / len(bags)


def padding_report(lengths: np.ndarray, dim: int, batch_size: int = 8, max_padding: float = 1.2,
                   epochs: int = 5, seed: int = 0) -> dict[str, float]:
    """Padded over unpadded compute (tile slots) of training batches over ``epochs`` epochs:
    random batches, :class:`LengthBucketSampler` batches, and those as the training step runs
    them (length groups where :func:`should_group` says the padding is worth a split)."""
    from pathstrat.training.data import LengthBucketSampler, padding_ratio
    from pathstrat.training.engine import length_groups, should_group

    lengths = np.asarray(lengths)
    g = torch.Generator().manual_seed(seed)
    rand = [p[i:i + batch_size].tolist() for p in (torch.randperm(len(lengths), generator=g).numpy()
                                                  for _ in range(epochs))
            for i in range(0, len(lengths), batch_size)]
    s = LengthBucketSampler(lengths, batch_size, seed=seed)
    buck = [b for _ in range(epochs) for b in s.epoch_batches()]
    grouped = [[b[i] for i in grp] for b in buck
               for grp in (length_groups(lengths[b].tolist(), max_padding)
                           if should_group(lengths[b].tolist(), dim, max_padding) else [range(len(b))])]
    return {"padding_random": round(padding_ratio(lengths, rand), 3),
            "padding_bucketed": round(padding_ratio(lengths, buck), 3),
            "padding_bucketed_grouped": round(padding_ratio(lengths, grouped), 3)}


def _cohort(tmp: str, args):
    from pathstrat.testing import make_feature_cohort

    return make_feature_cohort(tmp, n_patients=args.n_bags, dim=args.dim, seed=args.seed,
                               tiles=(3, 40), tasks=("binary",), strength=1.5)


def _plain_inputs(fdir, manifest, run):
    import pandas as pd

    from pathstrat.features import read_bag

    folds = pd.read_csv(run / "folds.csv")
    df = pd.read_csv(manifest)
    bags = {s: torch.from_numpy(np.asarray(read_bag(fdir / f"{s}.h5").features)) for s in df.slide_id}
    return df, folds, bags


def zoo_main(args) -> None:
    """Every registry model: a folds x repeats run with defaults; plain-loop ratios."""
    import tempfile

    from pathstrat.mil import MODELS
    from pathstrat.training import train_cv

    tmp = tempfile.mkdtemp(prefix="bench_zoo_")
    fdir, manifest = _cohort(tmp, args)
    models = args.models.split(",") if args.models else MODELS.names()
    rows = []
    workers = None if args.workers in (None, "auto") else int(args.workers)
    for name in models:
        t, c, ch = time.perf_counter(), time.process_time(), _children_cpu()
        run = train_cv(features=str(fdir), manifest=str(manifest), targets=["responder"], model=name,
                       folds=args.folds, repeats=args.repeats, out=f"{tmp}/{name}", device="cpu",
                       seed=args.seed, workers=workers)
        secs = time.perf_counter() - t
        # CPU seconds of this process and of its fold workers (joined when train_cv returns)
        cpu = time.process_time() - c + _children_cpu() - ch
        used = _workers_used(run)
        m = json.loads((run / "metrics.json").read_text())["responder"]
        scale = 50 / (args.folds * args.repeats)  # 10 x 5 = 50 fold fits; fewer: a projection
        tag = "" if scale == 1 else "_projected"
        row = {"model": name, "folds": args.folds, "repeats": args.repeats, "workers": used,
               "wall_s": round(secs, 1), "cpu_s": round(cpu, 1),
               # one-thread folds: CPU seconds / workers = the wall time on that many free cores
               # (on a machine shared with other jobs the wall time mostly measures those jobs)
               "wall_s_on_free_cores": round(cpu / used, 1),
               "wall_s_10x5" + tag: round(secs * scale, 1),
               "wall_s_10x5_on_free_cores" + tag: round(cpu / used * scale, 1),
               "under_2_min_10x5": secs * scale < 120,
               "under_2_min_10x5_on_free_cores": cpu / used * scale < 120,
               "accuracy": round(m["accuracy"]["mean"], 3), "auroc": round(m["auroc"]["mean"], 3)}
        if name in args.plain_models.split(","):
            c = time.process_time()
            run = train_cv(features=str(fdir), manifest=str(manifest), targets=["responder"], model=name,
                           folds=args.folds, repeats=args.plain_repeats, out=f"{tmp}/{name}_fixed",
                           device="cpu", seed=args.seed, val_fraction=0, workers=1)
            fixed_s = time.process_time() - c
            df, folds, bags = _plain_inputs(fdir, manifest, run)
            threads = torch.get_num_threads()
            torch.set_num_threads(args.plain_threads)
            c = time.process_time()
            for r in range(args.plain_repeats):
                f = df.merge(folds.query("repeat == @r")[["patient_id", "fold"]], on="patient_id")
                plain_cv([bags[s] for s in f.slide_id], f.responder.to_numpy(), f.fold.to_numpy(),
                         model=name, seed=args.seed + r)
            plain_s = time.process_time() - c
            torch.set_num_threads(threads)
            row.update({"fixed_epochs_repeats": args.plain_repeats, "fixed_epochs_cpu_s": round(fixed_s, 1),
                        "plain_cpu_s": round(plain_s, 1),
                        "ratio_pathstrat_over_plain": round(fixed_s / plain_s, 3)})
        rows.append(row)
        print(json.dumps(row), flush=True)
    lengths = np.array([int(v) for v in _lengths(fdir)])
    # variable bag sizes as in a trial cohort: 2 to 50,000 tiles (log-uniform), --max-tiles 1024
    wide = np.minimum(np.exp(np.random.default_rng(args.seed).uniform(np.log(2), np.log(5e4), 100)), 1024)
    wide_report = {f"wide_{k}": v for k, v in padding_report(wide.astype(int), 1024).items()}
    print(json.dumps({"mode": "zoo", "bags": args.n_bags, "dim": args.dim, "cpu_count": psutil.cpu_count(),
                      **padding_report(lengths, args.dim), **wide_report,
                      "models": rows}, indent=2))


def _children_cpu() -> float:
    """CPU seconds of this process's finished child processes (the fold workers)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _workers_used(run) -> int:
    """Fold worker processes a run used (its run.log says; 1 = serial)."""
    import re

    hit = re.search(r"folds in (\d+) worker processes", (run / "run.log").read_text())
    return int(hit.group(1)) if hit else 1


def _lengths(fdir) -> list[int]:
    from pathlib import Path

    import h5py

    out = []
    for f in sorted(Path(fdir).glob("*.h5")):
        with h5py.File(f, "r") as h:
            out.append(h["features"].shape[0])
    return out


def cv_main(args) -> None:
    """Whole K-fold run: train_cv with defaults vs plain_cv, same machine, same run."""
    import tempfile

    import pandas as pd

    from pathstrat.features import read_bag
    from pathstrat.testing import make_feature_cohort
    from pathstrat.training import train_cv

    tmp = tempfile.mkdtemp(prefix="bench_cv_")
    fdir, manifest = make_feature_cohort(tmp, n_patients=args.n_bags, dim=args.dim, seed=args.seed,
                                         tiles=(3, 40), tasks=("binary",), strength=1.5)
    t = time.perf_counter()
    run = train_cv(features=str(fdir), manifest=str(manifest), targets=["responder"],
                   model=args.model, folds=args.folds, repeats=args.repeats, out=f"{tmp}/run",
                   device="cpu", seed=args.seed)
    ours_s = time.perf_counter() - t
    metrics = json.loads((run / "metrics.json").read_text())["responder"]
    folds = pd.read_csv(run / "folds.csv").query("repeat == 0")
    df = pd.read_csv(manifest).merge(folds[["patient_id", "fold"]], on="patient_id")
    bags = [torch.from_numpy(np.asarray(read_bag(fdir / f"{s}.h5").features)) for s in df.slide_id]
    torch.set_num_threads(args.plain_threads)  # the plain loop at its best on small bags
    threads = torch.get_num_threads()
    t = time.perf_counter()
    acc = [plain_cv(bags, df.responder.to_numpy(), df.fold.to_numpy(), model=args.model,
                    seed=args.seed + r) for r in range(args.repeats)]
    plain_s = time.perf_counter() - t
    print(json.dumps({"mode": "cv", "bags": args.n_bags, "dim": args.dim, "folds": args.folds,
                      "repeats": args.repeats, "model": args.model, "epochs": 30,
                      "cpu_count": psutil.cpu_count(), "plain_loop_threads": threads,
                      "pathstrat_s": round(ours_s, 1), "plain_s": round(plain_s, 1),
                      "ratio_pathstrat_over_plain": round(ours_s / plain_s, 3),
                      "pathstrat_accuracy": round(metrics["accuracy"]["mean"], 3),
                      "plain_accuracy": round(float(np.mean(acc)), 3),
                      **padding_report(np.array([len(b) for b in bags]), args.dim)}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cv", action="store_true", help="time a whole K-fold run (see above)")
    ap.add_argument("--zoo", action="store_true", help="time folds x repeats for every model (see above)")
    ap.add_argument("--models", default="", help="--zoo: comma-separated models (default: all)")
    ap.add_argument("--plain-models", default="abmil,transmil")
    ap.add_argument("--plain-repeats", type=int, default=1)
    ap.add_argument("--workers", default=None, help="--zoo: train_cv's workers (default auto: folds in "
                    "parallel, one per core; the plain-loop ratio runs stay serial)")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=None, help="default 5 with --zoo, else 1")
    ap.add_argument("--model", default="abmil")
    ap.add_argument("--plain-threads", type=int, default=1)
    ap.add_argument("--n-bags", type=int, default=None, help="default 100 (--cv/--zoo), 1000")
    ap.add_argument("--tiles", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=None, help="default 166 (--cv/--zoo), 1024")
    ap.add_argument("--max-tiles", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed epochs (best of)")
    ap.add_argument("--no-preload", action="store_true",
                    help="on CUDA keep features in host memory (batches cross the bus)")
    args = ap.parse_args()
    small = args.zoo or args.cv  # whole runs on small bags; the epoch mode on large bags
    args.repeats = args.repeats or (5 if args.zoo else 1)
    args.n_bags = args.n_bags or (100 if small else 1000)
    args.dim = args.dim or (166 if small else 1024)
    if args.zoo:
        zoo_main(args)
        return
    if args.cv:
        cv_main(args)
        return

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

    cpu_times: dict[str, list[float]] = {"baseline": [], "pathstrat": []}

    def timed(fn, key: str) -> float:
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        cpu_times[key].append(time.process_time() - c)  # CPU seconds: robust to other jobs' load
        return time.perf_counter() - t

    base_times, pipe_times = [], []
    for _ in range(args.rounds):  # alternate so load changes on a shared machine hit both alike
        base_times.append(timed(baseline_epoch, "baseline"))
        pipe_times.append(timed(lambda: train_one_epoch(model, loader, loss_fn, opt,
                                                        device=device, amp=False), "pathstrat"))
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
        "baseline_cpu_s_per_epoch": round(min(cpu_times["baseline"]), 2),
        "pathstrat_cpu_s_per_epoch": round(min(cpu_times["pathstrat"]), 2),
        "cpu_ratio_baseline_over_pathstrat": round(min(cpu_times["baseline"]) / min(cpu_times["pathstrat"]), 3),
        "peak_rss_gib": round(peak_rss_gib, 2),
        "feature_store_gib": round(args.n_bags * args.tiles * args.dim * 2 / 2**30, 2),
    }
    if device.startswith("cuda"):
        res["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        res["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
