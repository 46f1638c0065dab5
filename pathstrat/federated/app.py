"""Flower app components for deployment (``flwr run``): the coordinator's ServerApp and the sites'
ClientApp. ``pathstrat federated init-app`` references the light per-side modules
``pathstrat.federated.serverapp:server_app`` and ``pathstrat.federated.clientapp:client_app``
(a site process then never imports the coordinator's code); this module keeps both names for
apps written by earlier versions (see docs/federated.md).
"""

from __future__ import annotations

from pathstrat.federated.clientapp import client_app
from pathstrat.federated.serverapp import server_app

__all__ = ["client_app", "server_app"]
