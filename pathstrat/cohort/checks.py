"""Manifest and target checks: each ``_check_*`` returns human-readable problem lines (1-based
rows, slide ids) so that all problems of a kind are reported together; :func:`check_targets`
is the one validation path for labels, times and events."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pathstrat.errors import ManifestError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("slide_id", "path")
MAX_LISTED = 10  # rows listed per problem in an error message


@dataclass(frozen=True)
class SlideProblem:
    """A per-slide problem that need not stop the cohort (e.g. its file is missing)."""

    slide_id: str
    path: str
    reason: str



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
                "choose another `target`"]
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
