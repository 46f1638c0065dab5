"""What pathstrat refuses, and where: one test per class of bad input (issue: no silent wrong
results). Each feeds the input through the public CLI or API and asserts the exit status, the
one `error:` line naming the item and the fix, and that nothing else changed."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathstrat.cli import main
from pathstrat.cohort import check_targets, load_manifest
from pathstrat.errors import LeakageError, ManifestError, NonFiniteError, SchemaError
from pathstrat.testing import make_feature_cohort

TRAIN = ["--target", "responder", "--model", "meanpool", "--folds", "2", "--epochs", "3",
         "--batch-size", "8", "--max-tiles", "8", "--hparam", "dim=8", "--seed", "0"]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _tree_hash(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    fdir, man = make_feature_cohort(d, n_patients=24, dim=8, seed=5, tiles=(6, 12),
                                    tasks=("binary", "survival"), dtype="float32")
    return fdir, man


def _copy_cohort(cohort, dst: Path) -> tuple[Path, Path, pd.DataFrame]:
    fdir, man = cohort
    f2 = dst / "features"
    shutil.copytree(fdir, f2)
    df = pd.read_csv(man, dtype={"slide_id": str, "patient_id": str})
    df["path"] = [str(f2 / Path(p).name) for p in df["path"]]
    return f2, dst / "manifest.csv", df


# ---------------------------------------------------------------------------------- 1 non-finite

def test_nan_feature_file_is_isolated_and_the_rest_trains_exactly_as_without_it(cohort, tmp_path, capsys):
    fdir, man, df = _copy_cohort(cohort, tmp_path)
    single = df.groupby("patient_id").filter(lambda g: len(g) == 1)["slide_id"].iloc[0]
    with h5py.File(fdir / f"{single}.h5", "r+") as f:
        x = f["features"][()]
        x[2, 3] = np.nan
        x[4, 0] = np.inf
        f["features"][...] = x
    df.to_csv(man, index=False)
    rc, err = _run(["train", "--features", fdir, "--manifest", man, "--out", tmp_path / "run",
                    *TRAIN], capsys)
    assert rc == 3  # finished, with failures recorded
    fails = pd.read_csv(tmp_path / "run" / "failures.csv")
    row = fails[fails["slide_id"] == single].iloc[0]
    assert row["error_type"] == "NonFiniteError" and "2 of" in row["reason"]
    assert f"{single}.h5" in row["reason"]
    # the same run without the slide in the manifest: identical predictions for everyone else
    df[df["slide_id"] != single].to_csv(tmp_path / "clean.csv", index=False)
    assert main(["train", "--features", str(fdir), "--manifest", str(tmp_path / "clean.csv"),
                 "--out", str(tmp_path / "clean"), *TRAIN]) == 0
    a = pd.read_csv(tmp_path / "run" / "predictions.csv")
    b = pd.read_csv(tmp_path / "clean" / "predictions.csv")
    assert single not in set(a["slide_id"]) and np.isfinite(a["score"]).all()
    pd.testing.assert_frame_equal(a, b)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert np.isfinite(m["responder"]["auroc"]["mean"])
    # predict on the poisoned cohort with another run: the slide is a failures row, metrics count
    # only the slides with a score
    df2 = df.assign(patient_id=df["patient_id"] + "_ext", slide_id=df["slide_id"])
    ext = tmp_path / "ext"
    ext.mkdir()
    for sid in df2["slide_id"]:
        arr = h5py.File(fdir / f"{sid}.h5", "r")
        with arr:
            feats, coords, attrs = arr["features"][()], arr["coords"][()], dict(arr.attrs)
        feats = feats + np.float32(0.01) * (np.arange(feats.shape[1], dtype=np.float32))  # new content
        if sid == single:
            feats[0, 0] = np.nan
        from pathstrat.features import write_features

        write_features(ext / f"{sid}_x.h5", feats, coords, {**attrs, "slide_id": f"{sid}_x"})
    df2["slide_id"] = df2["slide_id"] + "_x"
    df2["path"] = [str(ext / f"{s}.h5") for s in df2["slide_id"]]
    df2.to_csv(tmp_path / "ext.csv", index=False)
    rc, _ = _run(["predict", "--run", tmp_path / "clean", "--features", ext, "--manifest",
                  tmp_path / "ext.csv", "--out", tmp_path / "pred"], capsys)
    assert rc in (0, 3)
    pred = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert f"{single}_x" not in set(pred["slide_id"]) and np.isfinite(pred["score"]).all()
    pf = pd.read_csv(tmp_path / "pred" / "failures.csv")
    assert list(pf["slide_id"]) == [f"{single}_x"] and (pf["error_type"] == "NonFiniteError").all()


def test_non_numeric_feature_dataset_is_a_failure_row(cohort, tmp_path):
    from pathstrat.features import read_bag

    p = tmp_path / "bytes.h5"
    with h5py.File(p, "w") as f:
        f["features"] = np.array([[b"ab", b"cd"]] * 3)
        f["coords"] = np.zeros((3, 2), np.int64)
    with pytest.raises(SchemaError, match="must be numeric"):
        read_bag(p)
    q = tmp_path / "inf.h5"
    with h5py.File(q, "w") as f:
        f["features"] = np.array([[1.0, np.inf], [0.0, 1.0]], np.float32)
        f["coords"] = np.zeros((2, 2), np.int64)
    with pytest.raises(NonFiniteError, match=r"1 of 2 tiles.*first at row 0"):
        read_bag(q)


def test_selection_refuses_missing_scores_instead_of_dropping_patients(tmp_path, capsys):
    pred = pd.DataFrame({"slide_id": [f"s{i}" for i in range(10)],
                         "patient_id": [f"p{i}" for i in range(10)], "target": "r",
                         "y_true": [0, 1] * 5, "score": [0.1, 0.9, np.nan, 0.8, 0.3, 0.7, 0.2, np.inf,
                                                         0.4, 0.6]})
    pred.to_csv(tmp_path / "p.csv", index=False)
    rc, err = _run(["select", "--predictions", tmp_path / "p.csv", "--rule", "sensitivity",
                    "--value", "0.9", "--out", tmp_path / "sel"], capsys)
    line = _error_line(err)
    assert rc == 2 and "2 of 10 rows have no finite 'score'" in line and "'s2'" in line
    assert not (tmp_path / "sel" / "selection.json").exists()


# ---------------------------------------------------------------------- 2/3 labels, times, events

@pytest.mark.parametrize("change, expect", [
    (lambda df: df.assign(time=df["time"].where(df.index != 0, -3.0)), "time < 0: row 1"),
    (lambda df: df.assign(event=df["event"].where(df.index != 1, 2)), "event not in {0, 1}: row 2"),
    (lambda df: df.assign(event=df["event"].where(df.index != 1, -1)), "event not in {0, 1}: row 2"),
    (lambda df: df.assign(time=df["time"].astype(object).where(df.index != 2, "0.8 months")),
     "non-numeric time: row 3"),
    (lambda df: df.assign(time=df["time"].astype(object).where(df.index != 2, "12,5")),
     "non-numeric time: row 3"),
    (lambda df: df.assign(time=df["time"].where(df.index != 0, np.inf)), "time is infinite: row 1"),
])
def test_train_refuses_bad_survival_values(cohort, tmp_path, capsys, change, expect):
    fdir, man = cohort
    df = change(pd.read_csv(man, dtype={"slide_id": str, "patient_id": str}))
    df.to_csv(tmp_path / "m.csv", index=False)
    rc, err = _run(["train", "--features", fdir, "--manifest", tmp_path / "m.csv", "--out",
                    tmp_path / "run", "--target", "survival", "--time-col", "time", "--event-col",
                    "event", "--epochs", "1", "--folds", "2", "--model", "meanpool"], capsys)
    assert rc == 2 and expect in err and _error_line(err)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


def test_patient_with_disagreeing_slides_is_refused(cohort, tmp_path, capsys):
    fdir, man = cohort
    df = pd.read_csv(man, dtype={"slide_id": str, "patient_id": str})
    pid = df["patient_id"].iloc[0]
    df.loc[1, "patient_id"] = pid  # two slides of one patient ...
    df.loc[0, "responder"], df.loc[1, "responder"] = 0, 1  # ... with different labels
    df.to_csv(tmp_path / "m.csv", index=False)
    rc, err = _run(["train", "--features", fdir, "--manifest", tmp_path / "m.csv", "--out",
                    tmp_path / "run", *TRAIN], capsys)
    assert rc == 2 and f"patient '{pid}' has different responder values" in err


@pytest.mark.parametrize("values, expect", [
    (["yes", "Yes", "no"], "spells one value in several ways ('Yes' / 'yes')"),
    (["yes", "yes ", "no"], None),  # surrounding spaces are stripped when read: one class
    (["pos", "pos", "pos"], "has a single value ('pos'"),
    ([None, None, None], "has no values"),
])
def test_train_refuses_ambiguous_or_degenerate_labels(cohort, tmp_path, capsys, values, expect):
    fdir, man = cohort
    df = pd.read_csv(man, dtype={"slide_id": str, "patient_id": str})
    pids = sorted(df["patient_id"].unique())
    df["status"] = df["patient_id"].map({p: values[i % len(values)] for i, p in enumerate(pids)})
    df.to_csv(tmp_path / "m.csv", index=False)
    argv = ["train", "--features", fdir, "--manifest", tmp_path / "m.csv", "--out", tmp_path / "run",
            "--target", "status", "--model", "meanpool", "--folds", "2", "--epochs", "1"]
    rc, err = _run(argv, capsys)
    if expect is None:
        assert rc == 0
        spec = json.loads((tmp_path / "run" / "checkpoints" / "model.json").read_text())
        assert spec["targets"][0]["kind"] == "binary" and spec["targets"][0]["classes"] == ["no", "yes"]
    else:
        assert rc == 2 and _error_line(err) and expect in err


def test_stratify_refuses_unusable_survival_data(tmp_path, capsys):
    pred = pd.DataFrame({"slide_id": [f"s{i}" for i in range(8)], "patient_id": [f"p{i}" for i in range(8)],
                         "score": np.linspace(0, 1, 8)})
    pred.to_csv(tmp_path / "p.csv", index=False)
    cases = {"all censored": ({"time": np.arange(1, 9), "event": 0}, "every patient is censored"),
             "all times 0": ({"time": 0.0, "event": 1}, "every time is 0"),
             "text times": ({"time": ["0.8 months"] * 8, "event": 1}, "non-numeric time")}
    for name, (cols, expect) in cases.items():
        man = pred[["slide_id", "patient_id"]].assign(**cols)
        man.to_csv(tmp_path / "m.csv", index=False)
        rc, err = _run(["stratify", "--predictions", tmp_path / "p.csv", "--manifest", tmp_path / "m.csv",
                        "--score-col", "score", "--time-col", "time", "--event-col", "event",
                        "--out", tmp_path / name], capsys)
        assert rc == 2 and _error_line(err) and expect in err, (name, err)
        assert "Traceback" not in err


def test_check_targets_lists_every_problem_at_once():
    df = pd.DataFrame({"slide_id": ["a", "b", "c"], "patient_id": ["p", "q", "r"],
                       "time": [1.0, -2.0, np.inf], "event": [0, 1, 3], "y": ["Yes", "yes", "no"]})
    with pytest.raises(ManifestError) as ei:
        check_targets(df, label_cols=["y"], time_col="time", event_col="event")
    msg = str(ei.value)
    for part in ("time < 0: row 2 ('b')", "time is infinite: row 3 ('c')",
                 "event not in {0, 1}: row 3 ('c')", "spells one value in several ways"):
        assert part in msg


def test_all_patients_in_one_risk_group_is_said(tmp_path):
    from pathstrat.survival import stratify

    n = 12
    pred = pd.DataFrame({"slide_id": [f"s{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                         "score": np.linspace(0.1, 0.9, n)})
    rng = np.random.default_rng(0)
    man = pred[["slide_id", "patient_id"]].assign(time=rng.uniform(1, 20, n), event=[1, 0] * (n // 2))
    stratify(pred, man, score_col="score", time_col="time", event_col="event", cutoff=[5.0],
             out_dir=tmp_path, n_boot=20)
    s = json.loads((tmp_path / "survival.json").read_text())
    assert s["logrank_p"] is None or np.isnan(s["logrank_p"])
    assert any("one risk group" in note for note in s["notes"])


# ------------------------------------------------------------------------------ 4 float16 store

def test_float16_store_overflow_is_refused(cohort, tmp_path, capsys):
    fdir, man, df = _copy_cohort(cohort, tmp_path)
    victim = df["slide_id"].iloc[3]
    with h5py.File(fdir / f"{victim}.h5", "r+") as f:
        x = f["features"][()]
        x[0, 0] = 1e5
        f["features"][...] = x
    df.to_csv(man, index=False)
    rc, err = _run(["train", "--features", fdir, "--manifest", man, "--out", tmp_path / "run",
                    "--store", "mmap", *TRAIN], capsys)
    line = _error_line(err)
    assert rc == 2 and victim in line and "float16" in line and "--store=memory" in line


# ------------------------------------------------------------------------------ 5 manifest parsing

def _write_rows(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


def test_row_with_more_fields_than_header_is_refused_naming_the_line(tmp_path, capsys):
    m = tmp_path / "m.csv"
    m.write_text("slide_id,path,patient_id\ns1,a.svs,p1\ns2,b.svs,p2,extra\ns3,c.svs,p3,\n")
    rc, err = _run(["tile", "--manifest", m, "--out", tmp_path / "out"], capsys)
    assert rc == 2
    assert "line 3: 4 fields, the header has 3" in err and "line 4: 4 fields" in err
    assert "(trailing comma?)" in err
    assert not (tmp_path / "out" / "tiles").exists()


@pytest.mark.parametrize("na", ["NA", "None", "null", "nan", "N/A", "NaN"])
def test_na_like_patient_ids_stay_ids(tmp_path, na):
    m = _write_rows(tmp_path / "m.csv", [["slide_id", "path", "patient_id", "y"],
                                         ["s1", "a.svs", na, "1"], ["s2", "b.svs", na, "1"],
                                         ["s3", "c.svs", "x", "NA"]])
    df = load_manifest(m, check_files=False)
    assert list(df["patient_id"]) == [na, na, "x"]  # one patient with two slides, not two patients
    assert df["y"].isna().tolist() == [False, False, True]  # value columns: NA still means missing


@pytest.mark.parametrize("sid, why", [("a\x00b", "control character"), ("a\nb", "control character"),
                                      ("x" * 200, "longer than 160 bytes"), ("../x", "file name")])
def test_unusable_slide_ids_are_refused_at_load(tmp_path, sid, why):
    m = tmp_path / "m.csv"
    if "\x00" in sid:
        df = pd.DataFrame({"slide_id": [sid, "ok"], "path": ["a.svs", "b.svs"]})
        from pathstrat.cohort import normalize_manifest

        with pytest.raises(ManifestError, match=why):
            normalize_manifest(df)
        return
    _write_rows(m, [["slide_id", "path"], [sid, "a.svs"], ["ok", "b.svs"]])
    with pytest.raises(ManifestError, match=why):
        load_manifest(m, check_files=False)


def test_same_slide_file_under_two_patients_warns(tmp_path, caplog):
    m = _write_rows(tmp_path / "m.csv", [["slide_id", "path", "patient_id"], ["s1", "a.svs", "p1"],
                                         ["s2", "a.svs", "p2"]])
    load_manifest(m, check_files=False)
    assert "listed under 2 patients" in caplog.text


_ids = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
               min_size=1, max_size=40).map(str.strip).filter(
    lambda s: s not in ("", ".", "..") and not s.startswith(".tmp-") and len(s.encode()) <= 160)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_ids, _ids | st.sampled_from(["NA", "None", "null", "nan", "#N/A"])),
                min_size=1, max_size=8, unique_by=lambda t: t[0]))
def test_manifest_reader_keeps_arbitrary_ids(tmp_path_factory, rows):
    d = tmp_path_factory.mktemp("prop")
    m = _write_rows(d / "m.csv", [["slide_id", "path", "patient_id"]]
                    + [[s, f"{i}.svs", p] for i, (s, p) in enumerate(rows)])
    df = load_manifest(m, check_files=False)
    assert list(df["slide_id"]) == [s for s, _ in rows]
    assert list(df["patient_id"]) == [p for _, p in rows]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 3), min_size=1, max_size=6), st.integers(0, 5))
def test_manifest_reader_refuses_every_long_row(tmp_path_factory, extra, where):
    d = tmp_path_factory.mktemp("ragged")
    rows = [["slide_id", "path", "patient_id"]] + [[f"s{i}", f"{i}.svs", f"p{i}"] + ["v"] * k
                                                    for i, k in enumerate(extra)]
    m = _write_rows(d / "m.csv", rows)
    long = [i + 2 for i, k in enumerate(extra) if k > 0]  # file line numbers
    if not long:
        assert len(load_manifest(m, check_files=False)) == len(extra)
        return
    with pytest.raises(ManifestError) as ei:
        load_manifest(m, check_files=False)
    for line in long[:10]:
        assert f"line {line}:" in str(ei.value)


def test_symlink_loop_is_a_failures_row_not_an_aborted_batch(tmp_path, capsys, aperio_tiff, rng):
    img = np.full((512, 512, 3), 235, np.uint8)
    img[100:400, 100:400] = (150, 60, 140)
    aperio_tiff(tmp_path / "good.svs", img, mpp=0.5)
    os.symlink("loop.svs", tmp_path / "loop.svs")
    _write_rows(tmp_path / "m.csv", [["slide_id", "path"], ["good", "good.svs"], ["loop", "loop.svs"]])
    rc, err = _run(["tile", "--manifest", tmp_path / "m.csv", "--out", tmp_path / "out",
                    "--tile-px", "64", "--target-mpp", "1.0"], capsys)
    assert rc == 3
    fails = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert list(fails["slide_id"]) == ["loop"] and "link" in fails["reason"].iloc[0]
    assert (tmp_path / "out" / "tiles" / "good.h5").is_file()


# ----------------------------------------------------------------------------- 6 MPP mismatch

def test_manifest_mpp_far_from_the_files_is_refused_unless_overridden(tmp_path, capsys, caplog, aperio_tiff):
    from pathstrat.synthetic import make_slide

    make_slide(tmp_path / "s.svs", width=1024, height=768, mpp=0.25, seed=2)
    rows = [["slide_id", "path", "mpp"], ["far", "s.svs", "1.0"], ["near", "s.svs", "0.29"]]
    _write_rows(tmp_path / "m.csv", rows)
    rc, err = _run(["tile", "--manifest", tmp_path / "m.csv", "--out", tmp_path / "out",
                    "--tile-px", "32", "--target-mpp", "2.0", "--min-tissue", "0.1"], capsys)
    assert rc == 3
    fails = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert list(fails["slide_id"]) == ["far"] and fails["error_type"].iloc[0] == "MPPMismatchError"
    assert "4.0x the file's own 0.25" in fails["reason"].iloc[0] and "mpp_override" in fails["reason"].iloc[0]
    assert "`" not in fails["reason"].iloc[0]  # failures.csv names fields plainly
    assert "differs from the file's own 0.25 µm/px" in caplog.text  # 16% off: a warning
    assert (tmp_path / "out" / "tiles" / "near.h5").is_file()
    rc, _ = _run(["tile", "--manifest", tmp_path / "m.csv", "--out", tmp_path / "out", "--tile-px", "32",
                  "--target-mpp", "2.0", "--min-tissue", "0.1", "--mpp-override"], capsys)
    assert rc == 0 and (tmp_path / "out" / "tiles" / "far.h5").is_file()


# ------------------------------------------------------------------------- 7 reusing a run dir

def test_second_train_into_a_run_is_refused_and_overwrite_never_mixes(cohort, tmp_path, capsys, monkeypatch):
    fdir, man = cohort
    run = tmp_path / "run"
    argv = ["train", "--features", fdir, "--manifest", man, "--out", run, *TRAIN]
    assert _run(argv, capsys)[0] == 0
    before = _tree_hash(run)
    rc, err = _run([*argv[:-2], "--seed", "1"], capsys)
    assert rc == 2 and "already holds a training run" in _error_line(err) and "--overwrite" in err
    assert _tree_hash(run) == before  # the previous run is untouched
    # an --overwrite rerun killed midway: the old run is gone, nothing claims to be a valid run
    import pathstrat.training.cv as cv

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cv, "compute_metrics", boom)
    assert _run([*argv, "--overwrite"], capsys)[0] == 130
    assert not (run / "checkpoints" / "model.json").exists() and not (run / "metrics.json").exists()
    rc, err = _run(["predict", "--run", run, "--features", fdir, "--manifest", man, "--out",
                    tmp_path / "pred"], capsys)
    assert rc == 2 and "not a training run" in _error_line(err)
    monkeypatch.undo()
    assert _run([*argv, "--overwrite"], capsys)[0] == 0
    spec = json.loads((run / "checkpoints" / "model.json").read_text())
    for fold in spec["folds"]:
        assert hashlib.sha256((run / "checkpoints" / fold["file"]).read_bytes()).hexdigest() == fold["sha256"]


# ---------------------------------------------------------------------- 8 leakage on content

def test_renamed_training_slides_are_refused_by_content(cohort, tmp_path, capsys):
    fdir, man = cohort
    run = tmp_path / "run"
    assert main(["train", "--features", str(fdir), "--manifest", str(man), "--out", str(run), *TRAIN]) == 0
    df = pd.read_csv(man, dtype={"slide_id": str, "patient_id": str}).head(6)
    ren = tmp_path / "renamed"
    ren.mkdir()
    for sid in df["slide_id"]:
        shutil.copy(fdir / f"{sid}.h5", ren / f"new_{sid}.h5")
    df2 = df.assign(slide_id="new_" + df["slide_id"], patient_id="NEW" + df["patient_id"])
    df2["path"] = [str(ren / f"{s}.h5") for s in df2["slide_id"]]
    df2.to_csv(tmp_path / "ren.csv", index=False)
    rc, err = _run(["predict", "--run", run, "--features", ren, "--manifest", tmp_path / "ren.csv",
                    "--out", tmp_path / "pred"], capsys)
    assert rc == 2 and "same feature content" in _error_line(err) and "new_" in err
    # same slide ids under new patient ids: refused by slide id
    df3 = df.assign(patient_id="OTHER" + df["patient_id"])
    df3.to_csv(tmp_path / "same.csv", index=False)
    rc, err = _run(["predict", "--run", run, "--features", fdir, "--manifest", tmp_path / "same.csv",
                    "--out", tmp_path / "pred2"], capsys)
    assert rc == 2 and "slide(s)" in _error_line(err)
    with pytest.raises(LeakageError):
        from pathstrat.training import predict

        predict(run, ren, tmp_path / "ren.csv", tmp_path / "pred3")


# ----------------------------------------------------------------------------------- messages

def test_wrong_dimension_file_listed_first_is_the_one_named(cohort, tmp_path, capsys):
    fdir, man, df = _copy_cohort(cohort, tmp_path)
    first = df["slide_id"].iloc[0]
    with h5py.File(fdir / f"{first}.h5", "r+") as f:
        x = f["features"][()]
        del f["features"]
        f["features"] = np.concatenate([x, x], axis=1)
        f.attrs["encoder_dim"] = x.shape[1] * 2
    df.to_csv(man, index=False)
    rc, err = _run(["train", "--features", fdir, "--manifest", man, "--out", tmp_path / "run", *TRAIN],
                   capsys)
    line = _error_line(err)
    assert rc == 2 and f"{len(df) - 1} have dim 8" in line and f"1 with dim 16: '{first}'" in line


def test_info_on_an_undecodable_slide_prints_one_error_line(real_slide, capsys):
    bad = real_slide("bad/unreadable.svs")
    rc, err = _run(["info", bad], capsys)
    assert rc == 2 and "Cannot decode slide" in _error_line(err)


def test_report_has_no_absolute_paths(cohort, tmp_path):
    from pathstrat.report import build_report

    fdir, man = cohort
    run = tmp_path / "run"
    assert main(["train", "--features", str(fdir), "--manifest", str(man), "--out", str(run), *TRAIN]) == 0
    from pathstrat.runner.derived import derive_missing

    html = build_report(run, n_boot=20, notes=derive_missing(run, n_boot=20)).read_text()
    assert str(tmp_path) not in html and str(fdir) not in html
    assert str(tmp_path) in build_report(run, n_boot=20, out=tmp_path / "r2.html",
                                         show_paths=True).read_text()


def test_feature_and_tile_files_hold_no_absolute_paths(tmp_path, aperio_tiff):
    from pathstrat.encoders.embed import embed_cohort
    from pathstrat.features import read_attrs
    from pathstrat.tiles import read_tiles
    from pathstrat.tiling import TilingParams, tile_cohort

    img = np.full((512, 512, 3), 235, np.uint8)
    img[64:448, 64:448] = (150, 60, 140)
    aperio_tiff(tmp_path / "s.svs", img, mpp=0.5)
    _write_rows(tmp_path / "m.csv", [["slide_id", "path"], ["s", "s.svs"]])
    df = load_manifest(tmp_path / "m.csv")
    tile_cohort(df, tmp_path / "out", TilingParams(tile_px=32, target_mpp=2.0, min_tissue=0.1),
                progress=False)
    res = embed_cohort(df, tmp_path / "out", tmp_path / "out", "builtin", batch_size=8, workers=0)
    for attrs in (read_tiles(tmp_path / "out" / "tiles" / "s.h5").attrs,
                  read_attrs(res.features_dir / "s.h5")):
        text = json.dumps({k: str(v) for k, v in attrs.items()})
        assert str(tmp_path) not in text, attrs


# ------------------------------------------------------------------------ stale temporaries

def test_clean_stale_tmp_keeps_a_live_writers_file(tmp_path):
    from pathstrat.io import clean_stale_tmp, tmp_owner

    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        host_part = tmp_owner().split("@", 1)[1]
        mine = tmp_path / f"{tmp_owner()}a-1.h5"
        other_live = tmp_path / f".tmp-{live.pid}@{host_part}b-2.h5"
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        gone = tmp_path / f".tmp-{int(dead.stdout)}@{host_part}c-3.h5"
        elsewhere = tmp_path / ".tmp-1@otherhost-d-4.h5"
        for p in (mine, other_live, gone, elsewhere):
            p.write_bytes(b"x")
        old = tmp_path / ".tmp-old-5.h5"  # no owner, two days old
        old.write_bytes(b"x")
        os.utime(old, (old.stat().st_atime - 2 * 86400, old.stat().st_mtime - 2 * 86400))
        assert clean_stale_tmp(tmp_path) == 2
        assert mine.exists() and other_live.exists() and elsewhere.exists()
        assert not gone.exists() and not old.exists()
    finally:
        live.stdin.close()
        live.wait(timeout=30)
