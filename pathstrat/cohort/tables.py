"""The one table reader of the package (:func:`read_table`): CSV or Parquet, ids kept as
written, rows that do not match the header refused with their line numbers."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pathstrat.cohort.checks import _format
from pathstrat.errors import ManifestError

PARQUET_SUFFIXES = (".parquet", ".pq")



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
