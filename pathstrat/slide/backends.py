"""Pixel backends behind :class:`pathstrat.slide.Slide`.

``openslide`` is the reference for every format OpenSlide reads. ``tifffile-jpeg`` reads the
raw JPEG tile bytes of tiled TIFF/SVS pyramid levels and decodes them with libjpeg-turbo
(imagecodecs), keeping decoded tiles in a small LRU cache: neighbouring tiles of a grid share
JPEG tiles, and OpenSlide's compositing of a 448-px region costs several times the decode.
Levels the fast path cannot map (other compressions, layouts) fall back to OpenSlide.
"""

from __future__ import annotations

import functools
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
FAST_VENDORS = ("aperio", "generic-tiff")  # TIFF layouts where level px == TIFF page px


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
    """Map OpenSlide levels to tiled, 8-bit RGB/YCbCr JPEG TIFF pages of the same size.

    Cached per (file, size, mtime): supports(), the backend and every worker process that
    reopens the slide share one parse.
    """
    st = os.stat(path)
    dims = tuple(tuple(int(v) for v in d) for d in level_dimensions)
    return _jpeg_levels_cached(str(path), st.st_size, st.st_mtime_ns, dims)


@functools.lru_cache(maxsize=64)
def _jpeg_levels_cached(path: str, size: int, mtime_ns: int, level_dimensions) -> dict[int, _JpegLevel]:
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

    def __init__(self, path: Path, osr, *, cache_mb: float = 96.0, dct_scaling: bool = True, **_: object) -> None:
        self.path = path
        self.osr = osr
        self.levels = _jpeg_levels(path, osr.level_dimensions)
        self.downsamples = tuple(float(d) for d in osr.level_downsamples)
        self._fallback = OpenSlideBackend(path, osr)
        self._fd = os.open(path, os.O_RDONLY)
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self.cache_limit = int(cache_mb * 2**20)
        self.dct_scaling = dct_scaling

    @staticmethod
    def supports(path: Path, osr) -> bool:
        """True for Aperio / generic TIFFs whose level 0 is a JPEG-tiled page.

        Other TIFF-based vendors (Philips, Ventana) place tiles in ways only OpenSlide knows.
        """
        if osr.properties.get("openslide.vendor") not in FAST_VENDORS:
            return False
        try:
            return 0 in _jpeg_levels(path, osr.level_dimensions)
        except Exception as exc:  # noqa: BLE001 - any parse failure means "use OpenSlide"
            log.debug("fast TIFF backend not usable for %s: %s", path, exc)
            return False

    def handles_level(self, level: int) -> bool:
        return level in self.levels

    def _tile(self, level: int, idx: int, scale: int = 1) -> np.ndarray | None:
        """Decoded JPEG tile (RGB), at 1/scale size when scale > 1 (libjpeg DCT scaling)."""
        key = (level, idx, scale)
        arr = self._cache.get(key)
        if arr is not None:
            self._cache.move_to_end(key)
            return arr
        lv = self.levels[level]
        n = int(lv.bytecounts[idx])
        if n == 0:
            return None  # sparse tile: OpenSlide shows it transparent (white)
        data = os.pread(self._fd, n, int(lv.offsets[idx]))
        try:
            arr = _decode_jpeg(data, lv, scale)
        except Exception as exc:  # noqa: BLE001 - imagecodecs/cv2 raise their own error types
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
        ds = self.downsamples[level]
        return self._assemble(level, int(round(x0 / ds)), int(round(y0 / ds)), w, h, 1, out)

    def read_region_scaled(self, x0: int, y0: int, level: int, w: int, h: int, scale: int) -> np.ndarray | None:
        """(h, w, 3) region of ``level`` shrunk by ``scale`` (2, 4, 8) in the DCT domain.

        Equals reading (h*scale, w*scale) px and box-downsampling, within ~0.2 grey levels, at
        about half the decode cost. None when the region or tiles are not aligned to ``scale``.
        """
        lv = self.levels.get(level)
        if not self.dct_scaling or lv is None or scale not in _CV2_REDUCED:
            return None
        ds = self.downsamples[level]
        lx, ly = int(round(x0 / ds)), int(round(y0 / ds))
        if lx % scale or ly % scale or lv.tile_w % scale or lv.tile_h % scale:
            return None
        return self._assemble(level, lx // scale, ly // scale, w, h, scale, None)

    def _assemble(self, level: int, lx: int, ly: int, w: int, h: int, scale: int, out) -> np.ndarray:
        """Copy the decoded tiles covering [lx, lx+w) x [ly, ly+h) of the (scaled) level."""
        lv = self.levels[level]
        tw, th = lv.tile_w // scale, lv.tile_h // scale
        width, height = lv.width // scale, lv.height // scale
        if out is None or out.shape != (h, w, 3):
            out = np.empty((h, w, 3), dtype=np.uint8)
        x_lo, y_lo = max(lx, 0), max(ly, 0)
        x_hi, y_hi = min(lx + w, width), min(ly + h, height)
        if x_lo >= x_hi or y_lo >= y_hi:
            out.fill(255)
            return out
        if (x_lo, y_lo, x_hi, y_hi) != (lx, ly, lx + w, ly + h):
            out.fill(255)  # part of the region lies outside the image
        for row in range(y_lo // th, (y_hi - 1) // th + 1):
            ty = row * th
            for col in range(x_lo // tw, (x_hi - 1) // tw + 1):
                tile = self._tile(level, row * lv.cols + col, scale)
                tx = col * tw
                if tile is None or tile.shape[0] < th or tile.shape[1] < tw:
                    _fill_white(out, lx, ly, tx, ty, tw, th, x_lo, y_lo, x_hi, y_hi)
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


def _fill_white(out, lx, ly, tx, ty, tw, th, x_lo, y_lo, x_hi, y_hi) -> None:
    """Paint the part of a JPEG tile's cell inside the region white (missing or short tile)."""
    ax0, ax1 = max(x_lo, tx), min(x_hi, tx + tw)
    ay0, ay1 = max(y_lo, ty), min(y_hi, ty + th)
    out[ay0 - ly : ay1 - ly, ax0 - lx : ax1 - lx] = 255


_CV2_REDUCED = {2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4", 8: "IMREAD_REDUCED_COLOR_8"}
_RGB_IDS = (82, 71, 66)  # 'R', 'G', 'B': libjpeg then skips the YCbCr -> RGB transform


def _decode_jpeg(data: bytes, lv: _JpegLevel, scale: int) -> np.ndarray:
    """Decode one tile: imagecodecs at full size, OpenCV's libjpeg DCT scaling otherwise."""
    if scale == 1:
        import imagecodecs

        return imagecodecs.jpeg8_decode(data, tables=lv.tables, colorspace=lv.colorspace, outcolorspace=2)
    import cv2

    stream = lv.tables[:-2] + data[2:] if lv.tables else data  # abbreviated stream + JPEGTables
    if lv.colorspace == 2:
        stream = _mark_rgb(stream)
    bgr = cv2.imdecode(np.frombuffer(stream, np.uint8), getattr(cv2, _CV2_REDUCED[scale]))
    if bgr is None:
        raise ValueError("OpenCV could not decode the JPEG tile")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _mark_rgb(stream: bytes) -> bytes:
    """Rename the components of an RGB-coded JPEG (Aperio: ids 0,1,2, no JFIF/Adobe) to R,G,B.

    libjpeg guesses the colour space from those ids; with 'R','G','B' it decodes without the
    YCbCr transform, as the TIFF Photometric=RGB says. SOF and SOS are both rewritten.
    """
    b = bytearray(stream)
    ids: dict[int, int] = {}
    i = 2
    while i + 4 <= len(b) and b[i] == 0xFF:
        marker, length = b[i + 1], (b[i + 2] << 8) | b[i + 3]
        if marker in (0xC0, 0xC1, 0xC2) and b[i + 9] == 3:
            for k in range(3):
                ids[b[i + 10 + 3 * k]] = _RGB_IDS[k]
                b[i + 10 + 3 * k] = _RGB_IDS[k]
        elif marker == 0xDA:
            for k in range(b[i + 4]):
                b[i + 5 + 2 * k] = ids.get(b[i + 5 + 2 * k], b[i + 5 + 2 * k])
            break
        i += 2 + length
    return bytes(b)
