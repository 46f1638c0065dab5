"""Federated MIL training across sites that keep their slides (Flower Message API).

Only model weights and aggregate statistics leave a site. Public API:

* :class:`FederationConfig`, :class:`SiteConfig`, :class:`DPConfig`, :class:`SecAggConfig`,
  :class:`TargetDef`, :class:`PackageStart` (start from a model package, pathstrat.sharing.federate)
* :func:`simulate`, :func:`split_sites`: K simulated sites from one cohort's ``site`` column
* :func:`build_server_app`, :func:`build_client_app`: the Flower apps (deployment:
  ``pathstrat.federated.serverapp:server_app`` / ``pathstrat.federated.clientapp:client_app``)
* :class:`LocalSite` (site-side checks, training, evaluation), :func:`check_site`
* :func:`finetune_site`: adapt the global model to one site afterwards
* :func:`dp_guarantee`: (epsilon, delta) per site and round of client-side fixed clipping
* :func:`read_audit`, :func:`check_egress`: what left each site
"""

from __future__ import annotations

from typing import Any

from pathstrat.federated.config import (
    DPConfig,
    FederationConfig,
    PackageStart,
    SecAggConfig,
    SiteConfig,
    TargetDef,
)

_LAZY = {
    "simulate": "pathstrat.federated.simulation",
    "split_sites": "pathstrat.federated.simulation",
    "build_server_app": "pathstrat.federated.server",
    "run_federation": "pathstrat.federated.server",
    "FederationError": "pathstrat.federated.server",
    "build_client_app": "pathstrat.federated.client",
    "LocalSite": "pathstrat.federated.site",
    "SiteRefusedError": "pathstrat.federated.site",
    "check_site": "pathstrat.federated.site",
    "finetune_site": "pathstrat.federated.checkpoint",
    "save_federated_checkpoint": "pathstrat.federated.checkpoint",
    "dp_guarantee": "pathstrat.federated.privacy",
    "read_audit": "pathstrat.federated.audit",
    "check_egress": "pathstrat.federated.audit",
}

__all__ = ["DPConfig", "FederationConfig", "PackageStart", "SecAggConfig", "SiteConfig", "TargetDef", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pathstrat.federated' has no attribute {name!r}")
