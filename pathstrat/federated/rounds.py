"""The coordinator's round loop: train, check the updates, aggregate, evaluate, select, stop.

Same steps as Flower's ``Strategy.start`` (configure_train -> send -> aggregate_train ->
configure_evaluate -> send -> aggregate_evaluate), with four additions:

* the round's learning rate (:func:`pathstrat.federated.selection.lr_for_round`) travels in the
  train config as ``lr``;
* every training reply is checked before aggregation: an update whose arrays do not fit the
  global model (names, shapes), with a non-finite value or a non-finite training loss is
  rejected and the site recorded as failed for that round;
* the global model of every round is scored on the sites' aggregated held-out metrics and the
  best one kept (:class:`~pathstrat.federated.selection.RoundSelector`);
* optional early stopping after ``patience`` rounds without improvement.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pathstrat.federated.config import FederationConfig
from pathstrat.federated.selection import RoundSelector, lr_for_round

log = logging.getLogger(__name__)


@dataclass
class RoundsResult:
    """What the loop produced: kept arrays, per-round rows and the selection block."""

    arrays: Any
    rounds: list[dict[str, Any]] = field(default_factory=list)
    selection: dict[str, Any] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)


PULL_INTERVAL_S = 0.05


def exchange(grid, messages, timeout: float | None, poll_s: float = PULL_INTERVAL_S) -> list:
    """Push ``messages`` and pull their replies every ``poll_s`` s until all came or ``timeout``.

    Flower 1.41's ``HttpGrid.send_and_receive`` (``flwr/superlink/grid/http_grid.py``, the
    ``time.sleep(3)`` in its pull loop) checks for replies every 3 s, which rounds every message
    step up to a multiple of 3 s; this loop uses the Grid's public ``push_messages`` /
    ``pull_messages`` with a short interval instead. Grids that deliver directly (the in-process
    simulation, Flower's in-memory simulation grid) keep their own ``send_and_receive``.
    """
    messages = list(messages)
    if getattr(grid, "delivers_directly", False) or hasattr(grid, "pull_interval"):
        return list(grid.send_and_receive(messages, timeout=timeout))
    pending = set(grid.push_messages(messages))
    end = None if timeout is None else time.monotonic() + timeout
    replies: list = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if not pending or (end is not None and time.monotonic() >= end):
            break
        time.sleep(poll_s)
    return replies


def rejection_reason(content, array_key: str = "arrays", reference=None) -> str | None:
    """Why a training reply's content may not be aggregated (None when it may): arrays that do
    not fit ``reference`` (the global model the round sent: other names, shapes or sizes), or
    non-finite values or training loss."""
    arrays = content.array_records.get(array_key)
    if arrays is None and content.array_records:
        arrays = next(iter(content.array_records.values()))
    if reference is not None and arrays is not None:
        want = {k: tuple(v.shape) for k, v in reference.items()}
        got = {k: tuple(v.shape) for k, v in arrays.items()}
        if got != want:
            diff = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
            return (f"model update does not fit the global model (arrays {diff[:3]}: sent "
                    f"{[got.get(k) for k in diff[:3]]}, expected {[want.get(k) for k in diff[:3]]}); "
                    "the site runs another model or pathstrat version")
    bad = []
    for name, arr in (arrays or {}).items():
        a = np.asarray(arr.numpy())
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad.append(f"{name} ({int((~np.isfinite(a)).sum())} of {a.size} values)")
    if bad:
        return "non-finite model update in " + ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
    for rec in content.metric_records.values():
        loss = rec.get("train-loss")
        if loss is not None and not isinstance(loss, list) and not math.isfinite(float(loss)):
            return f"non-finite training loss ({float(loss)})"
    return None


def _select(selector: RoundSelector, row: dict[str, Any], arrays, fed: FederationConfig, grid,
            any_aggregated: bool) -> bool:
    """Score one round's model (its row's ``evaluate``); True when early stopping says stop."""
    ev = row["evaluate"]
    msg = ", ".join(f"{k} {v:.4g}" for k, v in ev.items()
                    if not isinstance(v, list) and not k.endswith(".n"))
    log.info("round %d/%d (lr %.3g): %s", row["round"], fed.rounds, row["lr"],
             msg or "nothing evaluated")
    stop = selector.update(row["round"], ev, arrays) if any_aggregated else False
    if stop:
        log.info("early stop after round %d: %d rounds without a better '%s'", row["round"],
                 fed.patience, selector.criterion)
    return stop


def _plain(rec) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, list) else float(v)) for k, v in dict(rec or {}).items()}


def _by_site(grid, replies) -> list:
    """Replies in site-name order, not arrival order: aggregation sums floats, and the sum's
    last bits depend on its order, so a run would otherwise depend on which site answered first
    (differences that training amplifies over rounds)."""
    names = getattr(grid, "names", {})
    return sorted(replies, key=lambda r: (names.get(r.metadata.src_node_id, ""),
                                          r.metadata.src_node_id))


def run_rounds(strategy, grid, initial_arrays, fed: FederationConfig,
               config: dict[str, Any]) -> RoundsResult:
    """Run up to ``fed.rounds`` rounds on ``grid`` (a SiteGrid); returns the kept global model."""
    from flwr.app import ConfigRecord

    from pathstrat.federated.client import EVAL_FIRST
    from pathstrat.federated.server import aggregate_metrics, split_train_metrics

    selector = RoundSelector(fed)
    arrays, any_aggregated = initial_arrays, False
    result = RoundsResult(arrays=None)
    key = getattr(strategy, "arrayrecord_key", "arrays")
    inner = getattr(strategy, "strategy", strategy)  # DP wrapper -> the wrapped FedAvg/FedProx
    key = getattr(inner, "arrayrecord_key", key)
    fused = fed.evaluate_with_train and fed.fraction_train >= 1 and fed.fraction_evaluate >= 1
    pending: tuple[int, Any] | None = None  # (round, arrays) whose evaluation comes next round
    stop = False
    for rnd in range(1, fed.rounds + 1):
        lr = lr_for_round(fed, rnd)
        train_cfg = ConfigRecord({**config, "lr": lr, **({EVAL_FIRST: True} if pending else {})})
        msgs = list(strategy.configure_train(rnd, arrays, train_cfg, grid))
        replies = _by_site(grid, grid.send_and_receive(msgs, timeout=fed.timeout_s)) if msgs else []
        if pending is not None:  # held-out metrics of the previous round's model
            held = split_train_metrics([r.content for r in replies if not r.has_error()])[1]
            prev = result.rounds[-1]
            prev["evaluate"] = _plain(aggregate_metrics(held, "num-examples")) if held else {}
            stop = _select(selector, prev, pending[1], fed, grid, any_aggregated)
            pending = None
            if stop:  # this round's training is not used: the kept model is an earlier one
                break
        kept_replies = []
        for r in replies:
            reason = None if r.has_error() else rejection_reason(r.content, key, arrays)
            if reason is None:
                kept_replies.append(r)
                continue
            site = grid.names.get(r.metadata.src_node_id, str(r.metadata.src_node_id))
            log.error("round %d: update of site '%s' rejected: %s", rnd, site, reason)
            grid.mark_failed(rnd, "train", site, f"update rejected: {reason}")
            result.rejected.append({"round": rnd, "site": site, "reason": reason})
        agg_arrays, agg_train = (strategy.aggregate_train(rnd, kept_replies) if kept_replies
                                 else (None, None))
        if agg_arrays is not None:
            arrays, any_aggregated = agg_arrays, True
        else:
            log.error("round %d: no site update could be aggregated; the global model is unchanged",
                      rnd)
        row = {"round": rnd, "lr": lr, "aggregated": agg_arrays is not None,
               "train": _plain(agg_train), "evaluate": {}, "failed_sites": []}
        result.rounds.append(row)
        if fused and rnd < fed.rounds:
            pending = (rnd, arrays)
            continue
        eval_msgs = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord(dict(config)), grid))
        eval_replies = (_by_site(grid, grid.send_and_receive(eval_msgs, timeout=fed.timeout_s))
                        if eval_msgs else [])
        agg_eval = strategy.aggregate_evaluate(rnd, eval_replies) if eval_replies else None
        row["evaluate"] = _plain(agg_eval)
        if _select(selector, row, arrays, fed, grid, any_aggregated):
            break
    for row in result.rounds:
        row["failed_sites"] = sorted({e["site"] for e in grid.events
                                      if e.get("round") == row["round"] and "error" in e})
    if not any_aggregated:
        return result
    kept_round, kept = selector.kept()
    result.arrays = kept
    result.selection = selector.summary()
    for row in result.rounds:
        row["kept"] = row["round"] == kept_round
    return result


__all__ = ["RoundsResult", "rejection_reason", "run_rounds"]
