"""The built-in encoder catalogue: one :class:`EncoderSpec` per pinned encoder definition.

Facts from the public model cards and from how TRIDENT / STAMP / slide2vec build them
(``../shared/docs/encoders.md``). Where toolkits disagree we pin one definition per id and name
variants explicitly (``virchow2`` = CLS ++ mean patch tokens, 2560; ``virchow2.cls`` = CLS, 1280).
``mlp_layer``/``act_layer`` are strings resolved by the timm builder.
"""

from __future__ import annotations

from pathstrat.encoders.builtin import FEATURE_NAMES, WORK_PX
from pathstrat.encoders.spec import (
    CLIP_MEAN,
    CLIP_STD,
    HALF,
    HIBOU_MEAN,
    HIBOU_STD,
    HOPTIMUS_MEAN,
    HOPTIMUS_STD,
    EncoderSpec,
    register_spec,
)

SWIGLU = {"mlp_layer": "swiglu_packed", "act_layer": "silu"}
VIT_SMALL_TEST = {"depth": 1}
PT_BIN = ("pytorch_model.bin",)
SAFETENSORS = ("model.safetensors",)
TIMM_FILES = ("model.safetensors", "pytorch_model.bin")

_VIRCHOW_KW = {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375,
               "global_pool": "", "dynamic_img_size": True, **SWIGLU}
_HOPT_KW = {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "global_pool": "token",
            "dynamic_img_size": False}

SPECS_BUILTIN: list[EncoderSpec] = [
    EncoderSpec(
        id="builtin", family="builtin", dim=len(FEATURE_NAMES), arch="pathstrat-handcrafted-v1",
        input_px=WORK_PX, interpolation="area", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        pooling="none", dtype="fp32", licence="Apache-2.0", gated=False,
        description="Weight-free descriptors: HED stain statistics, LBP/GLCM/Gabor texture, "
                    "hematoxylin blob (nuclei-like) density; standardised with fixed constants."),
    EncoderSpec(
        id="uni", family="timm", dim=1024, arch="vit_large_patch16_224",
        build_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                      "dynamic_img_size": True},
        hf_repo="MahmoodLab/uni", weight_files=PT_BIN, interpolation="bilinear",
        pooling="cls", dtype="fp16", licence="CC-BY-NC-ND-4.0", gated=True,
        test_overrides={"depth": 1}, description="UNI (ViT-L/16, DINOv2 on Mass-100K)."),
    EncoderSpec(
        id="uni2_h", family="timm", dim=1536, arch="vit_giant_patch14_224",
        build_kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                      "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                      "num_classes": 0, "no_embed_class": True, "reg_tokens": 8,
                      "dynamic_img_size": True, **SWIGLU},
        hf_repo="MahmoodLab/UNI2-h", weight_files=PT_BIN, pooling="cls", dtype="bf16",
        licence="CC-BY-NC-ND-4.0", gated=True, test_overrides={"depth": 1},
        description="UNI2-h (ViT-H/14, 8 registers)."),
    EncoderSpec(
        id="conch_v1_5", family="conch_v15", dim=768, arch="vit_large_patch16_224",
        build_kwargs={"img_size": 448, "patch_size": 16, "init_values": 1.0, "num_classes": 0},
        hf_repo="MahmoodLab/conchv1_5", weight_files=("pytorch_model_vision.bin",),
        input_px=448, resize_px=448, interpolation="bilinear", pooling="none", dtype="fp16",
        tile_px=512, tile_mpp=0.5, licence="CC-BY-NC-ND-4.0", gated=True,
        test_overrides={"depth": 1, "img_size": 64},
        description="CONCH v1.5 vision tower (ViT-L/16 @448 + attentional pooler to 768), "
                    "the TITAN patch encoder; 512 px tiles at 20x resized to 448."),
    EncoderSpec(
        id="conch", family="conch", dim=512, arch="conch_ViT-B-16",
        hf_repo="MahmoodLab/conch", hf_aliases=("MahmoodLab/CONCH",), weight_files=PT_BIN,
        input_px=448, resize_px=448,
        interpolation="bicubic", mean=CLIP_MEAN, std=CLIP_STD, pooling="none", dtype="fp32",
        tile_px=512, licence="CC-BY-NC-ND-4.0", gated=True, extra="conch",
        description="CONCH v1 image tower, encode_image(proj_contrast=False, normalize=False)."),
    EncoderSpec(
        id="virchow", family="timm", dim=2560, arch="vit_huge_patch14_224",
        build_kwargs=_VIRCHOW_KW, hf_repo="paige-ai/Virchow", weight_files=TIMM_FILES,
        interpolation="bicubic", pooling="cls+mean", dtype="fp16",
        licence="Apache-2.0 (non-commercial terms on the card)", gated=True,
        test_overrides={"depth": 1}, description="Virchow: CLS ++ mean of patch tokens."),
    EncoderSpec(
        id="virchow.cls", family="timm", dim=1280, arch="vit_huge_patch14_224",
        build_kwargs=_VIRCHOW_KW, hf_repo="paige-ai/Virchow", weight_files=TIMM_FILES,
        interpolation="bicubic", pooling="cls", dtype="fp16",
        licence="Apache-2.0 (non-commercial terms on the card)", gated=True,
        test_overrides={"depth": 1}, description="Virchow: CLS token only."),
    EncoderSpec(
        id="virchow2", family="timm", dim=2560, arch="vit_huge_patch14_224",
        build_kwargs={**_VIRCHOW_KW, "reg_tokens": 4}, hf_repo="paige-ai/Virchow2",
        weight_files=TIMM_FILES, interpolation="bicubic", pooling="cls+mean", dtype="fp16",
        licence="CC-BY-NC-ND-4.0", gated=True, test_overrides={"depth": 1},
        description="Virchow2: CLS ++ mean of patch tokens (4 registers skipped)."),
    EncoderSpec(
        id="virchow2.cls", family="timm", dim=1280, arch="vit_huge_patch14_224",
        build_kwargs={**_VIRCHOW_KW, "reg_tokens": 4}, hf_repo="paige-ai/Virchow2",
        weight_files=TIMM_FILES, interpolation="bicubic", pooling="cls", dtype="fp16",
        licence="CC-BY-NC-ND-4.0", gated=True, test_overrides={"depth": 1},
        description="Virchow2: CLS token only."),
    EncoderSpec(
        id="h_optimus_0", family="timm", dim=1536, arch="vit_giant_patch14_reg4_dinov2",
        build_kwargs=_HOPT_KW, hf_repo="bioptimus/H-optimus-0", weight_files=TIMM_FILES,
        interpolation="bilinear", mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, pooling="cls",
        dtype="fp16", licence="Apache-2.0", gated=False, test_overrides={"depth": 1},
        description="H-optimus-0 (ViT-g/14, 4 registers), CLS."),
    EncoderSpec(
        id="h_optimus_1", family="timm", dim=1536, arch="vit_giant_patch14_reg4_dinov2",
        build_kwargs=_HOPT_KW, hf_repo="bioptimus/H-optimus-1", weight_files=TIMM_FILES,
        interpolation="bilinear", mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, pooling="cls",
        dtype="fp16", licence="Bioptimus non-commercial", gated=True,
        test_overrides={"depth": 1}, description="H-optimus-1 (ViT-g/14, 4 registers), CLS."),
    EncoderSpec(
        id="h0_mini", family="timm", dim=1536, arch="vit_base_patch14_reg4_dinov2",
        build_kwargs={"img_size": 224, "num_classes": 0, "init_values": 1e-5,
                      "mlp_ratio": 5.33334, "dynamic_img_size": True, **SWIGLU},
        hf_repo="bioptimus/H0-mini", weight_files=TIMM_FILES, interpolation="bicubic",
        mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, pooling="cls+mean", dtype="fp16",
        licence="CC-BY-NC-ND-4.0", gated=True, test_overrides={"depth": 1},
        description="H0-mini (ViT-B/14, 4 registers, SwiGLU 4096, ~86M, distilled from H-optimus-0): CLS ++ mean patch tokens."),
    EncoderSpec(
        id="h0_mini.cls", family="timm", dim=768, arch="vit_base_patch14_reg4_dinov2",
        build_kwargs={"img_size": 224, "num_classes": 0, "init_values": 1e-5,
                      "mlp_ratio": 5.33334, "dynamic_img_size": True, **SWIGLU},
        hf_repo="bioptimus/H0-mini", weight_files=TIMM_FILES, interpolation="bicubic",
        mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, pooling="cls", dtype="fp16",
        licence="CC-BY-NC-ND-4.0", gated=True, test_overrides={"depth": 1},
        description="H0-mini CLS token only."),
    EncoderSpec(
        id="gigapath", family="timm", dim=1536, arch="vit_giant_patch14_dinov2",
        build_kwargs={"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40,
                      "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334,
                      "num_classes": 0},
        hf_repo="prov-gigapath/prov-gigapath", weight_files=("pytorch_model.bin",),
        resize_px=256, interpolation="bicubic", pooling="cls", dtype="fp16", tile_px=256,
        licence="Prov-GigaPath licence (research)", gated=True, test_overrides={"depth": 1},
        description="Prov-GigaPath tile encoder: resize 256 bicubic, centre-crop 224."),
    EncoderSpec(
        id="phikon", family="transformers", dim=768, arch="ViTModel",
        build_kwargs={"model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "intermediate_size": 3072,
                      "image_size": 224, "patch_size": 16},
        hf_repo="owkin/phikon", weight_files=("config.json", "model.safetensors"),
        pooling="cls", dtype="fp32", licence="Owkin non-commercial", gated=False,
        extra="transformers", test_overrides={"num_hidden_layers": 1},
        description="Phikon (iBOT ViT-B/16), CLS of last_hidden_state."),
    EncoderSpec(
        id="phikon_v2", family="transformers", dim=1024, arch="Dinov2Model",
        build_kwargs={"model_type": "dinov2", "hidden_size": 1024, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "image_size": 224, "patch_size": 16},
        hf_repo="owkin/phikon-v2", weight_files=("config.json", "model.safetensors"),
        pooling="cls", dtype="fp32", licence="Owkin non-commercial", gated=False,
        extra="transformers", test_overrides={"num_hidden_layers": 1},
        description="Phikon-v2 (DINOv2 ViT-L/16), CLS of last_hidden_state."),
    EncoderSpec(
        id="hibou_b", family="transformers", dim=768, arch="Dinov2WithRegistersModel",
        build_kwargs={"model_type": "dinov2_with_registers", "hidden_size": 768,
                      "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 224,
                      "patch_size": 14, "num_register_tokens": 4, "trust_remote_code": True},
        hf_repo="histai/hibou-b", weight_files=("config.json", "model.safetensors"),
        interpolation="bicubic", mean=HIBOU_MEAN, std=HIBOU_STD, pooling="head",
        dtype="fp32", licence="Apache-2.0", gated=False, extra="transformers",
        test_overrides={"num_hidden_layers": 1}, description="Hibou-B, pooler_output."),
    EncoderSpec(
        id="hibou_l", family="transformers", dim=1024, arch="Dinov2WithRegistersModel",
        build_kwargs={"model_type": "dinov2_with_registers", "hidden_size": 1024,
                      "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 224,
                      "patch_size": 14, "num_register_tokens": 4, "trust_remote_code": True},
        hf_repo="histai/hibou-L", weight_files=("config.json", "model.safetensors"),
        interpolation="bicubic", mean=HIBOU_MEAN, std=HIBOU_STD, pooling="head",
        dtype="fp32", licence="Apache-2.0", gated=False, extra="transformers",
        test_overrides={"num_hidden_layers": 1}, description="Hibou-L, pooler_output."),
    EncoderSpec(
        id="midnight", family="transformers", dim=3072, arch="Dinov2Model",
        build_kwargs={"model_type": "dinov2", "hidden_size": 1536, "num_hidden_layers": 40,
                      "num_attention_heads": 24, "image_size": 224, "patch_size": 14,
                      "use_swiglu_ffn": True},
        hf_repo="kaiko-ai/midnight", weight_files=("config.json", "model.safetensors"),
        mean=HALF, std=HALF, pooling="cls+mean", dtype="fp16", licence="MIT",
        gated=False, extra="transformers", test_overrides={"num_hidden_layers": 1},
        description="Midnight-12k (ViT-g/14): CLS ++ mean of patch tokens."),
    EncoderSpec(
        id="midnight.cls", family="transformers", dim=1536, arch="Dinov2Model",
        build_kwargs={"model_type": "dinov2", "hidden_size": 1536, "num_hidden_layers": 40,
                      "num_attention_heads": 24, "image_size": 224, "patch_size": 14,
                      "use_swiglu_ffn": True},
        hf_repo="kaiko-ai/midnight", weight_files=("config.json", "model.safetensors"),
        mean=HALF, std=HALF, pooling="cls", dtype="fp16", licence="MIT", gated=False,
        extra="transformers", test_overrides={"num_hidden_layers": 1},
        description="Midnight-12k CLS token only."),
    EncoderSpec(
        id="lunit_vits8", family="timm", dim=384, arch="vit_small_patch8_224",
        build_kwargs={"num_classes": 0}, hf_repo="1aurent/vit_small_patch8_224.lunit_dino",
        weight_files=TIMM_FILES, mean=(0.70322989, 0.53606487, 0.66096631),
        std=(0.21716536, 0.26081574, 0.20723464), pooling="cls", dtype="fp32",
        licence="Lunit non-commercial", gated=False, test_overrides={"depth": 1, "img_size": 64},
        description="Lunit DINO ViT-S/8."),
    EncoderSpec(
        id="resnet50_trunc", family="resnet_trunc", dim=1024, arch="resnet50",
        build_kwargs={"num_classes": 0}, hf_repo="timm/resnet50.tv_in1k",
        weight_files=TIMM_FILES, pooling="none", dtype="fp32", tile_px=256,
        licence="BSD-3-Clause", gated=False, ignore_keys=("fc.",),
        test_overrides={"img_size": 64},
        description="ImageNet ResNet-50 truncated after layer3, global average pool (CLAM)."),
]

_KAIKO = [
    ("kaiko_vits16", "vit_small_patch16_224", 384, {}),
    ("kaiko_vits8", "vit_small_patch8_224", 384, {"img_size": 64}),
    ("kaiko_vitb16", "vit_base_patch16_224", 768, {}),
    ("kaiko_vitb8", "vit_base_patch8_224", 768, {"img_size": 64}),
    ("kaiko_vitl14", "vit_large_patch14_reg4_dinov2", 1024, {}),
]
for _id, _arch, _dim, _test in _KAIKO:
    SPECS_BUILTIN.append(EncoderSpec(
        id=_id, family="timm", dim=_dim, arch=_arch,
        build_kwargs={"num_classes": 0, "img_size": 518 if "dinov2" in _arch else 224,
                      "dynamic_img_size": True},
        hf_repo=f"1aurent/{_arch}.kaiko_ai_towards_large_pathology_fms"
        if "dinov2" not in _arch else "1aurent/vit_large_patch14_reg4_224.kaiko_ai_towards_large_pathology_fms",
        weight_files=TIMM_FILES, mean=HALF, std=HALF, pooling="cls", dtype="fp32",
        licence="Apache-2.0", gated=False, test_overrides={"depth": 1, **_test},
        description=f"Kaiko.ai {_arch} (Towards large-scale pathology FMs), CLS."))

for _spec in SPECS_BUILTIN:
    register_spec(_spec)
