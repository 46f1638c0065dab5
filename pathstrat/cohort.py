"""Cohort manifest: load a CSV/Parquet table of slides and validate it before any work starts.

One row per slide. Required columns ``slide_id`` and ``path``; optional ``patient_id`` (default:
the slide id) and ``mpp`` (overrides the slide metadata); every other column is kept untouched.
All problems of a kind are collected and reported together, with 1-based row numbers (the first
data row is row 1) and slide ids, so a user fixes a manifest in one pass.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import numpy as np
import pandas as pd

from pathstrat.errors import ManifestError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("slide_id", "path")
MAX_LISTED = 10  # rows listed per problem in an error message
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class SlideProblem:
    """A per-slide problem that need not stop the cohort (e.g. its file is missing)."""

    slide_id: str
    path: str
    reason: str


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


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet manifest with every column as written (ids stay strings)."""
    if not path.is_file():
        raise ManifestError(f"Manifest '{path}' does not exist (or is not a file). "
                            "Pass the CSV or Parquet file listing slide_id and path.")
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={"slide_id": str, "patient_id": str, "path": str},
                           skipinitialspace=True)
    except ImportError as exc:
        raise ManifestError(f"Reading Parquet manifest '{path}' needs pyarrow: "
                            'pip install "pathstrat[parquet]", or save the manifest as CSV.') from exc
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ManifestError(f"Manifest '{path}' cannot be parsed ({exc}). Save it as UTF-8 CSV "
                            "with a header row, or as Parquet.") from exc


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
    if time_col:
        errors += _check_times(df, time_col)
    if event_col:
        errors += _check_events(df, event_col)
    errors += _check_patient_consistency(df, wanted)
    if errors:
        raise ManifestError(_format(f"{source}: invalid manifest", errors,
                                    "fix these rows and rerun (row 1 is the first data row)"))
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


# ---------------------------------------------------------------------------------------------
# checks: each returns a list of human-readable problem lines


def _check_blank(df: pd.DataFrame) -> list[str]:
    out = []
    for col in REQUIRED_COLUMNS:
        rows = np.flatnonzero(df[col].to_numpy() == "")
        if len(rows):
            out.append(f"empty {col} in row(s) {_rows(rows)}")
    return out


def _check_ids(df: pd.DataFrame) -> list[str]:
    """Slide ids name output files (tiles/<slide_id>.h5): no path separators or dot names."""
    sid = df["slide_id"]
    bad = sid.str.contains(r"[/\\]", regex=True) | sid.isin([".", ".."]) | sid.str.startswith(".tmp-")
    rows = np.flatnonzero(bad.to_numpy())
    if not len(rows):
        return []
    return [_with_ids(df, rows, "slide_id must be usable as a file name (no '/', '\\', '.', "
                      "'..' or '.tmp-' prefix)")]


def _check_duplicates(df: pd.DataFrame) -> list[str]:
    ids = df["slide_id"][df["slide_id"] != ""]
    dup = ids[ids.duplicated(keep=False)]
    out = []
    for sid, idx in dup.groupby(dup, sort=True).groups.items():
        out.append(f"duplicate slide_id '{sid}' in rows {_rows(idx)}")
    return out


def _check_mpp(df: pd.DataFrame) -> list[str]:
    if "mpp" not in df.columns:
        df["mpp"] = np.nan
        return []
    raw = df["mpp"]
    blank = raw.isna() | (raw.astype(str).str.strip() == "")
    num = pd.to_numeric(raw.where(~blank), errors="coerce")
    out = []
    bad = np.flatnonzero((~blank & num.isna()).to_numpy())
    if len(bad):
        out.append(_with_ids(df, bad, "non-numeric mpp"))
    nonpos = np.flatnonzero((num <= 0).to_numpy())
    if len(nonpos):
        out.append(_with_ids(df, nonpos, "mpp must be > 0 (microns per pixel at level 0)"))
    df["mpp"] = num.astype(float)
    return out


def _check_times(df: pd.DataFrame, col: str) -> list[str]:
    num = pd.to_numeric(df[col], errors="coerce")
    out = []
    bad = np.flatnonzero((df[col].notna() & num.isna()).to_numpy())
    if len(bad):
        out.append(_with_ids(df, bad, f"non-numeric {col}"))
    neg = np.flatnonzero((num < 0).to_numpy())
    if len(neg):
        out.append(_with_ids(df, neg, f"{col} < 0"))
    if not bad.size:
        df[col] = num
    return out


def _check_events(df: pd.DataFrame, col: str) -> list[str]:
    raw = df[col]
    mapped = raw.map(lambda v: {True: 1, False: 0}.get(v, v) if isinstance(v, bool) else v)
    num = pd.to_numeric(mapped, errors="coerce")
    bad = np.flatnonzero((raw.notna() & ~num.isin([0, 1])).to_numpy())
    if len(bad):
        return [_with_ids(df, bad, f"{col} not in {{0, 1}}")]
    df[col] = num.astype("Int64") if num.isna().any() else num.astype(int)
    return []


def _check_patient_consistency(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    out = []
    multi = df[df.duplicated("patient_id", keep=False)]
    if multi.empty:
        return out
    for col in cols:
        for pid, grp in multi.groupby("patient_id", sort=True):
            vals = grp[col]
            distinct = {_canon(v) for v in vals}
            if len(distinct) > 1:
                shown = ", ".join(f"row {i + 1} slide '{s}': {v!r}"
                                  for i, s, v in zip(grp.index, grp["slide_id"], vals, strict=True))
                out.append(f"patient '{pid}' has different {col} values across slides ({shown})")
    return out


# ---------------------------------------------------------------------------------------------
# helpers


def _canon(v: object) -> object:
    """Value for equality checks: NaN-like values compare equal, numbers by value."""
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return float(v)
    return v


def _as_id(s: pd.Series) -> pd.Series:
    return s.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA
                 else str(v).strip())


def _rows(idx: Iterable[int]) -> str:
    rows = [int(i) + 1 for i in idx]
    more = f" (+{len(rows) - MAX_LISTED} more)" if len(rows) > MAX_LISTED else ""
    return ", ".join(map(str, rows[:MAX_LISTED])) + more


def _with_ids(df: pd.DataFrame, idx: np.ndarray, what: str) -> str:
    shown = ", ".join(f"row {i + 1} ('{df['slide_id'].iat[i]}')" for i in idx[:MAX_LISTED])
    more = f" (+{len(idx) - MAX_LISTED} more)" if len(idx) > MAX_LISTED else ""
    return f"{what}: {shown}{more}"


def _format(head: str, lines: Sequence[str], fix: str) -> str:
    listed = list(lines[:MAX_LISTED])
    if len(lines) > MAX_LISTED:
        listed.append(f"... and {len(lines) - MAX_LISTED} more")
    return f"{head}:\n  - " + "\n  - ".join(listed) + f"\nFix: {fix}."


def _resolve(p: str, base: Path) -> Path:
    q = Path(os.path.expanduser(p))
    return q if q.is_absolute() else (base / q).resolve()


def _file_problem(p: Path) -> str:
    if not p.exists():
        return f"file not found: {p}"
    if p.is_dir():
        return f"path is a directory, not a slide file: {p}"
    if not os.access(p, os.R_OK):
        return f"file is not readable (permissions): {p}"
    return ""
