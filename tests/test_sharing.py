"""Model packages: train -> package -> a partner predicts; tampering, signatures, pinned pipeline,
no patient-level data, and the out-of-distribution check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from pathstrat.cli import main
from pathstrat.features import write_features
from pathstrat.sharing import PackageError, build_package, generate_keypair, open_package
from pathstrat.testing import make_feature_cohort

TRAIN = ["--target", "responder", "--model", "abmil", "--folds", "3", "--epochs", "6", "--lr", "0.01",
         "--batch-size", "8", "--max-tiles", "16", "--hparam", "dim=16", "--hparam", "attn_dim=8",
         "--seed", "0"]
N_TRAIN = 36


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A sponsor's run (first 36 patients) and a partner cohort from the same distribution
    (the next 24 patients of the same generator)."""
    d = tmp_path_factory.mktemp("share")
    fdir, man = make_feature_cohort(d, n_patients=N_TRAIN + 24, dim=12, seed=11, tiles=(8, 16),
                                    tasks=("binary",), strength=4.0, dtype="float32")
    df = pd.read_csv(man, dtype={"slide_id": str, "patient_id": str})
    pids = sorted(df["patient_id"].unique())
    sponsor, partner = df[df["patient_id"].isin(pids[:N_TRAIN])], df[df["patient_id"].isin(pids[N_TRAIN:])]
    sponsor.to_csv(d / "sponsor.csv", index=False)
    partner.to_csv(d / "partner.csv", index=False)
    run = d / "run"
    assert main(["train", "--features", str(fdir), "--manifest", str(d / "sponsor.csv"), "--out", str(run),
                 *TRAIN]) == 0
    assert main(["select", "--predictions", str(run / "predictions.csv"), "--rule", "sensitivity",
                 "--value", "0.9", "--out", str(run)]) == 0
    generate_keypair(d / "key", d / "key.pub")
    pkg = build_package(run, d / "resp-1.0.0.pathstrat", name="resp", version="1.0.0",
                        sign_key=d / "key", zip_too=True)
    return {"d": d, "fdir": fdir, "run": run, "pkg": pkg, "sponsor": sponsor, "partner": partner}


def test_partner_prediction_equals_the_sponsors_run(world, tmp_path, capsys):
    d, pkg = world["d"], world["pkg"]
    assert main(["predict", "--package", str(pkg), "--features", str(world["fdir"]), "--manifest",
                 str(d / "partner.csv"), "--out", str(tmp_path / "p"), "--public-key", str(d / "key.pub"),
                 "--require-signature"]) == 0
    assert main(["predict", "--run", str(world["run"]), "--features", str(world["fdir"]), "--manifest",
                 str(d / "partner.csv"), "--out", str(tmp_path / "r")]) == 0
    a = pd.read_csv(tmp_path / "p" / "predictions.csv").sort_values("slide_id").reset_index(drop=True)
    b = pd.read_csv(tmp_path / "r" / "predictions.csv").sort_values("slide_id").reset_index(drop=True)
    np.testing.assert_allclose(a["score"], b["score"], rtol=0, atol=1e-7)
    assert set(a["package"]) == {"resp"} and set(a["package_version"]) == {"1.0.0"}
    assert a["package_manifest_sha256"].str.len().eq(64).all()
    sel = json.loads((world["run"] / "selection.json").read_text())
    np.testing.assert_array_equal(a["selected"].astype(bool), a["score"] >= sel["threshold"])
    prov = json.loads((tmp_path / "p" / "package_provenance.json").read_text())
    assert prov["signature"] == "verified" and prov["version"] == "1.0.0"
    # the zip is the same package
    z = Path(str(pkg) + ".zip")
    assert main(["predict", "--package", str(z), "--features", str(world["fdir"]), "--manifest",
                 str(d / "partner.csv"), "--out", str(tmp_path / "z")]) == 0
    c = pd.read_csv(tmp_path / "z" / "predictions.csv").sort_values("slide_id").reset_index(drop=True)
    np.testing.assert_allclose(a["score"], c["score"], atol=0)


def test_package_holds_no_patient_level_data(world):
    text = "\n".join(p.read_text(errors="ignore") for p in world["pkg"].rglob("*")
                     if p.is_file() and p.suffix in (".json", ".md", ".sha256"))
    for pid in world["sponsor"]["patient_id"].unique():
        assert pid not in text
    for sid in world["sponsor"]["slide_id"]:
        assert sid not in text
    doc = json.loads((world["pkg"] / "package.json").read_text())
    assert doc["training_summary"] == {"n_patients": N_TRAIN, "n_slides": len(world["sponsor"])}
    card = (world["pkg"] / "README.md").read_text()
    assert card.startswith("---\nlicense:") and "## Intended use" in card and "## Limitations" in card


@pytest.mark.parametrize("tamper, expect", [
    ("weights", "changed: checkpoints/fold0.safetensors"),
    ("manifest", "does not match"),
    ("extra", "not in the manifest: notes.txt"),
    ("missing", "missing: ood.json"),
])
def test_tampered_packages_are_refused(world, tmp_path, capsys, tamper, expect):
    pkg = shutil.copytree(world["pkg"], tmp_path / "pkg")
    if tamper == "weights":
        p = pkg / "checkpoints" / "fold0.safetensors"
        data = bytearray(p.read_bytes())
        data[-3] ^= 0x01
        p.write_bytes(bytes(data))
    elif tamper == "manifest":
        m = pkg / "MANIFEST.sha256"
        lines = m.read_text().splitlines()
        lines[0] = "0" * 64 + lines[0][64:]
        m.write_text("\n".join(lines) + "\n")
    elif tamper == "extra":
        (pkg / "notes.txt").write_text("x")
    else:
        (pkg / "ood.json").unlink()
    capsys.readouterr()
    rc = main(["package", "verify", str(pkg)])
    err = capsys.readouterr().err
    assert rc == 2 and expect in err and err.count("error:") == 1
    rc = main(["predict", "--package", str(pkg), "--features", str(world["fdir"]), "--manifest",
               str(world["d"] / "partner.csv"), "--out", str(tmp_path / "p")])
    assert rc == 2 and not (tmp_path / "p" / "predictions.csv").exists()


def test_signatures(world, tmp_path):
    generate_keypair(tmp_path / "other", tmp_path / "other.pub")
    with open_package(world["pkg"], public_key=world["d"] / "key.pub", require_signature=True) as (_, doc):
        assert doc["_signature"] == "verified"
    with pytest.raises(PackageError, match="signature does not match"):
        with open_package(world["pkg"], public_key=tmp_path / "other.pub"):
            pass
    unsigned = shutil.copytree(world["pkg"], tmp_path / "u")
    (unsigned / "SIGNATURE").unlink()
    with open_package(unsigned) as (_, doc):
        assert doc["_signature"] == "unsigned"
    with pytest.raises(PackageError, match="not signed"):
        with open_package(unsigned, require_signature=True):
            pass


def test_features_from_another_encoder_or_tiling_are_refused(world, tmp_path, capsys):
    other = tmp_path / "feats"
    other.mkdir()
    for sid in world["partner"]["slide_id"]:
        with h5py.File(world["fdir"] / f"{sid}.h5", "r") as f:
            feats, coords, attrs = f["features"][()], f["coords"][()], dict(f.attrs)
        attrs["tile_px"] = 256 if sid.endswith("0") else attrs["tile_px"]
        attrs["encoder_id"] = "uni2_h"
        write_features(other / f"{sid}.h5", feats, coords, attrs)
    capsys.readouterr()
    rc = main(["predict", "--package", str(world["pkg"]), "--features", str(other), "--manifest",
               str(world["d"] / "partner.csv"), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert rc == 2 and "not made with the package's pinned pipeline" in err
    assert "encoder_id 'uni2_h' (package: 'synthetic')" in err and "tile_px 256" in err


def test_ood_flags_a_shifted_cohort_and_passes_a_same_distribution_one(world, tmp_path):
    d = world["d"]
    ood_pkg = json.loads((world["pkg"] / "ood.json").read_text())
    assert 0 <= ood_pkg["false_alarm_rate_training_oof"] <= 0.1  # calibrated out of fold at q=0.99
    assert main(["predict", "--package", str(world["pkg"]), "--features", str(world["fdir"]), "--manifest",
                 str(d / "partner.csv"), "--out", str(tmp_path / "same")]) == 0
    same = json.loads((tmp_path / "same" / "ood.json").read_text())
    assert not same["cohort_outside"] and same["fraction_flagged"] <= 0.15
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    rng = np.random.default_rng(0)
    for sid in world["partner"]["slide_id"]:  # a planted scanner/stain shift in every slide
        with h5py.File(world["fdir"] / f"{sid}.h5", "r") as f:
            feats, coords, attrs = f["features"][()], f["coords"][()], dict(f.attrs)
        shift = np.zeros(feats.shape[1], np.float32)
        shift[:4] = 1.5
        write_features(shifted / f"{sid}.h5", feats + shift + 0.05 * rng.standard_normal(feats.shape).astype(np.float32),
                       coords, attrs)
    assert main(["predict", "--package", str(world["pkg"]), "--features", str(shifted), "--manifest",
                 str(d / "partner.csv"), "--out", str(tmp_path / "sh")]) == 0
    sh = json.loads((tmp_path / "sh" / "ood.json").read_text())
    assert sh["cohort_outside"] and sh["fraction_flagged"] >= 0.8
    pred = pd.read_csv(tmp_path / "sh" / "predictions.csv")
    assert pred["ood_outside"].mean() >= 0.8


def test_version_and_name_are_checked(world, tmp_path):
    with pytest.raises(PackageError, match="semantic version"):
        build_package(world["run"], tmp_path / "x", name="resp", version="v1")
    with pytest.raises(PackageError, match="exists"):
        build_package(world["run"], world["pkg"], name="resp", version="1.0.0")
    child = build_package(world["run"], tmp_path / "resp-1.1.0.pathstrat", name="resp", version="1.1.0",
                          parent="1.0.0")
    assert json.loads((child / "package.json").read_text())["parent"] == "1.0.0"


# ------------------------------------------------------------------------------------ service

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(world, tmp_path_factory):
    """A real uvicorn serving the package on localhost, stopped by its pid at the end."""
    import os
    import selectors
    import signal
    import subprocess
    import sys
    import time

    from pathstrat.sharing.serve import add_token

    d = tmp_path_factory.mktemp("serve")
    tokens = d / "tokens.json"
    tok = add_token(tokens, "partner-a")
    tok_small = add_token(tokens, "partner-b", quota_per_day=2)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pathstrat", "serve", "--package", str(world["pkg"]),
                             "--tokens", str(tokens), "--port", str(port), "--audit-log", str(d / "audit.jsonl"),
                             "--max-mb", "0.05"], stderr=subprocess.PIPE, text=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline, seen = time.monotonic() + 300, []  # a loaded machine imports torch slowly
    while time.monotonic() < deadline:
        if not sel.select(timeout=deadline - time.monotonic()):
            break
        line = proc.stderr.readline()
        seen.append(line)
        if "Application startup complete" in line or not line:
            break
    if proc.poll() is not None or not any("startup complete" in ln for ln in seen):
        proc.kill()
        pytest.fail("service did not start: " + "".join(seen[-20:]))
    yield {"url": f"http://127.0.0.1:{port}", "token": tok, "token_small": tok_small, "dir": d,
           "tokens": tokens}
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_service_refuses_bad_requests(world, service, tmp_path):
    import httpx

    sid = world["partner"]["slide_id"].iloc[0]
    body = (world["fdir"] / f"{sid}.h5").read_bytes()
    url, h = service["url"], {"Content-Type": "application/x-hdf5"}
    with httpx.Client(base_url=url, timeout=60) as c:
        assert c.post("/v1/predict", content=body, headers=h).status_code == 401
        assert c.post("/v1/predict", content=body, headers={**h, "Authorization": "Bearer nope"}).status_code == 401
        auth = {**h, "Authorization": f"Bearer {service['token']}"}
        big = tmp_path / "big.h5"
        write_features(big, np.ones((3000, 12), np.float32), np.zeros((3000, 2)), {"encoder_id": "synthetic"})
        assert c.post("/v1/predict", content=big.read_bytes(), headers=auth).status_code == 413
        wrong = tmp_path / "wrong.h5"
        write_features(wrong, np.ones((5, 8), np.float32), np.zeros((5, 2)), {"encoder_id": "synthetic"})
        r = c.post("/v1/predict", content=wrong.read_bytes(), headers=auth)
        assert r.status_code == 422 and "dim 8" in r.json()["detail"]
        nan = tmp_path / "nan.h5"
        x = np.ones((5, 12), np.float32)
        x[1, 1] = np.nan
        write_features(nan, x, np.zeros((5, 2)), {"encoder_id": "synthetic"})
        r = c.post("/v1/predict", content=nan.read_bytes(), headers=auth)
        assert r.status_code == 422 and "NaN or infinite" in r.json()["detail"]
        assert str(tmp_path) not in r.text
        assert c.post("/v1/predict", content=b"not hdf5", headers=auth).status_code == 422
        small = {**h, "Authorization": f"Bearer {service['token_small']}"}
        codes = [c.post("/v1/predict", content=body, headers=small).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").json()["paths"]["/v1/predict"]
    audit = [json.loads(ln) for ln in (service["dir"] / "audit.jsonl").read_text().splitlines()]
    assert {a["status"] for a in audit} >= {200, 401, 413, 422, 429}
    assert all(len(a["request_id"]) == 32 for a in audit)
    raw = (service["dir"] / "audit.jsonl").read_text()
    assert service["token"] not in raw and "features" not in raw
    stored = json.loads(service["tokens"].read_text())
    assert service["token"] not in json.dumps(stored)  # only hashes are kept


def test_remote_predictions_equal_local_package_predictions(world, service, tmp_path):
    d = world["d"]
    assert main(["predict", "--remote", service["url"], "--token", service["token"], "--features",
                 str(world["fdir"]), "--manifest", str(d / "partner.csv"), "--out", str(tmp_path / "remote")]) == 0
    assert main(["predict", "--package", str(world["pkg"]), "--features", str(world["fdir"]), "--manifest",
                 str(d / "partner.csv"), "--out", str(tmp_path / "local")]) == 0
    a = pd.read_csv(tmp_path / "remote" / "predictions.csv").sort_values("slide_id").reset_index(drop=True)
    b = pd.read_csv(tmp_path / "local" / "predictions.csv").sort_values("slide_id").reset_index(drop=True)
    assert list(a["slide_id"]) == list(b["slide_id"])
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-7)
    assert set(a["package_version"]) == {"1.0.0"}


def test_finetune_beats_the_package_on_a_shifted_partner_cohort(world, tmp_path, capsys):
    """The partner's cohort carries its signal in other feature directions (another generator
    seed: a planted domain shift). The package as-is is near chance; fine-tuning from it on the
    partner's folds recovers the signal; all three come with CIs; the new package names its parent."""
    d = tmp_path / "partner"
    fdir, man = make_feature_cohort(d, n_patients=48, dim=12, seed=99, tiles=(8, 16), tasks=("binary",),
                                    strength=4.0, dtype="float32")
    capsys.readouterr()
    assert main(["finetune", "--package", str(world["pkg"]), "--features", str(fdir), "--manifest", str(man),
                 "--out", str(tmp_path / "ft"), "--trainable", "attention", "--folds", "4", "--epochs", "15",
                 "--lr", "0.01", "--n-boot", "200"]) == 0
    comp = json.loads((tmp_path / "ft" / "comparison.json").read_text())
    asis, ft, scratch = (comp["models"][m] for m in ("as-is", "fine-tuned", "from scratch"))
    assert asis["mean"] < 0.7 and ft["mean"] > 0.8 and 0 <= scratch["mean"] <= 1
    assert comp["fine_tuned_minus_as_is"]["ci_low"] > 0  # the gain is more than bootstrap noise
    for v in (asis, ft, scratch):
        assert v["ci_low"] <= v["mean"] <= v["ci_high"]
    table = pd.read_csv(tmp_path / "ft" / "comparison.csv")
    assert set(table["model"]) == {"as-is", "fine-tuned", "from scratch"}
    new = tmp_path / "ft" / comp["new_package"]
    assert comp["new_package"] == "resp-1.1.0.pathstrat"
    with open_package(new) as (_, doc):
        assert doc["parent"] == "1.0.0" and doc["version"] == "1.1.0"
    from pathstrat.report import build_report, fmt

    html = build_report(tmp_path / "ft" / "finetuned", n_boot=20).read_text()
    sec = html.split('<section id="adaptation">')[1].split("</section>")[0]
    for m in ("as-is", "fine-tuned", "from scratch"):
        assert f'<td class="t">{m}</td>' in sec
    assert fmt(ft["mean"]) in sec and "Fine-tuned minus as-is" in sec
    # frozen projection: the fine-tuned fold models keep the package's input projection
    from safetensors.numpy import load_file

    base = load_file(str(world["pkg"] / "checkpoints" / "fold0.safetensors"))
    tuned = load_file(str(tmp_path / "ft" / "finetuned" / "checkpoints" / "fold0.safetensors"))
    proj = [k for k in base if k.startswith("proj.")]
    assert proj and all(np.array_equal(base[k], tuned[k]) for k in proj)
    assert not all(np.array_equal(base[k], tuned[k]) for k in base if k.startswith("heads."))


def test_predict_from_slides_as_pinned_equals_the_sponsors_run(tmp_path):
    """train -> package -> predict from the slides of a second generated cohort (tiled and embedded
    by the package's pins) equals tiling, embedding and predicting with the original run."""
    from pathstrat.encoders.embed import embed_cohort
    from pathstrat.synthetic import make_slide
    from pathstrat.tiling import TilingParams, tile_cohort

    rows = []
    for i in range(20):
        s = make_slide(tmp_path / "slides" / f"s{i}.svs", width=900, height=700, mpp=0.5, seed=200 + i,
                       layout={"tissue": 0.7})
        rows.append({"slide_id": f"s{i}", "path": str(s.path), "patient_id": f"p{i}", "responder": i % 2})
    df = pd.DataFrame(rows)
    sponsor, partner = df.iloc[:14], df.iloc[14:]
    sponsor.to_csv(tmp_path / "sponsor.csv", index=False)
    partner.to_csv(tmp_path / "partner.csv", index=False)
    params = TilingParams(target_mpp=1.0, tile_px=112, min_tissue=0.1)
    tile_cohort(sponsor, tmp_path / "sp", params, progress=False)
    res = embed_cohort(sponsor, tmp_path / "sp", tmp_path / "sp", "builtin", workers=0)
    assert main(["train", "--features", str(res.features_dir), "--manifest", str(tmp_path / "sponsor.csv"),
                 "--out", str(tmp_path / "run"), "--target", "responder", "--folds", "2", "--epochs", "3",
                 "--model", "meanpool", "--hparam", "dim=8"]) == 0
    pkg = build_package(tmp_path / "run", tmp_path / "m-1.0.0.pathstrat", name="m", version="1.0.0")
    assert main(["predict", "--package", str(pkg), "--slides", "--manifest", str(tmp_path / "partner.csv"),
                 "--out", str(tmp_path / "pkgpred")]) == 0
    tile_cohort(partner, tmp_path / "pa", params, progress=False)
    res2 = embed_cohort(partner, tmp_path / "pa", tmp_path / "pa", "builtin", workers=0)
    assert main(["predict", "--run", str(tmp_path / "run"), "--features", str(res2.features_dir),
                 "--manifest", str(tmp_path / "partner.csv"), "--out", str(tmp_path / "runpred")]) == 0
    a = pd.read_csv(tmp_path / "pkgpred" / "predictions.csv").sort_values("slide_id").reset_index(drop=True)
    b = pd.read_csv(tmp_path / "runpred" / "predictions.csv").sort_values("slide_id").reset_index(drop=True)
    assert list(a["slide_id"]) == list(partner["slide_id"])
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-7)
    doc = json.loads((pkg / "package.json").read_text())
    assert doc["pipeline"]["tiling"]["tile_px"] == 112 and doc["pipeline"]["tiling"]["target_mpp"] == 1.0
    assert doc["pipeline"]["encoder"]["encoder_id"] == "builtin"


def test_one_far_slide_does_not_condemn_a_cohort_when_calibration_saw_no_false_alarm():
    """Few training slides can give a measured out-of-fold false-alarm rate of 0; the cohort test
    then uses the nominal 1 - quantile (1 %), so 1 flagged slide of 20 is not "outside" while
    10 of 20 are (binomial p = 0.18 vs < 1e-14 by hand)."""
    from scipy.stats import binom

    from pathstrat.sharing import OODModel, check_cohort

    m = OODModel(np.zeros(2), np.eye(2), threshold=3.0, quantile=0.99, false_alarm_oof=0.0, n_train_slides=30)
    x = np.zeros((20, 2))
    x[0] = [10, 0]
    one = check_cohort(m, x, [f"s{i}" for i in range(20)])
    assert one["n_flagged"] == 1 and not one["cohort_outside"]
    assert one["cohort_p_value"] == pytest.approx(binom.sf(0, 20, 0.01))
    x[:10] = [10, 0]
    assert check_cohort(m, x, [f"s{i}" for i in range(20)])["cohort_outside"]
