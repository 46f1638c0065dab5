"""``make_slide``: one synthetic H&E whole-slide image with its ground truth beside it.

The slide is an Aperio-style pyramidal TIFF (see :mod:`pathstrat.synthetic.writer`); the truth is
``<stem>.truth.npz`` with the class map at ``truth_mpp`` and the planted pattern masks, so tests
can score tile-level predictions and attention against what was drawn.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.errors import ConfigError
from pathstrat.io import atomic_path
from pathstrat.synthetic.layout import (
    CLASSES,
    MUCINOUS,
    PATTERNS,
    TISSUE_CLASSES,
    TUMOR,
    Layout,
    LayoutSpec,
    make_layout,
)
from pathstrat.synthetic.pen import PenStrokes, draw_pen, random_pen_strokes
from pathstrat.synthetic.textures import Stain, patch_px, stain_luts, texture_bank, to_rgb
from pathstrat.synthetic.writer import TILE, label_image, write_pyramid

log = logging.getLogger(__name__)

TRUTH_SCHEMA = "pathstrat.synthetic-truth/1"


@dataclass
class SyntheticSlide:
    """What ``make_slide`` wrote: paths, geometry and the planted (measured) composition."""

    path: Path
    truth_path: Path
    width: int
    height: int
    mpp: float
    seed: int
    downsamples: list[int]
    truth_mpp: float
    class_fractions: dict[str, float]  # of the tissue area, measured on the truth map
    tissue_fraction: float  # of the slide area
    mucinous_fraction: float  # of the tissue area drawn as the mucinous tumour variant
    pen_fraction: float  # of the slide area under pen ink
    layout: dict[str, Any] = field(default_factory=dict)

    def load_truth(self) -> dict[str, Any]:
        """The ground-truth arrays (see :func:`load_truth`)."""
        return load_truth(self.truth_path)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"], d["truth_path"] = str(self.path), str(self.truth_path)
        return d


def truth_path_for(path: str | os.PathLike) -> Path:
    """``slide.svs`` -> ``slide.truth.npz`` (beside the slide)."""
    p = Path(path)
    return p.with_name(p.stem + ".truth.npz")


def make_slide(path: str | os.PathLike, *, width: int, height: int, mpp: float = 0.25, seed: int,
               layout: Mapping[str, float] | None = None, truth_mpp: float | None = None,
               pen: bool | int = False, stain: Stain | Mapping[str, float] | None = None,
               stain_jitter: float = 0.05, quality: int = 88,
               downsamples: Sequence[int] | None = None, associated: bool = False,
               field_mpp: float = 8.0, patch_um: float = 512.0,
               texture_seed: int | None = None) -> SyntheticSlide:
    """Write a synthetic H&E slide to ``path`` (``.svs`` or ``.tiff``) and its truth beside it.

    Parameters
    ----------
    width, height, mpp
        Level-0 size in pixels and resolution in µm/px (AppMag 40 at 0.25, 20 at 0.5).
    seed
        Everything (layout, textures, stain, pen) follows from it: same seed, same bytes.
    layout
        Class fractions of the tissue area (``stroma``, ``tumor``, ``lymphocytes``, ``necrosis``;
        missing ones share the rest), plus ``tissue`` (slide-area fraction, default 0.5),
        ``mucinous`` (share of the tumour drawn as the mucinous/signet-ring variant) and
        ``n_blobs`` (tissue fragments). ``None`` draws a random layout from ``seed``.
    truth_mpp
        Resolution of the stored class map; default 4 µm/px (2 µm/px for slides under 4 mm).
    pen
        Draw blue/green ink strokes (``True`` for 1-2 strokes, or a number of strokes).
    stain
        A :class:`Stain` or a mapping of its fields used as the centre of the per-slide jitter.
    associated
        Also write thumbnail, label (with synthetic identifying text) and macro images.
    field_mpp, patch_um
        Layout grid step (µm) and the period of the tileable class textures (µm; smaller is
        faster to build, larger repeats less).
    texture_seed
        Seed of the periodic class textures (default ``seed``); slides sharing it reuse the
        per-process texture cache, which is how ``make_cohort`` stays fast.
    """
    path = Path(path)
    _check_args(width, height, mpp, quality)
    rng = np.random.default_rng([int(seed), 0x5EED])
    spec = LayoutSpec.from_mapping(layout, rng)
    w_um, h_um = width * mpp, height * mpp
    if truth_mpp is None:
        truth_mpp = 2.0 if max(w_um, h_um) < 4000 else 4.0
    ratio = max(2, 2 * round(field_mpp / mpp / 2))  # even level-0 px per layout node
    lay = make_layout(w_um, h_um, spec, rng, field_mpp=ratio * mpp)
    st = stain if isinstance(stain, Stain) else Stain.random(rng, stain_jitter, stain)
    tex_seed = int(seed) if texture_seed is None else int(texture_seed)
    textures = texture_bank(patch_px(mpp, patch_um), float(mpp), tex_seed)
    n_pen = (int(rng.integers(1, 3)) if pen is True else int(pen)) if pen else 0
    strokes = random_pen_strokes(width, height, mpp, n_pen, rng)
    render = _TileRenderer(lay, textures, stain_luts(st), mpp, strokes, ratio)
    assoc = _associated_images(render, width, height, seed) if associated else None

    truth = _truth_arrays(lay, width, height, mpp, truth_mpp, strokes)
    with atomic_path(path, suffix=path.suffix) as tmp:
        ds = write_pyramid(tmp, width, height, mpp, render, quality=quality,
                           downsamples=downsamples, associated=assoc)
    tpath = truth_path_for(path)
    meta = _save_truth(tpath, truth, width=width, height=height, mpp=mpp, truth_mpp=truth_mpp,
                       seed=seed, spec=spec, stain=st)
    log.info("synthetic slide %s: %dx%d px at %.3g um/px, levels %s", path.name, width, height,
             mpp, ds)
    return SyntheticSlide(path=path, truth_path=tpath, width=width, height=height, mpp=mpp,
                          seed=int(seed), downsamples=ds, truth_mpp=truth_mpp,
                          class_fractions=meta["class_fractions"],
                          tissue_fraction=meta["tissue_fraction"],
                          mucinous_fraction=meta["mucinous_fraction"],
                          pen_fraction=meta["pen_fraction"],
                          layout={"fractions": spec.fractions, "tissue": spec.tissue,
                                  "mucinous": spec.mucinous, "n_blobs": spec.n_blobs})


def _check_args(width: int, height: int, mpp: float, quality: int) -> None:
    if width < 64 or height < 64:
        raise ConfigError(f"slide size {width}x{height} px is too small: use at least 64 px a side")
    if not 0.05 <= mpp <= 10:
        raise ConfigError(f"mpp={mpp} is outside 0.05-10 um/px; scanners record about 0.25 or 0.5")
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality {quality} must lie in 1-100")


class _TileRenderer:
    """Level-0 tile at (x0, y0): labels from the layout, pixels gathered from the class patches."""

    def __init__(self, layout: Layout, textures: np.ndarray, luts: np.ndarray, mpp: float,
                 strokes: PenStrokes, ratio: int):
        self.layout, self.mpp, self.strokes, self.ratio = layout, mpp, strokes, ratio
        self.luts = luts
        self.p = textures.shape[2]
        self.textures = textures
        self.offsets = np.arange(TILE)

    def labels(self, x0: int, y0: int) -> tuple[np.ndarray, np.ndarray]:
        return self.layout.tile_labels(x0, y0, TILE, self.ratio)

    def __call__(self, x0: int, y0: int) -> np.ndarray:
        cls, muc = self.labels(x0, y0)
        tex = cls + muc.view(np.uint8) * np.uint8(MUCINOUS - TUMOR)  # mucinous implies tumour
        present = np.flatnonzero(np.bincount(tex.ravel(), minlength=len(CLASSES) + 1))
        planes = []
        for k in range(3):
            if len(present) == 1:
                planes.append(self._patch(k, int(present[0]), x0, y0))
                continue
            acc = np.zeros((TILE, TILE), dtype=np.uint8)
            for c in present:  # masks by multiplication: boolean indexing is slow here
                acc += self._patch(k, int(c), x0, y0) * (tex == c).view(np.uint8)
            planes.append(acc)
        tile = to_rgb(*planes, self.luts)
        if self.strokes.n:
            tile = draw_pen(tile, x0, y0, self.strokes)
        return tile

    def _patch(self, k: int, texture: int, x0: int, y0: int) -> np.ndarray:
        """TILE x TILE slice of stain plane ``k`` of a texture at (x0, y0), wrapping periodically."""
        r0, c0 = y0 % self.p, x0 % self.p
        src = self.textures[k, texture]
        if r0 + TILE <= self.p and c0 + TILE <= self.p:
            return src[r0:r0 + TILE, c0:c0 + TILE]
        rows = (r0 + self.offsets) % self.p
        cols = (c0 + self.offsets) % self.p
        return src[rows][:, cols]


def _associated_images(render: _TileRenderer, width: int, height: int, seed: int) -> dict:
    """Thumbnail from the layout colours, a label carrying fake identifiers, and a macro photo."""
    scale = max(width, height) / 512
    tw, th = max(1, int(width / scale)), max(1, int(height / scale))
    xs = (np.arange(tw) + 0.5) * scale * render.mpp
    ys = (np.arange(th) + 0.5) * scale * render.mpp
    cls, muc = render.layout.labels_at(xs, ys)
    tex = cls.astype(np.int64) + muc * (MUCINOUS - TUMOR)
    sample = np.ascontiguousarray(render.textures[:, :, ::13, ::13])
    mean_rgb = to_rgb(*sample, render.luts).mean(axis=(1, 2)).astype(np.uint8)
    thumb = mean_rgb[tex]
    label = label_image([f"SYNTH-{seed:06d}", "PATIENT: DOE, JANE", "MRN 0000000"])
    macro = np.concatenate([label[:th] if label.shape[0] >= th else
                            np.full((th, label.shape[1], 3), 250, np.uint8), thumb], axis=1)
    return {"thumbnail": thumb, "label": label, "macro": macro}


def _truth_arrays(lay: Layout, width: int, height: int, mpp: float, truth_mpp: float,
                  strokes: PenStrokes) -> dict[str, np.ndarray]:
    tw = max(1, math.ceil(width * mpp / truth_mpp))
    th = max(1, math.ceil(height * mpp / truth_mpp))
    xs = np.minimum((np.arange(tw) + 0.5) * truth_mpp, width * mpp)
    ys = np.minimum((np.arange(th) + 0.5) * truth_mpp, height * mpp)
    cls, muc = lay.labels_at(xs, ys)
    pen = strokes.mask(xs / mpp, ys / mpp)
    return {"class_map": cls, "mucinous_mask": muc, "pen_mask": pen}


def _save_truth(tpath: Path, arrays: dict[str, np.ndarray], *, width: int, height: int, mpp: float,
                truth_mpp: float, seed: int, spec: LayoutSpec, stain: Stain) -> dict[str, Any]:
    cls = arrays["class_map"]
    tissue = cls > 0
    n_t = max(int(tissue.sum()), 1)
    counts = np.bincount(cls.ravel(), minlength=len(CLASSES))
    fractions = {k: float(counts[i + 1] / n_t) for i, k in enumerate(TISSUE_CLASSES)}
    meta = {"class_fractions": fractions, "tissue_fraction": float(tissue.mean()),
            "mucinous_fraction": float(arrays["mucinous_mask"].sum() / n_t),
            "pen_fraction": float(arrays["pen_mask"].mean())}
    with atomic_path(tpath, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, **arrays, classes=np.array(CLASSES), patterns=np.array(PATTERNS),
                truth_mpp=np.float64(truth_mpp), slide_mpp=np.float64(mpp),
                slide_width=np.int64(width), slide_height=np.int64(height), seed=np.int64(seed),
                class_fractions=np.array([fractions[k] for k in TISSUE_CLASSES]),
                class_fraction_names=np.array(TISSUE_CLASSES),
                target_fractions=np.array([spec.fractions[k] for k in TISSUE_CLASSES]),
                tissue_fraction=np.float64(meta["tissue_fraction"]),
                mucinous_fraction=np.float64(meta["mucinous_fraction"]),
                stain=np.array([stain.h_scale, stain.e_scale, stain.hue_shift, stain.brightness]),
                schema=np.array(TRUTH_SCHEMA))
    return meta


def load_truth(path: str | os.PathLike) -> dict[str, Any]:
    """Load ``<stem>.truth.npz`` (or the slide path next to it) into a plain dict."""
    p = Path(path)
    if not p.name.endswith(".truth.npz"):
        p = truth_path_for(p)
    if not p.exists():
        raise FileNotFoundError(f"ground truth {p} not found: it is written by make_slide beside "
                                "the slide as <stem>.truth.npz")
    with np.load(p, allow_pickle=False) as z:
        out: dict[str, Any] = {k: z[k] for k in z.files}
    out["classes"] = [str(c) for c in out["classes"]]
    out["patterns"] = [str(c) for c in out["patterns"]]
    for k in ("truth_mpp", "slide_mpp", "tissue_fraction", "mucinous_fraction"):
        out[k] = float(out[k])
    return out


def tile_truth(truth: Mapping[str, Any] | str | os.PathLike, coords: np.ndarray,
               tile_size_level0: float, slide_mpp: float | None = None,
               samples: int = 16) -> pd.DataFrame:
    """Per-tile fractions of each class and planted pattern, one row per level-0 ``coords`` row.

    Columns: the class names (``background`` ... ``necrosis``), then ``mucinous`` and ``pen``.
    Fractions come from a ``samples x samples`` grid of points inside each tile.
    """
    t = load_truth(truth) if isinstance(truth, (str, os.PathLike)) else truth
    mpp = float(slide_mpp if slide_mpp is not None else t["slide_mpp"])
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    cmap = np.asarray(t["class_map"])
    scale = mpp / float(t["truth_mpp"])  # truth px per level-0 px
    off = (np.arange(samples) + 0.5) / samples * float(tile_size_level0)
    gx = ((coords[:, 0:1] + off[None, :]) * scale).astype(np.int64)  # (N, S)
    gy = ((coords[:, 1:2] + off[None, :]) * scale).astype(np.int64)
    inside = ((gx >= 0) & (gx < cmap.shape[1]))[:, None, :] & ((gy >= 0) & (gy < cmap.shape[0]))[:, :, None]
    gxc = np.clip(gx, 0, cmap.shape[1] - 1)[:, None, :]
    gyc = np.clip(gy, 0, cmap.shape[0] - 1)[:, :, None]
    n = samples * samples
    cols: dict[str, np.ndarray] = {}
    lab = np.where(inside, cmap[gyc, gxc], 0)
    for i, name in enumerate(t["classes"]):
        cols[str(name)] = (lab == i).reshape(len(coords), n).mean(axis=1)
    for pat in ("mucinous", "pen"):
        m = np.asarray(t[f"{pat}_mask"])
        cols[pat] = (np.where(inside, m[gyc, gxc], False)).reshape(len(coords), n).mean(axis=1)
    return pd.DataFrame(cols)
