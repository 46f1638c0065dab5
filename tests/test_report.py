"""The HTML report: self-contained, every section present, renders in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pathstrat.report import ORDER, build_report

N_PAT = 40


def make_tiff(path: Path) -> Path:
    """Tiled JPEG TIFF (0.5 µm/px): white left half, blue right half."""
    import tifffile

    img = np.full((768, 1024, 3), 240, np.uint8)
    img[:, 512:] = (40, 60, 200)
    tifffile.imwrite(path, img, tile=(256, 256), compression="jpeg", photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    return path


def grid_coords() -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(0, 1024, 128), np.arange(0, 768, 128))
    return np.c_[xs.ravel(), ys.ravel()].astype(np.int64)


def write_attention(path: Path, coords: np.ndarray, values: dict, **attrs) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["coords"] = coords
        for k, v in values.items():
            f[k] = v
        f.attrs.update(attrs)


def _make_run(root: Path) -> tuple[Path, Path]:
    """A small but complete run directory (as `pathstrat train` documents it) plus a manifest."""
    rng = np.random.default_rng(3)
    run = root / "run"
    run.mkdir(parents=True)
    slide = make_tiff(root / "slide.tiff")
    pid = [f"P{i:02d}" for i in range(N_PAT)]
    sid = [f"S{i:02d}" for i in range(N_PAT)]
    fold = np.arange(N_PAT) % 4
    risk = rng.normal(0, 1, N_PAT)
    time = rng.exponential(np.exp(-risk) * 30)
    event = (rng.random(N_PAT) < 0.75).astype(int)
    msi = (rng.random(N_PAT) < 0.4).astype(int)
    prob = np.clip(0.35 * msi + 0.65 * rng.random(N_PAT), 0, 1)
    man = pd.DataFrame({"slide_id": sid, "path": str(slide), "patient_id": pid, "time": time,
                        "event": event, "arm": np.arange(N_PAT) % 2, "age": rng.normal(60, 8, N_PAT),
                        "msi": msi, "response": (rng.random(N_PAT) < 0.3).astype(int)})
    man.to_csv(root / "manifest.csv", index=False)
    base = {"slide_id": sid, "patient_id": pid, "fold": fold, "repeat": 0}
    preds = pd.concat([pd.DataFrame({**base, "target": "msi", "y_true": msi, "score": prob}),
                       pd.DataFrame({**base, "target": "os", "y_true": event, "score": risk,
                                     "risk": risk, "time": time, "event": event})])
    preds.to_csv(run / "predictions.csv", index=False)
    (run / "metrics.json").write_text(json.dumps(
        {"msi": {"auroc": {"mean": 0.71, "std": 0.05, "ci_low": 0.6, "ci_high": 0.8}},
         "os": {"c_index": {"mean": 0.66, "std": 0.04, "ci_low": 0.58, "ci_high": 0.74}}}))
    pd.DataFrame({"patient_id": pid, "repeat": 0, "fold": fold}).to_csv(run / "folds.csv", index=False)
    ep = np.arange(6)
    pd.concat([pd.DataFrame({"repeat": 0, "fold": k, "epoch": ep, "train_loss": 0.7 * np.exp(-ep / 3) + 0.05 * k,
                             "val_loss": 0.72 - 0.03 * ep + 0.01 * k}) for k in range(4)]
              ).to_csv(run / "history.csv", index=False)
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"encoder": {"id": "uni2-h"}, "model": {"name": "abmil"}, "targets": ["msi", "os"]}))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "model.json").write_text(json.dumps(
        {"model": "abmil", "encoder_id": "uni2-h", "weights_sha256": "random", "weights_random": True}))
    pd.DataFrame({"slide_id": sid, "tissue_area_mm2": rng.uniform(5, 50, N_PAT),
                  "n_tiles": rng.integers(100, 900, N_PAT)}).to_csv(run / "qc.csv", index=False)
    pd.DataFrame({"stage": ["tile"], "slide_id": ["S99"], "path": ["x.svs"], "error_type": ["SlideReadError"],
                  "reason": ["unreadable"]}).to_csv(run / "failures.csv", index=False)
    c = grid_coords()
    for s in sid:
        write_attention(run / "attention" / f"{s}.h5", c, {"attention": rng.random(len(c))},
                        tile_size_level0=128.0, tile_px=64)
    return run, root / "manifest.csv"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, Path]:
    """Run dir after `stratify`, `select`, `heatmap` and `report` through the CLI."""
    from pathstrat.cli import main

    run, man = _make_run(tmp_path_factory.mktemp("report"))
    assert main(["stratify", "--predictions", str(run / "predictions.csv"), "--manifest", str(man),
                 "--target", "os", "--score-col", "risk", "--time-col", "time", "--event-col", "event",
                 "--arm-col", "arm", "--covariates", "age", "--n-boot", "50", "--out", str(run)]) == 0
    assert main(["select", "--predictions", str(run / "predictions.csv"), "--target", "msi",
                 "--rule", "sensitivity", "--value", "0.9", "--manifest", str(man),
                 "--response-col", "response", "--out", str(run)]) == 0
    assert main(["trial-design", "--selection", str(run / "selection.json"), "--predictions",
                 str(run / "predictions.csv"), "--hr-positive", "0.6", "--n-draws", "200",
                 "--out", str(run / "trial")]) == 0
    assert main(["heatmap", "--run", str(run), "--manifest", str(man), "--top-k", "3"]) == 0
    assert main(["report", str(run), "--manifest", str(man), "--n-boot", "50"]) == 0
    return run, man


def _images(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b)))
            for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_report_is_self_contained_with_every_section(full_run):
    run, _ = full_run
    html = (run / "report.html").read_text()
    for key in ORDER:
        assert f'<section id="{key}">' in html, key
    assert ORDER == ["cohort", "performance", "learning", "adaptation", "survival", "forest",
                     "selection", "trial", "heatmaps", "config"]
    assert "not available" not in html.split('id="performance"')[1].split('id="config"')[0].replace(
        "not available: not a binary target", "").replace(
        "not available: comparison.json absent: written by `pathstrat finetune --package`", "")
    assert not re.search(r"<(script|link)\b", html)
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # nothing external
    imgs = _images(html)
    # ROC/PR/calibration, KM, forest, >= 4 heatmaps + 4 montages
    assert len(imgs) >= 11
    assert all(im.size[0] > 100 and np.asarray(im.convert("L")).std() > 5 for im in imgs)
    # cohort flow numbers, provenance and random-weights warning
    assert "slides failed at tile</td><td>1" in html
    assert "patients with predictions</td><td>40" in html
    assert "uni2-h" in html and "RANDOM weights" in html
    sel = json.loads((run / "selection.json").read_text())
    assert f"{sel['threshold']:.4g}" in html and "response_rate_selected" in html
    s = json.loads((run / "survival.json").read_text())
    assert f"{s['c_index']:.3f}" in html
    trial = json.loads((run / "trial" / "trial_design.json").read_text())
    section = html.split('<section id="trial">')[1].split("</section>")[0]
    from pathstrat.report import fmt
    assert f"Prevalence {fmt(trial['inputs']['prevalence'])}" in section
    learning = html.split('<section id="learning">')[1].split("</section>")[0]
    hist = pd.read_csv(run / "history.csv")
    assert "data:image/png;base64," in learning and f"<td>{hist.groupby(['repeat', 'fold']).ngroups}</td>" in learning
    for name, d in trial["designs"].items():
        assert f'<td class="t">{name.replace("_", " ")}</td>' in section
        assert fmt(d["enrolled"], 3) in section


def test_report_sections_present_when_inputs_missing(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    pd.DataFrame({"slide_id": ["a", "b"], "patient_id": ["a", "b"], "target": "x", "y_true": [0, 1],
                  "score": [0.2, 0.7]}).to_csv(run / "predictions.csv", index=False)
    html = build_report(run, n_boot=20).read_text()
    for key in ORDER:
        assert f'<section id="{key}">' in html
    for why in ("survival.json absent", "selection.json/selection.csv absent",
                "heatmaps/index.csv absent", "config.yaml absent", "failures.csv absent",
                "trial_design.json absent", "history.csv absent", "comparison.json absent"):
        assert f"not available: {why}" in html, why


def test_report_only_reads_files(tmp_path):
    """Rendering a training run directory computes nothing: the missing stages say so."""
    run, _ = _make_run(tmp_path)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    html = build_report(run, n_boot=20).read_text()
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == [*before, Path("report.html")]
    assert "not available: survival.json absent" in html
    assert "not available: selection.json/selection.csv absent" in html


def test_derived_stages_then_report(tmp_path):
    """`derive_missing` (called by `pathstrat report` and the runner) writes survival and
    selection with defaults; the report shows them with its notes."""
    from pathstrat.runner.derived import derive_missing

    run, _ = _make_run(tmp_path)
    notes = derive_missing(run, n_boot=20)
    assert set(notes) == {"survival", "selection"}
    html = build_report(run, n_boot=20, notes=notes).read_text()
    surv = json.loads((run / "survival" / "survival.json").read_text())
    assert surv["target"] == "os" and surv["cutoff"]["source"] == "other_folds_oof"
    sel = json.loads((run / "selection" / "selection.json").read_text())
    assert sel["target"] == "msi" and sel["rule"] == "sensitivity" and sel["target_value"] == 0.95
    section = {k: html.split(f'<section id="{k}">')[1].split("</section>")[0] for k in ORDER}
    assert "computed by `pathstrat report` for target &#x27;os&#x27;" in section["survival"]
    assert "not available" not in section["survival"] and "not available" not in section["forest"]
    assert "computed by `pathstrat report` for target &#x27;msi&#x27;" in section["selection"]
    assert f"{surv['c_index']:.3f}" in section["survival"]
    assert "not available: heatmaps/index.csv absent" in section["heatmaps"]
    assert derive_missing(run, n_boot=20) == {}  # outputs present: nothing recomputed


def test_report_cli_derives_missing_stages(tmp_path):
    """`pathstrat report RUN` on a training run directory: survival and selection computed,
    as before the report stopped computing them itself; --no-compute renders the files only."""
    from pathstrat.cli import main

    run, _ = _make_run(tmp_path)
    assert main(["report", str(run), "--no-compute", "--n-boot", "20"]) == 0
    assert not (run / "survival").exists() and not (run / "selection").exists()
    assert main(["report", str(run), "--n-boot", "20"]) == 0
    html = (run / "report.html").read_text()
    surv = json.loads((run / "survival" / "survival.json").read_text())
    assert f"{surv['c_index']:.3f}" in html and "computed by `pathstrat report`" in html


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("Debian chromium is not installed (scripts/setup.sh --test installs it)")
    return exe


def _run_chromium(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln
            or "Failed to load resource" in ln or "Not allowed to load" in ln]


def test_console_error_check_catches_errors(tmp_path):
    """Negative control: the console check used on the report does see a page's errors."""
    exe = _chromium()
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefined_fn();</script>x</body></html>")
    proc = _run_chromium(exe, tmp_path, "--enable-logging=stderr", "--v=0",
                         f"--screenshot={tmp_path / 'bad.png'}", "--window-size=200,200", bad.as_uri())
    assert any("undefined_fn" in ln for ln in _console_errors(proc.stderr))


def test_report_renders_in_headless_chromium(full_run, tmp_path):
    exe = _chromium()
    run, _ = full_run
    url = (run / "report.html").resolve().as_uri()
    shot = tmp_path / "shot.png"
    proc = _run_chromium(exe, tmp_path, "--enable-logging=stderr", "--v=0",
                         f"--screenshot={shot}", "--window-size=1280,4000", url)
    assert shot.exists(), proc.stderr[-2000:]
    assert not _console_errors(proc.stderr), _console_errors(proc.stderr)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (4000, 1280)
    assert img.std() > 20  # not blank
    q = img // 8
    colours = len(np.unique(q[..., 0] * 1024 + q[..., 1] * 32 + q[..., 2]))
    assert colours > 200  # figures (curves, heatmaps, tiles) rendered, not just text
    dom = _run_chromium(exe, tmp_path, "--dump-dom", url).stdout
    for key in ORDER:
        assert f'id="{key}"' in dom, key
    assert dom.count("data:image/png;base64,") >= 11


def test_calibration_handles_bins_with_all_or_no_events():
    """Bins whose observed fraction is exactly 0 or 1 must not give negative error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pathstrat.report import plot_calibration

    s = np.linspace(0.01, 0.99, 80)  # 8 bins of 10: Wilson's bound for 10/10 is 1 - 1e-16
    y = (s > 0.5).astype(float)  # every bin is pure: fractions 0 or 1
    fig, ax = plt.subplots()
    assert plot_calibration(y, s, ax) is ax
    assert len(ax.lines) >= 1
    plt.close(fig)
