"""`pathstrat run`: contract files, stage skipping by parameters hash, bad slides, output checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _pipeline_helpers import BAD_SLIDES, MISSING, N_GOOD, write_config

from pathstrat.cli import main
from pathstrat.config import load_config, validate_config
from pathstrat.io import OutputDirError, read_failures
from pathstrat.runner import RESOLVED_CONFIG, RUN_LOG, run_pipeline

CONTRACT = ("pipeline.yaml", "pipeline.log", "qc.csv", "failures.csv", "folds.csv", "predictions.csv",
            "metrics.json", "survival.json", "selection.json", "selection.csv", "report.html")


def _run_dir(small_run) -> Path:
    return small_run[1].run_dir


def test_run_writes_the_run_directory_contract(small_run):
    cfg_path, summary = small_run
    run = summary.run_dir
    for name in CONTRACT:
        assert (run / name).is_file(), name
    assert [s.name for s in summary.stages] == ["tile", "embed", "train", "stratify", "select",
                                                "heatmaps", "report"]
    assert {s.status for s in summary.stages[2:]} == {"done"}
    feats = sorted(p.stem for p in (run / "features" / "builtin").glob("*.h5"))
    assert feats == sorted(f"p{i}" for i in range(N_GOOD))
    preds = pd.read_csv(run / "predictions.csv", dtype={"slide_id": str})
    assert set(preds["slide_id"]) == {f"p{i}" for i in range(N_GOOD)}
    assert set(preds["target"]) == {"responder", "survival"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"auroc", "accuracy"} <= set(metrics["responder"]) and "c_index" in metrics["survival"]
    assert list((run / "heatmaps").glob("*.png"))


def test_resolved_config_and_log(small_run):
    cfg_path, summary = small_run
    run = summary.run_dir
    resolved = validate_config(yaml.safe_load((run / RESOLVED_CONFIG).read_text()))
    assert resolved == load_config(cfg_path)  # every default written out, round-trips
    assert resolved.tiling.overlap_px == 0 and resolved.train.ties == "efron"
    log = (run / RUN_LOG).read_text()
    for stage in ("tile", "embed", "train", "stratify", "select", "heatmaps", "report"):
        assert f"stage {stage}: running" in log
    assert "run finished" in log


def test_bad_slides_are_listed_and_the_run_finishes(small_run, slides_dir):
    _, summary = small_run
    run = summary.run_dir
    fails = {r["slide_id"]: r for r in read_failures(run / "failures.csv")}
    expected = {sid: err for sid, (_, err) in BAD_SLIDES.items()}
    for sid, err in expected.items():
        assert fails[sid]["stage"] == "tile" and fails[sid]["error_type"] == err, fails[sid]
        assert fails[sid]["reason"]
    assert fails[MISSING]["stage"] == "cohort" and "gone.svs" in fails[MISSING]["reason"]
    assert "mpp" in fails["no_mpp"]["reason"].lower()
    assert set(fails) == set(expected) | {MISSING}
    assert summary.n_failed == len(BAD_SLIDES) + 1 and summary.exit_code == 3
    # the report's cohort flow counts them
    html = (run / "report.html").read_text()
    assert "slides failed at tile" in html and "slides failed at cohort" in html
    n_manifest = len(pd.read_csv(load_config(small_run[0]).cohort.manifest))
    assert n_manifest == N_GOOD + len(BAD_SLIDES) + 1


def test_rerun_skips_every_stage_and_keeps_files(small_run):
    cfg_path, first = small_run
    run = first.run_dir
    watched = [run / "predictions.csv", run / "metrics.json", run / "features" / "builtin" / "p0.h5",
               run / "report.html"]
    before = [p.stat().st_mtime_ns for p in watched]
    again = run_pipeline(load_config(cfg_path))
    assert [s.status for s in again.stages] == ["skipped"] * 7
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert again.exit_code == 3  # the failed slides are still failed


def test_changed_parameter_reruns_that_stage_and_downstream(small_run, tmp_path):
    import shutil

    cfg_path, first = small_run
    run = shutil.copytree(first.run_dir, tmp_path / "run")
    cfg = load_config(cfg_path, [f"out_dir={run}", "report.n_boot=20"])
    feats = run / "features" / "builtin" / "p0.h5"
    t_feat = feats.stat().st_mtime_ns
    t_pred = (run / "predictions.csv").stat().st_mtime_ns
    res = run_pipeline(cfg)
    status = {s.name: s.status for s in res.stages}
    assert status == {"tile": "skipped", "embed": "skipped", "train": "skipped", "stratify": "skipped",
                      "select": "skipped", "heatmaps": "skipped", "report": "done"}
    assert feats.stat().st_mtime_ns == t_feat and (run / "predictions.csv").stat().st_mtime_ns == t_pred


def test_cli_run_exit_codes_and_override_errors(small_run, capsys):
    cfg_path, _ = small_run
    assert main(["run", str(cfg_path)]) == 3  # all skipped, failed slides remain -> 3
    capsys.readouterr()
    assert main(["run", str(cfg_path), "--set", "train.fodls=2"]) == 2
    assert "Did you mean 'train.folds'" in capsys.readouterr().err
    assert main(["run", str(cfg_path), "--executor", "kubernetes"]) == 2


def test_unwritable_output_dir_fails_before_any_work(small_cohort, tmp_path):
    if os.geteuid() == 0:
        out = Path("/proc/pathstrat-run")  # a read-only filesystem even for root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        out = ro / "run"
    cfg = load_config(write_config(tmp_path / "c.yaml", small_cohort, out))
    with pytest.raises(OutputDirError, match="not writable"):
        run_pipeline(cfg)


def test_disk_nearly_full_fails_before_any_work(small_cohort, tmp_path, monkeypatch):
    import pathstrat.io as pio

    monkeypatch.setattr(pio, "_free_mb", lambda p: 12.0)
    cfg = load_config(write_config(tmp_path / "c.yaml", small_cohort, tmp_path / "run"))
    with pytest.raises(OutputDirError, match="only 12 MiB free"):
        run_pipeline(cfg)
    assert not (tmp_path / "run" / "tiles").exists()


def test_doctor_reports_each_section(capsys):
    import openslide
    import torch

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for section in ("[versions]", "[openslide]", "[torch]", "[encoders]", "[disk]", "[slurm]", "[ray]"):
        assert section in out
    assert f"torch {torch.__version__}" in out and openslide.__library_version__ in out
    assert "builtin" in out and "uni2_h" in out  # every registered encoder, weights found or not
    # no weights are installed on the test machine: a warning that says how to get them
    line = next(ln for ln in out.splitlines() if " uni2_h " in ln)
    assert line.split()[0] == "warn" and "weights not found" in line and "huggingface-cli download" in line
    assert any(ln.split()[:2] == ["ok", "hf"] or ln.split()[:2] == ["warn", "hf"] for ln in out.splitlines())
    if not torch.cuda.is_available():
        assert any(ln.split()[:2] == ["warn", "cuda"] for ln in out.splitlines())
    assert ("reachable" in out) or ("not installed" in out)
    assert "error(s)" in out


def test_doctor_levels_disk_and_errors(tmp_path, monkeypatch, capsys):
    import shutil

    import pathstrat.doctor as D

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(D.shutil, "disk_usage", lambda p: usage._replace(free=int(0.5 * 2**30)))
    assert D.check_disk(tmp_path)[0].level == "error"
    monkeypatch.setattr(D.shutil, "disk_usage", lambda p: usage._replace(free=int(5 * 2**30)))
    assert D.check_disk(tmp_path / "not" / "yet")[0].level == "warn"  # measured on the parent
    monkeypatch.setattr(D, "check_openslide", lambda: [D.Check("openslide", "library", False, "broken")])
    monkeypatch.setattr(D, "CHECKS", (D.check_openslide,))
    assert main(["doctor"]) == 1
    assert "error library" in " ".join(capsys.readouterr().out.split())


def test_doctor_sees_a_running_slurm(tmp_path):
    from minicluster import mini_cluster, missing_requirements

    from pathstrat.doctor import check_slurm

    why = missing_requirements()
    if why:
        pytest.skip(why)
    assert "not reachable" in check_slurm()[0].detail or "not installed" in check_slurm()[0].detail
    with mini_cluster(tmp_path / "cluster"):
        assert check_slurm()[0].detail.startswith("reachable")


def test_disk_full_during_a_stage_is_a_clear_error(small_cohort, tmp_path, monkeypatch):
    import errno

    from pathstrat import tiling

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "tiles"))

    monkeypatch.setattr(tiling, "tile_cohort", full)
    cfg = load_config(write_config(tmp_path / "c.yaml", small_cohort, tmp_path / "run"))
    with pytest.raises(OutputDirError, match="stage tile.*No space left.*rerun the same command"):
        run_pipeline(cfg)
    assert not (tmp_path / "run" / ".pathstrat" / "stages" / "tile.json").exists()  # not stamped
