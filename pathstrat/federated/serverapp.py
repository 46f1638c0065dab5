"""The coordinator's Flower ServerApp alone (``pathstrat.federated.serverapp:server_app``)."""

from __future__ import annotations

from pathstrat.federated.server import build_server_app

server_app = build_server_app()
