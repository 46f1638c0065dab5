"""Prediction targets: what a head predicts, how labels are encoded and outputs decoded.

A :class:`TargetSpec` is declared once per run; :meth:`TargetSpec.fit` computes the fold state
(class weights, regression scaling, discrete survival time bins) from the *training fold only*.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import ConfigError, ManifestError

KINDS = ("binary", "multiclass", "multilabel", "regression", "cox", "discrete")
SURVIVAL_KINDS = ("cox", "discrete")
CLASSIFICATION_KINDS = ("binary", "multiclass")


@dataclass
class TargetSpec:
    """One prediction head.

    ``columns`` are the manifest label columns (several for ``multilabel``); survival targets use
    ``time_col``/``event_col``. ``classes`` is fixed for the run (all folds) so heads align.
    """

    name: str
    kind: str
    columns: list[str] = field(default_factory=list)
    time_col: str | None = None
    event_col: str | None = None
    classes: list[Any] | None = None
    n_bins: int = 4

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"Target '{self.name}': unknown kind '{self.kind}'. Use one of {KINDS}.")
        if self.kind in SURVIVAL_KINDS and not (self.time_col and self.event_col):
            raise ConfigError(f"Survival target '{self.name}' needs time_col and event_col "
                              "(--time-col T --event-col E).")
        if self.kind not in SURVIVAL_KINDS and not self.columns:
            self.columns = [self.name]

    @property
    def n_outputs(self) -> int:
        if self.kind == "multiclass":
            return len(self.classes or [])
        if self.kind == "multilabel":
            return len(self.columns)
        if self.kind == "discrete":
            return int(self.n_bins)
        return 1

    @property
    def label_names(self) -> list[str]:
        """Names of the rows this target writes into predictions.csv / metrics.json."""
        return list(self.columns) if self.kind == "multilabel" else [self.name]

    @property
    def needed_columns(self) -> list[str]:
        return [self.time_col, self.event_col] if self.kind in SURVIVAL_KINDS else list(self.columns)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["classes"] is not None:
            d["classes"] = [_py(c) for c in d["classes"]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetSpec:
        return cls(**d)

    # --- labels --------------------------------------------------------------------------
    def encode(self, df: pd.DataFrame, state: dict[str, Any] | None = None) -> np.ndarray:
        """Labels of ``df`` rows as float32: (n,) or (n, C); NaN (or -1 for classes) = missing."""
        if self.kind in SURVIVAL_KINDS:
            t = df[self.time_col].to_numpy(float)
            e = df[self.event_col].to_numpy(float)
            if self.kind == "cox":
                return np.stack([t, e], 1).astype(np.float32)
            cuts = np.asarray((state or {}).get("cuts", []), float)
            b = np.searchsorted(cuts, t, side="right").astype(float)
            b[np.isnan(t)] = np.nan
            return np.stack([b, e, t], 1).astype(np.float32)
        if self.kind == "multilabel":
            return np.stack([_binary01(df[c], c) for c in self.columns], 1).astype(np.float32)
        col = df[self.columns[0]]
        if self.kind == "regression":
            y = pd.to_numeric(col, errors="coerce").to_numpy(float)
            st = state or {}
            return ((y - st.get("mean", 0.0)) / st.get("std", 1.0)).astype(np.float32)
        lookup = {_key(c): i for i, c in enumerate(self.classes or [])}
        out = np.array([np.nan if _missing(v) else lookup.get(_key(v), -2) for v in col], float)
        if (out == -2).any():
            bad = sorted({str(v) for v, o in zip(col, out, strict=True) if o == -2})
            raise ManifestError(f"Column '{self.columns[0]}' has values {bad} not among the "
                                f"classes {self.classes} of target '{self.name}'.")
        if self.kind == "multiclass":
            out = np.where(np.isnan(out), -1, out)
        return out.astype(np.float32)

    def fit(self, y: np.ndarray, balanced: bool = True) -> dict[str, Any]:
        """Fold state from the encoded training labels ``y`` (training fold only)."""
        st: dict[str, Any] = {}
        if self.kind == "binary":
            v = y[~np.isnan(y)]
            pos, neg = float((v == 1).sum()), float((v == 0).sum())
            st["pos_weight"] = [neg / pos if balanced and pos > 0 and neg > 0 else 1.0]
        elif self.kind == "multilabel":
            pw = []
            for j in range(y.shape[1]):
                v = y[:, j][~np.isnan(y[:, j])]
                pos, neg = float((v == 1).sum()), float((v == 0).sum())
                pw.append(neg / pos if balanced and pos > 0 and neg > 0 else 1.0)
            st["pos_weight"] = pw
        elif self.kind == "multiclass":
            v = y[y >= 0].astype(int)
            counts = np.bincount(v, minlength=self.n_outputs).astype(float)
            w = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
            st["class_weight"] = (w if balanced else np.ones_like(w)).tolist()
        return st

    def fit_raw(self, df: pd.DataFrame, balanced: bool = True) -> dict[str, Any]:
        """Fold state from raw training rows (needed for regression scaling and time bins)."""
        if self.kind == "regression":
            y = pd.to_numeric(df[self.columns[0]], errors="coerce").to_numpy(float)
            y = y[~np.isnan(y)]
            sd = float(y.std()) if y.size > 1 else 1.0
            return {"mean": float(y.mean()) if y.size else 0.0, "std": sd if sd > 0 else 1.0}
        if self.kind == "discrete":
            t, e = df[self.time_col].to_numpy(float), df[self.event_col].to_numpy(float)
            ev = t[(e == 1) & ~np.isnan(t)]
            ev = ev if ev.size else t[~np.isnan(t)]
            qs = np.quantile(ev, np.linspace(0, 1, self.n_bins + 1)[1:-1]) if ev.size else []
            return {"cuts": [float(q) for q in qs]}
        if self.kind == "cox":
            return {}
        return self.fit(self.encode(df), balanced)

    def decode(self, out: np.ndarray) -> np.ndarray:
        """Raw head outputs (n, n_outputs) -> scores: probabilities, values or risks."""
        out = np.asarray(out, np.float64)
        if self.kind in ("binary", "multilabel"):
            from scipy.special import expit

            p = expit(out)  # no overflow warning for large logits
            return p[:, 0] if self.kind == "binary" else p
        if self.kind == "multiclass":
            z = np.exp(out - out.max(1, keepdims=True))
            return z / z.sum(1, keepdims=True)
        if self.kind == "cox":
            return out[:, 0]
        if self.kind == "discrete":
            return -discrete_survival(out).sum(1)  # minus expected survival: higher = earlier event
        return out[:, 0]  # regression: de-standardised by decode_regression

    def decode_with_state(self, out: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        s = self.decode(out)
        if self.kind == "regression":
            s = s * state.get("std", 1.0) + state.get("mean", 0.0)
        return s


def discrete_survival(logits: np.ndarray) -> np.ndarray:
    """Survival curve S_k = prod_{j<=k} (1 - h_j) from discrete hazard logits (n, K)."""
    h = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    return np.cumprod(1 - h, axis=1)


def infer_target(df: pd.DataFrame, name: str, *, time_col: str | None = None,
                 event_col: str | None = None, survival_loss: str = "cox",
                 n_bins: int = 4) -> TargetSpec:
    """Target from a CLI name: ``survival``, ``a,b,c`` (multi-label), ``col:kind`` or ``col``.

    Without an explicit kind: two distinct values -> binary; strings or few integer values ->
    multiclass; other numbers -> regression.
    """
    if name == "survival" or name.startswith("survival:"):
        kind = name.split(":", 1)[1] if ":" in name else survival_loss
        if kind not in SURVIVAL_KINDS:
            raise ConfigError(f"Survival loss '{kind}' unknown; use 'cox' or 'discrete'.")
        for c in (time_col, event_col):
            if c is None or c not in df.columns:
                raise ManifestError(f"Survival target needs --time-col and --event-col naming "
                                    f"manifest columns; '{c}' is not among {list(df.columns)}.")
        return TargetSpec("survival", kind, time_col=time_col, event_col=event_col, n_bins=n_bins)
    col, _, kind = name.partition(":")
    cols = [c.strip() for c in col.split(",") if c.strip()]
    for c in cols:
        if c not in df.columns:
            raise ManifestError(f"Target column '{c}' is not in the manifest; columns are "
                                f"{list(df.columns)}.")
    if len(cols) > 1:
        return TargetSpec("+".join(cols), "multilabel", columns=cols)
    values = df[cols[0]].dropna()
    uniq = sorted(values.unique(), key=_sort_key)
    if not kind:
        numeric = pd.api.types.is_numeric_dtype(values)
        if len(uniq) == 2:
            kind = "binary"
        elif not numeric or (len(uniq) <= 10 and np.allclose(values, np.round(values))):
            kind = "multiclass"
        else:
            kind = "regression"
    classes = [_py(u) for u in uniq] if kind in CLASSIFICATION_KINDS else None
    if kind == "binary" and len(uniq) != 2:
        raise ManifestError(f"Binary target '{cols[0]}' needs exactly two values; found {uniq[:10]}.")
    return TargetSpec(cols[0], kind, columns=cols, classes=classes)


def _binary01(col: pd.Series, name: str) -> np.ndarray:
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
