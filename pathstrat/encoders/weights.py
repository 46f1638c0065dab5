"""Find and load encoder weights offline: a local file or folder, or an existing HF cache.

Never downloads and never falls back to another model. What was loaded is recorded by sha256.
Only safetensors or ``torch.load(weights_only=True)`` are used (no pickled code).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pathstrat.encoders.spec import EncoderSpec
from pathstrat.errors import WeightsError
from pathstrat.io import sha256_file

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class ResolvedWeights:
    """Where an encoder's weights were found: the main file and its folder."""

    file: Path
    directory: Path
    source: str  # "path" or "hf-cache"

    @property
    def sha256(self) -> str:
        return sha256_file(self.file)


def _hf_cache_lookup(spec: EncoderSpec) -> tuple[Path | None, str]:
    """Look up the spec's files in the local Hugging Face cache only (no network)."""
    if not spec.hf_repo:
        return None, "no Hugging Face repo"
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface-hub is a core dependency
        return None, "huggingface_hub not installed"
    for repo in _cached_repo_ids(spec, Path(HF_HUB_CACHE)):
        for name in _weight_candidates(spec):
            hit = try_to_load_from_cache(repo_id=repo, filename=name)
            if isinstance(hit, str) and os.path.exists(hit):
                return Path(hit), HF_HUB_CACHE
    return None, str(HF_HUB_CACHE)


def _cached_repo_ids(spec: EncoderSpec, cache: Path) -> list[str]:
    """Repo ids to try: the spec's and its aliases, matched case-insensitively to cache folders.

    Hub repo ids are case-insensitive on the Hub but cache folders keep the spelling used at
    download time (``MahmoodLab/conch`` vs ``MahmoodLab/CONCH``), so the folder names decide.
    """
    wanted = [spec.hf_repo, *spec.hf_aliases]
    lowered = {r.lower() for r in wanted if r}
    found = []
    if cache.is_dir():
        for d in sorted(cache.glob("models--*")):
            repo = d.name[len("models--"):].replace("--", "/")
            if repo.lower() in lowered:
                found.append(repo)
    return found + [r for r in wanted if r and r not in found]


def _weight_candidates(spec: EncoderSpec) -> list[str]:
    """Weight files of a spec (config.json etc. are companions, not the weights themselves)."""
    names = [f for f in spec.weight_files if f.endswith(WEIGHT_SUFFIXES)]
    return names or ["model.safetensors", "pytorch_model.bin"]


def resolve_weights(spec: EncoderSpec, weights: str | os.PathLike | None) -> ResolvedWeights:
    """Locate the weights of ``spec`` from ``weights`` (file or folder) or the HF cache.

    Raises :class:`WeightsError` naming the encoder, the files looked for and where, the hub
    repo, whether it is gated and how to obtain the files.
    """
    looked: list[str] = []
    if weights is not None:
        p = Path(weights).expanduser()
        if p.is_file():
            return ResolvedWeights(p, p.parent, "path")
        if p.is_dir():
            for name in _weight_candidates(spec):
                for cand in (p / name, p / spec.id / name):
                    if cand.is_file():
                        return ResolvedWeights(cand, cand.parent, "path")
            looked.append(f"folder {p} (and {p / spec.id})")
        else:
            looked.append(f"path {p} (does not exist)")
    else:
        hit, where = _hf_cache_lookup(spec)
        if hit is not None:
            return ResolvedWeights(hit, hit.parent, "hf-cache")
        looked.append(f"Hugging Face cache {where}")
    raise WeightsError(_missing_message(spec, looked))


def _missing_message(spec: EncoderSpec, looked: list[str]) -> str:
    files = ", ".join(_weight_candidates(spec))
    access = "gated: accept its licence on the model page first, then " if spec.gated else ""
    how = (f"{access}run `huggingface-cli download {spec.hf_repo} {' '.join(spec.weight_files)}` "
           f"on a machine with network (the cache is reused offline) or pass `weights`=PATH "
           f"(a file or a folder holding it)") if spec.hf_repo else "pass `weights`=PATH"
    gated = "gated" if spec.gated else "not gated"
    return (f"Weights for encoder '{spec.id}' not found: looked for {files} in "
            f"{'; '.join(looked)}. Hub repo: {spec.hf_repo or '-'} ({gated}). To fix: {how}; "
            "or use `weights`=random for tests/benchmarks only. pathstrat never downloads.")


def load_state_dict(path: str | os.PathLike) -> dict:
    """Tensors of a safetensors file or a plain tensor checkpoint (``weights_only=True``)."""
    import torch

    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a weights problem
        raise WeightsError(f"Cannot read weights file {p}: {type(exc).__name__}: {exc}. "
                           "Use a .safetensors file or a tensor-only checkpoint.") from exc
    for key in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsError(f"Weights file {p} holds a {type(sd).__name__}, not a state dict.")
    return sd


def _resample_pos_embeds(model, sd: dict, path: Path) -> list[str]:
    """Resample absolute position tables whose grid differs from the built model's.

    Uses timm's ``resample_abs_pos_embed``, keeping the prefix (CLS/register) rows untouched;
    the prefix count is the built table's length minus its patch grid. Returns one record per
    resampled key (``key:old_tokens->new_tokens``) for the features' provenance.
    """
    import math

    from timm.layers import resample_abs_pos_embed

    own = model.state_dict()
    done = []
    for key, val in list(sd.items()):
        if not key.endswith("pos_embed") or key not in own or val.ndim != 3:
            continue
        target = own[key]
        if tuple(val.shape) == tuple(target.shape) or val.shape[-1] != target.shape[-1]:
            continue
        parent = model.get_submodule(key.rsplit(".", 1)[0]) if "." in key else model
        grid = tuple(parent.patch_embed.grid_size)
        n_prefix = target.shape[1] - grid[0] * grid[1]
        old_side = math.isqrt(max(val.shape[1] - n_prefix, 0))
        if n_prefix < 0 or old_side * old_side != val.shape[1] - n_prefix:
            raise WeightsError(
                f"Weights {path}: position table '{key}' has {val.shape[1]} tokens, which is not "
                f"{n_prefix} prefix tokens + a square grid; cannot resample it to {grid}.")
        sd[key] = resample_abs_pos_embed(val.float(), new_size=list(grid),
                                         old_size=[old_side, old_side],
                                         num_prefix_tokens=n_prefix).to(val.dtype)
        rec = f"{key}:{val.shape[1]}->{target.shape[1]}"
        log.info("resampled position table %s (%dx%d grid -> %s)", rec, old_side, old_side, grid)
        done.append(rec)
    return done


def clean_state_dict(state_dict: dict, spec: EncoderSpec) -> dict:
    """Keys as the built model names them: ``module.`` and the spec's prefix stripped, the spec's
    ignored keys dropped (the one rule shared by loading and ``encoders verify``)."""
    prefix = spec.state_dict_prefix
    sd = {}
    for k, v in state_dict.items():
        k = k.removeprefix("module.")
        if prefix and k.startswith(prefix):
            k = k[len(prefix):]
        if any(k.startswith(ig) for ig in spec.ignore_keys):
            continue
        sd[k] = v
    return sd


def apply_state_dict(model, state_dict: dict, spec: EncoderSpec, path: Path) -> list[str]:
    """Load strictly (after the spec's prefix strip and ignored keys); mismatches are errors.

    Position tables on another grid are resampled first; the resampled keys are returned and
    also kept on ``model.pathstrat_resampled`` so the encoder can record them.
    """
    sd = clean_state_dict(state_dict, spec)
    resampled = _resample_pos_embeds(model, sd, path)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or shape:
        raise WeightsError(
            f"Weights {path} do not fit encoder '{spec.id}' ({spec.arch}): "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}, {len(shape)} shape mismatches {shape[:5]}. Check that the file "
            f"is the one from {spec.hf_repo or 'the model card'}; pathstrat does not load "
            "partial weights.")
    model.load_state_dict(sd, strict=True)
    model.pathstrat_resampled = resampled
    return resampled


def weights_found(spec: EncoderSpec, weights: str | os.PathLike | None = None) -> bool:
    """True when :func:`resolve_weights` would succeed (used by ``pathstrat encoders list``)."""
    if not spec.needs_weights:
        return True
    try:
        resolve_weights(spec, weights)
    except WeightsError:
        return False
    return True
