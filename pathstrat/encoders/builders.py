"""Builders: one per encoder family, turning a spec (+ weights) into a pooled ``nn.Module``.

Each builder returns a module mapping a normalised (B,3,H,W) float batch to (B, spec.dim).
Optional packages (transformers, CONCH) are imported only here, when that family is built,
and raise :class:`MissingDependencyError` naming the extra.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pathstrat.encoders.spec import EncoderSpec
from pathstrat.encoders.weights import ResolvedWeights, apply_state_dict, load_state_dict
from pathstrat.errors import WeightsError, import_optional
from pathstrat.registry import Registry

log = logging.getLogger(__name__)

# builder(spec, weights or None for random init) -> nn.Module producing (B, spec.dim)
Builder = Callable[[EncoderSpec, ResolvedWeights | None], Any]
BUILDERS: Registry[Builder] = Registry("encoder family")


def _timm_kwargs(spec: EncoderSpec) -> dict[str, Any]:
    """Build kwargs with string layer names resolved to timm classes."""
    import torch
    from timm.layers import SwiGLUPacked

    layers = {"swiglu_packed": SwiGLUPacked}
    acts = {"silu": torch.nn.SiLU, "gelu": torch.nn.GELU}
    kw = dict(spec.build_kwargs)
    if isinstance(kw.get("mlp_layer"), str):
        kw["mlp_layer"] = layers[kw["mlp_layer"]]
    if isinstance(kw.get("act_layer"), str):
        kw["act_layer"] = acts[kw["act_layer"]]
    return kw


def _pool_tokens(tokens, pooling: str, num_prefix: int):
    """Pool (B,T,D) tokens: CLS, or CLS ++ mean of patch tokens (registers skipped)."""
    import torch

    if tokens.ndim == 2:
        return tokens
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "cls+mean":
        return torch.cat([tokens[:, 0], tokens[:, num_prefix:].mean(1)], dim=-1)
    raise ValueError(f"pooling '{pooling}' is not valid for token outputs")


def _make_pooled(backbone, spec: EncoderSpec, forward: Callable, num_prefix: int):
    from torch import nn

    class Pooled(nn.Module):
        """Backbone + the spec's pooling."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            return _pool_tokens(forward(self.backbone, x), spec.pooling, num_prefix)

    return Pooled()


def _shipped_timm_args(spec: EncoderSpec, weights: ResolvedWeights) -> dict[str, Any]:
    """The publisher's timm ``config.json`` next to the weights, when shipped: its
    ``architecture`` must equal the spec's (else an error naming both) and its ``model_args``
    take precedence over the spec's build kwargs (layer classes stay the spec's)."""
    import json

    cfg_path = weights.directory / "config.json"
    if not cfg_path.is_file():
        return {}
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"Cannot read {cfg_path}: {exc}. Fix or remove it.") from exc
    arch = cfg.get("architecture")
    if arch is None:
        return {}
    if arch != spec.arch:
        raise WeightsError(
            f"Encoder '{spec.id}': the checkpoint's config.json ({cfg_path.name}) names "
            f"architecture '{arch}' but the registry spec builds '{spec.arch}'. Check the "
            "weights are the right model, or register a spec for this architecture.")
    args = {k: v for k, v in (cfg.get("model_args") or {}).items()
            if not isinstance(v, (dict, list)) or k in ("img_size",)}
    args.pop("mlp_layer", None)
    args.pop("act_layer", None)
    if args:
        log.info("encoder %s: build kwargs from the shipped config.json: %s", spec.id, args)
    return args


@BUILDERS.register("timm")
def build_timm(spec: EncoderSpec, weights: ResolvedWeights | None):
    """``timm.create_model(arch, pretrained=False, **build_kwargs)`` + local weights + pooling."""
    import timm

    kw = _timm_kwargs(spec)
    if weights is not None:
        kw.update(_shipped_timm_args(spec, weights))
    model = timm.create_model(spec.arch, pretrained=False, **kw)
    if weights is not None:
        apply_state_dict(model, load_state_dict(weights.file), spec, weights.file)
    if spec.pooling == "head":
        return _make_pooled(model, spec, lambda m, x: m(x), 0)
    num_prefix = int(getattr(model, "num_prefix_tokens", 1))
    return _make_pooled(model, spec, lambda m, x: m.forward_features(x), num_prefix)


@BUILDERS.register("resnet_trunc")
def build_resnet_trunc(spec: EncoderSpec, weights: ResolvedWeights | None):
    """ImageNet ResNet truncated after layer3 + global average pool (the CLAM baseline)."""
    import timm
    import torch
    from torch import nn

    kw = {k: v for k, v in spec.build_kwargs.items() if k != "img_size"}
    model = timm.create_model(spec.arch, pretrained=False, **kw)
    if weights is not None:
        apply_state_dict(model, load_state_dict(weights.file), spec, weights.file)

    class Trunc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
            self.layers = nn.Sequential(model.layer1, model.layer2, model.layer3)

        def forward(self, x):
            return torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)

    return Trunc()


@BUILDERS.register("conch_v15")
def build_conch_v15(spec: EncoderSpec, weights: ResolvedWeights | None):
    """CONCH v1.5 vision tower: timm ViT-L/16 trunk + 1-query attentional pooler + LayerNorm."""
    import timm
    import torch
    from torch import nn

    class AttentionalPooler(nn.Module):
        def __init__(self, d_model: int, context_dim: int, n_head: int = 8) -> None:
            super().__init__()
            self.query = nn.Parameter(torch.randn(1, d_model))
            self.heads = n_head
            self.scale = (d_model // n_head) ** -0.5
            self.ln_k = nn.LayerNorm(context_dim)
            self.ln_q = nn.LayerNorm(d_model)
            self.to_q = nn.Linear(d_model, d_model, bias=False)
            self.to_kv = nn.Linear(context_dim, d_model * 2, bias=False)
            self.to_out = nn.Linear(d_model, d_model, bias=False)

        def forward(self, x):
            b, n, _ = x.shape
            q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
            k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)

            def split(t):
                return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

            attn = (split(q) * self.scale) @ split(k).transpose(-1, -2)
            out = attn.softmax(-1) @ split(v)
            return self.to_out(out.transpose(1, 2).reshape(b, 1, -1))[:, 0]

    class ConchV15(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = timm.create_model(spec.arch, pretrained=False, **_timm_kwargs(spec))
            dim = self.trunk.embed_dim
            self.attn_pool_contrast = AttentionalPooler(spec.dim, dim)
            self.ln_contrast = nn.LayerNorm(spec.dim)

        def forward(self, x):
            return self.ln_contrast(self.attn_pool_contrast(self.trunk.forward_features(x)))

    model = ConchV15()
    if weights is not None:
        apply_state_dict(model, load_state_dict(weights.file), spec, weights.file)
    return model


TRUST_REMOTE_CODE_ENV = "PATHSTRAT_TRUST_REMOTE_CODE"


def require_remote_code_opt_in(spec: EncoderSpec, where: str) -> None:
    """Refuse to execute Python shipped in a weights folder unless the user opted in."""
    import os

    if os.environ.get(TRUST_REMOTE_CODE_ENV) == "1":
        return
    raise WeightsError(
        f"Encoder '{spec.id}' loads with transformers' trust_remote_code: Python files in "
        f"{where} (from {spec.hf_repo}) would be executed. Review them, then set "
        f"{TRUST_REMOTE_CODE_ENV}=1 to allow it (nothing is downloaded either way).")


@BUILDERS.register("transformers")
def build_transformers(spec: EncoderSpec, weights: ResolvedWeights | None):
    """Hugging Face transformers model from a local folder (or random init from the config)."""
    kw = dict(spec.build_kwargs)
    trust = bool(kw.pop("trust_remote_code", False))
    transformers = import_optional("transformers", "transformers", f"encoder '{spec.id}'")
    model_type = kw.pop("model_type")
    if weights is None:
        config = transformers.AutoConfig.for_model(model_type, **kw)
        model = transformers.AutoModel.from_config(config)
    else:
        try:
            model = transformers.AutoModel.from_pretrained(
                str(weights.directory), local_files_only=True, trust_remote_code=trust)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"Cannot load encoder '{spec.id}' from {weights.directory}: "
                               f"{exc}. The folder needs config.json and the weights of "
                               f"{spec.hf_repo}.") from exc
    num_prefix = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)

    def forward(m, x):
        out = m(pixel_values=x)
        return out.pooler_output if spec.pooling == "head" else out.last_hidden_state

    return _make_pooled(model, spec, forward, num_prefix)


@BUILDERS.register("conch")
def build_conch(spec: EncoderSpec, weights: ResolvedWeights | None):
    """CONCH v1 via the CONCH package: ``encode_image(proj_contrast=False, normalize=False)``."""
    factory = import_optional("conch.open_clip_custom", "conch", f"encoder '{spec.id}'")
    if weights is None:
        create = getattr(factory, "create_model", None)
        if create is None:
            raise WeightsError(f"Encoder '{spec.id}': the installed conch package has no "
                               "create_model for random init; pass `weights`=PATH.")
        model = create(spec.arch)
        model = model[0] if isinstance(model, tuple) else model
    else:
        model, _ = factory.create_model_from_pretrained(spec.arch, checkpoint_path=str(weights.file))
    return _make_pooled(
        model, spec, lambda m, x: m.encode_image(x, proj_contrast=False, normalize=False), 0)


@BUILDERS.register("builtin")
def build_builtin_family(spec: EncoderSpec, weights: ResolvedWeights | None):
    """The weight-free hand-crafted descriptor (weights are ignored: there are none)."""
    from pathstrat.encoders.builtin import build_builtin

    return build_builtin()
