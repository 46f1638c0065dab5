"""Spec-driven preprocessing: uint8 RGB tiles -> the tensor an encoder expects.

Split in two so the DataLoader workers do the CPU-heavy part: ``resize`` (uint8 -> uint8 at the
encoder's input size, in the worker) and ``normalize`` (uint8 -> float on the model's device,
fused scale + shift). ``describe()`` is the text written into each feature file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CV2_INTERP = {"bilinear": 1, "bicubic": 2, "area": 3, "nearest": 0}  # cv2.INTER_* values


@dataclass(frozen=True)
class EncoderTransform:
    """Resize (+ optional centre crop) and normalisation of one encoder."""

    input_px: int
    resize_px: int | None
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_spec(cls, spec) -> EncoderTransform:
        return cls(spec.input_px, spec.resize_px, spec.interpolation, tuple(spec.mean),
                   tuple(spec.std))

    def describe(self) -> str:
        """Human-readable, exact description of the preprocessing (stored in feature files)."""
        steps = []
        if self.resize_px and self.resize_px != self.input_px:
            steps.append(f"resize({self.resize_px},{self.interpolation})")
            steps.append(f"center_crop({self.input_px})")
        else:
            steps.append(f"resize({self.input_px},{self.interpolation})")
        mean = ",".join(f"{m:g}" for m in self.mean)
        std = ",".join(f"{s:g}" for s in self.std)
        steps.append(f"normalize(mean=[{mean}],std=[{std}])")
        return "+".join(steps)

    __str__ = describe

    def resize(self, tiles: np.ndarray) -> np.ndarray:
        """(B,H,W,3) uint8 -> (B,input_px,input_px,3) uint8; identity when already that size."""
        tiles = np.asarray(tiles)
        if tiles.ndim != 4 or tiles.shape[-1] != 3:
            raise ValueError(f"expected a (B,H,W,3) uint8 batch, got shape {tiles.shape}")
        b, h, w, _ = tiles.shape
        size = self.resize_px or self.input_px
        if h == w == self.input_px and size == self.input_px:
            return np.ascontiguousarray(tiles, dtype=np.uint8)
        import cv2

        interp = _CV2_INTERP[self.interpolation]
        if interp != 3 and size < min(h, w):
            interp = 3 if self.interpolation == "bilinear" else interp  # antialias downscale
        out = np.empty((b, self.input_px, self.input_px, 3), np.uint8)
        for i in range(b):
            r = cv2.resize(np.ascontiguousarray(tiles[i]), (size, size), interpolation=interp)
            off = (size - self.input_px) // 2
            out[i] = r[off:off + self.input_px, off:off + self.input_px]
        return out

    def normalize(self, batch, device=None, dtype=None):
        """uint8 (B,H,W,3) numpy/tensor or (B,3,H,W) tensor -> normalised float NCHW tensor."""
        import torch

        x = torch.as_tensor(batch)
        if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        x = x.to(device=device, non_blocking=True)
        dtype = dtype or torch.float32
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=x.device, dtype=dtype)
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std, strict=True)],
                             device=x.device, dtype=dtype)
        return x.to(dtype) * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1)
