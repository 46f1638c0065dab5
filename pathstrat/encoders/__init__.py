"""Tile encoders: a registry of self-describing specs, offline weights, and a builder.

Public API::

    get_spec(id) -> EncoderSpec          list_specs() -> [EncoderSpec]
    build_encoder(id, weights=None|"random"|path, device="auto") -> Encoder
    custom_timm_spec(id, arch, dim=..., ...)   # register your own timm encoder
    warn_if_random(attrs)                # call before training on feature files

``Encoder`` has ``.spec``, ``.weights_sha256``, ``.weights_random``, ``.transform`` (with
``describe()``) and ``__call__(uint8 (B,H,W,3) batch) -> float32 (B, dim)``.
"""

from __future__ import annotations

from pathstrat.encoders import catalog  # noqa: F401, E402 - registers the built-in specs (spec.py imports no catalogue)
from pathstrat.encoders.model import (
    RANDOM,
    Encoder,
    RandomWeightsWarning,
    build_encoder,
    resolve_device,
    warn_if_random,
)
from pathstrat.encoders.spec import (
    SPECS,
    EncoderSpec,
    custom_timm_spec,
    get_spec,
    list_specs,
    register_spec,
)
from pathstrat.encoders.transforms import EncoderTransform
from pathstrat.encoders.weights import resolve_weights, weights_found

__all__ = [
    "RANDOM", "SPECS", "Encoder", "EncoderSpec", "EncoderTransform", "RandomWeightsWarning",
    "build_encoder", "custom_timm_spec", "get_spec", "list_specs", "register_spec",
    "resolve_device", "resolve_weights", "warn_if_random", "weights_found",
]
