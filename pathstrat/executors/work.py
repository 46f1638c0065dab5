"""Per-slide work objects for the executors: thin wrappers around each stage's own function.

``TileWork`` calls ``pathstrat.tiling.tile_slide``; ``EmbedWork`` builds the encoder once
(``setup``) and calls the embedding stage's per-slide function. Because the executors run
exactly these functions, local, Slurm and Ray runs write identical files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pathstrat.executors.base import Resources, SlideWork


def _mpp(row: dict[str, Any]) -> float | None:
    v = row.get("mpp")
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


class TileWork(SlideWork):
    """Tile one slide with ``tiling.tile_slide`` (returns its QC row)."""

    stage = "tile"

    def __init__(self, out_dir: str | Path, params: dict[str, Any]) -> None:
        super().__init__()
        self.out_dir = str(out_dir)
        self.params = dict(params)
        self.resources = Resources(cpus=1)

    def process(self, row: dict[str, Any]) -> dict[str, Any] | None:
        from pathstrat import tiling

        mpp = _mpp(row)  # same arguments as tiling.tile_cohort gives each slide
        qc = tiling.tile_slide(row["path"], self.out_dir, tiling.TilingParams(**self.params),
                               slide_id=str(row["slide_id"]), mpp=mpp,
                               mpp_source="manifest" if mpp is not None else "override")
        return dict(qc) if qc is not None else None


class EmbedWork(SlideWork):
    """Embed one slide's tiles with an encoder built once per process/actor."""

    stage = "embed"
    _transient = ("_encoder",)

    def __init__(self, tiles_dir: str | Path, out_dir: str | Path, encoder: str, *,
                 weights: str | None = None, batch_size: int = 64, workers: int = 0,
                 device: str = "auto", views: int = 1, gpus: float = 0) -> None:
        super().__init__()
        self.tiles_dir, self.out_dir = str(tiles_dir), str(out_dir)
        self.encoder, self.weights = encoder, weights
        self.batch_size, self.workers, self.device, self.views = batch_size, workers, device, views
        self.resources = Resources(cpus=max(1, workers), gpus=gpus)
        self._encoder = None

    def setup(self) -> None:
        from pathstrat import embed

        self._encoder = embed.load_encoder(self.encoder, weights=self.weights, device=self.device)

    def process(self, row: dict[str, Any]) -> dict[str, Any] | None:
        from pathstrat import embed

        return embed.embed_slide(row, self.tiles_dir, self.out_dir, self._encoder,
                                 batch_size=self.batch_size, workers=self.workers,
                                 views=self.views)
