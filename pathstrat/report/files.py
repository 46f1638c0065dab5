"""The files of a run directory as the report reads them (:class:`RunFiles`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class RunFiles:
    """Lazily read files of a run directory (None when absent)."""

    run: Path
    manifest: pd.DataFrame | None = None
    n_boot: int = 200
    seed: int = 0
    notes: dict[str, str] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    def path(self, *names: str) -> Path | None:
        """First existing file among ``names`` (also under ``survival/``, ``selection/``, ``trial/``)."""
        for n in names:
            for p in (self.run / n, self.run / "survival" / n, self.run / "selection" / n,
                      self.run / "trial" / n):
                if p.exists():
                    return p
        return None

    def csv(self, name: str) -> pd.DataFrame | None:
        if name not in self._cache:
            p = self.path(name)
            try:
                self._cache[name] = (pd.read_csv(p, dtype={"slide_id": str, "patient_id": str})
                                     if p else None)
            except pd.errors.EmptyDataError:
                self._cache[name] = pd.DataFrame()
        return self._cache[name]

    def config(self) -> dict[str, Any]:
        """The run's config.yaml (empty when absent)."""
        if "config.yaml" not in self._cache:
            import yaml

            p = self.path("config.yaml")
            self._cache["config.yaml"] = (yaml.safe_load(p.read_text()) or {}) if p else {}
        return self._cache["config.yaml"]

    def json(self, name: str) -> Any:
        if name not in self._cache:
            p = self.path(name)
            self._cache[name] = json.loads(p.read_text()) if p else None
        return self._cache[name]


def data_dirs(cfg: dict[str, Any]) -> list[Path]:
    """Tiling/embedding output folders named by a run config (for qc.csv): ``tiles_root``,
    ``features_root`` or the grand-parent of ``features`` (``<root>/features/<encoder_id>``)."""
    from pathstrat.layout import features_layout_of

    dirs = [cfg.get("tiles_root"), cfg.get("features_root")]
    if cfg.get("features"):
        dirs.append(features_layout_of(cfg["features"]).root)
    return [Path(d) for d in dirs if d and Path(d).is_dir()]
