"""`pathstrat predict --package`: a partner runs a sponsor's model exactly as it was pinned.

From feature files: their provenance attributes must match the package's pinned pipeline
(encoder id, dimension, weights sha256, transform, tile µm/px and px, overlap, tissue
threshold); anything else is refused naming the file. Predictions carry the package name,
version and manifest hash in every row; the packaged decision rule adds ``selected``; the
out-of-distribution check writes ``ood.json`` and warns when the cohort is outside what the
model saw.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import FeatureDimError
from pathstrat.io import write_dataframe_atomic, write_json_atomic

log = logging.getLogger(__name__)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    return a == b


def pipeline_mismatches(pipeline: dict[str, Any], features_dir: Path,
                        slide_ids: list[str]) -> list[tuple[str, list[str]]]:
    """``(file name, ["attr value (package: pinned)", ...])`` for every feature file whose
    provenance attributes differ from a package's pinned ``pipeline`` (encoder id, dimension,
    weights sha256, transform, tile px and µm/px, overlap, tissue threshold). Missing files are
    skipped (the loaders record them)."""
    from pathstrat.features import read_attrs

    enc, til = pipeline["encoder"], pipeline["tiling"]
    want = {**{k: v for k, v in enc.items() if v is not None},
            **{k: v for k, v in til.items() if v is not None and k != "mask_mpp"}}
    bad = []
    for sid in slide_ids:
        p = features_dir / f"{sid}.h5"
        if not p.is_file():
            continue  # load_bags records it in failures.csv
        a = read_attrs(p)
        diff = [f"{k} {a.get(k)!r} (package: {v!r})" for k, v in want.items() if not _same(a.get(k), v)]
        if diff:
            bad.append((p.name, diff))
    return bad


def pinned_fix(pipeline: dict[str, Any]) -> str:
    """The commands that make features as a package pins them."""
    enc, til = pipeline["encoder"], pipeline["tiling"]
    return (f"Tile and embed the slides as pinned in package.json (`pathstrat tile --target-mpp "
            f"{til.get('target_mpp')} --tile-px {til.get('tile_px')}`, `pathstrat embed --encoder "
            f"{enc.get('encoder_id')}` with the same weights).")


def check_provenance(doc: dict[str, Any], features_dir: Path, slide_ids: list[str]) -> None:
    """Every feature file made with the pinned encoder, weights and tiling: else refuse."""
    bad = [f"'{name}': {', '.join(diff[:3])}"
           for name, diff in pipeline_mismatches(doc["pipeline"], features_dir, slide_ids)]
    if bad:
        raise FeatureDimError(
            f"{len(bad)} feature file(s) were not made with the package's pinned pipeline "
            f"({'; '.join(bad[:5])}). {pinned_fix(doc['pipeline'])}")


def predict_package(package: str | os.PathLike, features_dir: str | os.PathLike,
                    manifest: str | os.PathLike | pd.DataFrame, out_dir: str | os.PathLike, *,
                    public_key: str | os.PathLike | None = None, require_signature: bool = False,
                    device: str = "auto") -> Path:
    """Verify ``package``, check the features' provenance, predict, apply the packaged rule and
    the OOD check. Writes ``predictions.csv``, ``ood.json``, ``package_provenance.json`` (and the
    usual ``metrics.json`` when the manifest has labels)."""
    from pathstrat.cohort import load_manifest
    from pathstrat.features import read_bag
    from pathstrat.layout import resolve_features_dir
    from pathstrat.sharing.build import open_package
    from pathstrat.sharing.ood import OODModel, check_cohort
    from pathstrat.training.inference import predict

    df = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest, check_files=False)
    fdir = resolve_features_dir(features_dir)
    out = Path(out_dir)
    with open_package(package, public_key=public_key, require_signature=require_signature) as (root, doc):
        check_provenance(doc, fdir, df["slide_id"].astype(str).tolist())
        predict(root, fdir, df, out, allow_overlap=True, device=device)  # the package holds no ids
        ood_model = OODModel.from_files(root)
    pred = pd.read_csv(out / "predictions.csv", dtype={"slide_id": str, "patient_id": str})
    sids = sorted(pred["slide_id"].unique())
    means = np.stack([np.asarray(read_bag(fdir / f"{s}.h5", load_views=False).features,
                                 np.float64).mean(axis=0) for s in sids])
    ood = check_cohort(ood_model, means, sids)
    if ood["cohort_outside"]:
        log.warning("OUT OF DISTRIBUTION: %d of %d slides (%.0f%%) are outside what package %s %s "
                    "saw in training (expected %.1f%% by chance, p=%.2g). Its predictions may not hold "
                    "for this cohort: see ood.json.", ood["n_flagged"], ood["n_slides"],
                    100 * ood["fraction_flagged"], doc["name"], doc["version"],
                    100 * ood["false_alarm_rate_training_oof"], ood["cohort_p_value"])
    dist = {r["slide_id"]: r for r in ood["slides"]}
    pred["ood_distance"] = pred["slide_id"].map(lambda s: dist[s]["distance"])
    pred["ood_outside"] = pred["slide_id"].map(lambda s: dist[s]["outside"])
    rules = doc.get("rules")
    if rules and rules.get("threshold") is not None:
        on = pred["target"] == rules["target"] if rules.get("target") else slice(None)
        pred.loc[on, "selected"] = pred.loc[on, "score"] >= float(rules["threshold"])
    pred["package"] = doc["name"]
    pred["package_version"] = doc["version"]
    pred["package_manifest_sha256"] = doc["_manifest_sha256"]
    write_dataframe_atomic(out / "predictions.csv", pred)
    write_json_atomic(out / "ood.json", {**ood, "package": doc["name"], "package_version": doc["version"]})
    write_json_atomic(out / "package_provenance.json", {
        "package": doc["name"], "version": doc["version"], "parent": doc.get("parent"),
        "manifest_sha256": doc["_manifest_sha256"], "signature": doc["_signature"],
        "pipeline": doc["pipeline"], "rules": rules})
    return out


def predict_package_from_slides(package: str | os.PathLike, manifest: str | os.PathLike,
                                out_dir: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                                public_key: str | os.PathLike | None = None,
                                require_signature: bool = False, device: str = "auto",
                                workers: int = 1) -> Path:
    """Tile and embed the manifest's slides exactly as the package pins them (into
    ``OUT/work``), then :func:`predict_package`. The encoder's weights must hash to the pinned
    sha256 (else refused before any slide is read)."""
    from pathstrat.cohort import load_manifest
    from pathstrat.encoders import build_encoder
    from pathstrat.encoders.embed import embed_cohort
    from pathstrat.errors import WeightsError
    from pathstrat.sharing.build import open_package
    from pathstrat.tiling import TilingParams, tile_cohort

    with open_package(package, public_key=public_key, require_signature=require_signature) as (_, doc):
        pinned_enc, til = doc["pipeline"]["encoder"], doc["pipeline"]["tiling"]
    enc = build_encoder(pinned_enc["encoder_id"], weights=weights, device=device)
    if pinned_enc.get("weights_sha256") and enc.weights_sha256 != pinned_enc["weights_sha256"]:
        raise WeightsError(f"Encoder '{enc.spec.id}' weights hash to {enc.weights_sha256}, but the package "
                           f"pins {pinned_enc['weights_sha256']}: get the exact weights the sponsor used "
                           "(`weights`=PATH).")
    params = TilingParams(**{k: til[k] for k in ("target_mpp", "tile_px", "overlap_px", "min_tissue",
                                                  "mask_mpp") if til.get(k) is not None})
    work = Path(out_dir) / "work"
    df, _problems = load_manifest(manifest, on_missing="record")
    tile_cohort(df, work, params, workers=workers, progress=False)
    res = embed_cohort(df, work, work, enc.spec.id, encoder=enc, workers=0)
    return predict_package(package, res.features_dir, df, out_dir, public_key=public_key,
                           require_signature=require_signature, device=device)
