"""Model selection across federated rounds: which round's global model is kept, and when to stop.

After every round the sites evaluate the new global model on their own held-out patients; the
coordinator aggregates those metrics (loss weighted by held-out counts, pooled AUROC from the
summed score histograms). :class:`RoundSelector` keeps the global weights of the best round by the
configured criterion, counts rounds without improvement for early stopping, and says in words
why the kept round was kept. :func:`lr_for_round` is the server-side learning-rate schedule the
coordinator sends to the sites with each round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pathstrat.federated.config import FederationConfig


def lr_for_round(fed: FederationConfig, server_round: int) -> float:
    """Local learning rate of ``server_round`` (1-based) under ``fed.lr_schedule``."""
    lo = fed.lr * fed.lr_min_fraction
    if fed.lr_schedule == "constant" or fed.rounds <= 1:
        return float(fed.lr)
    if fed.lr_schedule == "step":
        return float(max(lo, fed.lr * 0.5 ** ((server_round - 1) // fed.lr_step_rounds)))
    frac = (server_round - 1) / (fed.rounds - 1)
    return float(lo + 0.5 * (fed.lr - lo) * (1 + math.cos(math.pi * frac)))


def first_binary_head(fed: FederationConfig) -> str | None:
    """Name of the first head whose kind pools an AUROC from score histograms (binary), which
    can select the round, else None."""
    from pathstrat.mil.kinds import KINDS

    return next((t.name for t in fed.targets if KINDS.get(t.kind).pooled_auroc), None)


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass
class RoundSelector:
    """Tracks the best round by the federation's selection criterion and the early-stop count.

    ``update(round, metrics, arrays)`` is called once per round with the aggregated evaluation
    metrics; it returns True when training should stop (``patience`` rounds without improvement).
    """

    fed: FederationConfig
    best_round: int | None = None
    best_arrays: Any = None
    best_value: float | None = None
    best_loss: float | None = None
    bad_rounds: int = 0
    stopped_early: bool = False
    last_round: int = 0
    last_arrays: Any = None
    evaluated_rounds: list[int] = field(default_factory=list)

    @property
    def criterion(self) -> str:
        """Metric key the selection uses ('' for the last round)."""
        if self.fed.selection == "last":
            return ""
        if self.fed.selection == "pooled_auroc":
            head = first_binary_head(self.fed)
            if head is None:
                return "eval-loss"
            return f"{head}.pooled_auroc"
        return "eval-loss"

    @property
    def higher_is_better(self) -> bool:
        return self.criterion.endswith("auroc")

    def _better(self, value: float, loss: float | None) -> bool:
        if self.best_value is None:
            return True
        if self.higher_is_better:
            if value > self.best_value + 1e-9:
                return True
            if abs(value - self.best_value) <= 1e-9 and loss is not None:
                return self.best_loss is None or loss < self.best_loss - 1e-12
            return False
        return value < self.best_value - 1e-9

    def update(self, server_round: int, metrics: dict[str, Any] | None, arrays: Any) -> bool:
        """Record one round; True when early stopping says stop now."""
        self.last_round, self.last_arrays = server_round, arrays
        if not self.criterion:
            return False
        value = _finite((metrics or {}).get(self.criterion))
        if value is None:  # nothing was evaluated this round: it can neither win nor count
            return False
        self.evaluated_rounds.append(server_round)
        loss = _finite((metrics or {}).get("eval-loss"))
        if self._better(value, loss):
            self.best_round, self.best_arrays = server_round, arrays
            self.best_value, self.best_loss, self.bad_rounds = value, loss, 0
            return False
        self.bad_rounds += 1
        if self.fed.patience is not None and self.bad_rounds >= self.fed.patience:
            self.stopped_early = True
            return True
        return False

    def kept(self) -> tuple[int, Any]:
        """(round, arrays) of the kept global model."""
        if self.best_round is None:
            return self.last_round, self.last_arrays
        return self.best_round, self.best_arrays

    def summary(self) -> dict[str, Any]:
        """The ``selection`` block of federation.json: kept round, criterion and the reason."""
        kept, _ = self.kept()
        crit = self.criterion
        if not crit:
            reason = "selection 'last': the last round's global model is kept"
        elif self.best_round is None:
            reason = (f"no round reported a finite aggregated '{crit}' (nothing was evaluated on "
                      "held-out patients), so the last round's global model is kept")
        else:
            word = "highest" if self.higher_is_better else "lowest"
            reason = (f"round {self.best_round} had the {word} aggregated held-out '{crit}' "
                      f"({self.best_value:.4g}) of the {len(self.evaluated_rounds)} evaluated rounds")
            if self.stopped_early:
                reason += (f"; stopped early after round {self.last_round} ({self.fed.patience} "
                           "rounds without improvement)")
        return {"kept_round": kept, "last_round": self.last_round, "criterion": crit or "last",
                "value": self.best_value, "eval_loss": self.best_loss,
                "stopped_early": self.stopped_early, "patience": self.fed.patience,
                "reason": reason}


__all__ = ["RoundSelector", "first_binary_head", "lr_for_round"]
