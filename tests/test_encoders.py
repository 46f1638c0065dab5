"""Encoder registry contract (every entry), offline weights, and the builtin descriptor."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import warnings

import numpy as np
import pytest
import torch

from pathstrat import encoders as E
from pathstrat.encoders.builtin import FEATURE_NAMES
from pathstrat.errors import MissingDependencyError, UnknownNameError, WeightsError

REQUIRED = ["builtin", "uni", "uni2_h", "conch_v1_5", "virchow", "virchow.cls", "virchow2",
            "virchow2.cls", "h_optimus_0", "h_optimus_1", "h0_mini", "gigapath", "phikon",
            "phikon_v2", "hibou_b", "hibou_l", "kaiko_vits16", "kaiko_vitl14", "midnight",
            "resnet50_trunc"]


def _uint8(rng, n, px):
    return rng.integers(0, 256, size=(n, px, px, 3), dtype=np.uint8)


def test_registry_covers_the_required_encoders():
    ids = {s.id for s in E.list_specs()}
    assert set(REQUIRED) <= ids
    v2, v2cls = E.get_spec("virchow2"), E.get_spec("virchow2.cls")
    assert (v2.dim, v2.pooling, v2cls.dim, v2cls.pooling) == (2560, "cls+mean", 1280, "cls")
    assert E.get_spec("uni").gated and not E.get_spec("h_optimus_0").gated
    assert E.get_spec("gigapath").resize_px == 256 and E.get_spec("gigapath").input_px == 224
    with pytest.raises(UnknownNameError, match="Did you mean: .*virchow2"):
        E.get_spec("virchow3")


@pytest.mark.parametrize("spec", E.list_specs(), ids=lambda s: s.id)
def test_registry_contract_random_init(spec, rng):
    """Every entry: random init (reduced depth only), output = declared dim, finite, deterministic."""
    missing = spec.extra and importlib.util.find_spec(spec.extra) is None
    if missing:
        from pathstrat.errors import MANUAL_INSTALL

        how = re.escape(MANUAL_INSTALL.get(spec.extra, f"pathstrat[{spec.extra}]"))
        with pytest.raises(MissingDependencyError, match=how):
            E.build_encoder(spec.id, weights="random", device="cpu",
                            overrides=spec.test_overrides)
        return
    enc = E.build_encoder(spec.id, weights="random", device="cpu", overrides=spec.test_overrides)
    assert enc.weights_random is (spec.family != "builtin")
    x = _uint8(rng, 2, enc.spec.input_px)
    out = enc(x)
    assert out.shape == (2, spec.dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(enc(x), out, rtol=0, atol=0)  # eval mode: no dropout etc.


def test_random_init_is_seeded(rng):
    spec = E.get_spec("kaiko_vits16")
    a, b, c = (E.build_encoder("kaiko_vits16", weights="random", device="cpu", seed=s,
                               overrides={"depth": 1, "img_size": 32}) for s in (0, 0, 1))
    x = _uint8(rng, 2, 32)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert not torch.allclose(a(x), c(x))
    assert a.weights_sha256 == "random-init:seed=0" and spec.dim == a(x).shape[1]


def test_missing_weights_error_names_everything(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError) as ei:
        E.build_encoder("uni", device="cpu")
    msg = str(ei.value)
    for part in ("'uni'", "pytorch_model.bin", "MahmoodLab/uni", "gated", "accept its licence",
                 "huggingface-cli download MahmoodLab/uni", str(tmp_path / "empty-cache"),
                 "never downloads"):
        assert part in msg
    with pytest.raises(WeightsError, match="does not exist"):
        E.build_encoder("uni", weights=tmp_path / "nope.safetensors", device="cpu")
    assert not E.weights_found(E.get_spec("uni"))


@pytest.fixture
def tiny_spec():
    return E.custom_timm_spec("test_vit_tiny", "vit_tiny_patch16_224", dim=192, dtype="fp32",
                              build_kwargs={"depth": 2, "img_size": 64}, input_px=64,
                              hf_repo="acme/tiny-vit", weight_files=("model.safetensors",))


def _save_random_weights(spec, path, seed=3):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(spec.arch, pretrained=False, num_classes=0, depth=2, img_size=64)
    save_file(model.state_dict(), str(path))
    return model.eval()


def test_custom_timm_spec_loads_local_file_and_folder(tmp_path, tiny_spec, rng):
    wfile = tmp_path / "w" / "model.safetensors"
    wfile.parent.mkdir()
    ref = _save_random_weights(tiny_spec, wfile)
    sha = hashlib.sha256(wfile.read_bytes()).hexdigest()
    x = _uint8(rng, 3, 64)
    for where in (wfile, wfile.parent):
        enc = E.build_encoder("test_vit_tiny", weights=where, device="cpu")
        assert enc.weights_sha256 == sha and not enc.weights_random
        with torch.inference_mode():
            expected = ref.forward_features(enc.transform.normalize(x))[:, 0]
        torch.testing.assert_close(enc(x), expected)
    assert enc.attrs()["transform"] == "resize(64,bilinear)+normalize(mean=[0.485,0.456,0.406]," \
                                       "std=[0.229,0.224,0.225])"


def test_weights_from_hf_cache_offline(tmp_path, tiny_spec, monkeypatch):
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    snap = cache / "models--acme--tiny-vit" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (cache / "models--acme--tiny-vit" / "refs").mkdir()
    (cache / "models--acme--tiny-vit" / "refs" / "main").write_text("a" * 40)
    _save_random_weights(tiny_spec, snap / "model.safetensors")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    enc = E.build_encoder("test_vit_tiny", device="cpu")
    assert enc.weights_source == str(snap / "model.safetensors")
    assert E.weights_found(tiny_spec)


def test_wrong_or_unsafe_weights_are_refused(tmp_path, tiny_spec):
    other = tmp_path / "other.bin"
    torch.save({"foo.weight": torch.zeros(3)}, other)  # plain tensors: readable, but wrong
    with pytest.raises(WeightsError, match=r"1 unexpected keys \['foo.weight'\]"):
        E.build_encoder("test_vit_tiny", weights=other, device="cpu")
    pickled = tmp_path / "evil.pt"
    torch.save({"obj": _Unsafe()}, pickled)
    with pytest.raises(WeightsError, match="Cannot read weights file"):
        E.build_encoder("test_vit_tiny", weights=pickled, device="cpu")


class _Unsafe:  # an arbitrary pickled object: weights_only=True must refuse it
    pass


def test_warn_if_random():
    with pytest.warns(E.RandomWeightsWarning, match="RANDOMLY INITIALISED encoder 'uni'"):
        assert E.warn_if_random({"weights_random": True, "encoder_id": "uni"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not E.warn_if_random({"weights_random": False})


# ---------------------------------------------------------------------------------------------
# builtin descriptor


def test_builtin_is_deterministic_and_batch_independent(rng):
    enc = E.build_encoder("builtin", device="cpu")
    x = _uint8(rng, 6, 224)
    full = enc(x)
    assert full.shape == (6, len(FEATURE_NAMES)) and torch.isfinite(full).all()
    one_by_one = torch.cat([enc(x[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(one_by_one, full, rtol=1e-5, atol=1e-5)
    assert enc.weights_sha256 == E.build_encoder("builtin", device="cpu").weights_sha256


def _pure_tiles(slide, n_candidates, seed, min_frac=0.9):
    """Random 224 px tiles (level 0, 0.5 µm/px) whose truth is >= min_frac one class."""
    from pathstrat.slide import open_slide
    from pathstrat.synthetic import CLASSES, tile_truth

    r = np.random.default_rng(seed)
    coords = np.stack([r.integers(0, slide.width - 224, n_candidates),
                       r.integers(0, slide.height - 224, n_candidates)], 1)
    frac = tile_truth(slide.truth_path, coords, 224)[list(CLASSES)].to_numpy()
    keep = frac.max(1) >= min_frac
    with open_slide(slide.path) as s:
        tiles = np.stack(list(s.read_tiles(coords[keep], 224, 224)))
    return tiles, frac.argmax(1)[keep]


@pytest.mark.slow
def test_builtin_linear_probe_separates_synthetic_classes(tmp_path):
    """Train on one generated slide, test on another: >= 0.9 accuracy over the 5 classes."""
    from sklearn.linear_model import LogisticRegression

    from pathstrat.synthetic import make_slide

    layout = {"tissue": 0.75, "stroma": 0.3, "tumor": 0.3, "lymphocytes": 0.2, "necrosis": 0.2}
    enc = E.build_encoder("builtin", device="cpu")
    data = []
    for seed in (11, 12):
        s = make_slide(tmp_path / f"p{seed}.svs", width=1500, height=1500, mpp=0.5, seed=seed,
                       layout=layout)
        tiles, y = _pure_tiles(s, 400, seed)
        data.append((enc(tiles).numpy(), y))
    (xtr, ytr), (xte, yte) = data
    assert set(np.unique(ytr)) == set(np.unique(yte)) == {0, 1, 2, 3, 4}, np.bincount(yte)
    assert np.abs(xtr).max() < 20  # fixed standardisation keeps features well scaled
    clf = LogisticRegression(max_iter=3000).fit(xtr, ytr)
    acc = (clf.predict(xte) == yte).mean()
    assert acc >= 0.9, f"linear probe accuracy {acc:.3f} on {len(yte)} held-out tiles"


@pytest.mark.realdata
def test_builtin_separates_tissue_from_background_on_cmu1(real_slide):
    """Tiles labelled tissue/background by an independent RGB rule; 5-fold probe >= 0.9."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from pathstrat.slide import open_slide

    with open_slide(real_slide("cmu-1-small-region.svs")) as s:
        w, h = s.dimensions
        coords = np.array([(x, y) for y in range(0, h - 224, 200) for x in range(0, w - 224, 200)])
        tiles = np.stack(list(s.read_tiles(coords, 224, 224)))
    stained = (tiles.min(axis=3) < 200).mean(axis=(1, 2))  # share of non-white pixels
    keep = (stained > 0.5) | (stained < 0.1)
    y = (stained[keep] > 0.5).astype(int)
    assert 20 <= y.sum() <= len(y) - 20, "need both classes"
    feats = E.build_encoder("builtin", device="cpu")(tiles[keep]).numpy()
    acc = cross_val_score(LogisticRegression(max_iter=3000), feats, y, cv=5).mean()
    assert acc >= 0.9, f"tissue/background probe accuracy {acc:.3f}"


def test_weight_lookup_never_touches_the_network(monkeypatch):
    import socket

    def refuse(*_a, **_k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(WeightsError, match="bioptimus/H-optimus-0 \\(not gated\\)"):
        E.build_encoder("h_optimus_0", device="cpu")


def test_transform_resize_crop_and_normalise(rng):
    t = E.EncoderTransform.from_spec(E.get_spec("gigapath"))  # resize 256 bicubic, crop 224
    assert t.describe().startswith("resize(256,bicubic)+center_crop(224)+normalize(")
    x = rng.integers(0, 256, size=(2, 448, 448, 3), dtype=np.uint8)
    x[:, 200:248, 200:248] = 17  # a flat patch at the centre survives resize + centre crop
    out = t.resize(x)
    assert out.shape == (2, 224, 224, 3) and out.dtype == np.uint8
    assert (out[:, 108:116, 108:116] == 17).all()
    norm = t.normalize(out)
    mean, std = np.array(t.mean), np.array(t.std)
    expected = (out.astype(np.float64) / 255.0 - mean) / std
    np.testing.assert_allclose(norm.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B,H,W,3\)"):
        t.resize(x[0])


def test_remote_code_weights_need_an_explicit_opt_in(tmp_path, monkeypatch):
    """Hibou's folder ships Python that transformers would run: refused unless opted in."""
    from pathstrat.encoders import build_encoder
    from pathstrat.errors import MissingDependencyError, WeightsError

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    monkeypatch.delenv("PATHSTRAT_TRUST_REMOTE_CODE", raising=False)
    with pytest.raises(WeightsError, match="PATHSTRAT_TRUST_REMOTE_CODE=1"):
        build_encoder("hibou_b", weights=str(tmp_path), device="cpu")
    monkeypatch.setenv("PATHSTRAT_TRUST_REMOTE_CODE", "1")
    try:  # opted in: the next requirement is the transformers package (or the real weights)
        build_encoder("hibou_b", weights=str(tmp_path), device="cpu")
    except (MissingDependencyError, WeightsError) as exc:
        assert "PATHSTRAT_TRUST_REMOTE_CODE" not in str(exc)
