"""SecAgg+ secure aggregation: the coordinator only ever sees the sum of the sites' updates.

Flower 1.41 runs SecAgg+ (``SecAggPlusWorkflow`` on the server, ``secaggplus_mod`` at the sites)
only through its legacy strategy API (``LegacyContext`` + ``flwr.server.strategy.FedAvg``), whose
messages carry ``fitins.*`` / ``fitres.*`` records with unnamed parameter lists. This module holds
both halves of that path: the server rounds (join and agreement stay on the Message API) and the
site-side conversion between those records and the model's named state dict.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LEGACY_FIT = "fitins.parameters"
LEGACY_EVAL = "evaluateins.parameters"
SECAGG_CONFIGS = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants


def is_legacy(msg) -> bool:
    """True for a legacy fit/evaluate message (SecAgg+ rounds)."""
    return LEGACY_FIT in msg.content.array_records or LEGACY_EVAL in msg.content.array_records


def legacy_inputs(msg, keys: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(named state dict, config) from a legacy fit/evaluate message."""
    import torch

    prefix = "fitins" if LEGACY_FIT in msg.content.array_records else "evaluateins"
    arrays = msg.content.array_records[f"{prefix}.parameters"].to_numpy_ndarrays()
    cfg = dict(msg.content.config_records[f"{prefix}.config"])
    return {k: torch.from_numpy(np.asarray(a).copy()) for k, a in zip(keys, arrays, strict=True)}, cfg


def fit_reply(msg, weights: dict[str, Any], num_examples: int, metrics: dict[str, Any]):
    """Legacy FitRes message (what secaggplus_mod masks before it leaves the site)."""
    from flwr.app import Message
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([v.numpy() for v in weights.values()]),
                 int(num_examples), {k: v for k, v in metrics.items() if not isinstance(v, list)})
    return Message(fitres_to_recorddict(res, keep_input=False), reply_to=msg)


def evaluate_reply(msg, metrics: dict[str, Any]):
    """Legacy EvaluateRes message (scalar metrics only)."""
    from flwr.app import Message
    from flwr.common import Code, EvaluateRes, Status
    from flwr.compat.common.recorddict_compat import evaluateres_to_recorddict

    scalars = {k: float(v) for k, v in metrics.items() if not isinstance(v, list)}
    res = EvaluateRes(Status(Code.OK, ""), float(scalars.get("eval-loss", 0.0)),
                      int(metrics.get("num-examples", 0)), scalars)
    return Message(evaluateres_to_recorddict(res), reply_to=msg)


def _weighted(results: list[tuple[int, dict[str, Any]]]) -> dict[str, float]:
    """Weighted mean per metric (head metrics by ``<head>.n``, others by number of examples)."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    counts: dict[str, float] = {}
    for n, m in results:
        for k, v in m.items():
            if k == "num-examples" or k.endswith(".n"):
                counts[k] = counts.get(k, 0.0) + float(v)
                continue
            head = k.split(".", 1)[0] if "." in k else None
            w = float(m.get(f"{head}.n", n)) if head else float(n)
            if not np.isfinite(float(v)) or w <= 0:
                continue
            sums[k] = sums.get(k, 0.0) + w * float(v)
            weights[k] = weights.get(k, 0.0) + w
    return {**{k: sums[k] / weights[k] for k in sums}, **counts}


def run_secagg_rounds(grid, fed, model, cfg: dict[str, str], n_sites: int, max_weight: float):
    """FedAvg rounds with SecAgg+ fit; returns (final state dict, {round: train/eval metrics}).

    Sites upload ``[w, w * params]`` quantised after scaling by ``1 / max_weight``, so
    ``max_weight`` should be the largest site weight (precision ~ 2 * clipping_range /
    quantization_range * max_weight / w).
    """
    import math

    import torch
    from flwr.app import Context, RecordDict
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

    sa = fed.secagg
    history: dict[int, dict[str, Any]] = {}
    n_train = max(1, min(n_sites, math.ceil(fed.fraction_train * n_sites)))
    n_eval = max(1, min(n_sites, math.ceil(fed.fraction_evaluate * n_sites)))

    mu = {"proximal-mu": fed.proximal_mu} if fed.strategy == "fedprox" else {}

    def fit_cfg(rnd: int) -> dict[str, Any]:
        return {**cfg, **mu, "server-round": rnd}  # FedProx: same aggregation, proximal term at the sites

    def fit_agg(results):
        out = _weighted(results)
        history.setdefault(len(history) + 1, {})["train"] = out
        return out

    def eval_agg(results):
        out = _weighted(results)
        rnd = max(history) if history else 1
        history.setdefault(rnd, {})["evaluate"] = out
        return out

    keys = list(model.state_dict())
    strategy = FedAvg(fraction_fit=n_train / n_sites, fraction_evaluate=fed.fraction_evaluate,
                      min_fit_clients=n_train, min_evaluate_clients=n_eval,
                      min_available_clients=n_sites,
                      initial_parameters=ndarrays_to_parameters(
                          [v.detach().cpu().numpy() for v in model.state_dict().values()]),
                      on_fit_config_fn=fit_cfg, on_evaluate_config_fn=fit_cfg,
                      fit_metrics_aggregation_fn=fit_agg, evaluate_metrics_aggregation_fn=eval_agg)
    ctx = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                                run_config={}),
                        config=ServerConfig(num_rounds=fed.rounds, round_timeout=fed.timeout_s),
                        strategy=strategy)
    shares = int(sa.num_shares) if sa.num_shares > 1 else float(sa.num_shares)
    threshold = (int(sa.reconstruction_threshold) if sa.reconstruction_threshold > 1
                 else float(sa.reconstruction_threshold))
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=shares, reconstruction_threshold=threshold, max_weight=sa.max_weight or max_weight,
        clipping_range=sa.clipping_range, quantization_range=sa.quantization_range,
        timeout=fed.timeout_s))
    workflow(grid, ctx)
    params = ctx.state.array_records[MAIN_PARAMS_RECORD]
    from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters

    arrays = parameters_to_ndarrays(arrayrecord_to_parameters(params, keep_input=True))
    final = {k: torch.from_numpy(np.asarray(a).copy()) for k, a in zip(keys, arrays, strict=True)}
    return final, history
