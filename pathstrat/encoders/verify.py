"""Check a downloaded checkpoint against an encoder's architecture before a long run.

The model is built on the meta device (no memory, seconds even for ViT-g) and compared key by
key with the file: missing/unexpected keys, shapes (position tables on another grid are
reported as resampled, not as errors), dtypes and, when the spec records one, the sha256.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pathstrat.encoders.spec import EncoderSpec, get_spec
from pathstrat.encoders.weights import clean_state_dict, load_state_dict, resolve_weights

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """What differs between a checkpoint and the encoder built from the registry spec."""

    encoder_id: str
    file: str
    n_keys: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    sha256_mismatch: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape or self.sha256_mismatch)

    def lines(self) -> list[str]:
        """Human-readable findings, one per line."""
        out = [f"{self.encoder_id}: {self.file}: {self.n_keys} tensors, dtypes {self.dtypes}"]
        for name, items in (("missing key", self.missing), ("unexpected key", self.unexpected),
                            ("shape mismatch", self.shape), ("resampled on load", self.resampled)):
            out += [f"  {name}: {i}" for i in items]
        if self.sha256_mismatch:
            out.append(f"  sha256 mismatch: {self.sha256_mismatch}")
        out.append("  OK" if self.ok else "  DIFFERS: this file will not load")
        return out


def verify_checkpoint(encoder_id: str | EncoderSpec, weights) -> VerifyReport:
    """Compare the checkpoint at ``weights`` with ``encoder_id``'s architecture (no weights loaded
    into a model; the model is built on the meta device)."""
    import torch

    from pathstrat.encoders.builders import BUILDERS

    spec = encoder_id if isinstance(encoder_id, EncoderSpec) else get_spec(encoder_id)
    resolved = resolve_weights(spec, weights)
    rep = VerifyReport(spec.id, resolved.file.name)
    expected_sha = spec.sha256
    if expected_sha:
        got = resolved.sha256
        if got != expected_sha:
            rep.sha256_mismatch = f"file {got}, spec {expected_sha}"
    clean = clean_state_dict(load_state_dict(resolved.file), spec)
    rep.n_keys = len(clean)
    rep.dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in clean.values()})
    if spec.family in ("transformers", "conch", "builtin"):
        return rep  # these load through their own package; keys are checked by it
    with torch.device("meta"):
        module = BUILDERS.get(spec.family)(spec, None)
    inner = module.backbone if hasattr(module, "backbone") else module
    own = inner.state_dict() if spec.family != "resnet_trunc" else None
    if own is None:
        return rep
    rep.missing = sorted(set(own) - set(clean))
    rep.unexpected = sorted(set(clean) - set(own))
    for k in sorted(set(own) & set(clean)):
        a, b = tuple(clean[k].shape), tuple(own[k].shape)
        if a == b:
            continue
        if k.endswith("pos_embed") and len(a) == 3 and a[-1] == b[-1]:
            rep.resampled.append(f"{k}: {a[1]} -> {b[1]} tokens")
        else:
            rep.shape.append(f"{k}: file {a}, model {b}")
    return rep
