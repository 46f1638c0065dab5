"""Target kinds: one module per kind, registered in :data:`KINDS` on import.

Importing this package imports every module in it, so a new kind is one file here that
subclasses :class:`TargetKind` and is decorated with :func:`register_kind`; the
``TargetSpec``, the training loop, evaluation, federated statistics and the test matrix
(tests/test_target_kinds.py, parametrised over ``KINDS.names()``) pick it up.
"""

from __future__ import annotations

import importlib
import pkgutil

from pathstrat.mil.kinds.base import KINDS, SurvivalKind, TargetKind, register_kind

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod != "base":
        importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["KINDS", "SurvivalKind", "TargetKind", "register_kind"]
