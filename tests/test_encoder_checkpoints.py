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
