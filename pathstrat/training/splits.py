"""Patient-grouped splits: stratified K-fold by patient, repeats, fixed train/val/test column.

Patients, not slides, are the unit of splitting; any split where a patient lands on both the
training and the evaluation side raises :class:`~pathstrat.errors.LeakageError`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from pathstrat.errors import ConfigError, LeakageError, ManifestError

ROLES = ("train", "val", "test")


def strata(df: pd.DataFrame, col: str | None, kind: str | None = None) -> np.ndarray:
    """Integer stratum per row: class, event indicator, or regression quartile; 0 if none."""
    if col is None or col not in df.columns:
        return np.zeros(len(df), int)
    v = df[col]
    if kind == "regression":
        x = pd.to_numeric(v, errors="coerce")
        return pd.qcut(x.rank(method="first"), 4, labels=False).fillna(-1).astype(int).to_numpy()
    return pd.Series(pd.factorize(v.astype(str).where(v.notna(), "NA"))[0]).to_numpy()


def check_no_overlap(train_patients: Iterable[str], eval_patients: Iterable[str], what: str = "") -> None:
    """Raise LeakageError naming the patients on both sides."""
    both = sorted(set(map(str, train_patients)) & set(map(str, eval_patients)))
    if both:
        raise LeakageError(f"{len(both)} patient(s) appear in both training and evaluation data"
                           f"{' (' + what + ')' if what else ''}: {', '.join(both[:10])}. Splits "
                           "must be by patient: give every slide of a patient the same split.")


def make_splits(df: pd.DataFrame, *, folds: int = 5, repeats: int = 1, seed: int = 0,
                strat_col: str | None = None, strat_kind: str | None = None,
                split_col: str | None = None) -> pd.DataFrame:
    """Assign every patient to a test fold per repeat -> DataFrame ``patient_id, repeat, fold``.

    With ``split_col`` (values train/val/test per slide) there is one fold (0) whose test set is
    the ``test`` patients; the frame then also has a ``role`` column. A patient whose slides carry
    different roles raises LeakageError.
    """
    if split_col is not None:
        return _fixed_split(df, split_col)
    pat = df.drop_duplicates("patient_id").reset_index(drop=True)
    n_pat = len(pat)
    if folds < 2:
        raise ConfigError(f"`folds` must be at least 2 (got {folds}); use a split column for a "
                          "fixed train/test split.")
    if n_pat < folds:
        raise ConfigError(f"Only {n_pat} patients for {folds} folds; lower `folds`.")
    y = strata(pat, strat_col, strat_kind)
    rows = []
    for r in range(repeats):
        y_use = y
        counts = np.bincount(y - y.min()) if len(y) else np.array([0])
        if counts[counts > 0].min() < folds:  # rare stratum: fall back to fewer strata
            y_use = np.zeros_like(y)
        from sklearn.model_selection import StratifiedGroupKFold  # heavy: not at import

        sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + 1000 * r)
        for k, (_, test) in enumerate(sgkf.split(np.zeros(n_pat), y_use, groups=pat["patient_id"])):
            rows += [{"patient_id": p, "repeat": r, "fold": k} for p in pat["patient_id"].iloc[test]]
    out = pd.DataFrame(rows).sort_values(["repeat", "fold", "patient_id"]).reset_index(drop=True)
    for r, g in out.groupby("repeat"):
        if g["patient_id"].duplicated().any():  # cannot happen with group k-fold; guard anyway
            raise LeakageError(f"repeat {r}: a patient was assigned to two test folds")
    return out


def _fixed_split(df: pd.DataFrame, split_col: str) -> pd.DataFrame:
    if split_col not in df.columns:
        raise ManifestError(f"Split column '{split_col}' is not in the manifest; columns are "
                            f"{list(df.columns)}.")
    roles = df[split_col].astype(str).str.strip().str.lower()
    bad = sorted(set(roles) - set(ROLES))
    if bad:
        raise ManifestError(f"Split column '{split_col}' must hold train/val/test; found {bad}.")
    per = pd.DataFrame({"patient_id": df["patient_id"].astype(str), "role": roles})
    n_roles = per.drop_duplicates().groupby("patient_id")["role"].nunique()
    mixed = n_roles[n_roles > 1].index.tolist()
    if mixed:
        raise LeakageError(f"{len(mixed)} patient(s) have slides in more than one split "
                           f"('{split_col}'): {', '.join(mixed[:10])}. A patient never spans "
                           "train and test; give all slides of a patient the same split.")
    if not (per["role"] == "test").any() or not (per["role"] == "train").any():
        raise ManifestError(f"Split column '{split_col}' needs both 'train' and 'test' rows.")
    out = per.drop_duplicates("patient_id").sort_values("patient_id").reset_index(drop=True)
    out.insert(1, "repeat", 0)
    out.insert(2, "fold", 0)
    return out


def inner_split(patients: np.ndarray, strata_: np.ndarray, val_fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified patient split of the training fold into (train, val) patient arrays."""
    patients = np.asarray(patients)
    if val_fraction <= 0 or len(patients) < 4:
        return patients, patients[:0]
    rng = np.random.default_rng(seed)
    val = []
    for s in np.unique(strata_):
        members = patients[strata_ == s]
        k = int(round(val_fraction * len(members)))
        if len(members) > 1 and k:
            val += rng.choice(members, k, replace=False).tolist()
    if not val:
        val = rng.choice(patients, max(1, int(round(val_fraction * len(patients)))), replace=False).tolist()
    val_set = set(val)
    return np.array([p for p in patients if p not in val_set]), np.array(sorted(val_set))
