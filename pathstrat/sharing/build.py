"""`pathstrat package`: a training run as a versioned, verifiable model package.

Layout of ``NAME-VERSION.pathstrat/`` (a directory; ``--zip`` also writes ``.pathstrat.zip``)::

    package.json          name, version, parent, pinned pipeline, targets, rules, metrics, summary
    checkpoints/          model.json (no patient or slide ids) + one safetensors file per fold
    ood.json, ood.safetensors   training statistics for the out-of-distribution check
    README.md             model card (Hugging Face layout)
    MANIFEST.sha256       sha256 of every file above
    SIGNATURE             optional Ed25519 signature of the manifest

Nothing patient-level leaves the sponsor: no ids (patients, slides), no fingerprints of
training slides, no per-patient predictions; only aggregate counts and statistics.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.io import sha256_file, write_json_atomic, write_text_atomic
from pathstrat.sharing.manifest import (
    MANIFEST,
    PackageError,
    check_files,
    check_signature,
    sign,
    write_manifest,
)

log = logging.getLogger(__name__)

PACKAGE_SCHEMA = "pathstrat.package/1"
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
#: Feature-file attributes a partner's features must share with the training features.
PINNED_FEATURE_ATTRS = ("encoder_id", "encoder_dim", "weights_sha256", "transform", "target_mpp",
                        "tile_px", "overlap_px", "min_tissue", "tiles_params_hash")
TILING_ATTRS = ("target_mpp", "tile_px", "overlap_px", "min_tissue", "mask_mpp")


def _run_config(run: Path) -> dict[str, Any]:
    import yaml

    p = run / "config.yaml"
    return (yaml.safe_load(p.read_text(encoding="utf-8")) or {}) if p.is_file() else {}


def _verify_run(run: Path, spec: dict[str, Any]) -> None:
    for fold in spec["folds"]:
        p = run / "checkpoints" / fold["file"]
        if not p.is_file():
            raise PackageError(f"Run '{run}': checkpoint {p.name} is missing; it cannot be packaged.")
        if fold.get("sha256") and sha256_file(p) != fold["sha256"]:
            raise PackageError(f"Run '{run}': checkpoint {p.name} does not match the sha256 in "
                               "model.json (changed after training); retrain or restore it.")


def _training_features(run: Path, features_dir: Path, spec: dict[str, Any]):
    """Slide means, folds (repeat 0) and the shared provenance attrs of the training slides."""
    from pathstrat.features import read_bag
    from pathstrat.layout import resolve_features_dir

    pred = pd.read_csv(run / "predictions.csv", dtype={"slide_id": str, "patient_id": str})
    if "repeat" in pred.columns:
        pred = pred[pred["repeat"] == pred["repeat"].min()]
    slides = pred.drop_duplicates("slide_id")[["slide_id", "fold"]].reset_index(drop=True)
    fdir = resolve_features_dir(features_dir)
    means, attrs0, folds = [], None, []
    for sid, fold in zip(slides["slide_id"], slides["fold"], strict=True):
        bag = read_bag(fdir / f"{sid}.h5", expected_dim=int(spec["in_dim"]), load_views=False)
        pinned = {k: bag.attrs.get(k) for k in PINNED_FEATURE_ATTRS}
        if attrs0 is None:
            attrs0 = {**pinned, **{k: bag.attrs.get(k) for k in TILING_ATTRS}}
        elif any(pinned[k] != attrs0[k] for k in PINNED_FEATURE_ATTRS):
            diff = [k for k in PINNED_FEATURE_ATTRS if pinned[k] != attrs0[k]]
            raise PackageError(f"Training features disagree in {diff} (slide '{sid}'): a package "
                               "pins one pipeline; re-embed the cohort with one encoder and tiling.")
        means.append(np.asarray(bag.features, np.float64).mean(axis=0))
        folds.append(fold)
    return np.stack(means), np.asarray(folds), attrs0 or {}, len(pred["patient_id"].unique())


def _strip_ids(spec: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in spec.items() if k not in ("training_slide_ids", "training_fingerprints")}
    out["folds"] = [{**{k: v for k, v in f.items()
                        if k not in ("training_patient_ids", "validation_patient_ids")},
                     "training_patient_ids": []} for f in spec["folds"]]
    return out


def _rules(run: Path) -> dict[str, Any] | None:
    for p in (run / "selection.json", run / "selection" / "selection.json"):
        if p.is_file():
            sel = json.loads(p.read_text(encoding="utf-8"))
            dev = sel.get("development", {})
            keep = ("sensitivity", "specificity", "ppv", "npv", "prevalence", "fraction_selected")
            return {"target": sel.get("target"), "rule": sel.get("rule"),
                    "target_value": sel.get("target_value"), "threshold": sel["threshold"],
                    "selected_when": sel.get("selected_when", "score >= threshold"),
                    "operating_characteristics": {k: dev[k] for k in keep if k in dev},
                    "heldout_mode": sel.get("heldout_mode")}
    return None


def build_package(run_dir: str | os.PathLike, out: str | os.PathLike, *, name: str, version: str,
                  parent: str | None = None, features_dir: str | os.PathLike | None = None,
                  sign_key: str | os.PathLike | None = None, licence: str = "other",
                  intended_use: str = "", limitations: str = "", overwrite: bool = False,
                  zip_too: bool = False, parent_package: dict[str, Any] | None = None) -> Path:
    """Package a training run (see the module docstring); returns the package directory.

    ``parent`` is the version this one derives from; ``parent_package`` (optional) the parent's
    :func:`parent_record` (name, version, manifest sha256).

    ``features_dir`` defaults to the run's ``config.yaml`` features (needed once, for the pinned
    pipeline and the OOD statistics). Written to a temporary folder and renamed at the end.
    """
    from pathstrat import __version__
    from pathstrat.sharing.ood import fit_ood
    from pathstrat.training.inference import load_run_spec

    run, dest = Path(run_dir), Path(out)
    if not NAME.match(name):
        raise PackageError(f"Package name '{name}' must be letters, digits, '.', '_' or '-' (<= 80).")
    if not SEMVER.match(version):
        raise PackageError(f"Version '{version}' is not a semantic version (MAJOR.MINOR.PATCH, "
                           "e.g. 1.0.0).")
    if dest.exists() and not overwrite:
        raise PackageError(f"'{dest}' exists; pass `overwrite` or choose another `out`.")
    spec = load_run_spec(run)
    if spec.get("federated"):
        raise PackageError(f"'{run}' is a federated run: the coordinator holds no training "
                           "features or predictions to package. A federation started from a "
                           "package writes its new version itself (`package:` in the federation "
                           "config or `--package`; docs/model-sharing.md).")
    _verify_run(run, spec)
    cfg = _run_config(run)
    fdir = Path(features_dir or cfg.get("features") or "")
    if not features_dir and not cfg.get("features"):
        raise PackageError(f"Run '{run}' does not record its features folder; pass `features`.")
    means, folds, attrs, n_patients = _training_features(run, fdir, spec)
    ood = fit_ood(means, folds)
    metrics = (json.loads((run / "metrics.json").read_text(encoding="utf-8"))
               if (run / "metrics.json").is_file() else {})
    doc = {
        "schema": PACKAGE_SCHEMA, "name": name, "version": version, "parent": parent,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pathstrat_version": __version__,
        "pipeline": {"encoder": {k: attrs.get(k) for k in ("encoder_id", "encoder_dim",
                                                            "weights_sha256", "transform")},
                     "tiling": {k: attrs.get(k) for k in TILING_ATTRS},
                     "tiles_params_hash": attrs.get("tiles_params_hash")},
        "model": {"arch": spec["model"], "hparams": spec["hparams"], "in_dim": spec["in_dim"],
                  "level": spec.get("level", "slide"), "n_fold_models": len(spec["folds"]),
                  "targets": spec["targets"],
                  "input_scaling": spec.get("input_scaling") or spec.get("scaler")},
        "rules": _rules(run), "metrics": metrics,
        "training_summary": {"n_patients": int(n_patients), "n_slides": int(len(means))},
    }
    if parent_package:
        doc["parent_package"] = parent_package
    return write_package(dest, doc, copy={f"checkpoints/{f['file']}": run / "checkpoints" / f["file"]
                                          for f in spec["folds"]},
                         model_json=_strip_ids(spec), ood=ood, sign_key=sign_key, licence=licence,
                         intended_use=intended_use, limitations=limitations, zip_too=zip_too)


def write_package(dest: Path, doc: dict[str, Any], *, copy: dict[str, Path],
                  model_json: dict[str, Any], ood: Any = None, sign_key: str | os.PathLike | None = None,
                  licence: str = "other", intended_use: str = "", limitations: str = "",
                  zip_too: bool = False) -> Path:
    """Stage a package (files copied to their relative paths, ``checkpoints/model.json``,
    the OOD model's files, ``package.json``, the model card, manifest, signature) in a temporary
    folder next to ``dest`` and rename it into place; the one writer of packages."""
    from pathstrat.sharing.card import model_card

    stage = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "checkpoints").mkdir(parents=True)
    try:
        for rel, src in copy.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, stage / rel)
        write_json_atomic(stage / "checkpoints" / "model.json", model_json)
        if ood is not None:
            ood.to_files(stage)
        write_json_atomic(stage / "package.json", doc)
        write_text_atomic(stage / "README.md", model_card(doc, licence=licence,
                                                         intended_use=intended_use,
                                                         limitations=limitations))
        write_manifest(stage)
        if sign_key:
            sign(stage, sign_key)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if zip_too:
        archive = shutil.make_archive(str(dest), "zip", root_dir=dest)
        log.info("zipped package: %s", archive)
    log.info("package %s %s written to %s", doc["name"], doc["version"], dest)
    return dest


def next_minor(version: str) -> str:
    """The default version of a package derived from ``version`` (fine-tuned, federated)."""
    major, minor, _patch = (int(v) for v in version.split("-")[0].split("."))
    return f"{major}.{minor + 1}.0"


def starting_fold(spec: dict[str, Any]) -> dict[str, Any]:
    """The fold model a derived model starts from (fine-tuning, federated improvement): the
    first one. Fold models were trained from different initialisations on different patients,
    so averaging their weights is not a model; one of them is taken, the same for every use."""
    if not spec.get("folds"):
        raise PackageError("The package's checkpoints/model.json lists no fold model.")
    return spec["folds"][0]


def parent_record(doc: dict[str, Any]) -> dict[str, Any]:
    """Lineage of a package derived from the verified package ``doc``: its name, version and
    manifest sha256 (which pins every file of it), and how its signature was checked."""
    return {"name": doc["name"], "version": doc["version"], "manifest_sha256": doc["_manifest_sha256"],
            "signature": doc["_signature"]}


@contextmanager
def open_package(path: str | os.PathLike, *, public_key: str | os.PathLike | None = None,
                 require_signature: bool = False) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Verify a package (directory or ``.zip``) and yield ``(folder, package.json)``.

    Every loader goes through here: a changed, missing or extra file, a bad signature, or no
    signature when ``require_signature`` is a :class:`PackageError`."""
    import tempfile
    import zipfile

    p = Path(path)
    if not p.exists():
        raise PackageError(f"Package '{p}' does not exist.")
    tmp = None
    try:
        if p.is_file():
            if not zipfile.is_zipfile(p):
                raise PackageError(f"'{p}' is neither a package folder nor a zip archive of one.")
            tmp = tempfile.mkdtemp(prefix="pathstrat-pkg-")
            with zipfile.ZipFile(p) as z:
                for info in z.infolist():
                    target = Path(tmp, info.filename).resolve()
                    if Path(tmp).resolve() not in (target, *target.parents):
                        raise PackageError(f"'{p}': archive member '{info.filename}' points outside "
                                           "the package.")
                z.extractall(tmp)
            root = Path(tmp)
        else:
            root = p
        check_files(root)
        status = check_signature(root, public_key, required=require_signature)
        doc = json.loads((root / "package.json").read_text(encoding="utf-8"))
        if doc.get("schema") != PACKAGE_SCHEMA:
            raise PackageError(f"Package '{p}': schema {doc.get('schema')!r}, expected {PACKAGE_SCHEMA}.")
        doc["_signature"] = status
        doc["_manifest_sha256"] = sha256_file(root / MANIFEST)
        yield root, doc
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
