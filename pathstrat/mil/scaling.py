"""Input scaling that travels with the model: per-feature standardisation as model buffers.

Features from different encoders (or other tools' files) come with their own scales; a MIL
model trained on raw features is slower to fit and worse on small cohorts. Every model built by
:func:`pathstrat.mil.build_model` carries two buffers, ``input_mean`` and ``input_inv_std``
(identity until fitted), and a forward pre-hook that standardises the tiles before the model
sees them. Because they are buffers they are saved in the safetensors checkpoint, so
``predict``, packages, the prediction service and federated clients apply exactly the scaling
the model was trained with, and nothing else has to remember it.

Statistics are fitted on the training patients of a fold only (:func:`fit_scaler`), never on
validation or test patients.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

SCALER_KEYS = ("input_mean", "input_inv_std")
EPS = 1e-6


def _scale(module: nn.Module, args: tuple, kwargs: dict):
    if args:
        x = args[0]
        return ((x - module.input_mean) * module.input_inv_std, *args[1:]), kwargs
    if "x" in kwargs:
        kwargs = {**kwargs, "x": (kwargs["x"] - module.input_mean) * module.input_inv_std}
    return args, kwargs


def attach_scaler(model: nn.Module, in_dim: int) -> nn.Module:
    """Add identity ``input_mean``/``input_inv_std`` buffers and the standardising pre-hook."""
    model.register_buffer("input_mean", torch.zeros(int(in_dim)))
    model.register_buffer("input_inv_std", torch.ones(int(in_dim)))
    model.register_forward_pre_hook(_scale, with_kwargs=True)
    return model


@torch.no_grad()
def fit_scaler(bags: Iterable[torch.Tensor], in_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of every feature over all tiles of ``bags`` (float64 sums)."""
    n = 0
    s = torch.zeros(int(in_dim), dtype=torch.float64)
    ss = torch.zeros(int(in_dim), dtype=torch.float64)
    for x in bags:
        x = x.detach().to("cpu", torch.float64)
        n += x.shape[0]
        s += x.sum(0)
        ss += (x * x).sum(0)
    if n == 0:
        raise ValueError("fit_scaler needs at least one tile")
    mean = s / n
    var = (ss / n - mean * mean).clamp_min(0.0)
    return mean.float(), var.sqrt().float()


@torch.no_grad()
def set_scaler(model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Set the model's standardisation (features with ~zero spread are centred, not scaled)."""
    std = std.to(model.input_inv_std.dtype)
    inv = torch.where(std > EPS, 1.0 / std.clamp_min(EPS), torch.ones_like(std))
    model.input_mean.copy_(mean.to(model.input_mean.dtype))
    model.input_inv_std.copy_(inv)


def is_identity(model: nn.Module) -> bool:
    """True when the model's scaler does nothing (not fitted, or scaling turned off)."""
    return bool(torch.all(model.input_mean == 0) and torch.all(model.input_inv_std == 1))
