"""pathstrat.cohort: manifest loading, path resolution and every validation rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pathstrat.cohort import SlideProblem, load_manifest, normalize_manifest, patient_table
from pathstrat.errors import ManifestError


@pytest.fixture
def cohort_dir(tmp_path: Path) -> Path:
    (tmp_path / "slides").mkdir()
    for name in ("a.svs", "b.svs", "c.svs", "d.svs"):
        (tmp_path / "slides" / name).write_bytes(b"x")
    return tmp_path


def write(dirpath: Path, text: str, name: str = "manifest.csv") -> Path:
    p = dirpath / name
    p.write_text(text.strip() + "\n")
    return p


def test_load_resolves_paths_and_fills_defaults(cohort_dir):
    m = write(cohort_dir, """
slide_id,path,patient_id,mpp,responder,site
s1,slides/a.svs,p1,0.25,1,x
s2,slides/b.svs,p1,,1,y
s3,slides/c.svs,,0.5,0,x
""")
    df = load_manifest(m, label_cols=["responder"])
    assert list(df["slide_id"]) == ["s1", "s2", "s3"]
    assert df["path"].tolist() == [str((cohort_dir / "slides" / n).resolve())
                                   for n in ("a.svs", "b.svs", "c.svs")]
    assert df["patient_id"].tolist() == ["p1", "p1", "s3"]  # blank patient_id -> slide_id
    assert df["mpp"].dtype == float and np.isnan(df["mpp"].iloc[1]) and df["mpp"].iloc[0] == 0.25
    assert df["site"].tolist() == ["x", "y", "x"]  # other columns untouched


def test_ids_stay_strings_and_mpp_defaults_to_nan(cohort_dir):
    m = write(cohort_dir, "slide_id,path\n007,slides/a.svs\n")
    df = load_manifest(m)
    assert df["slide_id"].iloc[0] == "007" and df["patient_id"].iloc[0] == "007"
    assert "mpp" in df.columns and np.isnan(df["mpp"].iloc[0])


def test_parquet_manifest(cohort_dir):
    pytest.importorskip("pyarrow")
    df = pd.DataFrame({"slide_id": ["s1", "s2"], "path": ["slides/a.svs", "slides/b.svs"],
                       "time": [3.0, 5.5], "event": [1, 0]})
    p = cohort_dir / "m.parquet"
    df.to_parquet(p)
    out = load_manifest(p, time_col="time", event_col="event")
    assert out["path"].iloc[1] == str((cohort_dir / "slides" / "b.svs").resolve())
    assert out["event"].tolist() == [1, 0]


def test_missing_required_columns_lists_found_columns(cohort_dir):
    m = write(cohort_dir, "id,file\ns1,slides/a.svs\n")
    with pytest.raises(ManifestError, match=r"missing required column\(s\) slide_id, path; columns found: id, file"):
        load_manifest(m)


def test_duplicate_slide_ids_name_rows(cohort_dir):
    m = write(cohort_dir, """
slide_id,path
s1,slides/a.svs
s2,slides/b.svs
s1,slides/c.svs
""")
    with pytest.raises(ManifestError, match=r"duplicate slide_id 's1' in rows 1, 3"):
        load_manifest(m)


def test_missing_file_raises_or_is_recorded(cohort_dir):
    m = write(cohort_dir, """
slide_id,path
s1,slides/a.svs
s2,slides/nope.svs
s3,slides
""")
    with pytest.raises(ManifestError) as ei:
        load_manifest(m)
    msg = str(ei.value)
    assert "row 2 (slide 's2'): file not found" in msg
    assert "row 3 (slide 's3'): path is a directory" in msg
    df, problems = load_manifest(m, on_missing="record")
    assert len(df) == 3
    assert [(p.slide_id, p.reason.split(":")[0]) for p in problems] == [
        ("s2", "file not found"), ("s3", "path is a directory, not a slide file")]
    assert isinstance(problems[0], SlideProblem)
    assert len(load_manifest(m, check_files=False)) == 3


def test_inconsistent_patient_labels_and_survival(cohort_dir):
    m = write(cohort_dir, """
slide_id,path,patient_id,responder,time,event
s1,slides/a.svs,p1,1,10,1
s2,slides/b.svs,p1,0,10,1
s3,slides/c.svs,p2,1,5,0
s4,slides/d.svs,p2,1,7,0
""")
    with pytest.raises(ManifestError) as ei:
        load_manifest(m, label_cols=["responder"], time_col="time", event_col="event")
    msg = str(ei.value)
    assert "patient 'p1' has different responder values" in msg and "row 2 slide 's2'" in msg
    assert "patient 'p2' has different time values" in msg
    assert "different event values" not in msg  # events agree


def test_negative_times_and_bad_events(cohort_dir):
    m = write(cohort_dir, """
slide_id,path,time,event
s1,slides/a.svs,-1,1
s2,slides/b.svs,4,2
s3,slides/c.svs,4,yes
s4,slides/d.svs,3,0
""")
    with pytest.raises(ManifestError) as ei:
        load_manifest(m, time_col="time", event_col="event")
    msg = str(ei.value)
    assert "time < 0: row 1 ('s1')" in msg
    assert "event not in {0, 1}: row 2 ('s2'), row 3 ('s3')" in msg


def test_non_numeric_and_non_positive_mpp(cohort_dir):
    m = write(cohort_dir, """
slide_id,path,mpp
s1,slides/a.svs,0.25um
s2,slides/b.svs,0
s3,slides/c.svs,0.5
""")
    with pytest.raises(ManifestError) as ei:
        load_manifest(m)
    assert "non-numeric mpp: row 1 ('s1')" in str(ei.value)
    assert "mpp must be > 0" in str(ei.value) and "row 2 ('s2')" in str(ei.value)


def test_blank_ids_and_unsafe_ids(cohort_dir):
    m = write(cohort_dir, """
slide_id,path
,slides/a.svs
a/b,slides/b.svs
s3,
""")
    with pytest.raises(ManifestError) as ei:
        load_manifest(m, check_files=False)
    msg = str(ei.value)
    assert "empty slide_id in row(s) 1" in msg and "empty path in row(s) 3" in msg
    assert "usable as a file name" in msg and "row 2 ('a/b')" in msg


def test_requested_columns_must_exist(cohort_dir):
    m = write(cohort_dir, "slide_id,path\ns1,slides/a.svs\n")
    with pytest.raises(ManifestError, match="os_time.*absent"):
        load_manifest(m, time_col="os_time")


def test_unparseable_and_absent_manifest(cohort_dir):
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(cohort_dir / "none.csv")
    empty = write(cohort_dir, "slide_id,path", name="empty.csv")
    with pytest.raises(ManifestError, match="no rows"):
        load_manifest(empty)


def test_patient_table_one_row_per_patient():
    df = normalize_manifest(pd.DataFrame({
        "slide_id": ["a", "b", "c"], "path": ["x", "y", "z"], "patient_id": ["p1", "p1", "p2"],
        "responder": [1, 1, 0], "time": [5.0, 5.0, np.nan]}))
    t = patient_table(df, ["responder", "time"])
    assert t["patient_id"].tolist() == ["p1", "p2"]
    assert t["n_slides"].tolist() == [2, 1] and t["responder"].tolist() == [1, 0]
    bad = df.assign(responder=[1, 0, 0])
    with pytest.raises(ManifestError, match="patient 'p1' has different responder"):
        patient_table(bad, ["responder"])
