"""Task losses: masked classification/regression losses, Cox partial likelihood, discrete-time NLL.

Missing labels (NaN, or -1 for class indices) are masked out; a batch without any valid label
for a head contributes a zero that still keeps the graph connected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pathstrat.errors import ConfigError
from pathstrat.mil.kinds.base import empty_loss
from pathstrat.mil.targets import TargetSpec

_empty = empty_loss


def cox_ph_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
                ties: str = "efron") -> torch.Tensor:
    """Negative Cox partial log-likelihood per event, within the batch.

    ``risk`` is the log hazard ratio (higher = earlier event). Tied event times are handled by
    Efron's or Breslow's approximation. Returns 0 (connected) when the batch has no event.
    """
    if ties not in ("efron", "breslow"):
        raise ConfigError(f"Cox ties method '{ties}' unknown; use 'efron' or 'breslow'.")
    risk, time, event = risk.float().view(-1), time.float().view(-1), event.float().view(-1)
    ok = ~(torch.isnan(time) | torch.isnan(event))
    risk, time, event = risk[ok], time[ok], event[ok]
    if event.sum() < 1:
        return _empty(risk)
    shift = risk.detach().max()
    exp_r = torch.exp(risk - shift)
    ll = risk.new_zeros(())
    for t in torch.unique(time[event == 1]):
        died = (time == t) & (event == 1)
        d = int(died.sum())
        at_risk = exp_r[time >= t].sum()
        ll = ll + risk[died].sum()
        if ties == "breslow" or d == 1:
            ll = ll - d * (torch.log(at_risk) + shift)
        else:
            tied = exp_r[died].sum()
            frac = torch.arange(d, device=risk.device, dtype=risk.dtype) / d
            ll = ll - (torch.log(at_risk - frac * tied) + shift).sum()
    return -ll / event.sum()


def discrete_nll(logits: torch.Tensor, bins: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Discrete-time survival NLL (hazard per bin; Zadeh & Schmid 2020).

    An event in bin j costs -log S(j-1) - log h(j); a censoring in bin j costs -log S(j).
    """
    ok = ~(torch.isnan(bins) | torch.isnan(event))
    if not ok.any():
        return _empty(logits)
    logits, j, e = logits[ok].float(), bins[ok].long(), event[ok].float()
    log_h = F.logsigmoid(logits)
    log_1mh = F.logsigmoid(-logits)
    log_s = torch.cumsum(log_1mh, dim=1)  # log S(k)
    log_s_prev = torch.cat([log_s.new_zeros(len(j), 1), log_s], 1)  # log S(k-1), S(-1)=1
    idx = j.unsqueeze(1)
    uncens = -(log_s_prev.gather(1, idx) + log_h.gather(1, idx)).squeeze(1)
    cens = -log_s.gather(1, idx).squeeze(1)
    return (e * uncens + (1 - e) * cens).mean()


class TargetLoss(nn.Module):
    """Loss of one head given its spec and the training fold's state."""

    def __init__(self, spec: TargetSpec, state: dict[str, Any] | None = None,
                 weighting: str | None = "balanced", ties: str = "efron") -> None:
        super().__init__()
        self.spec, self.ties, self.impl = spec, ties, spec.impl  # the kind's loss (pathstrat.mil.kinds)
        state = state or {}
        balanced = weighting == "balanced"
        pw = state.get("pos_weight") if balanced else None
        cw = state.get("class_weight") if balanced else None
        self.register_buffer("pos_weight", torch.tensor(pw, dtype=torch.float32) if pw else None)
        self.register_buffer("class_weight", torch.tensor(cw, dtype=torch.float32) if cw else None)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.impl.loss(self.spec, logits.float(), y, pos_weight=self.pos_weight,
                              class_weight=self.class_weight, ties=self.ties)


class MultiTaskLoss(nn.Module):
    """Weighted sum of per-head losses: ``loss(logits, targets) -> (total, {head: value})``."""

    def __init__(self, losses: dict[str, TargetLoss], weights: dict[str, float] | None = None):
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in losses}

    def forward(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
        parts = {k: fn(logits[k], targets[k].to(logits[k].device)) for k, fn in self.losses.items()}
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}


def make_loss(specs: Sequence[TargetSpec], states: dict[str, dict[str, Any]] | None = None, *,
              weighting: str | None = "balanced", ties: str = "efron",
              task_weights: dict[str, float] | None = None) -> MultiTaskLoss:
    """Multi-task loss for ``specs`` with fold ``states`` (class weights, bins) from ``TargetSpec.fit``.

    ``weighting="balanced"`` weights classes inversely to their training-fold frequency.
    """
    if weighting not in (None, "none", "balanced"):
        raise ConfigError(f"Class weighting '{weighting}' unknown; use 'balanced' or 'none'.")
    states = states or {}
    return MultiTaskLoss({s.name: TargetLoss(s, states.get(s.name), weighting, ties) for s in specs},
                         task_weights)


def bag_labels(spec: TargetSpec, y: torch.Tensor) -> torch.Tensor | None:
    """Class index per bag (-1 = missing) of a classification head, for CLAM clustering."""
    return spec.impl.bag_labels(spec, y)
