"""`pathstrat doctor`: what this machine offers (versions, OpenSlide, GPUs, weights, disk, Slurm, Ray).

Every check is cheap, never downloads and never starts a cluster: Slurm is "reachable" when
``scontrol ping`` answers, Ray when a running cluster is advertised (``RAY_ADDRESS`` or the
session file ``ray start`` leaves behind). Each line has a level: ``ok``, ``warn`` (works, but
something is missing or will be slow: weights not found, an optional extra, no GPU, little disk)
or ``error`` (a required piece is broken); `pathstrat doctor` exits 1 when any line is an error.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LEVELS = ("ok", "warn", "error")
#: Free disk below these is a warning / an error (GiB); tiles and features of a cohort need tens.
DISK_WARN_GIB, DISK_ERROR_GIB = 20.0, 1.0


@dataclass
class Check:
    """One line of the doctor's report."""

    section: str
    name: str
    ok: bool
    detail: str
    level: str = ""

    def __post_init__(self) -> None:
        if not self.level:
            self.level = "ok" if self.ok else "error"
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, not {self.level!r}")
        self.ok = self.level != "error"


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
            out.append(Check("versions", mod, True, ver, "warn"))
        else:
            out.append(Check("versions", mod, ok, ver))
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
            try:
                free, total = torch.cuda.mem_get_info(i)
                mem = f"{free / 2**30:.1f} of {total / 2**30:.0f} GiB free"
            except RuntimeError:
                mem = f"{p.total_memory / 2**30:.0f} GiB"
            out.append(Check("torch", f"cuda:{i}", True, f"{p.name}, {mem}"))
    else:
        out.append(Check("torch", "cuda", True, "no CUDA device: CPU only (embedding with a "
                         "foundation encoder will be slow)", "warn"))
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
    out = [check_hf_cache()]
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
        gated = ", gated: accept its licence on the Hub first" if spec.gated else ""
        if found:
            out.append(Check("encoders", spec.id, True, "weights found"))
        elif spec.hf_repo:
            out.append(Check("encoders", spec.id, True,
                             f"weights not found {why}: huggingface-cli download {spec.hf_repo} "
                             f"(into the cache above{gated}), or pass --weights PATH", "warn"))
        else:
            out.append(Check("encoders", spec.id, True,
                             f"weights not found {why}: pass --weights PATH to the checkpoint", "warn"))
    return out


def check_hf_cache() -> Check:
    """Where Hugging Face weights are looked up (never downloaded by pathstrat)."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return Check("encoders", "hf cache", True, "huggingface_hub not installed: weights only "
                     "from --weights PATH", "warn")
    p = Path(HF_HUB_CACHE)
    if p.is_dir():
        n = sum(1 for q in p.iterdir() if q.name.startswith("models--"))
        return Check("encoders", "hf cache", True, f"{p} ({n} model repo(s))")
    return Check("encoders", "hf cache", True, f"{p} does not exist (set HF_HOME or HF_HUB_CACHE "
                 "to where weights were downloaded)", "warn")


def check_disk(path: str | os.PathLike = ".") -> list[Check]:
    """Free space where outputs go (the current folder unless given)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free / 2**30
    except OSError as exc:
        return [Check("disk", str(path), False, f"cannot read free space: {exc}")]
    detail = f"{free:.1f} GiB free at {p.resolve()}"
    if free < DISK_ERROR_GIB:
        return [Check("disk", "free", False, f"{detail}: free space before running", "error")]
    if free < DISK_WARN_GIB:
        return [Check("disk", "free", True, f"{detail}: tiles and features of a cohort need tens of GiB",
                      "warn")]
    return [Check("disk", "free", True, detail)]


def check_slurm() -> list[Check]:
    if shutil.which("sbatch") is None:
        return [Check("slurm", "slurm", True, "not installed (sbatch not on PATH)", "warn")]
    try:
        res = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
        up = res.returncode == 0 and "UP" in res.stdout
        detail = " ".join((res.stdout or res.stderr).split())[:200]
    except (OSError, subprocess.TimeoutExpired) as exc:
        up, detail = False, str(exc)
    ok_sub, sub = _version("submitit")
    sub_txt = f"submitit {sub}" if ok_sub else "submitit missing: pip install \"pathstrat[slurm]\""
    return [Check("slurm", "controller", True, f"{'reachable' if up else 'not reachable'}: {detail}; {sub_txt}",
                  "ok" if up and ok_sub else "warn")]


def check_ray() -> list[Check]:
    ok, ver = _version("ray")
    if not ok:
        return [Check("ray", "ray", True, "not installed; pip install \"pathstrat[ray]\"", "warn")]
    addr = os.environ.get("RAY_ADDRESS")
    session = Path("/tmp/ray/ray_current_cluster")
    if addr:
        detail = f"ray {ver}; cluster advertised by RAY_ADDRESS={addr}"
    elif session.exists():
        detail = f"ray {ver}; running cluster at {session.read_text().strip()}"
    else:
        detail = f"ray {ver}; no running cluster (a local one is started by --executor ray)"
    return [Check("ray", "cluster", True, detail)]


CHECKS = (check_versions, check_openslide, check_torch, check_encoders, check_disk, check_slurm,
          check_ray)


def run_checks(out_dir: str | os.PathLike | None = None) -> list[Check]:
    """Every check, in report order (``out_dir``: where free disk is measured)."""
    out: list[Check] = []
    for fn in CHECKS:
        out.extend(fn(out_dir or ".") if fn is check_disk else fn())
    return out
