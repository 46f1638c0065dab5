"""Per-slide work objects for the executors: thin wrappers around each stage's own function.

``TileWork`` calls ``pathstrat.tiling.tile_slide``; ``EmbedWork`` builds the encoder once
(``setup``) and calls the embedding stage's per-slide function. Because the executors run
exactly these functions, local, Slurm and Ray runs write identical files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pathstrat.errors import PathstratError
from pathstrat.executors.base import Resources, SlideOutcome, SlideWork


def _mpp(row: dict[str, Any]) -> float | None:
    v = row.get("mpp")
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


class TileWork(SlideWork):
    """Tile one slide with ``tiling.tile_slide`` (returns its QC row).

    ``mpp`` is the fallback for rows without an ``mpp`` value; ``processes`` is the local
    pool size (``tiling.workers``). Only slide errors (unreadable file, no tissue, no MPP) are
    recorded per slide; anything else is a bug and propagates.
    """

    stage = "tile"
    sub_unit = "tile"
    verb = "tiling"

    def __init__(self, out_dir: str | Path, params: dict[str, Any], *, force: bool = False,
                 mpp: float | None = None, mpp_check: bool = True, processes: int = 1) -> None:
        super().__init__()
        self.out_dir = str(out_dir)
        self.params = dict(params)
        self.force, self.mpp, self.mpp_check = force, mpp, mpp_check
        self.processes = max(1, int(processes))
        self.resources = Resources(cpus=1)

    def slide_errors(self) -> tuple[type[BaseException], ...]:
        from pathstrat.tiling import slide_errors

        return slide_errors()

    def progress_units(self, outcome: SlideOutcome) -> int:
        return int(outcome.result.get("n_tiles") or 0) if outcome.ok and outcome.result else 0

    def process(self, row: dict[str, Any]) -> dict[str, Any] | None:
        from pathstrat import tiling
        from pathstrat.errors import SlideReadError

        if not Path(row["path"]).is_file():
            raise SlideReadError(
                f"Slide file '{row['path']}' does not exist (or is not a file). Fix the manifest "
                "`path` column (relative paths resolve against the manifest's folder) or remove the row.")
        mpp = _mpp(row)
        qc = tiling.tile_slide(row["path"], self.out_dir, tiling.TilingParams(**self.params),
                               slide_id=str(row["slide_id"]), mpp=mpp if mpp is not None else self.mpp,
                               mpp_source="manifest" if mpp is not None else "override",
                               force=self.force, mpp_check=self.mpp_check)
        return dict(qc) if qc is not None else None


class EmbedWork(SlideWork):
    """Embed shards of a cohort with ``embed.embed_cohort(shard=(i, N), encoder=...)``.

    The encoder is built once per process/actor (``setup``) and passed to the stage function;
    units of work are the stage's own deterministic shards (per-shard failure files, so
    concurrent tasks never write the same file). The manifest is read from a CSV on shared
    storage rather than shipped with every task.
    """

    stage = "embed"
    _transient = ("_encoder", "_df")

    def __init__(self, manifest_csv: str | Path, tiles_dir: str | Path, out_dir: str | Path,
                 encoder_id: str, *, weights: str | None = None, batch_size: int = 64,
                 workers: int = 0, device: str = "auto", views: int = 0, dtype: str | None = None,
                 seed: int = 0, gpus: float = 0, shards_per_worker: int = 4) -> None:
        super().__init__()
        self.manifest_csv, self.tiles_dir, self.out_dir = str(manifest_csv), str(tiles_dir), str(out_dir)
        self.encoder_id, self.weights = encoder_id, weights
        self.batch_size, self.workers, self.device = batch_size, workers, device
        self.views, self.dtype, self.seed = views, dtype, seed
        self.shards_per_worker = shards_per_worker
        self.resources = Resources(cpus=max(1, workers), gpus=gpus)
        self._encoder = None
        self._df = None

    def setup(self) -> None:
        from pathstrat.encoders import build_encoder

        self._encoder = build_encoder(self.encoder_id, weights=self.weights, device=self.device,
                                      dtype=self.dtype, seed=self.seed)

    def _manifest(self):
        if self._df is None:
            import pandas as pd

            self._df = pd.read_csv(self.manifest_csv, dtype={"slide_id": str, "patient_id": str})
        return self._df

    def items(self, rows: Sequence[dict[str, Any]], n_workers: int) -> list[dict[str, Any]]:
        """The stage's shards: at most ``n_workers`` x ``shards_per_worker`` (Ray) or one per task;
        a single worker embeds everything in one unsharded call."""
        from pathstrat.encoders.embed import shard_slides

        if not rows:
            return []
        if n_workers <= 1:  # one worker: the whole cohort in one unsharded call (one failures.csv)
            return [{"name": "all slides", "shard": None,
                     "slides": [(str(r["slide_id"]), str(r.get("path", ""))) for r in rows]}]
        per = 1 if n_workers >= len(rows) else self.shards_per_worker
        n = max(1, min(len(rows), n_workers * per))
        ids = [str(r["slide_id"]) for r in rows]
        path = {str(r["slide_id"]): str(r.get("path", "")) for r in rows}
        return [{"name": f"shard {i}/{n}", "shard": (i, n),
                 "slides": [(s, path[s]) for s in shard_slides(ids, (i, n))]} for i in range(n)]

    def run_item(self, item: dict[str, Any]) -> list[SlideOutcome]:
        from pathstrat.encoders import embed
        from pathstrat.io import read_failures

        if not self._ready:
            self.setup()
            self._ready = True
        t0 = time.perf_counter()
        try:
            res = embed.embed_cohort(self._manifest(), self.tiles_dir, self.out_dir, self.encoder_id,
                                     encoder=self._encoder, batch_size=self.batch_size,
                                     workers=self.workers, views=self.views, seed=self.seed,
                                     shard=tuple(item["shard"]) if item["shard"] else None)
        except PathstratError:  # bad input for the whole cohort (e.g. no tiles folder): one clear error
            raise
        except Exception as exc:  # noqa: BLE001 - the whole shard failed: report its slides
            why = " ".join(str(exc).split())
            return [SlideOutcome(s, p, False, None, type(exc).__name__, why)
                    for s, p in self.item_slides(item)]
        dt = time.perf_counter() - t0
        reasons = {r["slide_id"]: r for r in read_failures(res.failures_path)}
        out = []
        for sid, p in self.item_slides(item):
            if sid in res.failed:
                r = reasons.get(sid, {})
                out.append(SlideOutcome(sid, p, False, None, r.get("error_type", "Error"),
                                        r.get("reason", "embedding failed")))
            else:
                status = "skipped" if sid in res.skipped else "embedded"
                out.append(SlideOutcome(sid, p, True, {"status": status}, seconds=dt))
        return out

    def process(self, row: dict[str, Any]) -> dict[str, Any] | None:  # pragma: no cover
        raise NotImplementedError("EmbedWork runs shards (run_item), not single rows")
