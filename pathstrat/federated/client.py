"""The Flower ClientApp that runs at every site (Message API: query/train/evaluate handlers).

Message protocol (all payloads are model arrays, counts, histograms or metrics):

* ``query.join``  in: federation config. out: ``site`` ConfigRecord (name, accepted, reason,
  encoder id, feature dim, class names) + ``stats`` MetricRecord (training/held-out counts, label
  counts, survival-time histograms on the shared grid).
* ``train``       in: global ``arrays`` + ``config`` (federation, agreed state, round, optional
  clipping norm / proximal mu). out: updated ``arrays`` + ``metrics`` (num-examples, train-loss).
* ``evaluate``    in: global ``arrays`` + ``config``. out: ``metrics`` on held-out patients.

Where a site's data live comes from its SuperNode's ``--node-config`` (deployment) or from the
simulation's site list (``partition-id``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from pathstrat.errors import PathstratError
from pathstrat.federated import secagg
from pathstrat.federated.config import FederationConfig, SiteConfig
from pathstrat.federated.site import GlobalState, LocalSite, SiteRefusedError, build_global_model

log = logging.getLogger(__name__)

JOIN = "query.join"
EVAL_FIRST = "evaluate-first"  # train config: evaluate the incoming global model first
EVAL_PREFIX = "eval/"  # its metrics travel in the train reply under this prefix
CLIP_KEY = "clipping_norm"  # flwr.supercore.differential_privacy.KEY_CLIPPING_NORM


class SiteDropoutError(PathstratError, RuntimeError):
    """A (simulated) site failure during a round."""


class PrivacyPolicyError(PathstratError, PermissionError):
    """The site requires DP but the federation's round does not clip updates."""


_SITES: dict[str, LocalSite] = {}


_MAX_SITES = 2  # a long-running site executor serves run after run: keep the latest few stores


def load_site(site: SiteConfig, fed: FederationConfig) -> LocalSite:
    """The site's data, read once per process (rounds and, in a long-running site executor,
    later runs with the same data settings reuse it; the least recently used is dropped)."""
    key = json.dumps([site.model_dump(mode="json"), fed.encoder_id, fed.feature_dim, fed.level,
                      fed.seed, fed.holdout_fraction, str(fed.device),
                      [t.model_dump() for t in fed.targets],
                      fed.pinned_pipeline])  # what loading (and the package's pipeline check) depends on
    if key in _SITES:
        _SITES[key] = _SITES.pop(key)  # most recently used last
        _SITES[key].fed = fed  # model, lr, max_tiles, time grid ... of this message's run
    else:
        while len(_SITES) >= _MAX_SITES:
            _SITES.pop(next(iter(_SITES)))
        _SITES[key] = LocalSite(site, fed)
    return _SITES[key]


class SiteFailedError(PathstratError, RuntimeError):
    """A site-side failure as the coordinator sees it (no paths or ids; details in the site log)."""


def _public(exc: BaseException, site: str, doing: str) -> str:
    """The part of a site-side error that may leave the site."""
    if isinstance(exc, (SiteRefusedError,)) and getattr(exc, "public", None):
        return str(exc.public)
    if isinstance(exc, (SiteDropoutError, PrivacyPolicyError)):
        return str(exc)
    return f"site '{site}' failed while {doing}: {type(exc).__name__} (details in the site's log)"


def _sanitized(resolve, doing: str):
    """Handler wrapper: log a failure in full at the site, send only a sanitized reason."""
    import functools

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(msg, context):
            try:
                return fn(msg, context)
            except (SiteDropoutError, PrivacyPolicyError):
                raise  # their messages are public already
            except Exception as exc:
                try:
                    name = resolve(context).name
                except Exception:  # noqa: BLE001
                    name = "?"
                log.error("site '%s' failed while %s: %s", name, doing, exc, exc_info=True)
                raise SiteFailedError(_public(exc, name, doing)) from None

        return wrapper

    return deco


class SiteResolver:
    """Finds a node's SiteConfig: its ``--node-config`` or the simulation list by partition-id."""

    def __init__(self, sites: Sequence[SiteConfig] | None = None) -> None:
        self.sites = list(sites) if sites else None

    def __call__(self, context) -> SiteConfig:
        nc = dict(context.node_config)
        if "manifest" in nc:
            return SiteConfig.from_node_config(nc)
        if self.sites is not None and "partition-id" in nc:
            return self.sites[int(nc["partition-id"])]
        raise SiteRefusedError("This SuperNode has no site data configured: start it with "
                               "--node-config \"site-name='A' manifest='/data/manifest.csv' "
                               "features-dir='/data/features/<encoder_id>'\".")

    def audit_target(self, context):
        s = self(context)
        return s.name, s.audit_dir


def build_client_app(sites: Sequence[SiteConfig] | None = None, extra_mods: Sequence[Any] = ()):
    """A ClientApp; ``sites`` are the simulated sites (None in deployment: node config)."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from pathstrat.federated.audit import make_audit_mod
    from pathstrat.federated.packing import is_packed, pack, unpack

    resolve = SiteResolver(sites)
    app = ClientApp(mods=[make_audit_mod(resolve.audit_target), *extra_mods])

    @app.query("join")
    def join(msg: Message, context) -> Message:
        fed = FederationConfig.from_json(msg.content["config"]["federation"])
        site = resolve(context)
        info: dict[str, Any] = {"site": site.name, "accepted": True, "reason": ""}
        stats: dict[str, Any] = {}
        try:
            local = load_site(site, fed)
            stats, names = local.join_stats()
            info.update(names)
            info.update({"encoder-id": str(local.store.encoder_id), "feature-dim": int(local.store.dim)})
        except Exception as exc:  # noqa: BLE001 - any local problem means: do not join
            log.error("site '%s' does not join: %s", site.name, exc)
            info.update({"accepted": False, "reason": _public(exc, site.name, "checking its data")})
        return Message(RecordDict({"site": ConfigRecord(info), "stats": MetricRecord(stats)}),
                       reply_to=msg)

    def _setup(msg: Message, context):
        threads = os.environ.get("PATHSTRAT_FL_THREADS")
        if threads:
            torch.set_num_threads(int(threads))
        legacy = secagg.is_legacy(msg)
        cfg = (dict(msg.content.config_records.get("fitins.config")
                    or msg.content.config_records["evaluateins.config"]) if legacy
               else msg.content["config"])
        fed = FederationConfig.from_json(cfg["federation"])
        state = GlobalState.from_dict(json.loads(cfg["global"]))
        site = resolve(context)
        rnd = int(cfg.get("server-round", 0))
        if site.drop_at_round is not None and rnd >= site.drop_at_round:
            raise SiteDropoutError(f"site '{site.name}' dropped out in round {rnd} (simulated)")
        if legacy:  # SecAgg+ rounds: unnamed parameter list in the model's key order
            keys = list(build_global_model(fed, state).state_dict())
            arrays, _ = secagg.legacy_inputs(msg, keys)
        else:  # packed by a pathstrat coordinator (packing.py), or named arrays
            arrays = unpack(msg.content["arrays"], build_global_model(fed, state).state_dict())
        return fed, state, site, load_site(site, fed), arrays, rnd, cfg

    def _train(msg: Message, context) -> Message:
        fed, state, site, local, arrays, rnd, cfg = _setup(msg, context)
        mu = float(cfg.get("proximal-mu", 0.0))
        lr = float(cfg["lr"]) if "lr" in cfg else None  # the coordinator's schedule
        held_out = {}
        if cfg.get(EVAL_FIRST) and not secagg.is_legacy(msg):  # metrics of the incoming model
            held_out = {f"{EVAL_PREFIX}{k}": v for k, v in local.evaluate(arrays, state).items()}
        new, loss = local.train(arrays, state, epochs=fed.local_epochs, proximal_mu=mu,
                                seed=fed.seed * 1000 + rnd, lr=lr)
        metrics = {"num-examples": len(local.train_idx), "train-loss": float(loss), **held_out}
        if secagg.is_legacy(msg):
            return secagg.fit_reply(msg, new, len(local.train_idx), metrics)
        if fed.dp is not None:
            metrics["dp-weight"] = 1  # DP averages sites with equal weights (see privacy.py)
        reply = pack(new) if is_packed(msg.content["arrays"]) else ArrayRecord(new)  # in kind
        return Message(RecordDict({"arrays": reply, "metrics": MetricRecord(metrics)}),
                       reply_to=msg)

    @app.train()
    @_sanitized(resolve, "training")
    def train(msg: Message, context) -> Message:
        if secagg.SECAGG_CONFIGS in msg.content.config_records:  # a SecAgg+ protocol stage
            from flwr.client.mod import secaggplus_mod

            return secaggplus_mod(msg, context, _train)
        site = resolve(context)
        clipped = CLIP_KEY in msg.content.config_records.get("config", {})
        if site.require_dp and not clipped:
            raise PrivacyPolicyError(f"site '{site.name}' requires differential privacy "
                                     "(require-dp) but this federation does not clip updates")
        if clipped:
            from flwr.clientapp.mod import fixedclipping_mod

            return fixedclipping_mod(msg, context, _train)
        return _train(msg, context)

    @app.evaluate()
    @_sanitized(resolve, "evaluation")
    def evaluate(msg: Message, context) -> Message:
        fed, state, site, local, arrays, _, _ = _setup(msg, context)
        metrics = local.evaluate(arrays, state)
        if secagg.is_legacy(msg):
            return secagg.evaluate_reply(msg, metrics)
        if fed.dp is not None:
            metrics["dp-weight"] = 1
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app
