"""Where each tissue class lies on a synthetic slide: smooth random fields and their decision rule.

A layout is a handful of smooth scalar fields sampled on a coarse grid (``field_mpp`` µm per
grid step). Class labels anywhere on the slide, at any resolution, come from the same rule applied
to bilinearly interpolated fields, so the ground-truth map and the rendered pixels agree exactly
and region outlines stay smooth at full resolution without ever holding a level-0 label image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import fft as sfft

from pathstrat.errors import ConfigError

CLASSES: tuple[str, ...] = ("background", "stroma", "tumor", "lymphocytes", "necrosis")
TISSUE_CLASSES: tuple[str, ...] = CLASSES[1:]
BACKGROUND, STROMA, TUMOR, LYMPHOCYTES, NECROSIS = range(5)
#: Texture index of the mucinous (signet-ring) tumour variant; it is class ``tumor`` in the truth.
MUCINOUS = 5
PATTERNS: tuple[str, ...] = ("mucinous", "pen")

#: Correlation length (µm) of each class's score field: how large its regions are.
CLASS_SCALE_UM = {"stroma": 260.0, "tumor": 300.0, "lymphocytes": 170.0, "necrosis": 190.0}
MUCINOUS_SCALE_UM = 220.0

DEFAULT_FRACTIONS = {"stroma": 0.40, "tumor": 0.30, "lymphocytes": 0.15, "necrosis": 0.15}


@dataclass(frozen=True)
class LayoutSpec:
    """What to plant: class fractions of the tissue area, tissue coverage, variant share."""

    fractions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    tissue: float = 0.5  # fraction of the slide area covered by tissue
    mucinous: float = 0.0  # fraction of the tumour area drawn as the mucinous variant
    n_blobs: int = 3  # tissue fragments

    @classmethod
    def from_mapping(cls, layout: Mapping[str, float] | None, rng: np.random.Generator) -> LayoutSpec:
        """Build from a user dict (class fractions + optional ``tissue``, ``mucinous``, ``n_blobs``).

        ``None`` draws a random plausible layout from ``rng``.
        """
        if layout is None:
            raw = rng.dirichlet([6.0, 4.0, 2.0, 2.0])
            fr = dict(zip(TISSUE_CLASSES, (float(v) for v in raw), strict=True))
            return cls(fractions=fr, tissue=float(rng.uniform(0.4, 0.6)),
                       mucinous=0.0, n_blobs=int(rng.integers(2, 5)))
        allowed = set(TISSUE_CLASSES) | {"tissue", "mucinous", "n_blobs"}
        unknown = sorted(set(layout) - allowed)
        if unknown:
            raise ConfigError(f"layout has unknown keys {unknown}; allowed keys are {sorted(allowed)} "
                              "(class fractions of the tissue area, 'tissue', 'mucinous', 'n_blobs')")
        given = {k: float(layout[k]) for k in TISSUE_CLASSES if k in layout}
        if any(v < 0 for v in given.values()):
            raise ConfigError(f"layout class fractions must be >= 0, got {given}")
        rest = [k for k in TISSUE_CLASSES if k not in given]
        total = sum(given.values())
        if rest:  # unspecified classes share what is left, in the default proportions
            left = max(0.0, 1.0 - total)
            base = sum(DEFAULT_FRACTIONS[k] for k in rest)
            given.update({k: left * DEFAULT_FRACTIONS[k] / base for k in rest})
            total = sum(given.values())
        if total <= 0:
            raise ConfigError("layout class fractions sum to 0: give at least one positive fraction")
        fr = {k: given[k] / total for k in TISSUE_CLASSES}
        tissue = float(layout.get("tissue", 0.5))
        mucinous = float(layout.get("mucinous", 0.0))
        if not 0.02 <= tissue <= 0.95:
            raise ConfigError(f"layout['tissue']={tissue} must lie in [0.02, 0.95] (slide area fraction)")
        if not 0.0 <= mucinous <= 1.0:
            raise ConfigError(f"layout['mucinous']={mucinous} must lie in [0, 1] (tumour area fraction)")
        return cls(fractions=fr, tissue=tissue, mucinous=mucinous,
                   n_blobs=int(layout.get("n_blobs", 3)))


@dataclass
class Layout:
    """Smooth decision fields on a grid whose node ``(i, j)`` sits at ``(j, i) * field_mpp`` µm.

    ``fields[0]`` > 0 means tissue; among tissue the largest of ``fields[1:5]`` names the class
    (stroma, tumor, lymphocytes, necrosis); tumour where ``fields[5]`` > 0 is mucinous.
    Thresholds and biases are already folded into the fields.
    """

    fields: np.ndarray  # (6, gh, gw) float32
    field_mpp: float
    width_um: float
    height_um: float
    _padded: np.ndarray | None = field(default=None, repr=False)
    _pad: int = 0

    def tile_labels(self, x0: int, y0: int, size: int, ratio: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels of the level-0 tile at (x0, y0) when ``field_mpp = ratio * mpp`` (ratio even).

        Same rule as :meth:`labels_at`, with the bilinear upsampling done by ``cv2.resize``
        (pixel centre ``x + 0.5`` maps to grid position ``(x + 0.5) / ratio``).
        """
        r = int(ratio)
        if self._padded is None:
            self._pad = size // r + 4
            self._padded = np.pad(self.fields, ((0, 0), (self._pad,) * 2, (self._pad,) * 2),
                                  mode="edge")
        j0, i0 = x0 // r - 1, y0 // r - 1
        kx, ky = -(-(x0 + size) // r) - j0 + 2, -(-(y0 + size) // r) - i0 + 2
        pj, pi = j0 + self._pad, i0 + self._pad
        crop = self._padded[:, max(pi, 0):pi + ky, max(pj, 0):pj + kx]
        if crop[0].max() <= 0 or pi < 0 or pj < 0:
            if crop[0].max() <= 0:
                return (np.zeros((size, size), np.uint8), np.zeros((size, size), bool))
            xs = (x0 + np.arange(size) + 0.5) * self.field_mpp / r
            ys = (y0 + np.arange(size) + 0.5) * self.field_mpp / r
            return self.labels_at(xs, ys)
        dx, dy = x0 - j0 * r + r // 2, y0 - i0 * r + r // 2
        vals = np.stack([cv2.resize(c, (kx * r, ky * r), interpolation=cv2.INTER_LINEAR)
                         [dy:dy + size, dx:dx + size] for c in crop])
        return decide(vals)

    def labels_at(self, xs_um: np.ndarray, ys_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class ids (uint8) and mucinous flags on the grid ``ys_um x xs_um`` (pixel centres, µm)."""
        iy, wy = _interp_index(np.asarray(ys_um) / self.field_mpp, self.fields.shape[1])
        ix, wx = _interp_index(np.asarray(xs_um) / self.field_mpp, self.fields.shape[2])
        cls = np.empty((len(iy), len(ix)), dtype=np.uint8)
        muc = np.empty((len(iy), len(ix)), dtype=bool)
        block = max(8, 2**16 // max(len(ix), 1))  # rows per pass: bounded memory for big maps
        for r0 in range(0, len(iy), block):
            sl = slice(r0, r0 + block)
            lo, hi = int(iy[sl].min()), int(iy[sl].max()) + 2
            rows = self.fields[:, lo:hi]
            if rows[0].max() <= 0:  # linear interpolation never exceeds its nodes: no tissue
                cls[sl], muc[sl] = BACKGROUND, False
                continue
            fx = rows[:, :, ix] * (1 - wx) + rows[:, :, ix + 1] * wx
            jy, vy = iy[sl] - lo, wy[sl][:, None]
            vals = fx[:, jy] * (1 - vy) + fx[:, jy + 1] * vy
            cls[sl], muc[sl] = decide(vals)
        return cls, muc


def _interp_index(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Left grid index and float32 weight of linear interpolation at fractional positions."""
    pos = np.clip(np.asarray(pos, dtype=np.float64), 0.0, n - 1.000001)
    i0 = np.floor(pos).astype(np.int64)
    return i0, (pos - i0).astype(np.float32)


def decide(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply the layout rule to interpolated fields ``(6, ...)``: class ids and mucinous mask."""
    # argmax and masking by arithmetic: np.argmax(axis=0) and boolean assignment are far slower
    cls = np.full(vals.shape[1:], STROMA, dtype=np.uint8)
    best = vals[STROMA].copy()
    for k in (TUMOR, LYMPHOCYTES, NECROSIS):
        win = (vals[k] > best).view(np.uint8)
        cls += win * (np.uint8(k) - cls)  # cls < k here, so no wrap-around
        np.maximum(best, vals[k], out=best)
    cls *= (vals[0] > 0).view(np.uint8)
    muc = (cls == TUMOR) & (vals[5] > 0)
    return cls, muc


def smooth_noise(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator,
                 wrap: bool = False) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation (float32), via the FFT.

    ``wrap=True`` gives a periodic field (for tileable textures); otherwise the noise is drawn on
    a padded canvas and cropped so opposite edges are independent.
    """
    sigma_px = max(float(sigma_px), 0.5)
    pad = 0 if wrap else min(int(3 * sigma_px) + 1, 4 * max(shape))
    hp, wp = shape[0] + 2 * pad, shape[1] + 2 * pad
    n = rng.standard_normal((hp, wp), dtype=np.float32)
    fy = np.fft.fftfreq(hp).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(wp).astype(np.float32)[None, :]
    filt = np.exp(-2.0 * np.pi**2 * sigma_px**2 * (fx * fx + fy * fy))
    out = sfft.irfft2(sfft.rfft2(n) * filt, s=(hp, wp))[pad:pad + shape[0], pad:pad + shape[1]]
    out = out - out.mean()  # zero mean, so a scale near the canvas size cannot blow up
    sd = float(out.std())
    return (out / sd if sd > 0 else out).astype(np.float32)


def make_layout(width_um: float, height_um: float, spec: LayoutSpec, rng: np.random.Generator,
                field_mpp: float = 8.0) -> Layout:
    """Draw tissue fragments and class regions matching ``spec`` (fractions tuned on the grid)."""
    gw = int(math.floor(width_um / field_mpp)) + 2
    gh = int(math.floor(height_um / field_mpp)) + 2
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32) * np.float32(field_mpp)
    tissue = _tissue_field(xx, yy, width_um, height_um, spec.n_blobs, spec.tissue, rng, field_mpp)
    inside = _in_slide(xx, yy, width_um, height_um)
    tissue -= _quantile_threshold(tissue[inside], 1.0 - spec.tissue)
    is_tissue = (tissue > 0) & inside

    scores = np.stack([smooth_noise((gh, gw), CLASS_SCALE_UM[k] / field_mpp, rng)
                       for k in TISSUE_CLASSES])
    biases = _fit_biases(scores, is_tissue, np.array([spec.fractions[k] for k in TISSUE_CLASSES]))
    scores += biases[:, None, None].astype(np.float32)

    muc = smooth_noise((gh, gw), MUCINOUS_SCALE_UM / field_mpp, rng)
    tumor_here = is_tissue & (np.argmax(scores, axis=0) == TUMOR - 1)
    if spec.mucinous <= 0:
        muc[:] = -1.0
    elif spec.mucinous >= 1:
        muc[:] = 1.0
    elif tumor_here.any():
        muc -= _quantile_threshold(muc[tumor_here], 1.0 - spec.mucinous)
    fields = np.concatenate([tissue[None], scores, muc[None]]).astype(np.float32)
    return Layout(fields=fields, field_mpp=field_mpp, width_um=width_um, height_um=height_um)


def _in_slide(xx: np.ndarray, yy: np.ndarray, width_um: float, height_um: float) -> np.ndarray:
    return (xx <= width_um) & (yy <= height_um)


def _tissue_field(xx: np.ndarray, yy: np.ndarray, w: float, h: float, n_blobs: int,
                  coverage: float, rng: np.random.Generator, field_mpp: float) -> np.ndarray:
    """Union of rotated elliptical fragments with noisy, irregular outlines, faded at the edges."""
    base = np.full(xx.shape, -1.0, dtype=np.float32)
    n_blobs = max(1, n_blobs)
    area_each = w * h * min(0.9, 1.15 * coverage) / n_blobs
    for _ in range(n_blobs):
        cx, cy = rng.uniform(0.28, 0.72) * w, rng.uniform(0.28, 0.72) * h
        ratio = rng.uniform(0.5, 1.0)
        a = math.sqrt(area_each / (math.pi * ratio))
        b = a * ratio
        th = rng.uniform(0, math.pi)
        c, s = math.cos(th), math.sin(th)
        u = ((xx - cx) * c + (yy - cy) * s) / a
        v = (-(xx - cx) * s + (yy - cy) * c) / b
        base = np.maximum(base, 1.0 - np.sqrt(u * u + v * v))
    coarse = smooth_noise(xx.shape, 0.08 * min(w, h) / field_mpp, rng)
    fine = smooth_noise(xx.shape, 25.0 / field_mpp, rng)
    f = base + 0.3 * coarse + 0.08 * fine
    margin = 0.1 * min(w, h)
    edge = np.minimum.reduce([xx, yy, w - xx, h - yy])
    f -= 1.5 * np.clip(1.0 - edge / margin, 0.0, 1.0) ** 2  # fade out near the slide border
    return f.astype(np.float32)


def _quantile_threshold(values: np.ndarray, q: float) -> float:
    if values.size == 0:
        return 0.0
    return float(np.quantile(values, min(max(q, 0.0), 1.0)))


def _fit_biases(scores: np.ndarray, where: np.ndarray, target: np.ndarray,
                iters: int = 60) -> np.ndarray:
    """Additive biases so that the argmax over ``scores`` inside ``where`` hits ``target`` fractions."""
    k = scores.shape[0]
    b = np.zeros(k, dtype=np.float64)
    absent = target <= 1e-6
    b[absent] = -1e3
    vals = scores[:, where]
    if vals.shape[1] == 0:
        return b
    for _ in range(iters):
        lab = np.argmax(vals + b[:, None], axis=0)
        cur = np.bincount(lab, minlength=k) / lab.size
        err = np.log(np.maximum(target, 1e-6)) - np.log(np.maximum(cur, 1e-4))
        err[absent] = 0.0
        if np.max(np.abs(cur - target)) < 0.004:
            break
        b += 0.35 * np.clip(err, -2.0, 2.0)
        b[~absent] -= b[~absent].mean()
    return b
