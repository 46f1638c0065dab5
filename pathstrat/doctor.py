"""`pathstrat doctor`: what this machine offers (versions, OpenSlide, GPUs, weights, Slurm, Ray).

Every check is cheap, never downloads and never starts a cluster: Slurm is "reachable" when
``scontrol ping`` answers, Ray when a running cluster is advertised (``RAY_ADDRESS`` or the
session file ``ray start`` leaves behind).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    """One line of the doctor's report."""

    section: str
    name: str
    ok: bool
    detail: str


# distribution names (versions are read from package metadata: nothing heavy is imported)
PACKAGES = ("numpy", "pandas", "torch", "torchvision", "timm", "h5py", "lifelines", "scikit-learn",
            "openslide-python", "openslide-bin", "tifffile", "pydantic", "submitit", "ray", "flwr")


def _version(dist: str) -> tuple[bool, str]:
    from importlib import metadata

    try:
        return True, metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False, "not installed"


def check_versions() -> list[Check]:
    import pathstrat

    out = [Check("versions", "python", True, platform.python_version()),
           Check("versions", "pathstrat", True, pathstrat.__version__)]
    optional = {"submitit": "slurm", "ray": "ray", "flwr": "federated"}
    for mod in PACKAGES:
        ok, ver = _version(mod)
        if not ok and mod in optional:
            ver += f"; optional: pip install \"pathstrat[{optional[mod]}]\""
        out.append(Check("versions", mod, ok or mod in optional, ver))
    return out


def check_openslide() -> list[Check]:
    try:
        import openslide
    except Exception as exc:  # noqa: BLE001
        return [Check("openslide", "library", False, f"not loadable: {exc}")]
    lib = getattr(openslide, "__library_version__", "?")
    return [Check("openslide", "library", True, f"OpenSlide {lib}, openslide-python {openslide.__version__}")]


def check_torch() -> list[Check]:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return [Check("torch", "torch", False, f"not importable: {exc}")]
    out = [Check("torch", "build", True, f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(Check("torch", f"cuda:{i}", True, f"{p.name}, {p.total_memory / 2**30:.0f} GiB"))
    else:
        out.append(Check("torch", "cuda", True, "no CUDA device (CPU only)"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append(Check("torch", "mps", True, "Apple MPS available"))
    return out


def check_encoders() -> list[Check]:
    try:
        from pathstrat import encoders
        from pathstrat.encoders.weights import weights_found
    except Exception as exc:  # noqa: BLE001
        return [Check("encoders", "registry", False, f"not importable: {exc}")]
    out = []
    for spec in encoders.list_specs():
        if spec.family == "builtin":
            out.append(Check("encoders", spec.id, True, "built in (no weights needed)"))
            continue
        try:
            found = weights_found(spec)
        except Exception as exc:  # noqa: BLE001
            found, why = False, f"({type(exc).__name__})"
        else:
            why = ""
        gated = ", gated" if spec.gated else ""
        where = spec.hf_repo or "local file"
        out.append(Check("encoders", spec.id, True,
                         ("weights found" if found else f"weights not found {why}({where}{gated})").strip()))
    return out


def check_slurm() -> list[Check]:
    if shutil.which("sbatch") is None:
        return [Check("slurm", "slurm", True, "not installed (sbatch not on PATH)")]
    try:
        res = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
        up = res.returncode == 0 and "UP" in res.stdout
        detail = " ".join((res.stdout or res.stderr).split())[:200]
    except (OSError, subprocess.TimeoutExpired) as exc:
        up, detail = False, str(exc)
    ok_sub, sub = _version("submitit")
    sub_txt = f"submitit {sub}" if ok_sub else "submitit missing: pip install \"pathstrat[slurm]\""
    return [Check("slurm", "controller", True, f"{'reachable' if up else 'not reachable'}: {detail}; {sub_txt}")]


def check_ray() -> list[Check]:
    ok, ver = _version("ray")
    if not ok:
        return [Check("ray", "ray", True, "not installed; pip install \"pathstrat[ray]\"")]
    addr = os.environ.get("RAY_ADDRESS")
    session = Path("/tmp/ray/ray_current_cluster")
    if addr:
        detail = f"ray {ver}; cluster advertised by RAY_ADDRESS={addr}"
    elif session.exists():
        detail = f"ray {ver}; running cluster at {session.read_text().strip()}"
    else:
        detail = f"ray {ver}; no running cluster (a local one is started by --executor ray)"
    return [Check("ray", "cluster", True, detail)]


CHECKS = (check_versions, check_openslide, check_torch, check_encoders, check_slurm, check_ray)


def run_checks() -> list[Check]:
    """Every check, in report order."""
    out: list[Check] = []
    for fn in CHECKS:
        out.extend(fn())
    return out
