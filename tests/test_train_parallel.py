"""Folds in worker processes (`workers`): the run directory does not depend on the worker count;
a fold's error surfaces as it does serially; workers never re-run the caller's script."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from pathstrat.errors import TrainingDivergedError
from pathstrat.testing import make_feature_cohort
from pathstrat.training import train_cv
from pathstrat.training.data import load_bags
from pathstrat.training.parallel import (
    MIN_PARALLEL_TILE_EPOCHS,
    StorePayload,
    resolve_workers,
)

TINY = dict(epochs=3, lr=5e-3, batch_size=4, max_tiles=12, n_boot=20, targets=["responder"],
            folds=2, repeats=2, seed=3, device="cpu", hparams={"dim": 8, "attn_dim": 4})
#: every file of a run except run.log (timestamps) and config.yaml (it records `workers`)
FILES = ["folds.csv", "predictions.csv", "train_scores.csv", "history.csv", "metrics.json",
         "metrics_folds.csv", "checkpoints/model.json"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    return make_feature_cohort(d, n_patients=18, dim=6, seed=7, tiles=(4, 16), tasks=("binary",),
                               slides_per_patient=(1, 2))


@pytest.mark.parametrize("store", ["memory", "mmap"])
def test_one_and_two_workers_write_identical_runs(cohort, tmp_path, store, caplog):
    fdir, manifest = cohort
    runs = []
    for w in (1, 2):
        caplog.clear()
        with caplog.at_level("INFO", logger="pathstrat"):
            runs.append(train_cv(features=str(fdir), manifest=str(manifest), out=str(tmp_path / f"w{w}"),
                                 model="abmil", store=store, workers=w, **TINY))
        lines = [r.getMessage() for r in caplog.records if " fold " in r.getMessage()
                 and "test auroc" in r.getMessage()]
        # one line per fold, in (repeat, fold) order, whichever worker finished first
        assert [ln.split(":")[0] for ln in lines] == [f"repeat {r} fold {k}" for r in range(2) for k in range(2)]
        if w == 2:
            assert any("in 2 worker processes" in r.getMessage() for r in caplog.records)
        runs[-1] = (runs[-1], lines)
    (a, la), (b, lb) = runs
    assert la == lb
    for f in FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    ckpts = sorted(p.name for p in (a / "checkpoints").glob("*.safetensors"))
    assert len(ckpts) == 4
    for name in ckpts:
        assert (a / "checkpoints" / name).read_bytes() == (b / "checkpoints" / name).read_bytes()
    att = sorted(p.name for p in (a / "attention").glob("*.h5"))
    assert att == sorted(p.name for p in (b / "attention").glob("*.h5")) and att
    for name in att:
        with h5py.File(a / "attention" / name) as fa, h5py.File(b / "attention" / name) as fb:
            np.testing.assert_array_equal(fa["attention"][:], fb["attention"][:])
    assert json.loads((a / "checkpoints" / "model.json").read_text())["folds"][3]["name"] == "fold1_r1"


def test_a_failing_fold_raises_the_serial_error_and_saves_nothing(cohort, tmp_path, capsys):
    from pathstrat.cli import main

    fdir, manifest = cohort
    out = tmp_path / "w1"
    with pytest.raises(TrainingDivergedError) as info:
        train_cv(features=str(fdir), manifest=str(manifest), out=str(out), workers=1,
                 **{**TINY, "lr": 1e30, "grad_clip": None, "epochs": 2, "folds": 2, "repeats": 1})
    serial = str(info.value)
    assert serial.startswith("repeat 0, fold 0, epoch ")
    # the same run through the CLI, on 2 workers: the same error, as one `error:` line
    capsys.readouterr()
    rc = main(["train", "--features", str(fdir), "--manifest", str(manifest), "--target", "responder",
               "--out", str(tmp_path / "w2"), "--lr", "1e30", "--epochs", "2", "--folds", "2",
               "--max-tiles", "12", "--batch-size", "4", "--seed", "3", "--workers", "2",
               "--hparam", "dim=8", "--hparam", "attn_dim=4", "--config", str(_no_clip(tmp_path))])
    assert rc == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1
    assert err[0].replace("--lr", "`lr`") == f"error: {serial}"  # the CLI names its flags
    for out in (tmp_path / "w1", tmp_path / "w2"):
        assert not list((out / "checkpoints").glob("*.safetensors"))
        assert not (out / "checkpoints" / "model.json").exists()
        assert not (out / "predictions.csv").exists()
    rc = main(["train", "--features", str(fdir), "--manifest", str(manifest), "--target", "responder",
               "--out", str(tmp_path / "w0"), "--workers", "0"])
    assert rc == 2


def _no_clip(tmp_path):
    p = tmp_path / "no_clip.yaml"
    p.write_text("grad_clip: null\nn_boot: 20\n")
    return p


def test_store_payload_rebuilds_the_same_bags(cohort, tmp_path):
    import pandas as pd

    fdir, manifest = cohort
    df = pd.read_csv(manifest)
    for store in ("memory", "mmap"):
        s = load_bags(df, fdir, level="patient", store=store, cache_dir=tmp_path / store)
        payload = StorePayload.of(s)
        assert (payload.arrays is None) == (store == "mmap")  # mmap: the file, not its contents
        rebuilt = StorePayload(**{k: getattr(payload, k) for k in payload.__dataclass_fields__}).build()
        assert [b.key for b in rebuilt.bags] == [b.key for b in s.bags]
        for b0, b1 in zip(s.bags, rebuilt.bags, strict=True):
            assert b0.features.dtype == b1.features.dtype
            np.testing.assert_array_equal(b0.features.numpy(), b1.features.numpy())
            np.testing.assert_array_equal(b0.coords, b1.coords)
            assert b0.offsets == b1.offsets and b0.slide_ids == b1.slide_ids


def test_auto_workers_rule():
    kw = dict(n_units=50, device="cpu", fold_threads=1, tile_epochs=10 * MIN_PARALLEL_TILE_EPOCHS,
              store_bytes=1000, shared_store=False)
    n, _ = resolve_workers(None, **kw)
    assert 1 <= n <= 8
    assert resolve_workers("auto", **kw)[0] == n
    assert resolve_workers(4, **kw) == (4, "workers=4")
    assert resolve_workers(4, **{**kw, "n_units": 3})[0] == 3
    assert resolve_workers(None, **{**kw, "device": "cuda"})[0] == 1
    assert resolve_workers(2, **{**kw, "device": "cuda"})[0] == 1
    assert resolve_workers(None, **{**kw, "fold_threads": 2})[0] == 1
    assert resolve_workers(None, **{**kw, "tile_epochs": 10})[0] == 1
    assert resolve_workers(None, **{**kw, "n_units": 1})[0] == 1
    # an in-memory store is copied into every worker: no more workers than half the free memory holds
    assert resolve_workers(None, **{**kw, "store_bytes": 2**60})[0] == 1
    assert resolve_workers(None, **{**kw, "store_bytes": 2**60, "shared_store": True})[0] == n


def test_workers_do_not_rerun_an_unguarded_script(cohort, tmp_path):
    fdir, manifest = cohort
    marker = tmp_path / "ran.txt"
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(f"""
        from pathstrat.training import train_cv
        with open({str(marker)!r}, "a") as f:
            f.write("x")
        train_cv(features={str(fdir)!r}, manifest={str(manifest)!r}, out={str(tmp_path / 'run')!r},
                 targets=["responder"], folds=2, epochs=1, n_boot=10, workers=2, device="cpu",
                 hparams={{"dim": 4, "attn_dim": 2}})
        print("done")
    """))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "done"
    assert marker.read_text() == "x"  # the script ran once: not again in each worker
    assert (tmp_path / "run" / "checkpoints" / "model.json").exists()
