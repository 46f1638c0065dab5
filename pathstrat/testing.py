"""Synthetic feature cohorts with planted, known signal (for tests, demos and benchmarks).

``make_feature_cohort`` writes one features file per slide (the documented Features contract)
and a manifest whose labels are caused by a known fraction of "signal" tiles, so any MIL model
that works must recover the labels; survival times depend on a latent risk carried by tiles.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pathstrat.layout import FeaturesLayout

TASKS = ("binary", "multiclass", "multilabel", "regression", "survival")
ENCODER_ID = "synthetic"


def _write(path: Path, feats: np.ndarray, coords: np.ndarray, attrs: dict) -> None:
    from pathstrat.features import write_features

    write_features(path, feats, coords, attrs)


def make_bag_features(rng: np.random.Generator, n_tiles: int, dim: int,
                      directions: Sequence[tuple[np.ndarray, float]], strength: float = 2.0
                      ) -> np.ndarray:
    """Gaussian background tiles; each ``(direction, fraction)`` adds ``strength * direction`` to
    that fraction of tiles (the planted instances)."""
    x = rng.standard_normal((n_tiles, dim)).astype(np.float32)
    for direction, frac in directions:
        k = int(round(float(np.clip(frac, 0, 1)) * n_tiles))
        if k:
            idx = rng.choice(n_tiles, k, replace=False)
            x[idx] += strength * direction
    return x


def make_feature_cohort(out_dir: str | os.PathLike, n_patients: int = 60, dim: int = 32,
                        seed: int = 0, *, tasks: Sequence[str] = TASKS,
                        slides_per_patient: int | tuple[int, int] = 1,
                        tiles: tuple[int, int] = (20, 60), strength: float = 3.0,
                        signal_fraction: float = 0.4, missing_fraction: float = 0.15,
                        encoder_id: str = ENCODER_ID, split: bool = False,
                        dtype: str = "float16", weights_random: bool = False) -> tuple[Path, Path]:
    """Write ``out_dir/features/<encoder_id>/<slide_id>.h5`` and ``out_dir/manifest.csv``.

    Label columns (by task): ``responder`` (0/1), ``subtype`` (A/B/C), ``marker_a``/``marker_b``
    (0/1 with ``missing_fraction`` left empty), ``score`` (continuous), ``time``/``event``
    (survival; higher latent risk -> earlier event). Each label is carried by its own feature
    direction in ``signal_fraction`` of a slide's tiles (scaled by the label's strength).
    With ``split=True`` a ``split`` column assigns patients to train/val/test (60/20/20);
    ``weights_random=True`` marks the files as coming from a random-weights encoder.
    Returns ``(features_dir, manifest_path)``.
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    fdir = FeaturesLayout(out, encoder_id).features_dir
    fdir.mkdir(parents=True, exist_ok=True)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].T.astype(np.float32)
    dirs = {name: basis[i % dim] for i, name in enumerate(
        ["responder", "subtype_B", "subtype_C", "marker_a", "marker_b", "score", "risk"])}
    rows = []
    for p in range(n_patients):
        pid = f"P{p:04d}"
        lab: dict[str, object] = {}
        planted: list[tuple[np.ndarray, float]] = []
        if "binary" in tasks:
            lab["responder"] = int(p % 2 == 0) if n_patients < 4 else int(rng.random() < 0.5)
            planted.append((dirs["responder"], signal_fraction * lab["responder"]))
        if "multiclass" in tasks:
            c = int(rng.integers(0, 3))
            lab["subtype"] = "ABC"[c]
            if c:
                planted.append((dirs[f"subtype_{'ABC'[c]}"], signal_fraction))
        if "multilabel" in tasks:
            for m in ("marker_a", "marker_b"):
                v = int(rng.random() < 0.5)
                planted.append((dirs[m], signal_fraction * v))
                lab[m] = np.nan if rng.random() < missing_fraction else v
        if "regression" in tasks:
            s = float(rng.random())
            lab["score"] = round(10.0 * s, 4)
            planted.append((dirs["score"], signal_fraction * s))
        if "survival" in tasks:
            z = float(rng.random())  # latent risk in [0, 1]
            t_event = 12.0 * np.exp(-3.0 * z + 0.35 * rng.standard_normal())  # log-normal AFT
            t_cens = rng.uniform(3.0, 40.0)
            lab["time"] = round(float(min(t_event, t_cens)), 4)
            lab["event"] = int(t_event <= t_cens)
            planted.append((dirs["risk"], signal_fraction * z))
        n_slides = (slides_per_patient if isinstance(slides_per_patient, int)
                    else int(rng.integers(slides_per_patient[0], slides_per_patient[1] + 1)))
        for s in range(n_slides):
            sid = f"{pid}_S{s}"
            n = int(rng.integers(tiles[0], tiles[1] + 1))
            feats = make_bag_features(rng, n, dim, planted, strength)
            side = int(np.ceil(np.sqrt(n)))
            coords = np.stack([np.arange(n) % side, np.arange(n) // side], 1).astype(np.int64) * 224
            attrs = {"encoder_id": encoder_id, "encoder_dim": dim, "weights_sha256": "synthetic",
                     "weights_random": weights_random, "slide_id": sid, "tile_px": 224, "target_mpp": 0.5,
                     "tile_size_level0": 224.0, "dtype": dtype}
            path = fdir / f"{sid}.h5"
            _write(path, feats.astype(dtype), coords, attrs)
            rows.append({"slide_id": sid, "path": str(path), "patient_id": pid, **lab})
    df = pd.DataFrame(rows)
    if split:
        pids = df["patient_id"].unique()
        roles = np.array(["train"] * len(pids), dtype=object)
        perm = rng.permutation(len(pids))
        n_test, n_val = max(1, len(pids) // 5), max(1, len(pids) // 5)
        roles[perm[:n_test]] = "test"
        roles[perm[n_test:n_test + n_val]] = "val"
        df["split"] = df["patient_id"].map(dict(zip(pids, roles, strict=True)))
    manifest = out / "manifest.csv"
    df.to_csv(manifest, index=False)
    return fdir, manifest


# --- Algorithmic MIL unit test (Raff & Holt 2023, "poisoned" standard-MIL test) -------------------

def make_poison_bags(n_bags: int, *, n_tiles: int = 12, dim: int = 8, seed: int = 0,
                     train: bool = True, strength: float = 4.0):
    """Bags for the standard-MIL poison test: ``(bags list of (n, dim) float32, labels)``.

    Training: positive bags hold a *signal* tile (direction e0), negative bags a *poison* tile
    (direction e1) that never occurs in positive bags. Test: positive bags hold signal and poison,
    negative bags neither. Under the standard MIL assumption (a bag is positive iff it holds a
    positive instance) the poison carries no evidence, so a model that respects the assumption
    ranks test bags by the signal; a model that learned "poison => negative" (or "no poison =>
    positive") ranks them at or below chance.
    """
    rng = np.random.default_rng(seed)
    e0, e1 = np.eye(dim, dtype=np.float32)[0], np.eye(dim, dtype=np.float32)[1]
    bags, labels = [], []
    for i in range(n_bags):
        y = i % 2
        x = rng.standard_normal((n_tiles, dim)).astype(np.float32)
        k = int(rng.integers(1, 3))
        if y == 1:
            x[:k] += strength * e0
            if not train:
                x[k:2 * k] += strength * e1
        elif train:
            x[:k] += strength * e1
        bags.append(x[rng.permutation(n_tiles)])
        labels.append(y)
    return bags, np.array(labels, np.float32)


def run_poison_test(model: str, *, n_bags: int = 96, dim: int = 8, epochs: int = 30, seed: int = 0,
                    threshold: float = 0.9, **hparams) -> dict[str, float | bool | str]:
    """Train ``model`` on poisoned bags and score clean test bags; ``passed`` = test AUROC >= threshold."""
    import torch

    from pathstrat.metrics import auroc
    from pathstrat.mil import build_model
    from pathstrat.mil.losses import make_loss
    from pathstrat.mil.targets import TargetSpec
    from pathstrat.training import BagDataset, TrainParams, evaluate, fit, make_loader, set_seed

    spec = TargetSpec("y", "binary", classes=[0, 1])
    results = {}
    for split, train in (("train", True), ("test", False)):
        bags, y = make_poison_bags(n_bags, dim=dim, seed=seed + (0 if train else 1), train=train)
        results[split] = (_memory_store(bags), y)
    set_seed(seed)
    net = build_model(model, dim, {"y": 1}, **hparams)
    (tr_store, ytr), (te_store, yte) = results["train"], results["test"]
    loss = make_loss([spec])
    loader = make_loader(BagDataset(tr_store, np.arange(len(ytr)), {"y": ytr}, train=True, seed=seed),
                         8, shuffle=True, seed=seed)
    fit(net, loader, None, loss, TrainParams(epochs=epochs, lr=3e-3, device="cpu"))
    with torch.no_grad():
        tr = evaluate(net, make_loader(BagDataset(tr_store, np.arange(len(ytr)), {"y": ytr}), 16))
        te = evaluate(net, make_loader(BagDataset(te_store, np.arange(len(yte)), {"y": yte}), 16))
    a_tr = auroc(ytr[tr.index], tr.outputs["y"][:, 0])
    a_te = auroc(yte[te.index], te.outputs["y"][:, 0])
    return {"model": model, "train_auroc": a_tr, "test_auroc": a_te, "passed": bool(a_te >= threshold)}


def _memory_store(bags):
    """A BagStore over in-memory arrays (no files)."""
    import torch

    from pathstrat.training.data import Bag, BagStore

    items = [Bag(f"b{i}", f"b{i}", [f"b{i}"], torch.from_numpy(x),
                 np.zeros((len(x), 2), np.int64), [0, len(x)]) for i, x in enumerate(bags)]
    table = pd.DataFrame({"slide_id": [b.key for b in items], "patient_id": [b.key for b in items]})
    return BagStore(items, table, int(bags[0].shape[1]), None)
