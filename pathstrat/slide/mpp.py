"""Microns-per-pixel (MPP) resolution from slide metadata, with the source recorded.

Order: an explicit value (manifest column or CLI override), OpenSlide's ``openslide.mpp-x/y``,
Aperio's ``aperio.MPP``, then TIFF ``XResolution``/``ResolutionUnit``. Values that are clearly
placeholders (resolution unit "none", 72/96/300 dpi-style writer defaults, implausible sizes)
are ignored, because a wrong MPP silently tiles at the wrong magnification.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from pathstrat.errors import MissingMPPError, MPPMismatchError

log = logging.getLogger(__name__)

MPP_SOURCES = ("manifest", "override", "openslide", "aperio", "tiff-resolution")
KEYS_TRIED = (
    "openslide.mpp-x",
    "openslide.mpp-y",
    "aperio.MPP",
    "tiff.XResolution",
    "tiff.YResolution",
    "tiff.ResolutionUnit",
)
# Plausible level-0 pixel sizes of a microscope scan (µm/px): 0.05 (oil, 100x+) .. 50 (macro).
MPP_RANGE = (0.01, 100.0)
# Resolutions that image writers put in by default (dots per inch); never a scanner's pixel size.
_DEFAULT_DPI = (1.0, 72.0, 96.0, 100.0, 150.0, 200.0, 300.0, 600.0, 1200.0)
_UM_PER_UNIT = {"centimeter": 1e4, "inch": 25400.0}


@dataclass(frozen=True)
class MPPInfo:
    """Resolved level-0 pixel size and where it came from."""

    mpp_x: float
    mpp_y: float
    source: str

    @property
    def mpp(self) -> float:
        """Single pixel size (mean of x and y): tiles are square in microns."""
        return (self.mpp_x + self.mpp_y) / 2.0


def _float(value: object) -> float | None:
    try:
        f = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _plausible(mpp: float | None) -> bool:
    return mpp is not None and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def tiff_resolution_mpp(props: Mapping[str, str]) -> tuple[float, float] | None:
    """MPP from TIFF XResolution/YResolution (pixels per unit), or None when meaningless."""
    unit = str(props.get("tiff.ResolutionUnit", "")).strip().lower()
    if unit not in _UM_PER_UNIT:
        return None  # unit "none" or absent: the numbers carry no physical meaning
    xres = _float(props.get("tiff.XResolution"))
    yres = _float(props.get("tiff.YResolution")) or xres
    if xres is None or yres is None:
        return None
    per_inch = 2.54 if unit == "centimeter" else 1.0
    for res in (xres, yres):
        dpi = res * per_inch
        if any(abs(dpi - d) < 0.01 * d for d in _DEFAULT_DPI):
            return None  # writer default such as 72 dpi (352.8 µm/px), not a scan resolution
    mx, my = _UM_PER_UNIT[unit] / xres, _UM_PER_UNIT[unit] / yres
    return (mx, my) if _plausible(mx) and _plausible(my) else None


#: A supplied MPP this far from the file's own is a warning / an error (unless overridden).
MPP_WARN_RATIO = 1.10
MPP_ERROR_RATIO = 2.0


def _check_against_metadata(props: Mapping[str, str], value: float, source: str,
                            slide_name: str) -> None:
    try:
        own = resolve_mpp(props, slide_name=slide_name)
    except MissingMPPError:
        return  # nothing to compare with
    ratio = max(value / own.mpp, own.mpp / value)
    if ratio > MPP_ERROR_RATIO:
        raise MPPMismatchError(
            f"Slide '{slide_name}': the {source} mpp {value:g} µm/px is {ratio:.1f}x the file's own "
            f"{own.mpp:g} µm/px ({own.source}); tiles would be {ratio:.1f}x off in scale. Fix the "
            "manifest's 'mpp' value (or remove it to use the file's), or pass `mpp_override` if the "
            "file's metadata is known to be wrong.")
    if ratio > MPP_WARN_RATIO:
        log.warning("Slide '%s': the %s mpp %g µm/px differs from the file's own %g µm/px (%s) by "
                    "%.0f%%; using %g", slide_name, source, value, own.mpp, own.source,
                    (ratio - 1) * 100, value)


def resolve_mpp(
    props: Mapping[str, str],
    *,
    mpp: float | None = None,
    mpp_source: str = "override",
    slide_name: str = "slide",
    check_metadata: bool = True,
) -> MPPInfo:
    """Return the level-0 MPP of a slide or raise :class:`MissingMPPError` naming the fixes.

    A supplied ``mpp`` is compared with the file's own MPP when ``check_metadata``: more than
    :data:`MPP_WARN_RATIO` apart is a warning, more than :data:`MPP_ERROR_RATIO` apart an
    :class:`MPPMismatchError` (tiles would be at the wrong scale); ``check_metadata=False``
    (``--mpp-override``) trusts the supplied value.
    """
    if mpp is not None:
        value = _float(mpp)
        if value is None or not _plausible(value):
            raise MissingMPPError(
                f"Slide '{slide_name}': the supplied mpp={mpp!r} ({mpp_source}) is not a plausible "
                f"pixel size in µm/px (expected {MPP_RANGE[0]}..{MPP_RANGE[1]}, e.g. 0.25 for 40x, "
                "0.5 for 20x). Fix the manifest column 'mpp' or the `mpp` option."
            )
        if mpp_source not in MPP_SOURCES:
            raise ValueError(f"mpp_source must be one of {MPP_SOURCES}, got {mpp_source!r}")
        if check_metadata:
            _check_against_metadata(props, value, mpp_source, slide_name)
        return MPPInfo(value, value, mpp_source)

    tiff_mpp = tiff_resolution_mpp(props)
    ox, oy = _float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y"))
    if _plausible(ox) and _plausible(oy or ox):
        oy = oy or ox
        # For generic TIFFs OpenSlide derives mpp-x from the TIFF resolution: keep it only if
        # that resolution is meaningful (not a 72-dpi writer default).
        derived = "tiff.XResolution" in props and props.get("openslide.vendor") == "generic-tiff"
        if not derived or tiff_mpp is not None:
            return MPPInfo(ox, oy, "openslide")
    aperio = _float(props.get("aperio.MPP"))
    if _plausible(aperio):
        return MPPInfo(aperio, aperio, "aperio")
    if tiff_mpp is not None:
        return MPPInfo(tiff_mpp[0], tiff_mpp[1], "tiff-resolution")

    found = ", ".join(f"{k}={props[k]!r}" for k in KEYS_TRIED if k in props) or "none of them present"
    raise MissingMPPError(
        f"Slide '{slide_name}' has no usable microns-per-pixel (MPP) metadata. Keys tried: "
        f"{', '.join(KEYS_TRIED)} (found: {found}; values outside {MPP_RANGE[0]}..{MPP_RANGE[1]} "
        "µm/px or without a physical resolution unit are ignored as writer defaults). "
        "Supply it either in the manifest's 'mpp' "
        "column for this slide, or as `mpp` (e.g. 0.25 for a 40x scan, 0.5 for 20x)."
    )
