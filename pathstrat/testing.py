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

TASKS = ("binary", "multiclass", "multilabel", "regression", "survival")
ENCODER_ID = "synthetic"


def _write(path: Path, feats: np.ndarray, coords: np.ndarray, attrs: dict) -> None:
    try:
        from pathstrat.features import write_features
    except ImportError:  # TEMPORARY until pathstrat.features lands
        import h5py

        with h5py.File(path, "w") as f:
            f["features"] = feats
            f["coords"] = coords
            for k, v in {**attrs, "schema": "pathstrat.features/1"}.items():
                f.attrs[k] = v
        return
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
                        tiles: tuple[int, int] = (20, 60), strength: float = 2.0,
                        signal_fraction: float = 0.3, missing_fraction: float = 0.15,
                        encoder_id: str = ENCODER_ID, split: bool = False,
                        dtype: str = "float16") -> tuple[Path, Path]:
    """Write ``out_dir/features/<encoder_id>/<slide_id>.h5`` and ``out_dir/manifest.csv``.

    Label columns (by task): ``responder`` (0/1), ``subtype`` (A/B/C), ``marker_a``/``marker_b``
    (0/1 with ``missing_fraction`` left empty), ``score`` (continuous), ``time``/``event``
    (survival; higher latent risk -> earlier event). Each label is carried by its own feature
    direction in ``signal_fraction`` of a slide's tiles (scaled by the label's strength).
    With ``split=True`` a ``split`` column assigns patients to train/val/test (60/20/20).
    Returns ``(features_dir, manifest_path)``.
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    fdir = out / "features" / encoder_id
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
            t_event = rng.exponential(12.0 * np.exp(-2.5 * z))
            t_cens = rng.uniform(4.0, 30.0)
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
                     "weights_random": False, "slide_id": sid, "tile_px": 224, "target_mpp": 0.5,
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
