"""Pixel backends behind :class:`pathstrat.slide.Slide`.

``openslide`` is the reference for every format OpenSlide reads. ``tifffile-jpeg`` reads the
raw JPEG tile bytes of tiled TIFF/SVS pyramid levels and decodes them with libjpeg-turbo
(imagecodecs), keeping decoded tiles in a small LRU cache: neighbouring tiles of a grid share
JPEG tiles, and OpenSlide's compositing of a 448-px region costs several times the decode.
Levels the fast path cannot map (other compressions, layouts) fall back to OpenSlide.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathstrat.errors import SlideReadError
from pathstrat.registry import Registry

log = logging.getLogger(__name__)

BACKENDS: Registry[type] = Registry("slide backend")
AUTO_ORDER = ("tifffile-jpeg", "openslide")


def _decode_error(path: Path, where: str, exc: BaseException) -> SlideReadError:
    return SlideReadError(
        f"Cannot decode slide '{path}' ({where}): {exc}. The file is corrupt, truncated or uses "
        "an encoding the reader cannot decode; re-export or re-copy the slide, or remove it from "
        "the manifest."
    )


def rgba_to_rgb_white(rgba: np.ndarray) -> np.ndarray:
    """Composite non-premultiplied RGBA over white (OpenSlide marks empty areas transparent)."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


@BACKENDS.register("openslide")
class OpenSlideBackend:
    """Reference reader: ``openslide.OpenSlide.read_region`` for every level."""

    name = "openslide"

    def __init__(self, path: Path, osr, **_: object) -> None:
        self.path = path
        self.osr = osr

    @staticmethod
    def supports(path: Path, osr) -> bool:
        return True

    def handles_level(self, level: int) -> bool:
        return True

    def read_region(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of a level region whose origin is in level-0 pixels."""
        import openslide

        try:
            img = self.osr.read_region((int(x0), int(y0)), int(level), (int(w), int(h)))
        except openslide.OpenSlideError as exc:
            raise _decode_error(self.path, f"level {level} region x={x0} y={y0} {w}x{h}", exc) from exc
        return rgba_to_rgb_white(np.asarray(img))

    def close(self) -> None:
        """Nothing to release: the OpenSlide handle belongs to the Slide."""


@dataclass
class _JpegLevel:
    """Raw-tile layout of one pyramid level in a TIFF."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    cols: int
    offsets: np.ndarray
    bytecounts: np.ndarray
    tables: bytes | None
    colorspace: int | None  # libjpeg J_COLOR_SPACE of the data (2 = RGB, None = from header)


def _jpeg_levels(path: Path, level_dimensions) -> dict[int, _JpegLevel]:
    """Map OpenSlide levels to tiled, 8-bit RGB/YCbCr JPEG TIFF pages of the same size."""
    import tifffile

    found: dict[tuple[int, int], _JpegLevel] = {}
    with tifffile.TiffFile(path) as tf:
        pages = list(tf.pages)
        for series in tf.series:
            for lvl in series.levels:
                pages.extend(p for p in lvl.pages if p is not None)
        for page in pages:
            page = page.keyframe if hasattr(page, "keyframe") else page
            ok = (
                page.is_tiled
                and page.compression == 7
                and page.photometric in (2, 6)
                and page.samplesperpixel == 3
                and page.bitspersample == 8
                and page.planarconfig == 1
                and page.imagedepth == 1
            )
            key = (page.imagewidth, page.imagelength)
            if not ok or key in found:
                continue
            tables = page.jpegtables or None
            first = _first_nonempty(page)
            jfif = first is not None and b"JFIF" in first[:64]
            colorspace = 2 if page.photometric == 2 and not jfif else None  # Aperio: RGB, no JFIF
            found[key] = _JpegLevel(
                width=page.imagewidth,
                height=page.imagelength,
                tile_w=page.tilewidth,
                tile_h=page.tilelength,
                cols=-(-page.imagewidth // page.tilewidth),
                offsets=np.asarray(page.dataoffsets, dtype=np.int64),
                bytecounts=np.asarray(page.databytecounts, dtype=np.int64),
                tables=tables,
                colorspace=colorspace,
            )
    return {i: found[tuple(d)] for i, d in enumerate(level_dimensions) if tuple(d) in found}


def _first_nonempty(page) -> bytes | None:
    for off, n in zip(page.dataoffsets, page.databytecounts, strict=False):
        if n:
            page.parent.filehandle.seek(off)
            return page.parent.filehandle.read(min(n, 64))
    return None


@BACKENDS.register("tifffile-jpeg")
class TiffJpegBackend:
    """Raw JPEG tiles of tiled TIFF/SVS levels, decoded by libjpeg-turbo, with an LRU cache."""

    name = "tifffile-jpeg"

    def __init__(self, path: Path, osr, *, cache_mb: float = 96.0, **_: object) -> None:
        self.path = path
        self.osr = osr
        self.levels = _jpeg_levels(path, osr.level_dimensions)
        self.downsamples = tuple(float(d) for d in osr.level_downsamples)
        self._fallback = OpenSlideBackend(path, osr)
        self._fd = os.open(path, os.O_RDONLY)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self.cache_limit = int(cache_mb * 2**20)

    @staticmethod
    def supports(path: Path, osr) -> bool:
        """True when at least level 0 is a JPEG-tiled TIFF page (cheap header parse)."""
        if path.suffix.lower() not in {".svs", ".tif", ".tiff"}:
            return False
        try:
            return 0 in _jpeg_levels(path, osr.level_dimensions[:1])
        except Exception as exc:  # noqa: BLE001 - any parse failure means "use OpenSlide"
            log.debug("fast TIFF backend not usable for %s: %s", path, exc)
            return False

    def handles_level(self, level: int) -> bool:
        return level in self.levels

    def _tile(self, level: int, idx: int) -> np.ndarray | None:
        key = (level, idx)
        arr = self._cache.get(key)
        if arr is not None:
            self._cache.move_to_end(key)
            return arr
        lv = self.levels[level]
        n = int(lv.bytecounts[idx])
        if n == 0:
            return None  # sparse tile: OpenSlide shows it transparent (white)
        import imagecodecs

        data = os.pread(self._fd, n, int(lv.offsets[idx]))
        try:
            arr = imagecodecs.jpeg8_decode(data, tables=lv.tables, colorspace=lv.colorspace, outcolorspace=2)
        except Exception as exc:  # noqa: BLE001 - imagecodecs raises its own error types
            col, row = idx % lv.cols, idx // lv.cols
            raise _decode_error(self.path, f"level {level} JPEG tile col={col} row={row}", exc) from exc
        self._cache[key] = arr
        self._cache_bytes += arr.nbytes
        while self._cache_bytes > self.cache_limit and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes
        return arr

    def read_region(
        self, x0: int, y0: int, level: int, w: int, h: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """(h, w, 3) uint8 RGB; origin in level-0 pixels, outside the image is white.

        ``out`` (an (h, w, 3) uint8 array) is filled and returned when given: reusing one buffer
        for a stream of tiles avoids a fresh page-faulting allocation per tile.
        """
        if level not in self.levels:
            return self._fallback.read_region(x0, y0, level, w, h)
        lv = self.levels[level]
        ds = self.downsamples[level]
        lx, ly = int(round(x0 / ds)), int(round(y0 / ds))
        if out is None or out.shape != (h, w, 3):
            out = np.empty((h, w, 3), dtype=np.uint8)
        x_lo, y_lo = max(lx, 0), max(ly, 0)
        x_hi, y_hi = min(lx + w, lv.width), min(ly + h, lv.height)
        if x_lo >= x_hi or y_lo >= y_hi:
            out.fill(255)
            return out
        if (x_lo, y_lo, x_hi, y_hi) != (lx, ly, lx + w, ly + h):
            out.fill(255)  # part of the region lies outside the image
        for row in range(y_lo // lv.tile_h, (y_hi - 1) // lv.tile_h + 1):
            ty = row * lv.tile_h
            for col in range(x_lo // lv.tile_w, (x_hi - 1) // lv.tile_w + 1):
                tile = self._tile(level, row * lv.cols + col)
                tx = col * lv.tile_w
                if tile is None or tile.shape[0] < lv.tile_h or tile.shape[1] < lv.tile_w:
                    _fill_white(out, lx, ly, tx, ty, lv, x_lo, y_lo, x_hi, y_hi)
                    if tile is None:
                        continue
                ax0, ax1 = max(x_lo, tx), min(x_hi, tx + tile.shape[1])
                ay0, ay1 = max(y_lo, ty), min(y_hi, ty + tile.shape[0])
                out[ay0 - ly : ay1 - ly, ax0 - lx : ax1 - lx] = tile[ay0 - ty : ay1 - ty, ax0 - tx : ax1 - tx]
        return out

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cache_bytes = 0

    def close(self) -> None:
        self.clear_cache()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _fill_white(out, lx, ly, tx, ty, lv: _JpegLevel, x_lo, y_lo, x_hi, y_hi) -> None:
    """Paint the part of a JPEG tile's cell inside the region white (missing or short tile)."""
    ax0, ax1 = max(x_lo, tx), min(x_hi, tx + lv.tile_w)
    ay0, ay1 = max(y_lo, ty), min(y_hi, ty + lv.tile_h)
    out[ay0 - ly : ay1 - ly, ax0 - lx : ax1 - lx] = 255
