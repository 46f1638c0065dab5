"""Executors: where per-slide work runs (this process, a Slurm job array, Ray actors).

Thin layers over existing engines (submitit + Slurm, Ray); the per-slide work itself is
always the stage's own function (see :mod:`pathstrat.executors.work`).
"""

from __future__ import annotations

from typing import Any

from pathstrat.executors.base import (
    EXECUTORS,
    Executor,
    MapResult,
    Resources,
    SlideOutcome,
    SlideWork,
    chunk_rows,
)

__all__ = ["EXECUTORS", "Executor", "MapResult", "Resources", "SlideOutcome", "SlideWork",
           "chunk_rows", "make_executor"]

_MODULES = {"local": "pathstrat.executors.local", "slurm": "pathstrat.executors.slurm",
            "ray": "pathstrat.executors.ray"}


def make_executor(kind: str, cfg: Any = None, *, address: str | None = None) -> Executor:
    """Build the executor ``kind`` from a PipelineConfig's ``executor`` section.

    Importing the engine (submitit, ray) happens here, so a missing optional extra raises
    :class:`~pathstrat.errors.MissingDependencyError` naming it.
    """
    import importlib

    if kind in _MODULES:
        importlib.import_module(_MODULES[kind])
    factory = EXECUTORS.get(kind)
    if cfg is None:
        return factory() if kind != "slurm" else factory("slurm-jobs")
    ex = cfg.executor
    if kind == "slurm":
        s = ex.slurm.model_dump()
        folder = s.pop("log_dir") or (cfg.out_dir / "slurm")
        return factory(folder, **s)
    if kind == "ray":
        r = ex.ray.model_dump()
        if address:
            r["address"] = address
        return factory(**r)
    return factory()
