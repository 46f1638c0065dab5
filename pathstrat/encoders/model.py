"""``build_encoder``: spec + weights -> a ready :class:`Encoder` (uint8 tiles in, features out)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from pathstrat.encoders.spec import EncoderSpec, get_spec
from pathstrat.encoders.transforms import EncoderTransform
from pathstrat.encoders.weights import ResolvedWeights, resolve_weights
from pathstrat.errors import ConfigError, MissingDependencyError
from pathstrat.features import RandomWeightsWarning, warn_if_random  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

RANDOM = "random"
_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def resolve_device(device: str | None = "auto"):
    """'auto' -> cuda when available else cpu; anything else is passed to torch.device."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Encoder:
    """A built encoder: spec, module, weights provenance and preprocessing.

    ``encoder(tiles)`` maps a uint8 (B,H,W,3) batch (numpy or tensor) to float32 (B, dim) CPU
    features; :meth:`forward_uint8` does the same for tiles already resized by
    :meth:`EncoderTransform.resize` (what the DataLoader workers do).
    """

    def __init__(self, spec: EncoderSpec, module, *, weights_sha256: str, weights_random: bool,
                 weights_source: str, device, compute_dtype: str, channels_last: bool,
                 resampled: list[str] | None = None) -> None:
        self.spec = spec
        self.module = module
        self.weights_sha256 = weights_sha256
        self.weights_random = weights_random
        self.weights_source = weights_source
        self.device = device
        self.compute_dtype = compute_dtype
        self.transform = EncoderTransform.from_spec(spec)
        self.channels_last = channels_last
        #: position tables resampled on load ("key:old->new tokens"), recorded in provenance
        self.resampled = list(resampled or [])

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def transform_description(self) -> str:
        return self.transform.describe()

    def attrs(self) -> dict[str, Any]:
        """Feature-file attrs describing this encoder (contract: ``pathstrat.features/1``)."""
        return {
            "encoder_id": self.spec.id,
            "encoder_dim": self.spec.dim,
            "weights_sha256": self.weights_sha256,
            "weights_random": self.weights_random,
            "weights_source": self.weights_source,
            "transform": self.transform_description,
            "dtype": self.compute_dtype,
            "pos_embed_resampled": ";".join(self.resampled),
            **self.spec.as_attrs(),
        }

    def _autocast(self):
        import contextlib

        import torch

        if self.device.type == "cuda" and self.compute_dtype != "fp32":
            return torch.autocast("cuda", dtype=getattr(torch, _TORCH_DTYPES[self.compute_dtype]))
        return contextlib.nullcontext()

    def forward_uint8(self, tiles):
        """Already-resized uint8 tiles -> float32 CPU features (B, dim)."""
        import torch

        with torch.inference_mode():
            x = self.transform.normalize(tiles, device=self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                out = self.module(x)
            return out.float().cpu()

    def __call__(self, tiles):
        return self.forward_uint8(self.transform.resize(_to_numpy(tiles)))


def _to_numpy(tiles):
    import numpy as np

    if hasattr(tiles, "detach"):
        tiles = tiles.detach().cpu().numpy()
    return np.asarray(tiles)


def build_encoder(
    encoder_id: str | EncoderSpec,
    weights: str | os.PathLike | None = None,
    device: str | None = "auto",
    *,
    dtype: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Encoder:
    """Build a registered encoder (or a spec) ready for inference.

    ``weights``: None = the Hugging Face cache (offline), a file/folder path, or ``"random"``
    (seeded random init, tests/benchmarks only; recorded as ``weights_random``). ``dtype``
    overrides the spec's compute dtype on CUDA (CPU always computes in fp32). ``overrides``
    are extra build kwargs (e.g. the spec's ``test_overrides``). Nothing is ever downloaded.
    """
    import torch

    spec = encoder_id if isinstance(encoder_id, EncoderSpec) else get_spec(encoder_id)
    if overrides:
        spec = spec.with_overrides(**overrides)
    if dtype not in (None, "auto") and dtype not in _TORCH_DTYPES:
        raise ConfigError(f"dtype '{dtype}' is not one of {sorted(_TORCH_DTYPES)} (or 'auto')")
    dev = resolve_device(device)
    compute = (dtype if dtype not in (None, "auto") else spec.dtype) if dev.type == "cuda" else "fp32"
    from pathstrat.encoders.builders import BUILDERS, require_remote_code_opt_in

    if spec.build_kwargs.get("trust_remote_code") and str(weights) != RANDOM:
        require_remote_code_opt_in(spec, str(weights) if weights else "the Hugging Face cache")
    _check_extra(spec)

    builder = BUILDERS.get(spec.family)
    random_init = str(weights) == RANDOM
    resolved: ResolvedWeights | None = None
    if not spec.needs_weights:
        from pathstrat.encoders.builtin import constants_sha256

        sha, source, random_init = constants_sha256(), "builtin", False
    elif random_init:
        sha, source = f"random-init:seed={seed}", RANDOM
    else:
        resolved = resolve_weights(spec, weights)
        sha, source = resolved.sha256, str(resolved.file)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = builder(spec, None if random_init else resolved)
    resampled = [r for m in module.modules() for r in getattr(m, "pathstrat_resampled", [])]
    module.eval().requires_grad_(False)
    channels_last = dev.type == "cuda" and spec.family == "resnet_trunc"
    module = module.to(dev, memory_format=torch.channels_last) if channels_last else module.to(dev)
    log.info("encoder %s (%s) on %s, weights %s", spec.id, spec.arch, dev, source)
    return Encoder(spec, module, weights_sha256=sha, weights_random=random_init,
                   weights_source=source, device=dev, compute_dtype=compute,
                   channels_last=channels_last, resampled=resampled)


def _check_extra(spec: EncoderSpec) -> None:
    """Raise MissingDependencyError before any work when the family's extra is absent."""
    import importlib.util

    modules = {"transformers": "transformers", "conch": "conch"}
    if spec.extra and importlib.util.find_spec(modules.get(spec.extra, spec.extra)) is None:
        raise MissingDependencyError(modules.get(spec.extra, spec.extra), spec.extra,
                                     f"encoder '{spec.id}'")
