"""MIL benchmark suite: `pathstrat train` with its CLI defaults vs a plain loop vs published figures.

Per dataset: our 10-fold accuracy/AUROC (through the public CLI, defaults only), a plain PyTorch
loop (``bench_train.plain_cv``: same folds, model, 30 epochs, z-scored on the training fold)
measured in the same run, and the published attention-MIL figure where one exists. Public MIL
datasets (MUSK1/MUSK2, Fox/Tiger/Elephant) are read only when a local copy is present
(``--data-dir`` holding ``<name>.csv`` with ``bag,label,f0..``); nothing is downloaded (no
network at run time) and a missing dataset is skipped with the reason. ``generated`` is a
synthetic cohort (``pathstrat.testing.make_feature_cohort``, 3-40 tiles, raw features offset and
scaled like another tool's files) and always runs.

Usage: python scripts/bench_mil.py [--data-dir DIR] [--folds 10] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import plain_cv  # noqa: E402

#: Published 10-fold x 5 accuracy of attention MIL (Ilse et al. 2018, Table 1, embedded ABMIL).
PUBLISHED = {"musk1": 0.892, "musk2": 0.858, "fox": 0.615, "tiger": 0.839, "elephant": 0.868}


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


def _public(name: str, data_dir: Path | None):
    if data_dir is None or not (data_dir / f"{name}.csv").exists():
        return None, f"no local copy ({name}.csv in --data-dir); not downloaded (no network)"
    d = pd.read_csv(data_dir / f"{name}.csv")
    feats = [c for c in d.columns if c not in ("bag", "label")]
    g = d.groupby("bag", sort=True)
    return ([x[feats].to_numpy(np.float32) for _, x in g],
            g["label"].first().to_numpy().astype(int)), ""


def run_dataset(name: str, bags, labels, folds: int, repeats: int, tmp: Path) -> dict:
    from pathstrat.cli import main as cli

    fdir, man = _write_bags(tmp / name, bags, labels)
    out = tmp / name / "run"
    t = time.perf_counter()
    rc = cli(["train", "--features", str(fdir), "--manifest", str(man), "--target", "label",
              "--folds", str(folds), "--repeats", str(repeats), "--out", str(out), "--device", "cpu"])
    ours_s = time.perf_counter() - t
    if not (out / "metrics.json").exists():
        return {"dataset": name, "skipped": f"pathstrat train exited {rc}"}
    m = json.loads((out / "metrics.json").read_text())["label"]
    fo = pd.read_csv(out / "folds.csv").query("repeat == 0").set_index("patient_id").fold
    fold_of = np.array([fo[f"b{i:04d}"] for i in range(len(bags))])
    torch.set_num_threads(1)
    t = time.perf_counter()
    plain = plain_cv([torch.from_numpy(b) for b in bags], labels, fold_of)
    plain_s = time.perf_counter() - t
    return {"dataset": name, "bags": len(bags), "rc": rc, "ours_accuracy": round(m["accuracy"]["mean"], 3),
            "ours_auroc": round(m["auroc"]["mean"], 3), "ours_s": round(ours_s, 1),
            "plain_accuracy": round(plain, 3), "plain_s (1 repeat)": round(plain_s, 1),
            "published_accuracy": PUBLISHED.get(name)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_mil_"))
    results = []
    for name in ["generated", *PUBLISHED]:
        if name == "generated":
            data, why = _generated(tmp, args.seed), ""
        else:
            data, why = _public(name, args.data_dir)
        if data is None:
            results.append({"dataset": name, "skipped": why, "published_accuracy": PUBLISHED[name]})
            continue
        results.append(run_dataset(name, *data, args.folds, args.repeats, tmp))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
