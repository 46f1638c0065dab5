"""The loader side of ``embed``: tile chunks read in DataLoader worker processes.

:class:`SlideJob` says where a slide's pixels, tiles and output are; :class:`ChunkDataset`
turns the jobs of a cohort into fixed-size chunks of resized uint8 tiles (and augmented views),
each worker keeping its own open slide handles; :func:`make_loader` yields the chunks in order
with read-ahead. :mod:`pathstrat.encoders.embed` runs the encoder on them and writes the files.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

AUGMENTATION = "hflip+vflip+rot90+HEStain(p=0.5)+ColorJitter(0.1,0.1,0.1,0.02,p=0.8)"


@dataclass
class SlideJob:
    """One slide to embed: where its pixels, tiles and output are, and its tile geometry."""

    slide_id: str
    slide_path: str
    tiles_path: Path
    out_path: Path
    coords: np.ndarray
    tile_attrs: dict[str, Any]
    embed_hash: str = ""

    @property
    def n_tiles(self) -> int:
        return len(self.coords)


# ---------------------------------------------------------------------------------------------
# data loading (runs in DataLoader workers)


def _augmenter():
    from pathstrat.errors import import_optional

    A = import_optional("albumentations", "augment", "augmented views (--views)")

    return A.Compose([
        A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5),
        A.HEStain(p=0.5),
        A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, p=0.8),
    ])


class _SlideCache:
    """Worker-local open slides (the current and the next), closed when evicted."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._open: dict[str, Any] = {}

    def get(self, path: str, mpp: float | None):
        if path not in self._open:
            from pathstrat.slide import open_slide

            while len(self._open) >= self.keep:
                self._open.pop(next(iter(self._open))).close()
            self._open[path] = open_slide(path, mpp=mpp, require_mpp=False)
        return self._open[path]

    def close(self) -> None:
        for s in self._open.values():
            s.close()
        self._open.clear()


class ChunkDataset:
    """Map-style dataset: item k = the k-th chunk (slide, start, stop) of tile coordinates.

    Returns resized uint8 tiles (B,H,W,3) and, with views, (V,B,H,W,3) augmented ones. Read
    errors are returned (not raised) so the main process can fail that slide only.
    """

    def __init__(self, jobs: list[SlideJob], chunk: int, transform, views: int = 0,
                 seed: int = 0) -> None:
        self.jobs = jobs
        self.transform = transform
        self.views = views
        self.seed = seed
        self.chunks = [(j, s, min(s + chunk, job.n_tiles))
                       for j, job in enumerate(jobs) for s in range(0, job.n_tiles, chunk)]
        self._cache: _SlideCache | None = None
        self._aug = None

    def __len__(self) -> int:
        return len(self.chunks)

    def read_chunk(self, job: SlideJob, start: int, stop: int) -> np.ndarray:
        """Raw uint8 tiles of one chunk, through the worker's cached slide handle."""
        if self._cache is None:
            self._cache = _SlideCache()
        a = job.tile_attrs
        mpp = a.get("slide_mpp")
        slide = self._cache.get(job.slide_path, float(mpp) if mpp else None)
        level = a.get("read_level")
        tiles = slide.read_tiles(job.coords[start:stop], float(a["tile_size_level0"]),
                                 int(a["tile_px"]), level=None if level is None else int(level))
        return np.stack(list(tiles))

    def _views(self, job: SlideJob, start: int, tiles: np.ndarray) -> np.ndarray:
        if self._aug is None:
            self._aug = _augmenter()
        out = []
        for v in range(self.views):
            ss = np.random.SeedSequence([self.seed, zlib.crc32(job.slide_id.encode()), start, v])
            self._aug.set_random_seed(int(ss.generate_state(1)[0]))
            out.append(self.transform.resize(np.stack([self._aug(image=t)["image"] for t in tiles])))
        return np.stack(out)

    def __getitem__(self, k: int) -> dict[str, Any]:
        j, start, stop = self.chunks[k]
        job = self.jobs[j]
        item: dict[str, Any] = {"job": j, "start": start, "stop": stop, "error": None}
        try:
            raw = self.read_chunk(job, start, stop)
            item["tiles"] = _tensor(self.transform.resize(raw))
            if self.views:
                item["views"] = _tensor(self._views(job, start, raw))
        except Exception as exc:  # noqa: BLE001 - reported per slide by the main process
            item["error"] = (type(exc).__name__, f"tiles {start}..{stop - 1}: {exc}")
        return item


def _tensor(a: np.ndarray):
    """numpy -> torch tensor (moved through shared memory by the DataLoader, not pickled)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def _identity(item: dict[str, Any]) -> dict[str, Any]:
    return item


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(0)
    except ImportError:  # pragma: no cover - opencv is a core dependency
        pass


def make_loader(ds: ChunkDataset, workers: int, prefetch: int = 4, pin_memory: bool = False):
    """DataLoader that yields chunks in order; ``workers`` processes read ahead."""
    from torch.utils.data import DataLoader

    kw: dict[str, Any] = {}
    if workers > 0:
        kw.update(prefetch_factor=prefetch, worker_init_fn=_worker_init, persistent_workers=False)
    return DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                      collate_fn=_identity, pin_memory=pin_memory, **kw)
