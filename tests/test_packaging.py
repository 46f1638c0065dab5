"""The built wheel is complete: configs, py.typed, LICENSE, version, and it runs outside the checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(target dir, env): the wheel built from a copy of the source, installed with --target."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "pathstrat", src / "pathstrat",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(src)], check=True, capture_output=True, timeout=600)
    (wheel,) = dist.glob("pathstrat-*.whl")
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    return wheel, target, env


def _run(args, env, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "pathstrat", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_wheel_contents(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for want in ("pathstrat/configs/demo.yaml", "pathstrat/configs/example_cohort.yaml",
                 "pathstrat/py.typed"):
        assert want in names, want
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "License-Expression: Apache-2.0" in text
    runtime = [ln for ln in text.splitlines() if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    # never-imported dependencies and test harness tools are not runtime requirements
    for gone in ("scikit-image", "rich", "psutil", "albumentations"):
        assert not any(ln.split()[1].startswith(gone) for ln in runtime), gone
    assert not any("@" in ln for ln in text.splitlines() if ln.startswith("Requires-Dist:"))
    assert "pathstrat/executors/minicluster.py" not in names


def test_installed_wheel_runs_outside_checkout(installed, tmp_path):
    _, target, env = installed
    where = subprocess.run([sys.executable, "-c", "import pathstrat; print(pathstrat.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(target)), where.stdout
    v = _run(["--version"], env, tmp_path)
    assert v.returncode == 0
    import tomllib

    want = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert v.stdout.strip() == f"pathstrat {want}"
    h = _run(["demo", "--help"], env, tmp_path)
    assert h.returncode == 0 and "--n-patients" in h.stdout
    # init writes the packaged template; a second init refuses to overwrite
    assert _run(["init", "study.yaml", "--template", "demo"], env, tmp_path).returncode == 0
    assert (tmp_path / "study.yaml").read_text() == (ROOT / "pathstrat/configs/demo.yaml").read_text()
    again = _run(["init", "study.yaml"], env, tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    # a small end-to-end analysis from the installed package
    td = _run(["trial-design", "--out", "td", "--prevalence", "0.4", "--sensitivity", "0.9",
               "--specificity", "0.8", "--hr-positive", "0.6"], env, tmp_path)
    assert td.returncode == 0, td.stderr
    assert (tmp_path / "td" / "trial_design.json").is_file()


def test_installed_wheel_runs_demo(installed, tmp_path):
    """`pathstrat demo` from the wheel finds its packaged config (it used to fail here)."""
    _, _, env = installed
    r = _run(["-q", "demo", "--out", "d", "--n-patients", "16", "--set", "train.folds=2",
              "--set", "train.epochs=2", "--set", "select.trial.simulate=0"], env, tmp_path,
             timeout=900)
    assert r.returncode in (0, 3), r.stderr[-2000:]
    assert (tmp_path / "d" / "run" / "report.html").is_file()


def _docker_ready() -> str:
    import shutil
    import subprocess

    if shutil.which("docker") is None:
        return "docker is not installed"
    r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    return "" if r.returncode == 0 and "Server Version" in r.stdout else "no reachable docker daemon"


def test_docker_image_builds_and_runs():
    import subprocess

    why = _docker_ready()
    if why:
        pytest.skip(why)
    root = Path(__file__).resolve().parents[1]
    tag = "pathstrat-test:latest"
    try:
        subprocess.run(["docker", "build", "-q", "-f", str(root / "containers" / "Dockerfile"), "-t", tag,
                        str(root)], check=True, timeout=1200)
        out = subprocess.run(["docker", "run", "--rm", tag, "--version"], capture_output=True, text=True,
                             check=True, timeout=300).stdout
        assert "pathstrat" in out
        subprocess.run(["docker", "run", "--rm", tag, "demo", "--help"], check=True, timeout=300,
                       capture_output=True)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)


def test_apptainer_definition_builds(tmp_path):
    import shutil
    import subprocess

    exe = shutil.which("apptainer") or shutil.which("singularity")
    if exe is None:
        pytest.skip("apptainer/singularity is not installed")
    root = Path(__file__).resolve().parents[1]
    dist = tmp_path / "ctx" / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(root)],
                   check=True, timeout=600)
    shutil.copytree(root / "containers", tmp_path / "ctx" / "containers")
    sif = tmp_path / "p.sif"
    subprocess.run([exe, "build", str(sif), "containers/pathstrat.def"], cwd=tmp_path / "ctx", check=True,
                   timeout=1800)
    out = subprocess.run([exe, "run", str(sif), "--version"], capture_output=True, text=True, check=True,
                         timeout=300).stdout
    assert "pathstrat" in out


def test_container_recipes_install_the_wheel_and_download_nothing():
    root = Path(__file__).resolve().parents[1]
    docker = (root / "containers" / "Dockerfile").read_text()
    apptainer = (root / "containers" / "pathstrat.def").read_text()
    assert "pip wheel" in docker and "pip install --no-cache-dir /wheels/*.whl" in docker
    assert "ENTRYPOINT [\"pathstrat\"]" in docker
    assert "%test" in apptainer and "pip install --no-cache-dir /opt/wheels/*.whl" in apptainer
    for text in (docker, apptainer):
        assert "huggingface-cli download" not in text and "hf_hub_download" not in text


def test_gpl_reference_libraries_never_ship_in_the_package():
    root = Path(__file__).resolve().parents[1] / "pathstrat"
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if re.search(r"^\s*(import|from)\s+(sksurv|trident)\b", p.read_text(encoding="utf-8"), re.M)]
    assert offenders == []
