"""MIL training: preloaded bag datasets, the per-epoch step, cross-validation and prediction.

Public API: ``train_cv``, ``predict``,
``TrainConfig``; building blocks for other loops (federated): ``load_bags``, ``BagStore``,
``BagDataset``, ``collate_bags``, ``make_loader``, ``train_one_epoch``, ``evaluate``, ``fit``,
``TrainParams``, ``make_splits``, ``load_fold_model``.

Names are imported on first use (PEP 562 ``__getattr__``), so ``pathstrat.training.config``
(the torch-free ``TrainConfig`` schema that :mod:`pathstrat.config` reads) loads without
torch. No submodule is named like an exported function (``predict`` lives in
``training.inference``), so a submodule import never shadows a public name.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule of pathstrat.training that defines it
_EXPORTS = {
    "TrainConfig": "config",
    "build_specs": "cv", "train_cv": "cv",
    "BagDataset": "data", "BagStore": "data", "collate_bags": "data", "load_bags": "data",
    "make_loader": "data",
    "EvalResult": "engine", "TrainParams": "engine", "evaluate": "engine", "fit": "engine",
    "make_optimizer": "engine", "resolve_device": "engine", "set_seed": "engine",
    "train_one_epoch": "engine",
    "load_fold_model": "inference", "load_run_spec": "inference", "predict": "inference",
    "check_no_overlap": "splits", "inner_split": "splits", "make_splits": "splits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        sub = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'pathstrat.training' has no attribute '{name}'") from None
    value = getattr(importlib.import_module(f"pathstrat.training.{sub}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
