"""Stable entry point: ``from pathstrat.train import train_cv, predict`` (see pathstrat.training)."""

from __future__ import annotations

from pathstrat.training import *  # noqa: F403
from pathstrat.training import __all__  # noqa: F401
