"""Out-of-distribution check: is a partner's slide (or cohort) unlike the training slides?

Each slide is summarised by the mean of its tile embeddings. The training cohort contributes
only aggregate statistics: the mean and a Ledoit-Wolf shrunk precision matrix of those slide
means (no slide, patient or id). A slide's score is its Mahalanobis distance to the training
mean. The threshold is calibrated out of fold on the training slides (fit on the other folds,
score the held-out fold; threshold = the ``quantile`` of those distances), so the false-alarm
rate on training-like data is known and reported. A cohort is flagged when more of its slides
exceed the threshold than that false-alarm rate explains (one-sided binomial test).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OOD_SCHEMA = "pathstrat.ood/1"


@dataclass
class OODModel:
    """Training statistics and the calibrated threshold."""

    mean: np.ndarray  # (D,)
    precision: np.ndarray  # (D, D)
    threshold: float
    quantile: float
    false_alarm_oof: float
    n_train_slides: int

    def distance(self, slide_means: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``slide_means`` (N, D) to the training mean."""
        d = np.asarray(slide_means, np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, self.precision, d), 0.0))

    def to_files(self, root: Path) -> None:
        from safetensors.numpy import save_file

        from pathstrat.io import atomic_path, write_json_atomic

        with atomic_path(root / "ood.safetensors") as tmp:
            save_file({"mean": self.mean.astype(np.float64),
                       "precision": self.precision.astype(np.float64)}, str(tmp))
        write_json_atomic(root / "ood.json", {
            "schema": OOD_SCHEMA, "summary": "mean of tile embeddings per slide",
            "score": "Mahalanobis distance (Ledoit-Wolf covariance of training slide means)",
            "threshold": self.threshold, "quantile": self.quantile,
            "false_alarm_rate_training_oof": self.false_alarm_oof,
            "n_train_slides": self.n_train_slides})

    @classmethod
    def from_files(cls, root: Path) -> OODModel:
        import json

        from safetensors.numpy import load_file

        meta = json.loads((root / "ood.json").read_text(encoding="utf-8"))
        arr = load_file(str(root / "ood.safetensors"))
        return cls(arr["mean"], arr["precision"], float(meta["threshold"]), float(meta["quantile"]),
                   float(meta["false_alarm_rate_training_oof"]), int(meta["n_train_slides"]))


def _fit_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(x)
    return lw.location_, lw.precision_


def fit_ood(slide_means: np.ndarray, folds: np.ndarray, *, quantile: float = 0.99) -> OODModel:
    """Fit on all training slides; calibrate the threshold out of fold (``folds``: fold per slide)."""
    x = np.asarray(slide_means, np.float64)
    folds = np.asarray(folds)
    oof = np.full(len(x), np.nan)
    for k in np.unique(folds):
        test = folds == k
        if test.all() or (~test).sum() < 3:
            continue
        mu, prec = _fit_stats(x[~test])
        d = x[test] - mu
        oof[test] = np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, prec, d), 0.0))
    ok = np.isfinite(oof)
    if ok.sum() < 5:
        raise ValueError(f"OOD calibration needs at least 5 out-of-fold training slides; got {ok.sum()}")
    thr = float(np.quantile(oof[ok], quantile))
    mu, prec = _fit_stats(x)
    return OODModel(mu, prec, thr, quantile, float((oof[ok] > thr).mean()), len(x))


def check_cohort(model: OODModel, slide_means: np.ndarray, slide_ids: list[str]) -> dict[str, Any]:
    """Per-slide distances and flags, and the cohort verdict (binomial test of the flag count)."""
    from scipy.stats import binomtest

    dist = model.distance(slide_means)
    flagged = dist > model.threshold
    n, k = len(dist), int(flagged.sum())
    # the null rate is at least the nominal 1 - quantile: with few training slides the measured
    # out-of-fold rate can be 0, and one flagged partner slide must not then condemn a cohort
    rate = max(model.false_alarm_oof, 1.0 - model.quantile)
    p = binomtest(k, n, rate, alternative="greater").pvalue if n else 1.0
    return {
        "schema": OOD_SCHEMA, "threshold": model.threshold,
        "false_alarm_rate_training_oof": model.false_alarm_oof,
        "n_slides": n, "n_flagged": k, "fraction_flagged": k / n if n else float("nan"),
        "cohort_p_value": float(p), "cohort_outside": bool(n and p < 0.01),
        "slides": [{"slide_id": s, "distance": float(d), "outside": bool(f)}
                   for s, d, f in zip(slide_ids, dist, flagged, strict=True)],
    }
