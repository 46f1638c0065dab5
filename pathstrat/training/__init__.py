"""MIL training: preloaded bag datasets, the per-epoch step, cross-validation and prediction.

Public API: ``train_cv``, ``predict``,
``TrainConfig``; building blocks for other loops (federated): ``load_bags``, ``BagStore``,
``BagDataset``, ``collate_bags``, ``make_loader``, ``train_one_epoch``, ``evaluate``, ``fit``,
``TrainParams``, ``make_splits``, ``load_fold_model``.
"""

from __future__ import annotations

from pathstrat.training.config import TrainConfig
from pathstrat.training.cv import build_specs, train_cv
from pathstrat.training.data import BagDataset, BagStore, collate_bags, load_bags, make_loader
from pathstrat.training.engine import (
    EvalResult,
    TrainParams,
    evaluate,
    fit,
    make_optimizer,
    resolve_device,
    set_seed,
    train_one_epoch,
)
from pathstrat.training.predict import load_fold_model, load_run_spec, predict
from pathstrat.training.splits import check_no_overlap, inner_split, make_splits

__all__ = [
    "BagDataset", "BagStore", "EvalResult", "TrainConfig", "TrainParams", "build_specs",
    "check_no_overlap", "collate_bags", "evaluate", "fit", "inner_split", "load_bags",
    "load_fold_model", "load_run_spec", "make_loader", "make_optimizer", "make_splits", "predict",
    "resolve_device", "set_seed", "train_cv", "train_one_epoch",
]
