"""Cohort manifest: load a CSV/Parquet table of slides and validate it before any work starts.

One row per slide. Required columns ``slide_id`` and ``path``; optional ``patient_id`` (default:
the slide id) and ``mpp`` (overrides the slide metadata); every other column is kept untouched.
All problems of a kind are collected and reported together, with 1-based row numbers (the first
data row is row 1) and slide ids, so a user fixes a manifest in one pass.
"""

from __future__ import annotations

import csv
import errno
import io
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


#: Strings read as "missing" in value columns (pandas' defaults). Id columns (slide_id,
#: patient_id, path) never convert: a patient called "NA" stays "NA".
NA_STRINGS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                        "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                        "nan", "null"})
ID_COLUMNS = ("slide_id", "patient_id", "path")


def read_table(path: str | os.PathLike, *, what: str = "Manifest") -> pd.DataFrame:
    """Read a CSV or Parquet table with ids as written (strings, no NA conversion): the one
    table reader of the package (manifests, clinical tables, predictions).

    A CSV row with more fields than the header is refused naming its line (pandas would shift
    its columns silently); a shorter row leaves its trailing columns empty.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{what} '{path}' does not exist (or is not a file). "
                            + ("Pass the CSV or Parquet file listing slide_id and path."
                               if what == "Manifest" else "Check the path."))
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            df = pd.read_parquet(path)
            for col in ID_COLUMNS:
                if col in df.columns:
                    df[col] = df[col].map(lambda v: v if isinstance(v, str) else
                                          "" if v is None or (isinstance(v, float) and np.isnan(v))
                                          else str(v))
            return df
        return _read_csv(path)
    except ImportError as exc:
        raise ManifestError(f"Reading Parquet manifest '{path}' needs pyarrow: "
                            'pip install "pathstrat[parquet]", or save the manifest as CSV.') from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"Manifest '{path}' is not UTF-8 text ({exc.reason} at byte "
                            f"{exc.start}). Save it as UTF-8 CSV, or as Parquet.") from exc
    except (OSError, ValueError, csv.Error, pd.errors.ParserError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"Manifest '{path}' cannot be parsed ({exc}). Save it as UTF-8 CSV "
                            "with a header row, or as Parquet.") from exc


def _read_csv(path: Path) -> pd.DataFrame:
    """CSV -> DataFrame: every field a string; value columns converted like pandas would."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        text = fh.read()
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ManifestError(f"Manifest '{path}' line {line}: contains a NUL byte; it is not a text "
                            "CSV. Re-export it as UTF-8 CSV.")
    reader = csv.reader(io.StringIO(text), skipinitialspace=True, strict=True)
    rows: list[list[str]] = []
    header: list[str] | None = None
    bad: list[str] = []
    for rec in reader:
        if not rec or all(not f.strip() for f in rec):
            continue  # blank line
        if header is None:
            header = [h.strip() for h in rec]
            continue
        if len(rec) > len(header):  # pandas would shift such a row's columns silently
            extra = rec[len(header):]
            hint = " (trailing comma?)" if not any(f.strip() for f in extra) else ""
            bad.append(f"line {reader.line_num}: {len(rec)} fields, the header has "
                       f"{len(header)}{hint}")
            continue
        rows.append(rec + [""] * (len(header) - len(rec)))  # short row: trailing values empty
    if header is None:
        raise ManifestError(f"Manifest '{path}' is empty; it needs a header row (slide_id,path,...) "
                            "and one row per slide.")
    if bad:
        raise ManifestError(_format(f"Manifest '{path}': {len(bad)} row(s) do not match the header",
                                    bad, "give every row at most one field per header column "
                                    "(quote fields that contain commas)"))
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ManifestError(f"Manifest '{path}': column name(s) {dup} appear more than once in the "
                            "header; give every column a distinct name.")
    df = pd.DataFrame(rows, columns=header, dtype=object) if rows else pd.DataFrame(columns=header)
    for col in df.columns:
        if col in ID_COLUMNS:
            continue
        df[col] = _convert_values(df[col])
    return df


def _convert_values(col: pd.Series) -> pd.Series:
    """A value column as pandas would read it: NA strings -> NaN, numbers when all parse."""
    vals = col.map(lambda v: np.nan if v.strip() in NA_STRINGS else v.strip())
    present = vals.dropna()
    if present.empty:
        return vals.astype(float)
    num = pd.to_numeric(present, errors="coerce")
    if num.notna().all():
        out = pd.to_numeric(vals, errors="coerce")
        if out.notna().all() and present.str.fullmatch(r"[+-]?\d{1,18}").all():
            return out.astype(np.int64)
        return out.astype(float)
    if present.str.lower().isin(["true", "false"]).all():  # as pandas reads True/FALSE/true
        return vals.map(lambda v: v if not isinstance(v, str) else v.lower() == "true")
    return vals


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


def check_targets(df: pd.DataFrame, *, label_cols: Sequence[str] = (), time_col: str | None = None,
                  event_col: str | None = None, source: str = "manifest", min_classes: int = 1,
                  require_events: bool = False) -> pd.DataFrame:
    """The one validation path for labels, times and events (train, predict, stratify, select,
    federated sites); returns a copy with times numeric and events 0/1.

    Refused, all problems listed at once: missing columns; times that are not numbers
    (``"0.8 months"``, ``"12,5"``), negative or infinite; events other than 0/1; a patient whose
    slides disagree on any of these columns; label values that differ only in case or spaces
    (``yes``/``Yes``); a label column with no values or, with ``min_classes=2`` (training), a
    single value; with ``require_events`` (survival training/analysis), no event at all or every
    time 0.
    """
    df = df.copy()
    if "patient_id" not in df.columns:
        df["patient_id"] = df["slide_id"].astype(str)
    errors = _target_problems(df, label_cols=label_cols, time_col=time_col, event_col=event_col,
                              min_classes=min_classes)
    if not errors and require_events and time_col and event_col:
        errors += _survival_problems(df, time_col, event_col)
    if errors:
        raise ManifestError(_format(f"{source}: invalid target values", errors,
                                    "fix these values in the table and rerun"))
    return df


def _target_problems(df: pd.DataFrame, *, label_cols: Sequence[str] = (), time_col: str | None = None,
                     event_col: str | None = None, min_classes: int = 1) -> list[str]:
    wanted = [c for c in (*label_cols, time_col, event_col) if c]
    absent = [c for c in wanted if c not in df.columns]
    if absent:
        return [f"column(s) {', '.join(absent)} requested as label/survival columns are absent; "
                f"columns found: {', '.join(map(str, df.columns))}"]
    errors: list[str] = []
    if time_col:
        errors += _check_times(df, time_col)
    if event_col:
        errors += _check_events(df, event_col)
    for col in dict.fromkeys(label_cols):
        if col not in (time_col, event_col):
            errors += _check_labels(df, col, min_classes)
    errors += _check_patient_consistency(df, list(dict.fromkeys(wanted)))
    return errors


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


#: Longest slide id in UTF-8 bytes: names like ``.tmp-<pid>@<host>-<slide_id>-XXXXXXXX.h5`` must
#: stay under the 255-byte file-name limit of common filesystems.
MAX_ID_BYTES = 160


def _check_ids(df: pd.DataFrame) -> list[str]:
    """Slide ids name output files (tiles/<slide_id>.h5): no path separators, dot names, control
    characters (NUL, newline, tab) or names too long for a file system."""
    sid = df["slide_id"]
    out = []
    bad = sid.str.contains(r"[/\\]", regex=True) | sid.isin([".", ".."]) | sid.str.startswith(".tmp-")
    rows = np.flatnonzero(bad.to_numpy())
    if len(rows):
        out.append(_with_ids(df, rows, "slide_id must be usable as a file name (no '/', '\\', '.', "
                             "'..' or '.tmp-' prefix)"))
    for col in ("slide_id", "patient_id"):
        ctrl = np.flatnonzero(df[col].str.contains(r"[\x00-\x1f\x7f]", regex=True).to_numpy())
        if len(ctrl):
            out.append(_with_ids(df, ctrl, f"{col} contains a control character (NUL, newline or "
                                 "tab); remove it"))
    long = np.flatnonzero(sid.map(lambda v: len(v.encode("utf-8")) > MAX_ID_BYTES).to_numpy())
    if len(long):
        out.append(_with_ids(df, long, f"slide_id longer than {MAX_ID_BYTES} bytes (it names "
                             "output files); shorten it"))
    return out


def _warn_shared_files(df: pd.DataFrame, source: str) -> None:
    """The same slide file listed under two patients is almost always a manifest mistake."""
    by_path = df.groupby("path", sort=True)["patient_id"].nunique()
    for p in by_path[by_path > 1].index[:MAX_LISTED]:
        rows = df[df["path"] == p]
        log.warning("%s: slide file '%s' is listed under %d patients (%s); a slide belongs to one "
                    "patient, check the manifest", source, p, rows["patient_id"].nunique(),
                    ", ".join(f"row {i + 1} '{s}' -> '{q}'" for i, s, q in
                              zip(rows.index, rows["slide_id"], rows["patient_id"], strict=True)))


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
    raw = df[col]
    num = pd.to_numeric(raw, errors="coerce") if raw.dtype == object else raw.astype(float)
    out = []
    bad = np.flatnonzero((raw.notna() & num.isna()).to_numpy())
    if len(bad):
        shown = ", ".join(repr(v) for v in raw.iloc[bad[:3]])
        out.append(_with_ids(df, bad, f"non-numeric {col}", f"found {shown}: write plain numbers "
                             "in one unit, with '.' as the decimal mark"))
    inf = np.flatnonzero(np.isinf(num.to_numpy(float)))
    if len(inf):
        out.append(_with_ids(df, inf, f"{col} is infinite"))
    neg = np.flatnonzero((num < 0).to_numpy())
    if len(neg):
        out.append(_with_ids(df, neg, f"{col} < 0"))
    if not out:
        df[col] = num.astype(float)
    return out


def _check_events(df: pd.DataFrame, col: str) -> list[str]:
    raw = df[col]
    mapped = raw.map(lambda v: {True: 1, False: 0}.get(v, v) if isinstance(v, (bool, np.bool_)) else v)
    num = pd.to_numeric(mapped, errors="coerce")
    bad = np.flatnonzero((raw.notna() & ~num.isin([0, 1])).to_numpy())
    if len(bad):
        shown = ", ".join(repr(v) for v in raw.iloc[bad[:3]])
        return [_with_ids(df, bad, f"{col} not in {{0, 1}}", f"found {shown}: 1 = event, 0 = censored")]
    df[col] = num.astype("Int64") if num.isna().any() else num.astype(int)
    return []


def _check_labels(df: pd.DataFrame, col: str, min_classes: int) -> list[str]:
    vals = df[col]
    present = vals.dropna()
    if present.empty:
        return [f"label column '{col}' has no values (all {len(vals)} rows empty); fill it or "
                "choose another --target"]
    out = []
    if present.map(lambda v: isinstance(v, str)).any():
        groups: dict[str, set[str]] = {}
        for v in present.astype(str):
            groups.setdefault(" ".join(v.split()).casefold(), set()).add(v)
        clash = [sorted(g) for g in groups.values() if len(g) > 1]
        if clash:
            shown = "; ".join(" / ".join(repr(v) for v in g) for g in clash[:5])
            out.append(f"label column '{col}' spells one value in several ways ({shown}); they would "
                       "train as different classes: write each class one way")
    distinct = present.unique()
    if len(distinct) < min_classes:
        out.append(f"label column '{col}' has a single value ({distinct[0]!r} in all {len(present)} "
                   "labelled rows): a model cannot learn from one class; choose a column with at "
                   "least two classes")
    return out


def _survival_problems(df: pd.DataFrame, time_col: str, event_col: str) -> list[str]:
    t = pd.to_numeric(df[time_col], errors="coerce")
    e = pd.to_numeric(df[event_col], errors="coerce")
    ok = t.notna() & e.notna()
    out = []
    if not ok.any():
        return [f"no row has both {time_col} and {event_col}"]
    if (e[ok] == 0).all():
        out.append(f"every patient is censored ({event_col} = 0 in all {int(ok.sum())} rows): "
                   "survival cannot be estimated without events")
    if (t[ok] == 0).all():
        out.append(f"every {time_col} is 0: check the column holds follow-up times")
    return out


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


def _with_ids(df: pd.DataFrame, idx: np.ndarray, what: str, note: str = "") -> str:
    shown = ", ".join(f"row {i + 1} ('{df['slide_id'].iat[i]}')" for i in idx[:MAX_LISTED])
    more = f" (+{len(idx) - MAX_LISTED} more)" if len(idx) > MAX_LISTED else ""
    return f"{what}: {shown}{more}" + (f"; {note}" if note else "")


def _format(head: str, lines: Sequence[str], fix: str) -> str:
    listed = list(lines[:MAX_LISTED])
    if len(lines) > MAX_LISTED:
        listed.append(f"... and {len(lines) - MAX_LISTED} more")
    return f"{head}:\n  - " + "\n  - ".join(listed) + f"\nFix: {fix}."


def _resolve(p: str, base: Path) -> Path:
    q = Path(os.path.expanduser(p))
    if q.is_absolute():
        return q
    try:
        return (base / q).resolve()
    except (RuntimeError, OSError):  # a symlink loop: keep the path, _file_problem names it
        return Path(os.path.abspath(base / q))


def _file_problem(p: Path) -> str:
    try:
        os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"symbolic link loop (the link points back at itself): {p}"
        if exc.errno != errno.ENOENT:
            return f"file cannot be accessed ({exc.strerror}): {p}"
    if not p.exists():
        return f"file not found: {p}"
    if p.is_dir():
        return f"path is a directory, not a slide file: {p}"
    if not os.access(p, os.R_OK):
        return f"file is not readable (permissions): {p}"
    return ""


def check_spec_targets(df: pd.DataFrame, specs: Iterable[object], *, source: str = "manifest",
                       training: bool = False, present_only: bool = False) -> pd.DataFrame:
    """:func:`check_targets` for MIL target specs (anything with ``kind``, ``columns``,
    ``time_col``, ``event_col``). ``training`` also refuses single-class label columns and
    survival data without events; ``present_only`` skips columns the table lacks (a prediction
    cohort without labels)."""
    labels: list[str] = []
    time_col = event_col = None
    for s in specs:
        if getattr(s, "time_col", None) or getattr(s, "event_col", None):
            time_col, event_col = s.time_col, s.event_col  # type: ignore[attr-defined]
        else:
            labels += list(getattr(s, "columns", None) or [])
    if present_only:
        labels = [c for c in labels if c in df.columns]
        if time_col not in df.columns or event_col not in df.columns:
            time_col = event_col = None
    return check_targets(df, label_cols=labels, time_col=time_col, event_col=event_col,
                         source=source, min_classes=2 if training else 1,
                         require_events=training)
