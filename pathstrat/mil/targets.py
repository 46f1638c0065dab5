"""Prediction targets: what a head predicts, how labels are encoded and outputs decoded.

A :class:`TargetSpec` is declared once per run; :meth:`TargetSpec.fit` computes the fold state
(class weights, regression scaling, discrete survival time bins) from the *training fold only*.
The behaviour of each kind (binary, multiclass, ...) is its class in :mod:`pathstrat.mil.kinds`,
found through the :data:`KINDS` registry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import ConfigError, ManifestError
from pathstrat.mil.kinds import KINDS, TargetKind
from pathstrat.mil.kinds.base import _py, _sort_key
from pathstrat.mil.kinds.discrete import discrete_survival  # noqa: F401  (re-exported)


@dataclass
class TargetSpec:
    """One prediction head.

    ``columns`` are the manifest label columns (several for ``multilabel``); survival targets use
    ``time_col``/``event_col``. ``classes`` is fixed for the run (all folds) so heads align.
    What a kind does lives in its :class:`~pathstrat.mil.kinds.TargetKind` (``spec.impl``);
    the methods here delegate to it.
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
            raise ConfigError(f"Target '{self.name}': unknown kind '{self.kind}'. "
                              f"Use one of {tuple(KINDS.names())}.")
        self.impl.check(self)

    @property
    def impl(self) -> TargetKind:
        """The registered behaviour of this spec's kind."""
        return KINDS.get(self.kind)

    @property
    def n_outputs(self) -> int:
        return self.impl.n_outputs(self)

    @property
    def label_names(self) -> list[str]:
        """Names of the rows this target writes into predictions.csv / metrics.json."""
        return self.impl.label_names(self)

    @property
    def needed_columns(self) -> list[str]:
        return self.impl.needed_columns(self)

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
        return self.impl.encode(self, df, state)

    def fit(self, y: np.ndarray, balanced: bool = True) -> dict[str, Any]:
        """Fold state from the encoded training labels ``y`` (training fold only)."""
        return self.impl.fit(self, y, balanced)

    def fit_raw(self, df: pd.DataFrame, balanced: bool = True) -> dict[str, Any]:
        """Fold state from raw training rows (class weights, regression scaling, time bins)."""
        return self.impl.fit_raw(self, df, balanced)

    def decode(self, out: np.ndarray) -> np.ndarray:
        """Raw head outputs (n, n_outputs) -> scores: probabilities, values or risks."""
        return self.impl.decode(self, out, None)

    def decode_with_state(self, out: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        """:meth:`decode` with the fold state applied (regression back in label units)."""
        return self.impl.decode(self, out, state)


def infer_target(df: pd.DataFrame, name: str, *, time_col: str | None = None,
                 event_col: str | None = None, survival_loss: str = "cox",
                 n_bins: int = 4) -> TargetSpec:
    """Target from a CLI name: ``survival``, ``a,b,c`` (multi-label), ``col:kind`` or ``col``.

    Without an explicit kind: two distinct values -> binary; strings or few integer values ->
    multiclass; other numbers -> regression.
    """
    if name == "survival" or name.startswith("survival:"):
        kind = name.split(":", 1)[1] if ":" in name else survival_loss
        if kind not in KINDS or not KINDS.get(kind).survival:
            names = " or ".join(f"'{k}'" for k, v in KINDS.items() if v.survival)
            raise ConfigError(f"Survival loss '{kind}' unknown; use {names}.")
        for c in (time_col, event_col):
            if c is None or c not in df.columns:
                raise ManifestError(f"Survival target needs `time_col` and `event_col` naming "
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
    impl = KINDS.get(kind) if kind in KINDS else None  # an unknown kind: TargetSpec names the known ones
    classes = [_py(u) for u in uniq] if impl is not None and impl.categorical else None
    if impl is not None and impl.n_classes is not None and len(uniq) != impl.n_classes:
        raise ManifestError(f"{kind.capitalize()} target '{cols[0]}' needs exactly {_words(impl.n_classes)} "
                            f"values; found {uniq[:10]}.")
    return TargetSpec(cols[0], kind, columns=cols, classes=classes)


def _words(n: int) -> str:
    return {2: "two", 3: "three"}.get(n, str(n))
