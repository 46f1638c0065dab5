"""Feature files: write ours atomically; read ours, TRIDENT, STAMP and CLAM layouts as one ``Bag``.

Ours (``pathstrat.features/1``): ``features`` (N,D), ``coords`` (N,2) int64 level-0 px, optional
``features_views`` (V,N,D) for augmented views; attrs = tiles attrs + encoder provenance; the
``coords`` dataset also carries TRIDENT's patch attributes (:func:`trident_coords_attrs`) so
TRIDENT's slide encoders read our files unchanged. TRIDENT: ``features`` + ``coords`` whose
dataset attrs describe the patches. STAMP: ``feats`` + ``coords`` in µm (file attrs ``unit="um"``,
``tile_size`` µm, ``extractor``). CLAM: ``features`` + ``coords`` and no attrs. All are checked for
shape, row counts, finite values and (when asked) dim/encoder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathstrat.errors import FeatureDimError, NonFiniteError, SchemaError
from pathstrat.io import atomic_path

log = logging.getLogger(__name__)

FEATURES_SCHEMA = "pathstrat.features/1"
LAYOUTS = ("pathstrat", "trident", "stamp", "clam")

# TRIDENT coords attrs -> our names (same meaning, our units in the name)
_TRIDENT_ATTRS = {"patch_size_level0": "tile_size_level0", "patch_size": "tile_px",
                  "level0_width": "level0_width", "level0_height": "level0_height",
                  "name": "slide_id"}

__all__ = ["FEATURES_SCHEMA", "Bag", "RandomWeightsWarning", "read_bag", "warn_if_random", "write_features"]


class RandomWeightsWarning(UserWarning):
    """Features (or a model) come from a randomly initialised encoder."""


def warn_if_random(attrs: Mapping[str, Any], what: str = "these features") -> bool:
    """Warn loudly when feature attrs say the encoder was random-init; return whether it was.

    Call it before training on a feature file: results on random features are meaningless
    outside tests and benchmarks.
    """
    import warnings

    if not bool(attrs.get("weights_random", False)):
        return False
    msg = (f"!!! {what} were computed with a RANDOMLY INITIALISED encoder "
           f"'{attrs.get('encoder_id', '?')}' (weights: random). They are for tests and "
           "benchmarks only; any model trained on them is meaningless. Re-embed with real "
           "weights (--weights PATH or a Hugging Face cache) or use --encoder builtin. !!!")
    log.warning(msg)
    warnings.warn(msg, RandomWeightsWarning, stacklevel=2)
    return True


@dataclass
class Bag:
    """One slide's tile features: ``features`` (N,D), ``coords`` (N,2), ``attrs``.

    ``views`` holds (V,N,D) augmented views when the file has them. ``layout`` says which
    producer wrote the file (``pathstrat``, ``trident`` or ``clam``).
    """

    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    views: np.ndarray | None = None
    layout: str = "pathstrat"
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def _attr_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _h5_attr(v: Any) -> Any:
    """Convert a Python value to something h5py stores (None -> '' is avoided by skipping)."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return np.asarray(v)
    return v


def trident_coords_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """TRIDENT's attributes on the ``coords`` dataset, from our tile attributes.

    TRIDENT's readers and slide encoders (e.g. TITAN) take ``patch_size_level0`` from here;
    magnifications follow the usual 10 / (µm per px) convention (0.25 µm/px = 40x)."""
    out: dict[str, Any] = {}
    if attrs.get("tile_px") is not None:
        out["patch_size"] = int(attrs["tile_px"])
    if attrs.get("tile_size_level0") is not None:
        out["patch_size_level0"] = int(round(float(attrs["tile_size_level0"])))
    if attrs.get("slide_mpp"):
        out["level0_magnification"] = int(round(10.0 / float(attrs["slide_mpp"])))
    if attrs.get("target_mpp"):
        out["target_magnification"] = int(round(10.0 / float(attrs["target_mpp"])))
    for k in ("level0_width", "level0_height", "overlap_px"):
        if attrs.get(k) is not None:
            out["overlap" if k == "overlap_px" else k] = int(attrs[k])
    if attrs.get("slide_id") is not None:
        out["name"] = str(attrs["slide_id"])
    return out


def write_features(path: str | os.PathLike, features: np.ndarray, coords: np.ndarray,
                   attrs: Mapping[str, Any], *, views: np.ndarray | None = None) -> Path:
    """Write a ``pathstrat.features/1`` file atomically (never a partial file under ``path``)."""
    import h5py

    feats = np.asarray(features)
    xy = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if feats.ndim != 2 or len(feats) != len(xy):
        raise FeatureDimError(f"Cannot write {path}: features {feats.shape} and coords "
                              f"{xy.shape} do not have one row per tile.")
    if views is not None and (views.ndim != 3 or views.shape[1:] != feats.shape):
        raise FeatureDimError(f"Cannot write {path}: views {views.shape} must be (V,{len(feats)},"
                              f"{feats.shape[1]}).")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=feats)
            f.create_dataset("coords", data=xy)
            for k, v in trident_coords_attrs(attrs).items():
                f["coords"].attrs[k] = v
            if views is not None:
                f.create_dataset("features_views", data=views)
            for k, v in {**attrs, "schema": FEATURES_SCHEMA, "n_tiles": len(xy),
                         "encoder_dim": int(attrs.get("encoder_dim", feats.shape[1]))}.items():
                if v is not None:
                    f.attrs[k] = _h5_attr(v)
    return Path(path)


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """File-level attrs only (cheap; used by resume checks). Empty dict when unreadable."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k: _attr_value(v) for k, v in f.attrs.items()}
    except OSError:
        return {}


def _detect_layout(f, attrs: Mapping[str, Any]) -> str:
    if attrs.get("schema") == FEATURES_SCHEMA:
        return "pathstrat"
    if "feats" in f and "features" not in f:
        return "stamp"
    if "coords" in f and len(f["coords"].attrs) > 0:
        return "trident"
    return "clam"


def read_bag(path: str | os.PathLike, *, expected_dim: int | None = None,
             expected_encoder: str | None = None, load_views: bool = True) -> Bag:
    """Read a feature file (ours, TRIDENT or CLAM) and check its shape and provenance.

    Raises :class:`FeatureDimError` (naming the file) when the dim or encoder differs from
    what is expected, and :class:`SchemaError` when datasets are missing or rows disagree.
    """
    import h5py

    p = Path(path)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise SchemaError(f"Feature file '{p}' cannot be opened ({exc}). Re-run `pathstrat "
                          "embed` for this slide.") from exc
    with f:
        attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
        layout = _detect_layout(f, attrs)
        key = "feats" if layout == "stamp" else "features"
        if key not in f or "coords" not in f:
            raise SchemaError(f"Feature file '{p}' needs datasets 'features' (or STAMP's 'feats') "
                              f"and 'coords' (found {sorted(f.keys())}); it is not a pathstrat, "
                              "TRIDENT, STAMP or CLAM feature file.")
        feats = np.asarray(f[key][()])
        coords = np.asarray(f["coords"][()])
        if layout == "stamp":
            coords = _stamp_coords(coords, attrs, p)
        if layout == "trident":
            for k, v in f["coords"].attrs.items():
                attrs.setdefault(_TRIDENT_ATTRS.get(k, k), _attr_value(v))
        views = np.asarray(f["features_views"][()]) if load_views and "features_views" in f else None
    feats, coords = _squeeze(feats, coords, p)
    attrs.setdefault("slide_id", p.stem)
    _check(p, feats, coords, attrs, layout, expected_dim, expected_encoder)
    return Bag(feats, coords.astype(np.int64, copy=False), attrs, views, layout, p)


def _stamp_coords(coords: np.ndarray, attrs: dict[str, Any], p: Path) -> np.ndarray:
    """STAMP stores tile corners in µm: kept in µm (rounded), with the unit recorded, because
    level-0 pixels need the slide's MPP, which the file does not hold."""
    unit = str(attrs.get("unit", "um"))
    if unit not in ("um", "µm", "micron", "microns"):
        raise SchemaError(f"Feature file '{p}' (STAMP layout) has coords in unit '{unit}'; "
                          "expected 'um'.")
    attrs["coords_unit"] = "um"
    if "tile_size" in attrs:
        attrs.setdefault("tile_size_um", float(attrs["tile_size"]))
    if "extractor" in attrs:
        attrs.setdefault("encoder_id", str(attrs["extractor"]))
    c = np.asarray(coords, dtype=np.float64)
    return np.rint(c).astype(np.int64) if c.size else c.astype(np.int64)


def _squeeze(feats: np.ndarray, coords: np.ndarray, p: Path) -> tuple[np.ndarray, np.ndarray]:
    """Accept (1,N,D)/(1,N,2) batch-of-one layouts some tools write."""
    if feats.ndim == 3 and feats.shape[0] == 1:
        feats = feats[0]
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    if feats.ndim != 2:
        raise SchemaError(f"Feature file '{p}': 'features' has shape {feats.shape}, expected "
                          "(N, D).")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise SchemaError(f"Feature file '{p}': 'coords' has shape {coords.shape}, expected "
                          "(N, 2).")
    return feats, coords


def _check(p: Path, feats: np.ndarray, coords: np.ndarray, attrs: Mapping[str, Any], layout: str,
           expected_dim: int | None, expected_encoder: str | None) -> None:
    if feats.dtype.kind not in "fiu" or coords.dtype.kind not in "fiu":
        raise SchemaError(f"Feature file '{p}': 'features' ({feats.dtype}) and 'coords' "
                          f"({coords.dtype}) must be numeric arrays; the file was not written by an "
                          "encoder. Re-embed this slide.")
    if feats.dtype.kind == "f":
        finite = np.isfinite(feats).all(axis=1) if feats.size else np.ones(len(feats), bool)
        if not finite.all():
            n_bad = int((~finite).sum())
            raise NonFiniteError(
                f"Feature file '{p}': {n_bad} of {len(feats)} tiles have NaN or infinite features "
                f"(first at row {int(np.flatnonzero(~finite)[0])}). Re-embed this slide (check the "
                "encoder's weights and precision), or remove it from the manifest.")
    if len(feats) != len(coords):
        raise SchemaError(f"Feature file '{p}': {len(feats)} feature rows but {len(coords)} "
                          "coords rows; the file is inconsistent, re-embed this slide.")
    declared = attrs.get("encoder_dim")
    if declared is not None and int(declared) != feats.shape[1]:
        raise FeatureDimError(f"Feature file '{p}': attrs say encoder_dim={declared} but the "
                              f"features have {feats.shape[1]} columns.")
    if expected_dim is not None and feats.shape[1] != int(expected_dim):
        raise FeatureDimError(
            f"Feature file '{p}' has dim {feats.shape[1]} (encoder "
            f"'{attrs.get('encoder_id', 'unknown')}', {layout} layout) but {expected_dim} is "
            "expected: all slides must come from the same encoder; re-embed or point to the "
            "right features folder.")
    if expected_encoder is not None:
        found = attrs.get("encoder_id")
        if found is None:
            log.warning("Feature file '%s' (%s layout) does not record its encoder; assuming "
                        "'%s'.", p, layout, expected_encoder)
        elif str(found) != str(expected_encoder):
            raise FeatureDimError(f"Feature file '{p}' was made by encoder '{found}', not "
                                  f"'{expected_encoder}'; use the matching features folder or "
                                  "re-embed.")
