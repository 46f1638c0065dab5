"""Stream a pyramidal, JPEG-tiled, Aperio-style TIFF from a tile renderer.

Level 0 is rendered tile by tile and handed to tifffile as a generator; every lower level is the
area average of level 0, accumulated per tile row and spooled to a temporary file, so neither
level 0 nor any full level ever sits in memory. OpenSlide reads the result as vendor ``aperio``
with ``openslide.mpp-x`` and ``openslide.objective-power`` from the ImageDescription.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import tifffile

from pathstrat.errors import ConfigError

log = logging.getLogger(__name__)

TILE = 256
SOFTWARE = "pathstrat.synthetic"


def default_downsamples(width: int, height: int, min_px: int = 64) -> list[int]:
    """Aperio-like pyramid: 1, 4, 16, then doubling while the level keeps >= ``min_px`` px a side."""
    out = [1]
    for ds in (4, 16, 32, 64, 128, 256):
        if width // ds >= min_px and height // ds >= min_px:
            out.append(ds)
    return out


def objective_for_mpp(mpp: float) -> int:
    """Nominal objective power Aperio records for a scan resolution (0.25 -> 40, 0.5 -> 20)."""
    return max(1, int(round(10.0 / mpp)))


def aperio_description(width: int, height: int, mpp: float, quality: int,
                       extra: dict[str, str] | None = None, level_size: tuple[int, int] | None = None
                       ) -> str:
    """ImageDescription in the Aperio layout OpenSlide parses (``key = value`` after ``|``)."""
    head = "Aperio Image Library v12.0.15 \r\n"
    if level_size is None:
        head += f"{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) JPEG/RGB Q={quality}"
    else:
        head += f"{width}x{height} -> {level_size[0]}x{level_size[1]} - ({TILE}x{TILE}) JPEG/RGB Q={quality}"
    fields = {"AppMag": str(objective_for_mpp(mpp)), "MPP": f"{mpp:.4f}",
              "ScanScope ID": "SYNTHETIC", "Filename": "synthetic", "Date": "01/01/26",
              "Time": "00:00:00", "User": "pathstrat"}
    fields.update(extra or {})
    return head + "".join(f"|{k} = {v}" for k, v in fields.items())


class _LevelSpool:
    """Rows of one downsampled level, appended in order and read back as 256-px tiles."""

    def __init__(self, width: int, height: int, padded_width: int, directory: Path) -> None:
        self.width, self.height, self.padded_width = width, height, padded_width
        self.rows_written = 0
        self.fh: BinaryIO = tempfile.TemporaryFile(dir=directory, prefix=".tmp-level-")

    def append(self, rows: np.ndarray) -> None:
        keep = min(rows.shape[0], self.height - self.rows_written)
        if keep > 0:
            self.fh.write(np.ascontiguousarray(rows[:keep]).tobytes())
            self.rows_written += keep

    def tiles(self) -> Iterator[np.ndarray]:
        row_bytes = self.padded_width * 3
        for y in range(0, self.height, TILE):
            n = min(TILE, self.height - y)
            self.fh.seek(y * row_bytes)
            strip = np.frombuffer(self.fh.read(n * row_bytes), dtype=np.uint8)
            strip = strip.reshape(n, self.padded_width, 3)
            for x in range(0, self.width, TILE):
                t = strip[:, x:x + TILE]
                if t.shape[0] < TILE or t.shape[1] < TILE:
                    t = _pad(t)
                yield np.ascontiguousarray(t)

    def close(self) -> None:
        self.fh.close()


def _pad(t: np.ndarray) -> np.ndarray:
    out = np.full((TILE, TILE, 3), 255, dtype=np.uint8)
    out[:t.shape[0], :t.shape[1]] = t
    return out


def write_pyramid(path: str | Path, width: int, height: int, mpp: float,
                  render: Callable[[int, int], np.ndarray], *, quality: int = 88,
                  downsamples: Sequence[int] | None = None,
                  associated: dict[str, np.ndarray] | None = None,
                  description_extra: dict[str, str] | None = None) -> list[int]:
    """Write the slide to ``path`` (final name; callers wrap it in ``atomic_path``).

    ``render(x0, y0)`` returns the level-0 tile at that origin, (256, 256, 3) uint8, rendered
    even where it runs past the image edge. Returns the downsamples written.
    """
    path = Path(path)
    ds_list = list(downsamples) if downsamples is not None else default_downsamples(width, height)
    if ds_list[0] != 1 or any(TILE % d for d in ds_list) or sorted(set(ds_list)) != ds_list:
        raise ConfigError(f"downsamples {ds_list} must start at 1, increase strictly and divide "
                          f"{TILE} (e.g. (1, 4, 16, 32))")
    nx, ny = math.ceil(width / TILE), math.ceil(height / TILE)
    spools = [_LevelSpool(width // d, height // d, nx * TILE // d, path.parent) for d in ds_list[1:]]
    big = width * height * 3 > 2**31
    opts = dict(dtype=np.uint8, tile=(TILE, TILE), photometric="rgb", compression="jpeg",
                compressionargs={"level": int(quality)}, metadata=None, software=SOFTWARE)
    try:
        with tifffile.TiffWriter(path, bigtiff=big) as tw:
            desc = aperio_description(width, height, mpp, quality, description_extra)
            tw.write(_level0_tiles(nx, ny, render, ds_list, spools), shape=(height, width, 3),
                     description=desc, **opts)
            if associated and "thumbnail" in associated:
                _write_associated(tw, associated["thumbnail"], desc, None)
            for d, sp in zip(ds_list[1:], spools, strict=True):
                if sp.width < 1 or sp.height < 1:
                    continue
                ldesc = aperio_description(width, height, mpp, quality, description_extra,
                                           level_size=(sp.width, sp.height))
                tw.write(sp.tiles(), shape=(sp.height, sp.width, 3), description=ldesc, **opts)
                log.debug("wrote level downsample %d (%dx%d) of %s", d, sp.width, sp.height, path)
            for name in ("label", "macro"):
                if associated and name in associated:
                    _write_associated(tw, associated[name], desc, name)
    finally:
        for sp in spools:
            sp.close()
    return ds_list


def _level0_tiles(nx: int, ny: int, render: Callable[[int, int], np.ndarray], ds_list: list[int],
                  spools: list[_LevelSpool]) -> Iterator[np.ndarray]:
    """Yield level-0 tiles row by row, feeding each downsampled level's row buffer on the way."""
    for ty in range(ny):
        rows = [np.empty((TILE // d, nx * TILE // d, 3), dtype=np.uint8) for d in ds_list[1:]]
        for tx in range(nx):
            tile = render(tx * TILE, ty * TILE)
            if tile.shape != (TILE, TILE, 3) or tile.dtype != np.uint8:
                raise ValueError(f"render returned {tile.shape} {tile.dtype}, need (256, 256, 3) uint8")
            acc = tile
            for k, d in enumerate(ds_list[1:]):
                s = TILE // d
                acc = cv2.resize(acc, (s, s), interpolation=cv2.INTER_AREA)  # exact box mean
                rows[k][:, tx * s:(tx + 1) * s] = acc
            if tx == nx - 1:  # tifffile stops pulling after the last tile: spool the row first
                for sp, r in zip(spools, rows, strict=True):
                    sp.append(r)
            yield tile


#: NewSubfileType OpenSlide 4 uses to recognise Aperio associated images.
_SUBFILETYPE = {"label": 1, "macro": 9}


def _write_associated(tw: tifffile.TiffWriter, img: np.ndarray, desc: str, name: str | None) -> None:
    """Stripped (untiled) image: OpenSlide lists it as thumbnail, label or macro."""
    head = desc.partition("\r\n")[0]
    d = f"{head}\r\n{name} {img.shape[1]}x{img.shape[0]}" if name else desc
    tw.write(np.ascontiguousarray(img), photometric="rgb",
             compression="lzw" if name == "label" else "jpeg", description=d, metadata=None,
             software=SOFTWARE, subfiletype=_SUBFILETYPE.get(name or "", 0))


def label_image(text_lines: Sequence[str], size: tuple[int, int] = (400, 400)) -> np.ndarray:
    """A slide-label picture carrying (synthetic) identifying text, to test it is never exported."""
    img = np.full((size[1], size[0], 3), 250, dtype=np.uint8)
    for i, line in enumerate(text_lines):
        cv2.putText(img, line, (15, 60 + 50 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (10, 10, 10), 2)
    return img
