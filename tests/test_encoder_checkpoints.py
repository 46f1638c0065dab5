"""Checkpoints in the published layout load through the public path (independent timm builds)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from safetensors.torch import save_file  # noqa: E402
from timm.layers import SwiGLUPacked  # noqa: E402

from pathstrat.encoders import build_encoder, get_spec  # noqa: E402
from pathstrat.encoders.verify import verify_checkpoint  # noqa: E402


def _n_params_meta(arch: str, **kw) -> int:
    with torch.device("meta"):
        m = timm.create_model(arch, pretrained=False, **kw)
    return sum(p.numel() for p in m.parameters())


def test_h0_mini_matches_published_size():
    """H0-mini: ViT-B/14 reg4 with SwiGLU (packed 4096) is ~86M parameters; ours builds the same."""
    published = _n_params_meta("vit_base_patch14_reg4_dinov2", img_size=224, num_classes=0,
                               init_values=1e-5, mlp_ratio=4096 / 768, mlp_layer=SwiGLUPacked,
                               act_layer=torch.nn.SiLU)
    assert 85e6 < published < 87e6
    spec = get_spec("h0_mini")
    ours = _n_params_meta(spec.arch, **{**spec.build_kwargs, "mlp_layer": SwiGLUPacked,
                                        "act_layer": torch.nn.SiLU})
    assert ours == published
    assert "H-optimus-0" in spec.description


def test_kaiko_vitl14_built_at_published_518():
    """The published loader builds at timm's default 518 px: 37*37 = 1369 position rows."""
    spec = get_spec("kaiko_vitl14")
    with torch.device("meta"):
        m = timm.create_model(spec.arch, pretrained=False, **spec.build_kwargs)
    assert m.pos_embed.shape[1] == 37 * 37


def _timm_ckpt(tmp_path, arch, name="model.safetensors", **kw):
    torch.manual_seed(1)
    m = timm.create_model(arch, pretrained=False, **kw).eval()
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    else:
        torch.save(m.state_dict(), path)
    return m, path


def test_pos_embed_resampled_on_load_and_recorded(tmp_path):
    """A checkpoint on a 4x4 grid loads into an 8x8 model; the prefix/register rows are kept
    and the patch rows equal timm's own resampling; the encoder records it."""
    from timm.layers import resample_abs_pos_embed

    spec = get_spec("kaiko_vits16").with_overrides(depth=1, img_size=128)
    src, path = _timm_ckpt(tmp_path, spec.arch, num_classes=0, depth=1, img_size=64)
    enc = build_encoder(spec, weights=str(path), device="cpu")
    got = enc.module.backbone.pos_embed.detach()
    want = resample_abs_pos_embed(src.pos_embed.detach(), new_size=[8, 8], old_size=[4, 4],
                                  num_prefix_tokens=1)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(got[:, 0].numpy(), src.pos_embed.detach()[:, 0].numpy())
    assert enc.resampled == ["pos_embed:17->65"]
    assert enc.attrs()["pos_embed_resampled"] == "pos_embed:17->65"


def test_conch_v1_5_accepts_197_token_table(tmp_path):
    """CONCH v1.5 built at 448 (785 rows) loads a 224 px (197-row) trunk table by resampling."""
    spec = get_spec("conch_v1_5").with_overrides(depth=1)
    enc_rand = build_encoder(spec, weights="random", device="cpu")
    sd = {k: v.clone() for k, v in enc_rand.module.state_dict().items()}
    with torch.device("cpu"):
        small = timm.create_model(spec.arch, pretrained=False, depth=1, img_size=224,
                                  patch_size=16, init_values=1.0, num_classes=0)
    sd["trunk.pos_embed"] = small.pos_embed.detach().clone()
    assert sd["trunk.pos_embed"].shape[1] == 197
    path = tmp_path / "pytorch_model_vision.bin"
    torch.save(sd, path)
    enc = build_encoder(spec, weights=str(path), device="cpu")
    assert enc.resampled == ["trunk.pos_embed:197->785"]
    out = enc(np.zeros((1, 448, 448, 3), np.uint8))
    assert out.shape == (1, 768)


def test_verify_reports_exact_differences(tmp_path):
    """verify: a matching file is OK; a file with a dropped key and a wrong shape names both."""
    spec = get_spec("kaiko_vits16").with_overrides(depth=1)
    m, path = _timm_ckpt(tmp_path, spec.arch, num_classes=0, depth=1, img_size=224)
    rep = verify_checkpoint(spec, path)
    assert rep.ok and rep.dtypes == ["float32"]
    sd = dict(m.state_dict())
    sd.pop("norm.bias")
    sd["head.weight"] = torch.zeros(2, 2)
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(10, 384)
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(bad))
    rep = verify_checkpoint(spec, bad)
    assert not rep.ok
    assert rep.missing == ["norm.bias"] and rep.unexpected == ["head.weight"]
    assert rep.shape == ["blocks.0.mlp.fc1.weight: file (10, 384), model (1536, 384)"]


def test_hf_cache_lookup_case_insensitive(tmp_path, monkeypatch):
    """A cache filled as MahmoodLab/CONCH (or conch) is found for the conch spec."""
    from pathstrat.encoders import weights as W

    cache = tmp_path / "hub"
    (cache / "models--MahmoodLab--CONCH").mkdir(parents=True)
    (cache / "models--other--x").mkdir()
    ids = W._cached_repo_ids(get_spec("conch"), cache)
    assert ids[0] == "MahmoodLab/CONCH" and "MahmoodLab/conch" in ids


def test_shipped_config_json_decides_and_mismatch_names_both(tmp_path):
    """timm hub folder (config.json + model.safetensors): model_args are used; a different
    architecture is an error naming both."""
    import json

    from pathstrat.errors import WeightsError

    spec = get_spec("kaiko_vits16").with_overrides(depth=1)
    _, path = _timm_ckpt(tmp_path, spec.arch, num_classes=0, depth=1, img_size=96)
    (tmp_path / "config.json").write_text(json.dumps(
        {"architecture": spec.arch, "model_args": {"img_size": 96, "depth": 1}}))
    enc = build_encoder(spec, weights=str(tmp_path), device="cpu")
    assert enc.module.backbone.pos_embed.shape[1] == 37 and enc.resampled == []
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224"}))
    with pytest.raises(WeightsError, match="vit_base_patch16_224.*vit_small_patch16_224"):
        build_encoder(spec, weights=str(tmp_path), device="cpu")


def test_verify_cli(tmp_path):
    """`pathstrat encoders verify` exits 0 on a matching file and 1 naming what differs."""
    from typer.testing import CliRunner

    from pathstrat.cli import app

    m = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, depth=1)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    sd.pop("norm.weight")
    bad = tmp_path / "model.safetensors"
    save_file(sd, str(bad))
    res = CliRunner().invoke(app, ["encoders", "verify", "kaiko_vits16", "--weights", str(bad)])
    assert res.exit_code == 1
    assert "missing key: norm.weight" in res.output


# --------------------------------------------------------------------------------------------
# The fixture matrix: every registry entry loads a small random checkpoint written in its
# publisher's layout, built by timm / transformers directly (not by our builders).

#: Where each publisher ships its weights: a bare state dict (``torch.save``) or a timm hub folder.
BARE_BIN = {"uni", "uni2_h", "gigapath"}
TIMM_HUB = {"virchow", "virchow.cls", "virchow2", "virchow2.cls", "h_optimus_0", "h_optimus_1",
            "h0_mini", "h0_mini.cls", "kaiko_vits16", "kaiko_vits8", "kaiko_vitb16", "kaiko_vitb8",
            "kaiko_vitl14", "lunit_vits8", "resnet50_trunc"}


def _published_timm_kwargs(spec) -> dict:
    """The model card's kwargs with layer names as the card writes them (timm classes)."""
    from timm.layers import SwiGLUPacked

    kw = {**spec.build_kwargs, **spec.test_overrides}
    if kw.get("mlp_layer") == "swiglu_packed":
        kw["mlp_layer"] = SwiGLUPacked
    if kw.get("act_layer") == "silu":
        kw["act_layer"] = torch.nn.SiLU
    return kw


def _reference_pool(ref, x, pooling: str) -> torch.Tensor:
    tokens = ref.forward_features(x)
    if pooling == "cls":
        return tokens[:, 0]
    n_prefix = getattr(ref, "num_prefix_tokens", 1)
    return torch.cat([tokens[:, 0], tokens[:, n_prefix:].mean(1)], dim=-1)


def _all_specs():
    from pathstrat.encoders import list_specs

    return [s for s in list_specs() if s.family != "builtin"]


@pytest.mark.parametrize("spec", _all_specs(), ids=lambda s: s.id)
def test_every_entry_loads_its_published_checkpoint_layout(spec, tmp_path, monkeypatch):
    import json

    if spec.family == "conch":
        pytest.importorskip("conch", reason="CONCH's own package is not installed (not on PyPI)")
    torch.manual_seed(0)
    if spec.family in ("timm", "resnet_trunc"):
        kw = _published_timm_kwargs(spec)
        size = kw.get("img_size", 224)
        if spec.family == "resnet_trunc":
            kw.pop("img_size", None)  # a CNN takes any input size
        ref = timm.create_model(spec.arch, pretrained=False, **kw).eval()
        sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
        if spec.id in BARE_BIN:
            torch.save(sd, tmp_path / "pytorch_model.bin")
        else:
            assert spec.id in TIMM_HUB, f"add {spec.id}'s published layout to the matrix"
            if spec.family == "resnet_trunc":  # the hub file keeps the ImageNet classifier
                full = timm.create_model(spec.arch, pretrained=False).eval()
                full.load_state_dict(sd, strict=False)
                sd = {k: v.contiguous() for k, v in full.state_dict().items()}
            save_file(sd, str(tmp_path / "model.safetensors"))
            args = {k: v for k, v in kw.items() if isinstance(v, (int, float, str, bool))}
            (tmp_path / "config.json").write_text(json.dumps({"architecture": spec.arch, "model_args": args}))
        enc = build_encoder(spec.with_overrides(**spec.test_overrides), weights=str(tmp_path), device="cpu")
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            got = enc.module(x)
            if spec.family == "timm":
                want = _reference_pool(ref, x, spec.pooling)
            else:  # CLAM's ResNet50-trunc: conv stem to layer3, global average pool (1024)
                h = ref.maxpool(ref.act1(ref.bn1(ref.conv1(x))))
                want = ref.layer3(ref.layer2(ref.layer1(h))).mean(dim=(2, 3))
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
        assert got.shape[1] == spec.dim
    elif spec.family == "transformers":
        transformers = pytest.importorskip("transformers", reason="the [transformers] extra is not installed")
        kw = {**spec.build_kwargs, **spec.test_overrides}
        kw.pop("trust_remote_code", None)
        config = transformers.AutoConfig.for_model(kw.pop("model_type"), **kw)
        ref = transformers.AutoModel.from_config(config).eval()
        ref.save_pretrained(tmp_path)  # the Hub folder: config.json + model.safetensors
        monkeypatch.setenv("PATHSTRAT_TRUST_REMOTE_CODE", "1")
        enc = build_encoder(spec.with_overrides(**spec.test_overrides), weights=str(tmp_path), device="cpu")
        x = torch.randn(2, 3, config.image_size, config.image_size)
        with torch.no_grad():
            out = ref(pixel_values=x)
            got = enc.module(x)
        if spec.pooling == "head":
            want = out.pooler_output
        else:
            tokens = out.last_hidden_state
            n_prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
            want = tokens[:, 0] if spec.pooling == "cls" else torch.cat(
                [tokens[:, 0], tokens[:, n_prefix:].mean(1)], dim=-1)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
        assert got.shape[1] == spec.dim
    elif spec.family == "conch_v15":
        # TITAN's vision tower: a timm ViT-L/16 trunk at 448 px plus CONCH's attentional pooler,
        # saved as one state dict ("trunk.*", pooler keys) in pytorch_model_vision.bin
        kw = _published_timm_kwargs(spec)
        trunk = timm.create_model(spec.arch, pretrained=False, **kw).eval()
        rand = build_encoder(spec.with_overrides(**spec.test_overrides), weights="random", device="cpu")
        sd = {k: v.clone() for k, v in rand.module.state_dict().items() if not k.startswith("trunk.")}
        sd.update({f"trunk.{k}": v.clone() for k, v in trunk.state_dict().items()})
        torch.save(sd, tmp_path / "pytorch_model_vision.bin")
        enc = build_encoder(spec.with_overrides(**spec.test_overrides), weights=str(tmp_path / "pytorch_model_vision.bin"),
                            device="cpu")
        loaded = enc.module.state_dict()
        for k, v in trunk.state_dict().items():
            np.testing.assert_array_equal(loaded[f"trunk.{k}"].numpy(), v.numpy())
        out = enc(np.zeros((1, kw.get("img_size", 448), kw.get("img_size", 448), 3), np.uint8))
        assert out.shape == (1, spec.dim)
    else:
        pytest.fail(f"no published-layout fixture for family '{spec.family}' ({spec.id}): add one")


def test_verify_checks_the_published_sha256_when_the_spec_has_one(tmp_path):
    import hashlib

    spec = get_spec("kaiko_vits16").with_overrides(depth=1)
    _, path = _timm_ckpt(tmp_path, spec.arch, num_classes=0, depth=1, img_size=224)
    right = hashlib.sha256(path.read_bytes()).hexdigest()
    assert verify_checkpoint(spec.with_overrides(), path).ok
    import dataclasses

    assert verify_checkpoint(dataclasses.replace(spec, sha256=right), path).ok
    rep = verify_checkpoint(dataclasses.replace(spec, sha256="0" * 64), path)
    assert not rep.ok and rep.sha256_mismatch == f"file {right}, spec {'0' * 64}"
