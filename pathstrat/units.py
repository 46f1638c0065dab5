"""Units as types where values cross module boundaries.

Most whole-slide-image bugs are unit bugs (a tile size in target pixels used as level-0 pixels,
a magnification used as a pixel size). pathstrat writes the unit into every name (``target_mpp``,
``tile_px``, ``tile_size_level0``) and, on the public signatures that pass such values between
modules (slide access, tissue, tiling, heatmaps), into the type: a type checker then flags a
``TilePx`` passed where ``Level0Px`` is expected. ``NewType`` costs nothing at run time; plain
floats and ints are accepted where these are expected (wrap them to document intent).
"""

from __future__ import annotations

from typing import NewType

#: Microns per pixel (µm/px): the physical resolution of a pixel (0.25 ≈ 40x, 0.5 ≈ 20x).
MicronsPerPixel = NewType("MicronsPerPixel", float)
#: A length or coordinate in level-0 (full-resolution) pixels of one slide.
Level0Px = NewType("Level0Px", float)
#: A tile edge in output pixels, i.e. at the tiles' ``target_mpp``.
TilePx = NewType("TilePx", int)
#: A physical length in microns (µm).
Microns = NewType("Microns", float)

__all__ = ["Level0Px", "MicronsPerPixel", "Microns", "TilePx"]
