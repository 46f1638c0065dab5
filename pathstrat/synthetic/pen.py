"""Pen-mark artefacts: blue and green ink strokes over tissue and glass.

Strokes are polylines in level-0 pixels; each tile is inked from its distance to the strokes, so
the marks are continuous across tiles and the truth mask uses the same geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Light transmitted by each ink (R, G, B): blue and green markers.
INKS = {"blue": (0.30, 0.45, 0.85), "green": (0.35, 0.72, 0.45)}


@dataclass
class PenStrokes:
    """Polylines (level-0 px), half-widths (px) and ink transmissions."""

    lines: list[np.ndarray] = field(default_factory=list)  # each (K, 2) x, y
    radius: list[float] = field(default_factory=list)
    ink: list[tuple[float, float, float]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.lines)

    def distance(self, k: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Distance (px) from the grid ``ys x xs`` to stroke ``k``."""
        pts = self.lines[k]
        px = xs[None, :].astype(np.float64)
        py = ys[:, None].astype(np.float64)
        best = np.full((len(ys), len(xs)), np.inf)
        for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:], strict=True):
            dx, dy = bx - ax, by - ay
            t = np.clip(((px - ax) * dx + (py - ay) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
            best = np.minimum(best, np.hypot(px - ax - t * dx, py - ay - t * dy))
        return best

    def near(self, k: int, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether stroke ``k`` can touch the box [x0, x1) x [y0, y1)."""
        pts, r = self.lines[k], self.radius[k] + 2
        return bool(pts[:, 0].max() + r >= x0 and pts[:, 0].min() - r < x1
                    and pts[:, 1].max() + r >= y0 and pts[:, 1].min() - r < y1)

    def mask(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Boolean ink mask on the grid ``ys x xs`` (level-0 px positions)."""
        out = np.zeros((len(ys), len(xs)), dtype=bool)
        for k in range(self.n):
            out |= self.distance(k, xs, ys) <= self.radius[k]
        return out


def random_pen_strokes(width: int, height: int, mpp: float, n: int,
                       rng: np.random.Generator) -> PenStrokes:
    """``n`` wandering strokes, 80-160 µm wide, spanning a good part of the slide."""
    s = PenStrokes()
    for _ in range(n):
        length = rng.uniform(0.35, 0.7) * max(width, height)
        k = 14
        ang = rng.uniform(0, 2 * math.pi)
        x, y = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
        pts = [(x, y)]
        for _ in range(k):
            ang += rng.normal(0, 0.25)
            x += math.cos(ang) * length / k
            y += math.sin(ang) * length / k
            pts.append((x, y))
        s.lines.append(np.array(pts))
        s.radius.append(rng.uniform(40, 80) / mpp)
        s.ink.append(INKS["blue" if rng.random() < 0.6 else "green"])
    return s


def draw_pen(tile: np.ndarray, x0: int, y0: int, strokes: PenStrokes) -> np.ndarray:
    """Ink the tile whose top-left level-0 pixel is (x0, y0)."""
    h, w = tile.shape[:2]
    out = None
    xs, ys = x0 + np.arange(w) + 0.5, y0 + np.arange(h) + 0.5
    for k in range(strokes.n):
        if not strokes.near(k, x0, y0, x0 + w, y0 + h):
            continue
        d = strokes.distance(k, xs, ys)
        alpha = np.clip(strokes.radius[k] - d + 0.5, 0.0, 1.0) * 0.92
        if not alpha.any():
            continue
        if out is None:
            out = tile.astype(np.float32)
        trans = np.asarray(strokes.ink[k], dtype=np.float32)
        out *= 1.0 - alpha[..., None] * (1.0 - trans)
    return tile if out is None else np.clip(np.rint(out), 0, 255).astype(np.uint8)
