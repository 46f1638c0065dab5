"""The tiles file ``tiles/<slide_id>.h5``: its schema, reader, atomic writer and the slide
fingerprint it records.

The file format on its own (no tiling parameters, no grid), so the stages and tools that read
tiles (``embed``, interop tests, benchmarks) need not import the tiling stage;
:mod:`pathstrat.tiling` decides when a file is reused and writes it through :func:`write_tiles`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathstrat.errors import SchemaError
from pathstrat.io import atomic_path

TILES_SCHEMA = "pathstrat.tiles/1"


@dataclass
class TileSet:
    """Contents of a tiles file."""

    coords: np.ndarray
    tissue_fraction: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.coords)


def read_tiles(path: str | os.PathLike) -> TileSet:
    """Read ``tiles/<slide_id>.h5``; raises :class:`SchemaError` when it is not a tiles file."""
    import h5py

    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            if attrs.get("schema") != TILES_SCHEMA or "coords" not in f:
                raise SchemaError(f"'{p}' is not a pathstrat tiles file (schema "
                                  f"{attrs.get('schema')!r}, expected {TILES_SCHEMA!r}). "
                                  "Recreate it with `pathstrat tile`.")
            coords = f["coords"][()].astype(np.int64, copy=False)
            frac = f["tissue_fraction"][()].astype(np.float32, copy=False)
    except OSError as exc:
        raise SchemaError(f"Tiles file '{p}' cannot be read ({exc}); delete it and rerun "
                          "`pathstrat tile`.") from exc
    if coords.ndim != 2 or coords.shape[1] != 2 or len(frac) != len(coords):
        raise SchemaError(f"Tiles file '{p}': coords {coords.shape} and tissue_fraction "
                          f"{frac.shape} do not match; delete it and rerun `pathstrat tile`.")
    return TileSet(coords, frac, attrs)


FINGERPRINT_BLOCK = 1 << 16  # bytes hashed at each sampled offset
_FP_CACHE: dict[tuple[str, int, int], str] = {}


def slide_fingerprint(slide_path: str | os.PathLike) -> str:
    """The slide file's content as ``v2:<size>:<hash>``: its size and a hash of the header
    (first 256 KiB) and 64 KiB blocks at 1/4, 1/2, 3/4 and the end of the file.

    Independent of path and modification time, so tiles survive a move or a copy without
    ``-p``; a replaced slide (other size, header or sampled blocks) is retiled. Reads about
    0.5 MB per slide (cached per path, size and mtime within a process)."""
    import hashlib

    try:
        st = os.stat(slide_path)
    except OSError:
        return ""
    key = (str(slide_path), st.st_size, st.st_mtime_ns)
    if key in _FP_CACHE:
        return _FP_CACHE[key]
    size = st.st_size
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(slide_path, "rb") as fh:
            h.update(fh.read(4 * FINGERPRINT_BLOCK))
            for off in (size // 4, size // 2, 3 * size // 4, max(0, size - FINGERPRINT_BLOCK)):
                fh.seek(off)
                h.update(fh.read(FINGERPRINT_BLOCK))
    except OSError:
        return ""
    fp = f"v2:{size}:{h.hexdigest()}"
    _FP_CACHE[key] = fp
    return fp


def write_tiles(dest: str | os.PathLike, coords: np.ndarray, tissue_fraction: np.ndarray,
                attrs: dict[str, Any]) -> Path:
    """Write a tiles file atomically (temporary name in the same folder, then ``os.replace``)."""
    import h5py

    from pathstrat.features import trident_coords_attrs

    with atomic_path(dest) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
            # TRIDENT's patch attributes, so its --coords_dir and slide encoders read our tiles
            for k, v in trident_coords_attrs({**attrs, "slide_id": attrs.get("slide_id", Path(dest).stem)}).items():
                f["coords"].attrs[k] = v
            f.create_dataset("tissue_fraction", data=np.asarray(tissue_fraction, np.float32))
            for k, v in attrs.items():
                f.attrs[k] = v
    return Path(dest)


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v
