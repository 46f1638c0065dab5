"""Flower app components for deployment (``flwr run``): the coordinator's ServerApp and the sites'
ClientApp. Referenced from the app's pyproject.toml as ``pathstrat.federated.app:server_app`` and
``pathstrat.federated.app:client_app`` (see docs/federated.md and ``pathstrat federated init-app``).
"""

from __future__ import annotations

from pathstrat.federated.client import build_client_app
from pathstrat.federated.server import build_server_app

server_app = build_server_app()
client_app = build_client_app()
