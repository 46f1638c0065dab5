"""The Flower ServerApp run by the coordinator: join, agree, train, save a pathstrat checkpoint.

1. **Join**: every connected SuperNode gets ``query.join`` with the federation config; a site
   whose data do not match refuses with a reason and is left out of every later round.
2. **Agree**: global head state (class weights, survival bins, regression scaling) from the
   summed counts/histograms of the joined sites.
3. **Train**: Flower's FedAvg or FedProx (optionally wrapped in client-side fixed-clipping DP)
   over the joined sites only (round loop in :mod:`pathstrat.federated.rounds`); a site that
   fails, times out or sends a non-finite update in a round is left out of that round's
   aggregate. The learning rate follows a server-side schedule across rounds.
4. **Select**: the round whose global model scored best on the sites' aggregated held-out
   metrics is kept (optional early stopping), see :mod:`pathstrat.federated.selection`.
5. **Save**: the kept global model as ``checkpoints/fold0.safetensors`` + ``model.json``, a
   ``federation.json`` with per-round, per-site metrics, the selection and the privacy
   guarantee, and ``round_curves.csv`` (per-round curves per site and aggregated).

Started from a model package (``fed.package``), the package's starting fold model is the initial
global model (its decoding head state and input scaling kept) and step 5 also writes the new
package version (:mod:`pathstrat.sharing.federate`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pathstrat.errors import PathstratError
from pathstrat.federated.config import FederationConfig
from pathstrat.federated.site import GlobalState, build_global_model
from pathstrat.federated.stats import global_target_state, merge_site_stats, time_grid

log = logging.getLogger(__name__)


class FederationError(PathstratError, RuntimeError):
    """The federation cannot proceed (too few sites joined, no round could be aggregated)."""


def _grid_wrapper_cls():
    from flwr.serverapp import Grid

    class SiteGrid(Grid):
        """A Grid restricted to the joined sites that records every reply (and every miss)."""

        def __init__(self, grid, allowed: set[int], names: dict[int, str]) -> None:
            self._grid, self.allowed, self.names = grid, allowed, names
            self.events: list[dict[str, Any]] = []
            self.t0 = time.monotonic()

        def set_run(self, run) -> None:
            self._grid.set_run(run)

        @property
        def run(self):
            return self._grid.run

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

        def get_node_ids(self) -> Iterable[int]:
            return [n for n in self._grid.get_node_ids() if n in self.allowed]

        def push_messages(self, messages):
            return self._grid.push_messages(messages)

        def pull_messages(self, message_ids):
            return self._grid.pull_messages(message_ids)

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            sent = time.monotonic()
            from pathstrat.federated.rounds import exchange  # short pull interval

            replies = exchange(self._grid, messages, timeout)
            self._record(messages, replies)
            for ev in self.events[len(self.events) - len(messages):]:  # wall time of this step
                ev["sent_s"] = round(sent - self.t0, 2)
                ev["step_s"] = round(time.monotonic() - sent, 2)
            return replies

        def mark_failed(self, server_round: int, message_type: str, site: str, reason: str) -> None:
            """Record that a reply received from ``site`` was refused (e.g. a non-finite update)."""
            for ev in self.events:
                if (ev.get("round") == server_round and ev.get("site") == site
                        and ev.get("type") == message_type and "error" not in ev):
                    ev["error"] = reason
                    return
            self.events.append({"round": server_round, "type": message_type, "site": site,
                                "error": reason})

        def _record(self, messages, replies) -> None:
            seen = set()
            for r in replies:
                node = r.metadata.src_node_id
                seen.add(node)
                ev = {"round": _round_of(messages), "type": r.metadata.message_type,
                      "site": self.names.get(node, str(node))}
                if r.has_error():
                    ev["error"] = r.error.reason
                elif r.content.metric_records:
                    m = next(iter(r.content.metric_records.values()))
                    ev["metrics"] = {k: v for k, v in m.items() if not isinstance(v, list)}
                self.events.append(ev)
            for m in messages:
                if m.metadata.dst_node_id not in seen:
                    self.events.append({"round": _round_of(messages), "type": m.metadata.message_type,
                                        "site": self.names.get(m.metadata.dst_node_id, "?"),
                                        "error": "no reply before the timeout"})

    return SiteGrid


def _round_of(messages) -> int | None:
    for m in messages:
        for key in ("config", "fitins.config", "evaluateins.config"):
            cfg = m.content.config_records.get(key)
            if cfg is not None and "server-round" in cfg:
                return int(cfg["server-round"])
    return None


def wait_for_sites(grid, n: int, timeout_s: float, expected: int | None = None) -> list[int]:
    """Node ids once ``expected`` (else ``n``) SuperNodes are connected; after the timeout go on
    with at least ``n`` (FederationError with fewer)."""
    t0 = time.monotonic()
    want = max(n, expected or n)
    while True:
        ids = list(grid.get_node_ids())
        if len(ids) >= want:
            return ids
        if time.monotonic() - t0 > timeout_s:
            if len(ids) >= n:
                return ids
            raise FederationError(f"Only {len(ids)} of the {n} required sites connected within "
                                  f"{timeout_s:.0f} s. Check that each site's SuperNode is running "
                                  "and reaches the SuperLink (address, TLS certificates).")
        time.sleep(0.5)


def join_sites(grid, nodes: list[int], fed: FederationConfig) -> tuple[dict[int, dict], dict[str, str]]:
    """Send ``query.join``; returns (joined node -> {name, stats, config}, refused name -> reason)."""
    from flwr.app import ConfigRecord, Message, RecordDict

    msgs = [Message(RecordDict({"config": ConfigRecord({"federation": fed.to_json()})}),
                    dst_node_id=n, message_type="query.join") for n in nodes]
    from pathstrat.federated.rounds import exchange

    replies = exchange(grid, msgs, fed.join_timeout_s)
    joined: dict[int, dict] = {}
    refused: dict[str, str] = {}
    for r in replies:
        node = r.metadata.src_node_id
        if r.has_error():
            refused[f"node-{node}"] = r.error.reason
            continue
        info = dict(r.content["site"])
        if not info.get("accepted"):
            refused[str(info.get("site"))] = str(info.get("reason"))
            log.error("site '%s' refused to join: %s", info.get("site"), info.get("reason"))
            continue
        joined[node] = {"name": str(info["site"]), "info": info, "stats": dict(r.content["stats"])}
    answered = {r.metadata.src_node_id for r in replies}
    for n in nodes:
        if n not in answered:
            refused[f"node-{n}"] = "no reply to the join request before the timeout"
    return joined, refused


def agree(fed: FederationConfig, joined: dict[int, dict]) -> GlobalState:
    """Global head state from the merged site statistics (counts only)."""
    merged = merge_site_stats((j["stats"], {k: v for k, v in j["info"].items() if isinstance(v, str)})
                              for j in joined.values())
    edges = time_grid(fed.time_max, fed.time_grid_bins) if fed.time_max else None
    states, classes = {}, {}
    for spec in fed.specs():
        st, cls = global_target_state(spec, merged, edges=edges)
        states[spec.name] = st
        if cls is not None:
            classes[spec.name] = cls
    return GlobalState(states, classes)


def aggregate_metrics(records, weight_key: str):
    """Weighted mean per key over the sites that define it (``<head>.n`` weights head metrics);
    count vectors (score histograms) are summed and give the pooled AUROC."""
    from flwr.app import MetricRecord

    from pathstrat.federated.stats import auroc_from_histograms

    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    hists: dict[str, np.ndarray] = {}
    for rec in records:
        m = next(iter(rec.metric_records.values()))
        for k, v in m.items():
            if isinstance(v, list):
                hists[k] = np.asarray(v, float) + hists.get(k, 0)
                continue
            if k.endswith(".n") or k in ("num-examples", "dp-weight"):
                sums[k] = sums.get(k, 0.0) + float(v)
                continue
            head = k.split(".", 1)[0] if "." in k else None
            base = float(m.get("num-examples", m.get(weight_key, 1)))
            w = float(m.get(f"{head}.n", base)) if head else base
            if not math.isfinite(float(v)) or w <= 0:
                continue
            sums[k] = sums.get(k, 0.0) + w * float(v)
            weights[k] = weights.get(k, 0.0) + w
    out = {k: (v / weights[k] if k in weights else v) for k, v in sums.items()
           if k in weights or k.endswith(".n") or k in ("num-examples", "dp-weight")}
    for k in hists:
        if k.endswith(".hist_pos"):
            head = k[: -len(".hist_pos")]
            auc = auroc_from_histograms(hists[k], hists.get(f"{head}.hist_neg", np.zeros(1)))
            if math.isfinite(auc):
                out[f"{head}.pooled_auroc"] = auc
    return MetricRecord(out)


def split_train_metrics(records, prefix: str = "eval/"):
    """(train part, held-out part) of train replies' metric records: the held-out metrics of the
    incoming model travel in train replies under ``prefix`` (``evaluate_with_train``)."""
    from flwr.app import MetricRecord, RecordDict

    train, held = [], []
    for rec in records:
        m = next(iter(rec.metric_records.values()))
        train.append(RecordDict({"metrics": MetricRecord(
            {k: v for k, v in m.items() if not k.startswith(prefix)})}))
        ev = {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix)}
        if ev:
            held.append(RecordDict({"metrics": MetricRecord(ev)}))
    return train, held


def aggregate_train_metrics(records, weight_key: str):
    """Train metrics (weighted means) without the held-out part carried by train replies."""
    return aggregate_metrics(split_train_metrics(records)[0], weight_key)


def make_strategy(fed: FederationConfig, n_sites: int):
    """FedAvg / FedProx from the config, wrapped for DP when ``fed.dp`` is set."""
    from flwr.serverapp.strategy import (
        DifferentialPrivacyClientSideFixedClipping,
        FedAvg,
        FedProx,
    )

    n_train = max(1, min(n_sites, math.ceil(fed.fraction_train * n_sites)))
    n_eval = max(1, min(n_sites, math.ceil(fed.fraction_evaluate * n_sites))) if fed.fraction_evaluate else 0
    kw = dict(fraction_train=n_train / n_sites, fraction_evaluate=fed.fraction_evaluate,
              min_train_nodes=n_train, min_evaluate_nodes=n_eval, min_available_nodes=1,
              weighted_by_key="dp-weight" if fed.dp else "num-examples",
              evaluate_metrics_aggr_fn=aggregate_metrics, train_metrics_aggr_fn=aggregate_train_metrics)
    if fed.strategy == "fedprox":
        strategy = FedProx(proximal_mu=fed.proximal_mu, **kw)
    else:
        strategy = FedAvg(**kw)
    if fed.dp is not None:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, fed.dp.noise_multiplier, fed.dp.clipping_norm, n_train)
    return strategy


def run_federation(grid, fed: FederationConfig, out_dir: str | Path) -> dict[str, Any]:
    """The coordinator's whole run; returns (and writes) the federation summary."""
    from pathstrat.federated.checkpoint import save_federated_checkpoint
    from pathstrat.federated.packing import pack, unpack
    from pathstrat.federated.privacy import dp_guarantee
    from pathstrat.io import ensure_writable_dir, write_json_atomic

    out = ensure_writable_dir(out_dir)
    t0 = time.monotonic()
    nodes = wait_for_sites(grid, fed.min_sites, fed.join_timeout_s, fed.expected_sites)
    t_wait = time.monotonic()
    joined, refused = join_sites(grid, nodes, fed)
    t_join = time.monotonic()
    for name, reason in refused.items():
        log.warning("site %s is not part of this federation: %s", name, reason)
    if len(joined) < fed.min_sites:
        raise FederationError(
            f"Only {len(joined)} site(s) joined but min_sites is {fed.min_sites}. Refused: "
            + "; ".join(f"{k}: {v}" for k, v in refused.items()))
    state = agree(fed, joined)
    start = None
    if fed.package is not None:  # federated improvement of a package (pathstrat.sharing.federate)
        from pathstrat.sharing.federate import load_start

        start = load_start(fed)
        state = start.merge_state(state)
    model = build_global_model(fed, state)
    if start is not None:
        model.load_state_dict(start.weights)
    guarantee = None
    if fed.dp is not None:
        guarantee = dp_guarantee(fed.dp.noise_multiplier, fed.dp.clipping_norm, fed.rounds, fed.dp.delta)
        log.info("%s", guarantee.describe())
    names = {n: j["name"] for n, j in joined.items()}
    site_grid = _grid_wrapper_cls()(grid, set(joined), names)
    cfg = {"federation": fed.to_json(), "global": json.dumps(state.to_dict())}
    if fed.secagg is not None:
        from pathstrat.federated.secagg import run_secagg_rounds

        biggest = max(float(j["stats"].get("n-train", 1)) for j in joined.values())
        final, history = run_secagg_rounds(site_grid, fed, model, cfg, len(joined), biggest)
        rounds = [{"round": r, "train": h.get("train", {}), "evaluate": h.get("evaluate", {}),
                   "failed_sites": []} for r, h in sorted(history.items())]
        final_metrics = history.get(max(history), {}).get("evaluate", {}) if history else {}
        rejected = []
        selection = {"kept_round": fed.rounds, "last_round": fed.rounds, "criterion": "last",
                     "value": None, "eval_loss": None, "stopped_early": False, "patience": None,
                     "reason": "SecAgg+ rounds: the last round's global model is kept (the "
                               "coordinator never holds an intermediate model in the clear)"}
    else:
        from pathstrat.federated.rounds import run_rounds

        strategy = make_strategy(fed, len(joined))
        result = run_rounds(strategy, site_grid, pack(model.state_dict()), fed, cfg)
        if result.arrays is None:
            raise FederationError("No training round could be aggregated (every site failed or "
                                  "sent a rejected update); see the site errors in the log.")
        final = unpack(result.arrays, model.state_dict())
        rounds, selection, rejected = result.rounds, result.selection, result.rejected
        kept = next((r for r in rounds if r.get("kept")), rounds[-1])
        final_metrics = kept["evaluate"]
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in final.items()})
    if start is not None:  # the sponsor's input scaling, exactly (averaging or DP noise aside)
        model.load_state_dict(start.scaler(), strict=False)
    summary = {
        "schema": "pathstrat.federation/1",
        "config": json.loads(fed.to_json()),
        "sites": [{"name": j["name"], "n_train": j["stats"].get("n-train"),
                   "n_eval": j["stats"].get("n-eval")} for j in joined.values()],
        "refused": refused,
        "agreed": state.to_dict(),
        "rounds": rounds,
        "events": site_grid.events,
        "secagg": fed.secagg is not None,
        "selection": selection,
        "rejected_updates": rejected,
        "final_metrics": final_metrics,
        "curves": "round_curves.csv",
        "dp": guarantee.to_dict() if guarantee else None,
        "dp_statement": guarantee.describe() if guarantee else "no differential privacy",
        "seconds": round(time.monotonic() - t0, 2),
        "timing_s": {"wait_for_sites": round(t_wait - t0, 2), "join": round(t_join - t_wait, 2),
                     "rounds": round(time.monotonic() - t_join, 2)},
    }
    from pathstrat.federated.curves import round_curves
    from pathstrat.io import write_dataframe_atomic

    save_federated_checkpoint(out, model, fed, state, summary,
                              extra={"start_package": start.parent} if start else None)
    if start is not None:
        from pathstrat.sharing.federate import build_federated_package

        pkg = build_federated_package(out, fed, summary, start)
        summary["package"] = {"parent": start.parent, "name": start.doc["name"],
                              "version": json.loads((pkg / "package.json").read_text())["version"],
                              "folder": pkg.name}
    write_dataframe_atomic(out / "round_curves.csv", round_curves(rounds, site_grid.events),
                           index=False)
    write_json_atomic(out / "federation.json", summary)
    log.info("federation finished: %d sites, %d rounds; kept round %s (%s); checkpoint in %s",
             len(joined), len(rounds), selection["kept_round"], selection["reason"],
             out / "checkpoints")
    return summary


def build_server_app(fed: FederationConfig | None = None, out_dir: str | Path | None = None):
    """A ServerApp; without arguments it reads ``config-file`` and ``out-dir`` from the run config
    (``flwr run`` / pyproject ``[tool.flwr.app.config]``)."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        cfg = fed
        if cfg is None:
            path = context.run_config.get("config-file")
            if not path:
                raise FederationError("The run config needs 'config-file' (federation YAML on the "
                                      "coordinator); set it in pyproject.toml or with "
                                      "`flwr run --run-config \"config-file='fed.yaml'\"`.")
            cfg = FederationConfig.load(path, package=context.run_config.get("package") or None)
        out = out_dir or context.run_config.get("out-dir", "federated_run")
        run_federation(grid, cfg, out)

    return app
