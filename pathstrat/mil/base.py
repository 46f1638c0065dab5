"""Shared pieces of the MIL zoo: the registry entry, the named output, masked pooling helpers.

Every model takes padded bags ``x`` (B, N, D) with a boolean ``mask`` (B, N) (True = real tile)
and returns a :class:`MILOutput`. Padding never changes an output: padded tiles get zero
attention, are excluded from max/mean pooling, and per-bag models loop over the valid tiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pathstrat.registry import Registry


@dataclass
class MILOutput:
    """Named outputs of a MIL model.

    ``logits`` maps head name to (B, n_outputs); ``attention`` (B, N) sums to 1 over the valid
    tiles of each bag (0 on padding); ``embedding`` (B, E) is the bag embedding; ``aux_loss`` is an
    already-weighted scalar to add to the task loss (0 in eval mode); ``attention_branches``
    (B, K, N) is set by models with one attention branch per class (CLAM-MB, DSMIL) or per
    target (ABMIL ``attention="per_target"``); ``branch_names`` names the K branches when they
    are per target (head names), else None.
    """

    logits: dict[str, torch.Tensor]
    attention: torch.Tensor
    embedding: torch.Tensor
    aux_loss: torch.Tensor
    attention_branches: torch.Tensor | None = None
    branch_names: list[str] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Self-describing registry entry of a MIL model (what it assumes, how to build it)."""

    name: str
    cls: type[nn.Module]
    standard_mil: bool
    permutation_invariant: bool
    defaults: dict[str, Any] = field(default_factory=dict)
    citation: str = ""
    description: str = ""
    #: small hyperparameters that keep the contract suite (tests/test_mil.py) fast; every
    #: registered model needs them, the published ``defaults`` are tested separately
    test_hparams: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (used by `pathstrat train --list-models` and docs)."""
        return {"name": self.name, "standard_mil": self.standard_mil,
                "permutation_invariant": self.permutation_invariant,
                "defaults": dict(self.defaults), "citation": self.citation,
                "description": self.description}


MODELS: Registry[ModelSpec] = Registry("MIL model")


def register_model(name: str, *, standard_mil: bool, permutation_invariant: bool,
                   citation: str, description: str, test_hparams: dict[str, Any] | None = None,
                   **defaults: Any):
    """Class decorator adding a model with its metadata and default hyperparameters.

    ``test_hparams`` are the small settings the test matrix builds the model with (e.g.
    ``{"dim": 16}``); a model registered without them fails ``tests/test_mil.py``.
    """

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        MODELS.add(name, ModelSpec(name, cls, standard_mil, permutation_invariant,
                                   dict(defaults), citation, description,
                                   dict(test_hparams or {})))
        return cls

    return deco


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over valid positions only; padded positions get exactly 0."""
    scores = scores.float().masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, dim=dim)
    return torch.nan_to_num(out, nan=0.0)  # a bag without valid tiles -> all zeros


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, N, E) over valid tiles -> (B, E)."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_max(h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max of (B, N, E) over valid tiles -> values (B, E), argmax indices (B, E)."""
    fill = torch.finfo(h.dtype).min
    return h.masked_fill(~mask.unsqueeze(-1), fill).max(dim=1)


def projection(in_dim: int, dim: int, dropout: float) -> nn.Sequential:
    """Tile feature projection used by most models: Linear -> ReLU -> Dropout."""
    return nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))


class Heads(nn.Module):
    """One linear layer per task head on a shared bag embedding."""

    def __init__(self, dim: int, heads: dict[str, int]) -> None:
        super().__init__()
        self.names = list(heads)
        self.layers = nn.ModuleDict({k: nn.Linear(dim, int(n)) for k, n in heads.items()})

    def forward(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: self.layers[k](emb) for k in self.names}


class GatedAttention(nn.Module):
    """Attention scores a_i = w^T (tanh(V h_i) * sigmoid(U h_i)) (Ilse et al. 2018), or plain tanh.

    ``n_branches`` > 1 gives one score per branch (CLAM-MB).
    """

    def __init__(self, dim: int, hidden: int, dropout: float, gated: bool = True,
                 n_branches: int = 1) -> None:
        super().__init__()
        self.v = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.u = (nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
                  if gated else None)
        self.w = nn.Linear(hidden, n_branches)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, N, E) -> raw scores (B, N, K)."""
        a = self.v(h)
        if self.u is not None:
            a = a * self.u(h)
        return self.w(a)


def zero_loss(ref: torch.Tensor) -> torch.Tensor:
    """A scalar zero on the right device/dtype for models without an auxiliary loss."""
    return ref.new_zeros(())
