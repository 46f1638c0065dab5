"""Self-describing encoder specs (timm ``PretrainedCfg`` style) and their registry.

A spec says everything the pipeline needs to embed tiles with an encoder and to record what
was done: how to build the network, where its weights come from, how to feed it and how to
pool its tokens. Nothing downstream hard-codes a model name; it reads the spec.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pathstrat.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
HIBOU_MEAN = (0.7068, 0.5755, 0.722)
HIBOU_STD = (0.195, 0.2316, 0.1816)
HALF = (0.5, 0.5, 0.5)

POOLINGS = ("cls", "cls+mean", "head", "none")
DTYPES = ("fp32", "fp16", "bf16")
INTERPOLATIONS = ("bilinear", "bicubic", "area", "nearest")


@dataclass(frozen=True)
class EncoderSpec:
    """Complete description of one tile encoder.

    ``family`` picks the builder (see ``pathstrat.encoders.builders.BUILDERS``): ``timm``
    (``timm.create_model(arch, **build_kwargs)``), ``resnet_trunc``, ``conch_v15``,
    ``transformers``, ``conch`` or ``builtin``. ``pooling`` maps the backbone's output to one
    vector: ``cls`` (class token), ``cls+mean`` (class token ++ mean of patch tokens, register
    tokens skipped), ``head`` (the model's own pooled output) or ``none`` (already a vector).
    ``resize_px`` > ``input_px`` means resize the short side then centre-crop ``input_px``.
    ``test_overrides`` are build kwargs that shrink the network (e.g. ``depth=1``) for the
    registry contract tests; they never change the output dimension.
    """

    id: str
    family: str
    dim: int
    arch: str = ""
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    hf_repo: str | None = None
    hf_aliases: tuple[str, ...] = ()
    weight_files: tuple[str, ...] = ()
    input_px: int = 224
    resize_px: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pooling: str = "cls"
    tile_px: int = 224
    tile_mpp: float = 0.5
    dtype: str = "fp16"
    licence: str = ""
    gated: bool = False
    extra: str | None = None
    state_dict_prefix: str = ""
    ignore_keys: tuple[str, ...] = ()
    test_overrides: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""  # sha256 of the published weight file when known (checked by `encoders verify`)
    features_normalized: bool = False  # True: features are already standardised (no input scaling)
    description: str = ""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"encoder '{self.id}': pooling '{self.pooling}' not in {POOLINGS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"encoder '{self.id}': dtype '{self.dtype}' not in {DTYPES}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"encoder '{self.id}': interpolation '{self.interpolation}' "
                             f"not in {INTERPOLATIONS}")
        if self.dim <= 0:
            raise ValueError(f"encoder '{self.id}': dim must be positive")

    @property
    def needs_weights(self) -> bool:
        """False only for weight-free encoders (``builtin``)."""
        return self.family != "builtin"

    def with_overrides(self, **build_kwargs: Any) -> EncoderSpec:
        """A copy with extra build kwargs; ``img_size`` also sets ``input_px`` (no resize)."""
        kwargs = {**self.build_kwargs, **build_kwargs}
        changes: dict[str, Any] = {"build_kwargs": kwargs}
        if "img_size" in build_kwargs:
            changes.update(input_px=int(build_kwargs["img_size"]), resize_px=None)
        return dataclasses.replace(self, **changes)

    def as_attrs(self) -> dict[str, Any]:
        """Flat description written into every feature file (the definition travels with it)."""
        return {
            "encoder_family": self.family,
            "encoder_arch": self.arch,
            "encoder_pooling": self.pooling,
            "encoder_hf_repo": self.hf_repo or "",
            "encoder_input_px": self.input_px,
            "encoder_licence": self.licence,
        }


SPECS: Registry[EncoderSpec] = Registry("encoder")


def register_spec(spec: EncoderSpec, *, replace: bool = False) -> EncoderSpec:
    """Add a spec to the registry (``replace=True`` overwrites a user entry of the same id)."""
    if replace and spec.id in SPECS:
        SPECS._entries.pop(spec.id)  # noqa: SLF001 - the registry's own module family
    return SPECS.add(spec.id, spec)


def get_spec(encoder_id: str) -> EncoderSpec:
    """The spec of ``encoder_id``; unknown ids raise ``UnknownNameError`` with close names."""
    return SPECS.get(encoder_id)


def list_specs() -> list[EncoderSpec]:
    """All registered specs, sorted by id."""
    return [s for _, s in SPECS.items()]


def custom_timm_spec(
    encoder_id: str,
    arch: str,
    *,
    dim: int,
    register: bool = True,
    pooling: str = "cls",
    **fields: Any,
) -> EncoderSpec:
    """Describe (and by default register) a user encoder built with ``timm.create_model(arch)``.

    This is the public way to bring your own timm encoder, e.g.
    ``custom_timm_spec("my_vit", "vit_tiny_patch16_224", dim=192, dtype="fp32")`` then
    ``build_encoder("my_vit", weights="path/to/model.safetensors")``. ``fields`` are any other
    :class:`EncoderSpec` fields (``build_kwargs``, ``mean``, ``std``, ``input_px``...).
    ``num_classes=0`` is added to the build kwargs so the classifier head is dropped.
    """
    build_kwargs = {"num_classes": 0, **fields.pop("build_kwargs", {})}
    spec = EncoderSpec(id=encoder_id, family="timm", arch=arch, dim=dim, pooling=pooling,
                       build_kwargs=build_kwargs, **fields)
    if register:
        register_spec(spec, replace=True)
    return spec
