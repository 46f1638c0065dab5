"""Input standardisation that travels with the model (fitted on training-fold patients only).

:func:`fit_scaler` computes per-feature mean and standard deviation over every tile of the given
(training) bags in float64; :func:`attach_scaler` adds them to a model as an ``input_scaler``
submodule whose buffers (``input_scaler.mean``, ``input_scaler.std``) are saved in the model's
safetensors checkpoint, plus a forward pre-hook that standardises ``x`` before the model sees it.
Every consumer that rebuilds a model with :func:`pathstrat.training.load_fold_model` (``predict``,
the Python API, federated fine-tuning of a run) therefore applies the same scaling; a checkpoint
without these keys loads unscaled (older runs, ``--no-standardize``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

#: State-dict keys of the scaler inside a checkpoint.
SCALER_KEYS = ("input_scaler.mean", "input_scaler.std")
#: Feature-file attribute by which an encoder (or another tool) declares its features normalised.
NORMALISED_ATTR = "features_normalized"
_MIN_STD = 1e-6


class FeatureScaler(nn.Module):
    """``(x - mean) / std`` per feature; constant features (std < 1e-6) keep std 1."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().to(torch.float32).clone())
        self.register_buffer("std", std.detach().to(torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def fit_scaler(bags: Iterable[torch.Tensor]) -> FeatureScaler:
    """Per-feature mean/std (population) over all tiles of ``bags`` (the training fold's bags)."""
    s = s2 = None
    n = 0
    for x in bags:
        a = x.detach().to("cpu", torch.float64)
        s = a.sum(0) if s is None else s + a.sum(0)
        s2 = (a * a).sum(0) if s2 is None else s2 + (a * a).sum(0)
        n += a.shape[0]
    if s is None or n == 0:
        raise ValueError("fit_scaler needs at least one bag with tiles")
    mean = s / n
    var = (s2 / n - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std < _MIN_STD, torch.ones_like(std), std)
    return FeatureScaler(mean, std)


def _pre_hook(module: nn.Module, args: tuple[Any, ...]):
    if not args:
        return None
    return (module.input_scaler(args[0]), *args[1:])


def attach_scaler(model: nn.Module, scaler: FeatureScaler) -> nn.Module:
    """Add ``scaler`` as ``model.input_scaler`` and standardise the model's first input."""
    if getattr(model, "input_scaler", None) is None:
        model.register_forward_pre_hook(_pre_hook)
    model.input_scaler = scaler
    return model


def has_scaler_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True when a checkpoint's state dict carries scaler buffers."""
    return all(k in state for k in SCALER_KEYS)


def attach_from_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach a scaler shaped like the one in ``state`` (values are loaded with the weights)."""
    if has_scaler_state(state):
        attach_scaler(model, FeatureScaler(state[SCALER_KEYS[0]], state[SCALER_KEYS[1]]))
    return model


def scaler_record(scaler: FeatureScaler | None) -> dict[str, Any]:
    """The ``model.json`` entry describing a fold's scaler (the values are in the checkpoint)."""
    if scaler is None:
        return {"kind": "none"}
    mean, std = scaler.mean.numpy(), scaler.std.numpy()
    return {"kind": "standardize", "fitted_on": "training-fold patients",
            "tensors": list(SCALER_KEYS), "n_features": int(mean.size),
            "mean_abs_mean": float(np.abs(mean).mean()), "std_mean": float(std.mean())}
