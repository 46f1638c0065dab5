"""`Slide`: one whole-slide image at physical resolution (MPP, level choice, tile reads).

Metadata comes from OpenSlide; pixels from the chosen backend (see ``backends``). A Slide
pickles as its path and parameters and reopens lazily in each process, so it can be handed
to DataLoader workers or Ray actors.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathstrat.errors import MissingMPPError, SlideReadError
from pathstrat.slide.backends import AUTO_ORDER, BACKENDS, _decode_error
from pathstrat.slide.mpp import MPPInfo, resolve_mpp
from pathstrat.units import Level0Px, MicronsPerPixel, TilePx

log = logging.getLogger(__name__)

READ_CHUNK = 256  # tiles sorted together by read_tiles (bounded memory, cache-friendly order)
THUMB_BLOCK_PX = 4096  # largest region (level px per side) read at once by thumbnail_at_mpp


@dataclass(frozen=True)
class ReadPlan:
    """How tiles of ``tile_px`` at ``target_mpp`` are read: level, region size, resize."""

    target_mpp: MicronsPerPixel
    tile_px: TilePx
    tile_size_level0: Level0Px  # tile side in level-0 pixels
    level: int
    level_downsample: float
    level_mpp: MicronsPerPixel
    read_size_px: int  # region side read at `level`, then resized to tile_px

    def attrs(self) -> dict[str, Any]:
        """The tiles-file attributes this plan defines (`read_level`, `read_size_px`, ...)."""
        return {
            "target_mpp": float(self.target_mpp),
            "tile_px": int(self.tile_px),
            "tile_size_level0": float(self.tile_size_level0),
            "read_level": int(self.level),
            "read_size_px": int(self.read_size_px),
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resize_tile(region: np.ndarray, tile_px: TilePx | int) -> np.ndarray:
    """Resize a square-ish region to tile_px (INTER_AREA when shrinking, linear when growing)."""
    h, w = region.shape[:2]
    if h == tile_px and w == tile_px:
        return region
    import cv2

    interp = cv2.INTER_AREA if (w >= tile_px and h >= tile_px) else cv2.INTER_LINEAR
    return cv2.resize(region, (tile_px, tile_px), interpolation=interp)


class Slide:
    """A whole-slide image opened through OpenSlide, with MPP resolved and a pixel backend."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        mpp: float | None = None,
        mpp_source: str = "override",
        backend: str = "auto",
        require_mpp: bool = True,
        cache_mb: float = 96.0,
        dct_scaling: bool = True,
        mpp_check: bool = True,
    ) -> None:
        self.path = Path(path)
        self._params = {
            "mpp": mpp,
            "mpp_source": mpp_source,
            "mpp_check": mpp_check,
            "backend": backend,
            "require_mpp": require_mpp,
            "cache_mb": cache_mb,
            "dct_scaling": dct_scaling,
        }
        self._osr = None
        self._backend = None
        self._pid: int | None = None
        self._open_handles()
        self._load_metadata()

    # -- opening -----------------------------------------------------------------------------
    def _open_handles(self) -> None:
        import openslide

        if not self.path.exists():
            raise SlideReadError(
                f"Slide file '{self.path}' does not exist. Check the `path` column of the manifest "
                "(relative paths resolve against the manifest's folder)."
            )
        if not self.path.is_file():
            raise SlideReadError(f"Slide path '{self.path}' is not a file. Point it at the slide file itself.")
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideReadError(
                f"Cannot open slide '{self.path}': {_diagnose(self.path)} ({exc}). Check that the "
                "copy is complete (compare its size/checksum with the original), convert it to a "
                "format OpenSlide reads (SVS, tiled TIFF, NDPI, MRXS, ...), or remove it from the manifest."
            ) from exc
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideReadError(
                f"Cannot open slide '{self.path}': OpenSlide cannot decode it ({exc}); the file is "
                "corrupt or uses an unsupported encoding. Re-export it from the scanner software or "
                "remove it from the manifest."
            ) from exc
        self._backend = self._make_backend(self._params["backend"])
        self._pid = os.getpid()

    def _make_backend(self, name: str):
        if name == "auto":
            for cand in AUTO_ORDER:
                cls = BACKENDS.get(cand)
                if cls.supports(self.path, self._osr):
                    return cls(self.path, self._osr, **self._backend_kwargs())
        cls = BACKENDS.get(name)
        if not cls.supports(self.path, self._osr):
            raise SlideReadError(
                f"Slide '{self.path}': backend '{name}' cannot read this file (it needs a JPEG-tiled "
                "TIFF/SVS). Use backend='auto' or 'openslide'."
            )
        return cls(self.path, self._osr, **self._backend_kwargs())

    def _backend_kwargs(self) -> dict[str, Any]:
        return {"cache_mb": self._params["cache_mb"], "dct_scaling": self._params["dct_scaling"]}

    def _load_metadata(self) -> None:
        import openslide

        osr = self._osr
        props = dict(osr.properties)
        self.properties: dict[str, str] = props
        self.dimensions: tuple[int, int] = tuple(osr.dimensions)
        self.level_count: int = osr.level_count
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(tuple(d) for d in osr.level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in osr.level_downsamples)
        self.vendor: str = props.get(openslide.PROPERTY_NAME_VENDOR) or "unknown"
        obj = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER) or props.get("aperio.AppMag")
        try:
            self.objective_power: float | None = float(obj) if obj else None
        except ValueError:
            self.objective_power = None
        # Names only: label/macro images may carry patient identifiers and are never read.
        self.associated_names: tuple[str, ...] = tuple(sorted(osr.associated_images.keys()))
        self.mpp_info: MPPInfo | None
        try:
            self.mpp_info = resolve_mpp(
                props, mpp=self._params["mpp"], mpp_source=self._params["mpp_source"],
                slide_name=str(self.path), check_metadata=self._params.get("mpp_check", True),
            )
        except MissingMPPError:
            if self._params["require_mpp"] or self._params["mpp"] is not None:
                self.close()
                raise
            self.mpp_info = None

    def _ensure_open(self) -> None:
        """Reopen file handles in a new process (fork or unpickle): handles are per process."""
        if self._osr is None or self._pid != os.getpid():
            self._osr = None
            self._backend = None
            self._open_handles()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_osr=None, _backend=None, _pid=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def close(self) -> None:
        """Release file handles (the Slide reopens lazily if used again)."""
        if self._backend is not None and self._pid == os.getpid():
            self._backend.close()
        if self._osr is not None and self._pid == os.getpid():
            self._osr.close()
        self._osr = None
        self._backend = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = f"{self.mpp:.4g}" if self.mpp_info else "?"
        return f"Slide('{self.path.name}', {self.dimensions[0]}x{self.dimensions[1]}, mpp={mpp}, backend={self.backend})"

    # -- metadata ------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """Name of the pixel backend in use ('tifffile-jpeg' or 'openslide')."""
        self._ensure_open()
        return self._backend.name

    @property
    def mpp(self) -> MicronsPerPixel:
        """Level-0 microns per pixel (raises MissingMPPError when unknown)."""
        if self.mpp_info is None:  # only with require_mpp=False
            resolve_mpp(self.properties, slide_name=str(self.path))
        return MicronsPerPixel(self.mpp_info.mpp)

    @property
    def mpp_source(self) -> str | None:
        return self.mpp_info.source if self.mpp_info else None

    def level_mpp(self, level: int) -> MicronsPerPixel:
        """Microns per pixel of pyramid ``level``."""
        return MicronsPerPixel(self.mpp * self.level_downsamples[level])

    # -- level choice --------------------------------------------------------------------------
    def best_level_for_downsample(self, downsample: float, tolerance: float = 0.05) -> int:
        """Coarsest level whose downsample is <= ``downsample * (1 + tolerance)`` (else 0)."""
        limit = downsample * (1.0 + tolerance)
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= limit]
        return max(ok, key=lambda i: self.level_downsamples[i]) if ok else 0

    def best_level_for_mpp(self, target_mpp: MicronsPerPixel | float, tolerance: float = 0.05) -> int:
        """Coarsest level at least as fine as ``target_mpp`` (within ``tolerance``); 0 if none."""
        return self.best_level_for_downsample(target_mpp / self.mpp, tolerance)

    def tile_read_plan(self, target_mpp: MicronsPerPixel | float, tile_px: TilePx | int,
                       tolerance: float = 0.05) -> ReadPlan:
        """Level and read size for tiles of ``tile_px`` pixels at ``target_mpp``."""
        size0 = tile_px * target_mpp / self.mpp
        return self._plan(size0, tile_px, None, tolerance, target_mpp)

    def _plan(
        self, tile_size_level0: float, tile_px: int, level: int | None, tolerance: float, target_mpp: float | None
    ) -> ReadPlan:
        if level is None:
            level = self.best_level_for_downsample(tile_size_level0 / tile_px, tolerance)
        ds = self.level_downsamples[level]
        read = max(1, int(round(tile_size_level0 / ds)))
        mpp = self.mpp if self.mpp_info else float("nan")
        tgt = target_mpp if target_mpp is not None else tile_size_level0 * mpp / tile_px
        return ReadPlan(MicronsPerPixel(float(tgt)), TilePx(int(tile_px)), Level0Px(float(tile_size_level0)),
                        int(level), ds, MicronsPerPixel(ds * mpp), read)

    # -- pixels --------------------------------------------------------------------------------
    def read_region(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB at ``level``; origin in level-0 px; transparent/outside -> white."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range 0..{self.level_count - 1} for slide '{self.path}'")
        self._ensure_open()
        return self._backend.read_region(int(x0), int(y0), int(level), int(w), int(h))

    def read_tile(
        self, x0: int, y0: int, tile_size_level0: Level0Px | float, tile_px: TilePx | int,
        level: int | None = None,
    ) -> np.ndarray:
        """(tile_px, tile_px, 3) uint8 tile covering ``tile_size_level0`` level-0 px at (x0, y0).

        Reads round(tile_size_level0 / downsample) px at the coarsest adequate level and resizes.
        """
        plan = self._plan(tile_size_level0, tile_px, level, 0.05, None)
        self._ensure_open()
        return self._tile_from_plan(int(x0), int(y0), plan, None)

    def _tile_from_plan(self, x: int, y: int, plan: ReadPlan, scratch: np.ndarray | None) -> np.ndarray:
        """One tile: DCT-scaled decode when the read is 2/4/8x the tile, else read + resize."""
        b, n, px = self._backend, plan.read_size_px, plan.tile_px
        fast = b.name != "openslide" and b.handles_level(plan.level)
        if fast and n > px and n % px == 0:
            tile = b.read_region_scaled(x, y, plan.level, px, px, n // px)
            if tile is not None:
                return tile
        if fast and scratch is not None:  # region goes to a reused buffer, only the tile is new
            region = b.read_region(x, y, plan.level, n, n, out=scratch)
        else:
            region = self.read_region(x, y, plan.level, n, n)
        return resize_tile(region, px)

    def read_tiles(
        self,
        coords: Iterable[Sequence[int]] | np.ndarray,
        tile_size_level0: Level0Px | float,
        tile_px: TilePx | int,
        level: int | None = None,
        chunk: int = READ_CHUNK,
    ) -> Iterator[np.ndarray]:
        """Yield tiles in input order, reading each chunk in row-major order (decode cache hits)."""
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        plan = self._plan(tile_size_level0, tile_px, level, 0.05, None)
        self._ensure_open()
        n = plan.read_size_px
        scratch = np.empty((n, n, 3), dtype=np.uint8) if n != tile_px else None
        for start in range(0, len(coords), chunk):
            block = coords[start : start + chunk]
            order = np.lexsort((block[:, 0], block[:, 1]))
            out: list[np.ndarray | None] = [None] * len(block)
            for i in order:
                out[i] = self._tile_from_plan(int(block[i, 0]), int(block[i, 1]), plan, scratch)
            yield from out  # type: ignore[misc]

    def thumbnail_at_mpp(self, mpp: MicronsPerPixel | float) -> tuple[np.ndarray, MicronsPerPixel]:
        """Whole-slide image at ~``mpp`` µm/px from the best level, read block by block.

        Returns (image, actual_mpp); never upsamples beyond level 0.
        """
        mpp = max(float(mpp), self.mpp)
        level = self.best_level_for_mpp(mpp)
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        f = mpp / (self.mpp * ds)  # level px per output px (>= ~1)
        ow, oh = max(1, int(round(lw / f))), max(1, int(round(lh / f)))
        out = np.empty((oh, ow, 3), dtype=np.uint8)
        block = max(1, int(THUMB_BLOCK_PX // max(f, 1.0)))
        import cv2

        for oy in range(0, oh, block):
            oy1 = min(oh, oy + block)
            ly0, ly1 = int(round(oy * lh / oh)), int(round(oy1 * lh / oh))
            for ox in range(0, ow, block):
                ox1 = min(ow, ox + block)
                lx0, lx1 = int(round(ox * lw / ow)), int(round(ox1 * lw / ow))
                region = self.read_region(
                    int(lx0 * ds), int(ly0 * ds), level, max(1, lx1 - lx0), max(1, ly1 - ly0)
                )
                interp = cv2.INTER_AREA if f >= 1 else cv2.INTER_LINEAR
                out[oy:oy1, ox:ox1] = cv2.resize(region, (ox1 - ox, oy1 - oy), interpolation=interp)
        actual = self.dimensions[0] * self.mpp / ow
        return out, MicronsPerPixel(actual)

    def check_readable(self) -> None:
        """Decode a small region of the coarsest level (and a level-0 tile) or raise SlideReadError.

        OpenSlide opens some files whose tile data cannot be decoded; a batch calls this so the
        slide fails early with a clear reason instead of mid-way.
        """
        import openslide

        self._ensure_open()
        last = self.level_count - 1
        lw, lh = self.level_dimensions[last]
        w, h = min(lw, 64), min(lh, 64)
        ds = self.level_downsamples[last]
        x0, y0 = int((lw - w) // 2 * ds), int((lh - h) // 2 * ds)
        self.read_region(x0, y0, last, w, h)
        if self._backend.name != "openslide":  # the reference reader must agree it is decodable
            try:
                self._osr.read_region((x0, y0), last, (w, h))
            except openslide.OpenSlideError as exc:
                raise _decode_error(self.path, f"level {last} centre region", exc) from exc

    def info(self) -> dict[str, Any]:
        """Metadata summary for `pathstrat info` (no pixels, no associated images)."""
        mpp_known = self.mpp_info is not None
        return {
            "path": str(self.path),
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "levels": [
                {
                    "level": i,
                    "dimensions": list(self.level_dimensions[i]),
                    "downsample": self.level_downsamples[i],
                    "mpp": self.level_mpp(i) if mpp_known else None,
                }
                for i in range(self.level_count)
            ],
            "objective_power": self.objective_power,
            "mpp": self.mpp if mpp_known else None,
            "mpp_source": self.mpp_source,
            "associated_images": list(self.associated_names),
            "backend": self.backend,
        }


def _diagnose(path: Path) -> str:
    """Short human reason why OpenSlide refused a file (truncated TIFF vs unknown format)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        return f"unreadable file ({exc.strerror or exc})"
    if size == 0:
        return "the file is empty"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return f"it is a TIFF ({size} bytes) that OpenSlide cannot parse: truncated or corrupt, or an unsupported layout"
    return "unsupported or unrecognised format: not a whole-slide image OpenSlide reads, or corrupt"


def open_slide(
    path: str | os.PathLike,
    *,
    mpp: float | None = None,
    backend: str = "auto",
    mpp_source: str = "override",
    require_mpp: bool = True,
    check: bool = False,
    cache_mb: float = 96.0,
    dct_scaling: bool = True,
    mpp_check: bool = True,
) -> Slide:
    """Open a whole-slide image; ``mpp`` (from the manifest or CLI) overrides metadata.

    ``mpp_check=False`` trusts a supplied ``mpp`` even when it is more than 2x from the file's.

    Raises SlideReadError (missing/unsupported/corrupt file) or MissingMPPError (no usable
    MPP and none given). ``check=True`` also decodes a small region (see check_readable).
    """
    if mpp is not None and isinstance(mpp, float) and math.isnan(mpp):
        mpp = None  # manifest rows without an mpp value
    slide = Slide(
        path, mpp=mpp, mpp_source=mpp_source, backend=backend, require_mpp=require_mpp, cache_mb=cache_mb,
        dct_scaling=dct_scaling, mpp_check=mpp_check,
    )
    if check:
        try:
            slide.check_readable()
        except BaseException:
            slide.close()
            raise
    return slide
