"""Executors against real engines: a single-node Slurm (slurm-wlm + munge) and a local Ray.

Each runs the tiling stage's own per-slide function on generated slides and must write the
same tiles files as the local ``tile_cohort``; failed tasks are retried once and listed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from pathstrat.errors import MissingDependencyError
from pathstrat.executors import SlideWork, chunk_rows
from pathstrat.executors.local import LocalExecutor
from pathstrat.executors.work import TileWork

PARAMS = dict(target_mpp=1.0, tile_px=64, overlap_px=0, min_tissue=0.25, mask_mpp=8.0)


def _by_value() -> None:
    """Test-only work classes travel by value to Slurm/Ray workers (tests/ is not importable)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        import ray.cloudpickle as rcp

        rcp.register_pickle_by_value(sys.modules[__name__])
    except ImportError:
        pass


class DieOnce(SlideWork):
    """Kills its whole process (no result) the first time it sees ``victim``; marker on disk."""

    stage = "test"

    def __init__(self, marker: str, victim: str, always: bool = False) -> None:
        super().__init__()
        self.marker, self.victim, self.always = marker, victim, always

    def process(self, row):
        if row["slide_id"] == self.victim and (self.always or not os.path.exists(self.marker)):
            Path(self.marker).write_text("died")
            os._exit(17)
        return {"pid": os.getpid()}


class CountSetup(SlideWork):
    """Records which process ran ``setup`` (the model load) for every slide."""

    stage = "embed"

    def setup(self):
        self.loaded_in = f"{os.getpid()}-{id(self)}"

    def process(self, row):
        return {"loaded_in": self.loaded_in}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> list[dict]:
    """Three generated slides, one corrupt file and one missing file (manifest rows)."""
    from pathstrat.synthetic import make_slide

    d = tmp_path_factory.mktemp("slides")
    rows = []
    for i in range(3):
        p = d / f"s{i}.svs"
        make_slide(p, width=768, height=768, mpp=0.5, seed=10 + i, patch_um=128)
        rows.append({"slide_id": f"s{i}", "path": str(p), "mpp": float("nan")})
    (d / "corrupt.svs").write_bytes(b"not a slide" * 100)
    rows.append({"slide_id": "corrupt", "path": str(d / "corrupt.svs"), "mpp": float("nan")})
    rows.append({"slide_id": "absent", "path": str(d / "absent.svs"), "mpp": float("nan")})
    return rows


@pytest.fixture(scope="module")
def local_tiles(cohort, tmp_path_factory) -> Path:
    """Reference output: the tiling stage's own cohort function, run locally."""
    from pathstrat import tiling

    out = tmp_path_factory.mktemp("local")
    tiling.tile_cohort(pd.DataFrame(cohort), out, tiling.TilingParams(**PARAMS), workers=1)
    return out


def _assert_same_tiles(a: Path, b: Path, ids: list[str]) -> None:
    for sid in ids:
        with h5py.File(a / "tiles" / f"{sid}.h5") as fa, h5py.File(b / "tiles" / f"{sid}.h5") as fb:
            assert len(fa["coords"]) > 10
            np.testing.assert_array_equal(fa["coords"][:], fb["coords"][:])
            np.testing.assert_array_equal(fa["tissue_fraction"][:], fb["tissue_fraction"][:])
            for k in ("params_hash", "tile_size_level0", "read_level", "mpp_source", "slide_mpp"):
                assert fa.attrs[k] == fb.attrs[k], k


def _check_outcomes(res, cohort) -> None:
    by = {o.slide_id: o for o in res.outcomes}
    assert sorted(by) == sorted(r["slide_id"] for r in cohort)
    assert all(by[f"s{i}"].ok for i in range(3))
    assert not by["corrupt"].ok and by["corrupt"].error_type == "SlideReadError"
    assert not by["absent"].ok and by["absent"].error_type == "SlideReadError"


def test_chunk_rows_bounds_and_balance():
    rows = [{"slide_id": str(i)} for i in range(2503)]
    chunks = chunk_rows(rows, 1000)
    assert len(chunks) == 1000
    assert {len(c) for c in chunks} == {2, 3}
    assert [r for c in chunks for r in c] == rows  # every slide exactly once, order kept
    assert len(chunk_rows(rows[:7], 1000)) == 7
    assert chunk_rows([], 10) == []


def test_local_pool_matches_serial_and_isolates_failing_slides(cohort, local_tiles, tmp_path):
    """The local executor's process pool (tiling.workers > 1) writes the same tiles files and
    outcomes as the serial run; the corrupt and the missing slide fail alone."""
    serial = LocalExecutor(progress=False).map_slides(TileWork(tmp_path / "a", PARAMS), cohort)
    pooled = LocalExecutor(progress=False).map_slides(TileWork(tmp_path / "b", PARAMS, processes=2), cohort)
    for res in (serial, pooled):
        _check_outcomes(res, cohort)
    _assert_same_tiles(local_tiles, tmp_path / "a", ["s0", "s1", "s2"])
    _assert_same_tiles(tmp_path / "a", tmp_path / "b", ["s0", "s1", "s2"])
    key = lambda res: sorted((o.slide_id, o.ok, o.error_type, o.reason) for o in res.outcomes)  # noqa: E731
    assert key(serial) == key(pooled)
    qc = lambda res: {o.slide_id: {k: v for k, v in o.result.items() if k != "seconds"}  # noqa: E731
                      for o in res.outcomes if o.ok}
    assert qc(serial) == qc(pooled)


# ------------------------------------------------------------------ the executor matrix (registry)

def _executor_params() -> list:
    """Every registered executor; engines that need a cluster carry their marker."""
    from pathstrat.executors import executor_classes

    return [pytest.param(k, marks=getattr(pytest.mark, k)) if k in ("slurm", "ray") else k
            for k in executor_classes()]


def _build_executor(kind: str, request, tmp_path: Path):
    """An executor of ``kind`` for the tests: engines get their cluster fixture, any other
    executor is built from its config section's defaults (so a new one is tested unchanged)."""
    from pathstrat.executors import make_executor

    if kind == "slurm":
        request.getfixturevalue("slurm")
        return _slurm_executor(tmp_path, max_array_tasks=2)
    if kind == "ray":
        return request.getfixturevalue("ray_executor")
    return make_executor(kind)


@pytest.mark.parametrize("kind", _executor_params())
def test_every_executor_tiles_like_tile_cohort(kind, request, cohort, local_tiles, tmp_path):
    """Each executor of the registry runs the tiling stage's own function: same files and
    the same per-slide outcomes (bad slides failed, named) as the local ``tile_cohort``."""
    ex = _build_executor(kind, request, tmp_path)
    res = ex.map_slides(TileWork(tmp_path / "out", PARAMS), cohort)
    _check_outcomes(res, cohort)
    _assert_same_tiles(local_tiles, tmp_path / "out", ["s0", "s1", "s2"])


@pytest.mark.parametrize("kind", _executor_params())
def test_every_executor_builds_from_its_config_section(kind, tmp_path):
    """``executor.<kind>:`` is the executor's own section (defaults load; unknown keys fail)."""
    from pathstrat.config import ExecutorConfig, validate_config
    from pathstrat.errors import ConfigError
    from pathstrat.executors import EXECUTORS

    cls = EXECUTORS.get(kind)
    raw = {"out_dir": str(tmp_path), "cohort": {"manifest": "m.csv"},
           "train": {"targets": ["y"]}, "executor": {"kind": kind}}
    cfg = validate_config(raw)
    assert cfg.executor.kind == kind
    if cls.Config is not None:
        assert isinstance(getattr(cfg.executor, kind), cls.Config)
        assert set(ExecutorConfig.model_fields[kind].annotation.model_fields) == set(cls.Config.model_fields)
        with pytest.raises(ConfigError, match=f"unknown key 'executor.{kind}.no_such_key'"):
            validate_config({**raw, "executor": {"kind": kind, kind: {"no_such_key": 1}}})
    else:
        assert kind not in ExecutorConfig.model_fields


# ---------------------------------------------------------------------------------------- Slurm

@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A single-node Slurm cluster (munged, slurmctld, slurmd) in a temp dir, torn down after."""
    from minicluster import mini_cluster, missing_requirements

    why = missing_requirements()
    if why:
        pytest.skip(why)
    pytest.importorskip("submitit")
    _by_value()
    with mini_cluster(tmp_path_factory.mktemp("cluster"), cpus=2) as c:
        yield c


def _slurm_executor(tmp_path: Path, **kw):
    from pathstrat.executors.slurm import SlurmExecutor

    kw = {"cpus_per_task": 1, "mem_gb": 0.5, "time_min": 10, "poll_s": 0.3, "timeout_s": 240, **kw}
    return SlurmExecutor(tmp_path / "jobs", **kw)


@pytest.mark.slurm
def test_slurm_array_tiles_identical_to_local(slurm, cohort, local_tiles, tmp_path):
    ex = _slurm_executor(tmp_path, max_array_tasks=2)
    res = ex.map_slides(TileWork(tmp_path / "out", PARAMS), cohort)
    assert res.n_tasks == 2 and len(ex.submitted) == 1  # one array of two tasks for five slides
    jobs_dir = tmp_path / "jobs" / "tile-a0"
    assert len(list(jobs_dir.glob(f"{ex.submitted[0]}_*_result.pkl"))) == 2
    _check_outcomes(res, cohort)
    _assert_same_tiles(local_tiles, tmp_path / "out", ["s0", "s1", "s2"])


@pytest.mark.slurm
def test_slurm_retries_a_dead_task_once_then_runs_dependent_job(slurm, cohort, tmp_path):
    rows = cohort[:3]
    ex = _slurm_executor(tmp_path, max_array_tasks=3)
    res, then = ex.map_then(DieOnce(str(tmp_path / "marker"), "s1"), rows, _Then("trained"))
    assert (tmp_path / "marker").exists()  # the task really died once
    assert res.retried_tasks == 1 and res.failed_tasks == []
    assert sorted(o.slide_id for o in res.outcomes if o.ok) == ["s0", "s1", "s2"]
    assert then == "trained"
    # arrays: first attempt, the retry of one task; dependent jobs: the cancelled one and the one that ran
    assert len(ex.submitted) == 4


@pytest.mark.slurm
def test_slurm_task_failing_twice_is_listed(slurm, cohort, tmp_path):
    rows = cohort[:3]
    ex = _slurm_executor(tmp_path, max_array_tasks=3)
    res, then = ex.map_then(DieOnce(str(tmp_path / "marker"), "s2", always=True), rows, _Then("ran"))
    by = {o.slide_id: o for o in res.outcomes}
    assert by["s0"].ok and by["s1"].ok
    assert not by["s2"].ok and by["s2"].error_type == "SlurmTaskFailed"
    assert "ended without a result" in by["s2"].reason
    assert len(res.failed_tasks) == 1 and res.retried_tasks == 1
    assert then == "ran"  # the follow-up still runs for the slides that succeeded


class _Then:
    def __init__(self, value):
        self.value = value

    def __call__(self):
        return self.value


# ------------------------------------------------------------------------------------------ Ray

@pytest.fixture(scope="module")
def ray_executor():
    pytest.importorskip("ray")
    from pathstrat.executors.ray import RayExecutor

    _by_value()
    with RayExecutor(local_num_cpus=2, num_cpus=1, actors=2) as ex:
        yield ex


@pytest.mark.ray
def test_ray_loads_model_once_per_actor(ray_executor, cohort):
    rows = [dict(r, slide_id=f"{r['slide_id']}-{k}") for k in range(4) for r in cohort]
    res = ray_executor.map_slides(CountSetup(), rows)
    assert len(res.outcomes) == len(rows) and all(o.ok for o in res.outcomes)
    loads = {o.result["loaded_in"] for o in res.outcomes}
    assert 1 <= len(loads) <= 2  # two actors, each loaded once, for 20 slides


@pytest.mark.ray
def test_ray_dead_actor_is_retried_then_listed(ray_executor, cohort, tmp_path):
    rows = cohort[:3]
    res = ray_executor.map_slides(DieOnce(str(tmp_path / "m1"), "s0"), rows)
    assert all(o.ok for o in res.outcomes)  # died once, Ray restarted the actor and retried
    res = ray_executor.map_slides(DieOnce(str(tmp_path / "m2"), "s0", always=True), rows)
    by = {o.slide_id: o for o in res.outcomes}
    assert by["s1"].ok and by["s2"].ok
    assert not by["s0"].ok and by["s0"].error_type == "RayTaskFailed"


def test_missing_ray_names_the_extra(monkeypatch):
    from pathstrat.executors import make_executor

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"pathstrat\[ray\]"):
        make_executor("ray")


def test_missing_submitit_names_the_extra(monkeypatch, tmp_path):
    from pathstrat.executors.slurm import SlurmExecutor

    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(MissingDependencyError, match=r"pathstrat\[slurm\]"):
        SlurmExecutor(tmp_path)


# ------------------------------------------------------------- whole pipeline through the engines

def _same_features_and_failures(ref_run: Path, run: Path) -> None:
    from pathstrat.io import read_failures

    fa = sorted((ref_run / "features" / "builtin").glob("*.h5"))
    fb = sorted((run / "features" / "builtin").glob("*.h5"))
    assert [p.name for p in fa] == [p.name for p in fb] and len(fa) >= 12
    for a, b in zip(fa, fb, strict=True):
        with h5py.File(a) as x, h5py.File(b) as y:
            np.testing.assert_array_equal(x["features"][:], y["features"][:])
            np.testing.assert_array_equal(x["coords"][:], y["coords"][:])
    key = lambda r: (r["stage"], r["slide_id"], r["error_type"])  # noqa: E731
    assert sorted(map(key, read_failures(ref_run / "failures.csv"))) == \
        sorted(map(key, read_failures(run / "failures.csv")))


@pytest.mark.slurm
def test_slurm_pipeline_matches_local(slurm, small_run, tmp_path):
    """`pathstrat run --executor slurm`: tile array, embed array, training as a dependent job."""
    from pathstrat.config import load_config
    from pathstrat.runner import run_pipeline

    cfg_path, ref = small_run
    cfg = load_config(cfg_path, [f"out_dir={tmp_path / 'run'}", "stages=[tile, embed, train]",
                                 "executor.slurm.cpus_per_task=1", "executor.slurm.mem_gb=2",
                                 "executor.slurm.poll_s=0.3", "executor.slurm.max_array_tasks=3"])
    summary = run_pipeline(cfg, executor="slurm")
    status = {s.name: s.status for s in summary.stages}
    assert status["train"] == "done" and status["embed"] in ("done", "failed-slides")
    embed = next(s for s in summary.stages if s.name == "embed")
    assert embed.detail.startswith("3 task(s)")
    run = summary.run_dir
    _same_features_and_failures(ref.run_dir, run)
    pd.testing.assert_frame_equal(pd.read_csv(ref.run_dir / "predictions.csv"),
                                  pd.read_csv(run / "predictions.csv"))
    assert (run / "metrics.json").read_text() == (ref.run_dir / "metrics.json").read_text()
    # the training job ran inside Slurm (its log lines are in the run log) after the array
    log = (run / "pipeline.log").read_text()
    assert "after array" in log and "stage train: done" in log
    assert summary.exit_code == 3  # the bad slides of the small cohort


@pytest.mark.ray
def test_ray_pipeline_tile_and_embed_match_local(small_run, tmp_path):
    pytest.importorskip("ray")
    from pathstrat.config import load_config
    from pathstrat.runner import run_pipeline

    _by_value()
    cfg_path, ref = small_run
    cfg = load_config(cfg_path, [f"out_dir={tmp_path / 'run'}", "stages=[tile, embed]",
                                 "executor.ray.local_num_cpus=2", "executor.ray.actors=2"])
    summary = run_pipeline(cfg, executor="ray")
    assert [s.name for s in summary.stages] == ["tile", "embed"]
    _same_features_and_failures(ref.run_dir, summary.run_dir)
