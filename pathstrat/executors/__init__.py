"""Executors: where per-slide work runs (this machine, a Slurm job array, Ray actors).

Thin layers over existing engines (a process pool, submitit + Slurm, Ray); the per-slide work
itself is always the stage's own function (see :mod:`pathstrat.executors.work`).

Every module of this package other than ``base`` and ``work`` is an executor that registers
itself in :data:`EXECUTORS` when imported; :func:`load_executors` imports them all, so adding
an executor is adding one file (its config section becomes ``executor.<name>:``).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pathstrat.executors.base import (
    EXECUTORS,
    Executor,
    ExecutorSection,
    MapResult,
    Resources,
    SlideOutcome,
    SlideWork,
    chunk_rows,
)

__all__ = ["EXECUTORS", "Executor", "ExecutorSection", "MapResult", "Resources", "SlideOutcome",
           "SlideWork", "chunk_rows", "executor_classes", "load_executors", "make_executor"]

_NOT_EXECUTORS = {"base", "work"}
#: the shipped executors first, in this order (stable key order of the resolved pipeline.yaml)
_FIRST = ("local", "slurm", "ray")


def load_executors() -> list[str]:
    """Import every executor module of this package (light: engines load when one is built)."""
    names = sorted((m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_EXECUTORS),
                   key=lambda n: (_FIRST.index(n) if n in _FIRST else len(_FIRST), n))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


def executor_classes() -> dict[str, type[Executor]]:
    """Executor classes by name (each module registers the executor named like itself)."""
    names = load_executors()
    return {name: EXECUTORS.get(name) for name in names if name in EXECUTORS}


def make_executor(kind: str, cfg: Any = None, *, address: str | None = None) -> Executor:
    """Build the executor ``kind`` from its section of a PipelineConfig (``cfg.executor.<kind>``).

    Without ``cfg`` the section's defaults are used. Importing the engine (submitit, ray)
    happens here, so a missing optional extra raises
    :class:`~pathstrat.errors.MissingDependencyError` naming it.
    """
    load_executors()
    cls = EXECUTORS.get(kind)
    section = getattr(cfg.executor, kind, None) if cfg is not None else None
    if section is None and cls.Config is not None:
        section = cls.Config()
    if address and section is not None and "address" in type(section).model_fields:
        section = section.model_copy(update={"address": address})
    layout = None
    if cfg is not None:
        from pathstrat.layout import RunLayout

        layout = RunLayout.from_config(cfg)
    return cls.from_config(section, layout)
