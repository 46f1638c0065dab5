"""Cohort manifest: load a CSV/Parquet table of slides and validate it before any work starts.

One row per slide. Required columns ``slide_id`` and ``path``; optional ``patient_id`` (default:
the slide id) and ``mpp`` (overrides the slide metadata); every other column is kept untouched.
All problems of a kind are collected and reported together, with 1-based row numbers (the first
data row is row 1) and slide ids, so a user fixes a manifest in one pass.

Modules: :mod:`~pathstrat.cohort.tables` (:func:`read_table`, the one table reader of the
package: manifests, clinical tables, predictions) and :mod:`~pathstrat.cohort.checks` (every
check of ids, paths, times, events and labels, incl. :func:`check_targets`); this module
loads and normalises a manifest with them. The names below are the package's API.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, overload

import pandas as pd

from pathstrat.cohort.checks import (
    MAX_LISTED,
    REQUIRED_COLUMNS,
    SlideProblem,
    _as_id,
    _check_blank,
    _check_duplicates,
    _check_ids,
    _check_mpp,
    _check_patient_consistency,
    _file_problem,
    _format,
    _resolve,
    _target_problems,
    _warn_shared_files,
    check_spec_targets,
    check_targets,
)
from pathstrat.cohort.tables import NA_STRINGS, PARQUET_SUFFIXES, read_table
from pathstrat.errors import ManifestError

__all__ = ["MAX_LISTED", "NA_STRINGS", "PARQUET_SUFFIXES", "REQUIRED_COLUMNS", "SlideProblem",
           "check_spec_targets", "check_targets", "find_file_problems", "load_manifest",
           "normalize_manifest", "patient_table", "read_table"]

log = logging.getLogger(__name__)


@overload
def load_manifest(path: str | os.PathLike, *, check_files: bool = ..., label_cols: Sequence[str] = ...,
                  time_col: str | None = ..., event_col: str | None = ...,
                  on_missing: Literal["raise"] = ...) -> pd.DataFrame: ...


@overload
def load_manifest(path: str | os.PathLike, *, check_files: bool = ..., label_cols: Sequence[str] = ...,
                  time_col: str | None = ..., event_col: str | None = ...,
                  on_missing: Literal["record"]) -> tuple[pd.DataFrame, list[SlideProblem]]: ...


def load_manifest(path, *, check_files=True, label_cols=(), time_col=None, event_col=None,
                  on_missing="raise"):
    """Read and validate a cohort manifest (CSV or Parquet).

    Parameters
    ----------
    path
        Manifest file; relative slide paths resolve against its folder.
    check_files
        Check that every slide file exists and is readable.
    label_cols, time_col, event_col
        Columns that must exist and be constant per patient; ``time`` must be >= 0 and
        ``event`` in {0, 1}.
    on_missing
        ``"raise"``: missing/unreadable slide files are a :class:`ManifestError`.
        ``"record"``: return ``(df, problems)`` instead, one :class:`SlideProblem` per such
        slide, so a batch can record them in ``failures.csv`` and go on.
    """
    if on_missing not in ("raise", "record"):
        raise ValueError(f"on_missing must be 'raise' or 'record', not {on_missing!r}")
    path = Path(path)
    df = read_table(path)
    df = normalize_manifest(df, base_dir=path.parent.resolve(), source=str(path),
                            label_cols=label_cols, time_col=time_col, event_col=event_col)
    problems = find_file_problems(df) if check_files else []
    if problems and on_missing == "raise":
        rows = {sid: i for i, sid in enumerate(df["slide_id"], start=1)}
        lines = [f"row {rows[p.slide_id]} (slide '{p.slide_id}'): {p.reason}" for p in problems]
        raise ManifestError(_format(f"Manifest '{path}': {len(problems)} slide file(s) cannot be used",
                                    lines, "fix the paths (relative paths are resolved against the "
                                    "manifest's folder) or remove those rows"))
    log.info("manifest %s: %d slides, %d patients", path, len(df), df["patient_id"].nunique())
    if on_missing == "record":
        return df, problems
    return df


def normalize_manifest(df: pd.DataFrame, *, base_dir: str | os.PathLike | None = None,
                       source: str = "manifest", label_cols: Sequence[str] = (),
                       time_col: str | None = None, event_col: str | None = None) -> pd.DataFrame:
    """Validate an in-memory manifest and bring it to the documented column types.

    Used by :func:`load_manifest`; callers holding a DataFrame (tests, the runner) can call it
    directly. Raises one :class:`ManifestError` listing every problem found.
    """
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{source}: missing required column(s) {', '.join(missing)}; columns "
                            f"found: {', '.join(map(str, df.columns)) or '(none)'}. A manifest needs "
                            "one row per slide with at least slide_id and path.")
    wanted = [c for c in (*label_cols, time_col, event_col) if c]
    absent = [c for c in wanted if c not in df.columns]
    if absent:
        raise ManifestError(f"{source}: column(s) {', '.join(absent)} requested as label/survival "
                            f"columns are absent; columns found: {', '.join(df.columns)}.")
    if df.empty:
        raise ManifestError(f"{source}: the manifest has no rows; add one row per slide.")
    df = df.reset_index(drop=True)
    df["slide_id"] = _as_id(df["slide_id"])
    df["path"] = _as_id(df["path"])
    df["patient_id"] = _as_id(df["patient_id"]) if "patient_id" in df.columns else df["slide_id"]
    df.loc[df["patient_id"] == "", "patient_id"] = df.loc[df["patient_id"] == "", "slide_id"]

    errors: list[str] = []
    errors += _check_blank(df)
    errors += _check_ids(df)
    errors += _check_duplicates(df)
    errors += _check_mpp(df)
    errors += _target_problems(df, label_cols=label_cols, time_col=time_col, event_col=event_col)
    if errors:
        raise ManifestError(_format(f"{source}: invalid manifest", errors,
                                    "fix these rows and rerun (row 1 is the first data row)"))
    _warn_shared_files(df, source)
    if base_dir is not None:
        base = Path(base_dir)
        df["path"] = [str(_resolve(p, base)) for p in df["path"]]
    return df


def find_file_problems(df: pd.DataFrame) -> list[SlideProblem]:
    """Slides whose file is missing, a directory, or not readable (one entry per slide)."""
    out: list[SlideProblem] = []
    for sid, p in zip(df["slide_id"], df["path"], strict=True):
        reason = _file_problem(Path(p))
        if reason:
            out.append(SlideProblem(sid, p, reason))
    return out


def patient_table(df: pd.DataFrame, cols: Iterable[str]) -> pd.DataFrame:
    """One row per patient with ``patient_id``, ``cols`` and ``n_slides``.

    Raises :class:`ManifestError` when a patient's slides disagree on any of ``cols``.
    """
    cols = list(cols)
    absent = [c for c in cols if c not in df.columns]
    if absent:
        raise ManifestError(f"patient_table: column(s) {', '.join(absent)} not in the manifest "
                            f"(columns: {', '.join(df.columns)}).")
    pid = df["patient_id"] if "patient_id" in df.columns else df["slide_id"]
    frame = df.assign(patient_id=pid.astype(str)).reset_index(drop=True)
    errors = _check_patient_consistency(frame, cols)
    if errors:
        raise ManifestError(_format("inconsistent per-patient values", errors,
                                    "every slide of a patient must carry the same values"))
    grouped = frame.groupby("patient_id", sort=False)
    table = grouped[cols].first() if cols else pd.DataFrame(index=grouped.size().index)
    table["n_slides"] = grouped.size()
    return table.reset_index()
