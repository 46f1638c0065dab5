"""The sites' Flower ClientApp alone (``pathstrat.federated.clientapp:client_app``).

A SuperNode starts a process for each message; importing only the client side keeps that start
light (no ServerApp, no coordinator code).
"""

from __future__ import annotations

from pathstrat.federated.client import build_client_app

client_app = build_client_app()
