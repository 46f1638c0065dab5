"""The target-kind interface: everything that differs between binary, multiclass, ... heads.

A :class:`TargetKind` is a stateless object registered in :data:`KINDS` under its name (the
``kind`` of a :class:`~pathstrat.mil.targets.TargetSpec`). The spec holds a head's
configuration (columns, classes, bins); the kind holds the behaviour, and every method takes the
spec as its first argument: fit the fold state on the training fold, encode labels, decode head
outputs, the loss, the prediction rows and metric set, the CV strata, and the aggregate
statistics federated sites share. Callers ask ``spec.impl`` instead of branching on
``spec.kind``, so a new kind is one module in this package (see ``docs/architecture.md``).

This module imports no torch: manifests and federated configs use specs without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from pathstrat.errors import ConfigError, ManifestError
from pathstrat.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from pathstrat.mil.targets import TargetSpec

#: ``scores(index, outputs) -> array``: decoded scores of the head for the bags ``index``.
ScoreFn = Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]
#: ``label(column) -> value``: the manifest value of ``column`` for one prediction row (NaN if absent).
LabelFn = Callable[[str | None], Any]


class TargetKind:
    """Behaviour of one target kind; subclasses override what differs from these defaults.

    Class attributes describe the kind to callers that only need a yes/no:

    - ``survival``: labels are ``time_col``/``event_col`` (not ``columns``);
    - ``categorical``: labels are class indices of ``spec.classes`` (balanced sampling and
      CLAM's instance clustering use them; ``infer_target`` fills ``classes`` from the data);
    - ``n_classes``: the number of distinct label values ``infer_target`` requires (binary: 2);
    - ``default_classes``: classes of a federated head that declares none (binary: 0/1);
    - ``needs_time_grid``: federated sites histogram times on the shared grid (``time_max``);
    - ``pooled_auroc``: the federated evaluation carries score histograms, so the server
      can pool an AUROC (and select a round by it);
    - ``metric_set``: the :data:`pathstrat.metrics.METRIC_SETS` entry of metrics.json;
    - ``primary_metric``: the metrics.json key that sums a head up (model comparisons such as
      ``finetune``'s as-is / fine-tuned / from-scratch table).
    """

    name: ClassVar[str] = ""
    survival: ClassVar[bool] = False
    categorical: ClassVar[bool] = False
    default_classes: ClassVar[tuple[Any, ...] | None] = None
    n_classes: ClassVar[int | None] = None
    needs_time_grid: ClassVar[bool] = False
    pooled_auroc: ClassVar[bool] = False
    metric_set: ClassVar[str] = ""
    primary_metric: ClassVar[str] = "auroc"

    # --- declaration -------------------------------------------------------------------------
    def check(self, spec: TargetSpec) -> None:
        """Validate (and complete) a freshly built spec; raises ConfigError."""
        if self.survival and not (spec.time_col and spec.event_col):
            raise ConfigError(f"Survival target '{spec.name}' needs `time_col` and `event_col` "
                              "(the manifest's time and event columns).")
        if not self.survival and not spec.columns:
            spec.columns = [spec.name]

    def n_outputs(self, spec: TargetSpec) -> int:
        """Width of the model's output layer for this head."""
        return 1

    def label_names(self, spec: TargetSpec) -> list[str]:
        """Names of the rows this head writes into predictions.csv / metrics.json."""
        return [spec.name]

    def needed_columns(self, spec: TargetSpec) -> list[str]:
        """Manifest columns the labels are read from."""
        return [spec.time_col, spec.event_col] if self.survival else list(spec.columns)

    # --- labels and fold state -----------------------------------------------------------------
    def encode(self, spec: TargetSpec, df: pd.DataFrame, state: dict[str, Any] | None) -> np.ndarray:
        """Labels of ``df`` rows as float32: (n,) or (n, C); NaN (or -1 for classes) = missing."""
        raise NotImplementedError

    def fit(self, spec: TargetSpec, y: np.ndarray, balanced: bool) -> dict[str, Any]:
        """Fold state from the encoded training labels ``y`` (class weights)."""
        return {}

    def fit_raw(self, spec: TargetSpec, df: pd.DataFrame, balanced: bool) -> dict[str, Any]:
        """Fold state from raw training rows (the training fold only)."""
        return self.fit(spec, self.encode(spec, df, None), balanced)

    def decode(self, spec: TargetSpec, out: np.ndarray, state: dict[str, Any] | None) -> np.ndarray:
        """Raw head outputs (n, n_outputs) -> scores: probabilities, values in target units, risks.

        ``state=None`` gives the scores before any fold-state de-standardisation.
        """
        raise NotImplementedError

    # --- training ------------------------------------------------------------------------------
    def loss(self, spec: TargetSpec, logits: torch.Tensor, y: torch.Tensor, *,
             pos_weight: torch.Tensor | None = None, class_weight: torch.Tensor | None = None,
             ties: str = "efron") -> torch.Tensor:
        """Masked loss of one batch (float logits (B, n_outputs), encoded labels)."""
        raise NotImplementedError

    def bag_labels(self, spec: TargetSpec, y: torch.Tensor) -> torch.Tensor | None:
        """Class index per bag (-1 = missing) of a categorical head, for CLAM clustering."""
        if not self.categorical:
            return None
        import torch

        return torch.nan_to_num(y.float(), nan=-1.0).long()

    def strata(self, spec: TargetSpec) -> tuple[str | None, str | None]:
        """``(column, method)`` for :func:`pathstrat.training.splits.strata`: CV strata by patient."""
        return (spec.event_col, None) if self.survival else (spec.columns[0], None)

    # --- evaluation ----------------------------------------------------------------------------
    def prediction_rows(self, spec: TargetSpec, score: Any, label: LabelFn) -> list[dict[str, Any]]:
        """predictions.csv rows of one bag: ``target, y_true, score`` (+ kind columns)."""
        return [{"target": spec.name, "y_true": label(spec.columns[0]), "score": float(score)}]

    def metric_fn(self, spec: TargetSpec, pat: pd.DataFrame) -> Callable[[np.ndarray], dict[str, float]]:
        """``fn(patient_index) -> metrics`` on a patient-level predictions table (bootstrapped)."""
        from pathstrat.metrics import METRIC_SETS

        fn = METRIC_SETS.get(self.metric_set)
        y = pd.to_numeric(pat["y_true"], errors="coerce").to_numpy(float)
        s = pat["score"].to_numpy(float)
        return lambda idx: fn(y[idx], s[idx])

    def epoch_metric(self, spec: TargetSpec, y: np.ndarray,
                     scores: ScoreFn) -> tuple[str, Callable[[np.ndarray, dict[str, np.ndarray]], float]]:
        """``(name, fn(index, outputs))``: the per-epoch learning-curve metric of the first head."""
        raise NotImplementedError

    # --- federated statistics ------------------------------------------------------------------
    def site_stats(self, spec: TargetSpec, df: pd.DataFrame, *,
                   edges: np.ndarray | None) -> tuple[dict[str, Any], dict[str, str]]:
        """Additive counts a site shares instead of labels: (metric values, config values)."""
        return {}, {}

    def global_state(self, spec: TargetSpec, merged: dict[str, Any], *, edges: np.ndarray | None,
                     balanced: bool) -> tuple[dict[str, Any], list[Any] | None]:
        """Fold state from the summed site counts (same keys as :meth:`fit_raw`) and the agreed
        class list of a head whose config left it empty (None otherwise)."""
        return {}, None

    def federated_metrics(self, spec: TargetSpec, rows: pd.DataFrame, score: np.ndarray,
                          y: np.ndarray, score_bins: int) -> dict[str, Any]:
        """A site's evaluation metrics of this head: fixed keys ``<head>.<metric>``, ``<head>.n``."""
        raise NotImplementedError

    # --- test support --------------------------------------------------------------------------
    def example(self, n: int, seed: int = 0) -> tuple[TargetSpec, pd.DataFrame]:
        """A spec of this kind and ``n`` labelled patients (``patient_id`` + label columns, a few
        labels missing): the input of the kind test matrix (tests/test_target_kinds.py)."""
        raise NotImplementedError


KINDS: Registry[TargetKind] = Registry("target kind")


def register_kind(cls: type[TargetKind]) -> type[TargetKind]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    KINDS.add(cls.name, cls())
    return cls


class SurvivalKind(TargetKind):
    """What the survival kinds share: ``time_col``/``event_col`` labels, risk scores (higher =
    earlier event), Harrell's C; ``time_index`` is the time's column in the encoded labels."""

    survival = True
    metric_set = "survival"
    primary_metric = "c_index"
    time_index: ClassVar[int] = 0

    def prediction_rows(self, spec, score, label):
        ev = label(spec.event_col)
        return [{"target": spec.name, "y_true": ev, "score": float(score), "risk": float(score),
                 "time": label(spec.time_col), "event": ev}]

    def metric_fn(self, spec, pat):
        from pathstrat.metrics import METRIC_SETS

        fn = METRIC_SETS.get(self.metric_set)
        y = pd.to_numeric(pat["y_true"], errors="coerce").to_numpy(float)
        s = pat["score"].to_numpy(float)
        t = pat["time"].to_numpy(float)
        return lambda idx: fn(y[idx], s[idx], time=t[idx])

    def epoch_metric(self, spec, y, scores):
        from pathstrat.metrics import harrell_c

        t_col = self.time_index
        return "c_index", lambda i, o: harrell_c(y[i, t_col], y[i, 1], scores(i, o))

    def federated_metrics(self, spec, rows, score, y, score_bins):
        from pathstrat import metrics as M

        t = rows[spec.time_col].to_numpy(float)
        e = rows[spec.event_col].to_numpy(float)
        return {f"{spec.name}.c_index": M.harrell_c(t, e, score) if len(t) > 1 else float("nan"),
                f"{spec.name}.n": int(np.isfinite(t).sum())}

    def example(self, n, seed=0):
        from pathstrat.mil.targets import TargetSpec

        rng, df = example_frame(n, seed)
        df["time"] = np.round(rng.exponential(24.0, n), 1) + 0.5
        df["event"] = (rng.random(n) < 0.7).astype(int)
        return TargetSpec("survival", self.name, time_col="time", event_col="event"), df


class BinaryLabelsKind(TargetKind):
    """What the 0/1-label kinds share (binary, multilabel): the per-epoch mean AUROC over label
    columns, positive/negative counts per label as the federated statistics, and the BCE positive
    weights agreed from those counts."""

    def epoch_metric(self, spec, y, scores):
        def auc(i, o):
            return mean_auroc(y[i].reshape(len(i), -1), scores(i, o).reshape(len(i), -1))
        return "auroc", auc

    def site_stats(self, spec, df, *, edges):
        y = np.asarray(spec.encode(df), float).reshape(len(df), -1)
        return ({f"{spec.name}.pos": [int((y[:, j] == 1).sum()) for j in range(y.shape[1])],
                 f"{spec.name}.neg": [int((y[:, j] == 0).sum()) for j in range(y.shape[1])]}, {})

    def global_state(self, spec, merged, *, edges, balanced):
        return {"pos_weight": pos_weights(merged[f"{spec.name}.pos"], merged[f"{spec.name}.neg"],
                                          balanced)}, None


# --- helpers shared by several kinds ----------------------------------------------------------


def class_indices(spec: TargetSpec, col: pd.Series) -> np.ndarray:
    """Index of each value of ``col`` in ``spec.classes`` (NaN = missing); unknown values raise."""
    lookup = {_key(c): i for i, c in enumerate(spec.classes or [])}
    out = np.array([np.nan if _missing(v) else lookup.get(_key(v), -2) for v in col], float)
    if (out == -2).any():
        bad = sorted({str(v) for v, o in zip(col, out, strict=True) if o == -2})
        raise ManifestError(f"Column '{spec.columns[0]}' has values {bad} not among the "
                            f"classes {spec.classes} of target '{spec.name}'.")
    return out


def pos_weights(pos: np.ndarray, neg: np.ndarray, balanced: bool) -> list[float]:
    """BCE positive weight per label: negatives / positives (1 when unbalanced or one class)."""
    return [float(n / p) if balanced and p > 0 and n > 0 else 1.0
            for p, n in zip(np.asarray(pos, float), np.asarray(neg, float), strict=True)]


def mean_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mean AUROC over the label columns of ``y``/``s`` (n, C) that have both classes; NaN if none."""
    from pathstrat.metrics import auroc

    vals = [auroc(y[ok, c], s[ok, c]) for c in range(y.shape[1])
            for ok in [~np.isnan(y[:, c])] if ok.any()]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def empty_loss(logits: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph connected (a batch without any valid label for a head)."""
    return logits.sum() * 0.0


def binary01(col: pd.Series, name: str) -> np.ndarray:
    """0/1 labels of a multi-label column as floats (NaN = missing); other values raise."""
    y = pd.to_numeric(col, errors="coerce").to_numpy(float)
    bad = ~np.isnan(y) & (y != 0) & (y != 1)
    if bad.any():
        raise ManifestError(f"Multi-label column '{name}' must hold 0/1 (or empty for missing); "
                            f"found {sorted(set(y[bad].tolist()))[:5]}.")
    return y


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _key(v: Any) -> Any:
    v = _py(v)
    return float(v) if isinstance(v, (int, float, bool)) else str(v)


def _sort_key(v: Any):
    v = _py(v)
    return (0, float(v), "") if isinstance(v, (int, float, bool)) else (1, 0.0, str(v))


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def example_frame(n: int, seed: int) -> tuple[np.random.Generator, pd.DataFrame]:
    """RNG and a table of ``n`` patient ids, the start of every kind's :meth:`TargetKind.example`."""
    rng = np.random.default_rng(seed)
    return rng, pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(n)]})


def with_missing(values: np.ndarray, rng: np.random.Generator, fraction: float = 0.1) -> np.ndarray:
    """``values`` as object array with ``fraction`` of the entries set to NaN (missing labels)."""
    out = np.asarray(values, object).copy()
    out[rng.random(len(out)) < fraction] = np.nan
    return out
