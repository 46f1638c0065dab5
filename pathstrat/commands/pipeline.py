"""CLI commands of this stage (see pathstrat.cli for conventions)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""
