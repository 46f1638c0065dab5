"""The weight-free ``builtin`` encoder: deterministic hand-crafted H&E tile descriptors.

Vectorised over the batch in torch on CPU (no weights, no network), for offline use, tests and
the demo. Groups, computed at half resolution (~1 µm/px for 224 px tiles at 0.5 µm/px):

* stain: Ruifrok colour deconvolution (HED) statistics, RGB and saturation statistics,
  fractions of background, hematoxylin-rich and eosin-rich pixels;
* texture: rotation-invariant uniform LBP histogram, GLCM (contrast, homogeneity, energy,
  correlation, entropy), Gabor energy at 4 orientations x 2 wavelengths, gradient magnitude;
* nuclei: difference-of-Gaussians blobs on the hematoxylin channel at a lymphocyte and a
  tumour-nucleus scale (density of local maxima, mean response, blob area fraction).

Every descriptor is standardised with fixed constants (``_REF_MEAN``/``_REF_STD``, measured
once on the 117 grid tiles (224 px, 0.5 µm/px) of CMU-1-Small-Region, background included, plus
233 single-class tiles of two ``pathstrat.synthetic`` slides), so features are well scaled for
linear probes and MIL without any data-dependent fitting. Changing them changes the encoder's
``weights_sha256`` (:func:`constants_sha256`), so resume never mixes definitions.
"""

from __future__ import annotations

import math

import numpy as np

# Ruifrok & Johnston stain vectors (as in skimage.color.rgb2hed): rows H, E, DAB in OD space.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)

_STAIN = [f"{c}_{s}" for c in ("hema", "eosin", "dab") for s in ("mean", "std", "p10", "p50", "p90")]
_COLOUR = ["r_mean", "g_mean", "b_mean", "r_std", "g_std", "b_std", "sat_mean", "sat_std",
           "od_mean", "h_over_e"]
_FRACTIONS = ["background_frac", "hema_frac", "hema_dense_frac", "eosin_frac", "dark_frac"]
_LBP = [f"lbp_riu2_{i}" for i in range(10)]
_GLCM = ["glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation", "glcm_entropy"]
_GABOR = [f"gabor_l{lam}_t{t}" for lam in (4, 8) for t in (0, 45, 90, 135)]
_GRAD = ["grad_mean", "grad_std", "gray_entropy"]
_BLOBS = ["blob_small_density", "blob_large_density", "blob_small_response",
          "blob_large_response", "blob_small_area", "blob_large_area"]

FEATURE_NAMES: tuple[str, ...] = tuple(
    _STAIN + _COLOUR + _FRACTIONS + _LBP + _GLCM + _GABOR + _GRAD + _BLOBS)
VERSION = "pathstrat-handcrafted-v1"
WORK_PX = 112  # descriptors are computed at this size (the spec resizes 224 px tiles to it)

# Fixed standardisation constants (see module docstring); order = FEATURE_NAMES.
_REF_MEAN: list[float] = [
    0.39432, 0.3367, 0.10841, 0.34378, 0.72091, 0.16197, 0.10102, 0.040346, 0.15608, 0.28155,
    0.23104, 0.11006, 0.09893, 0.22521, 0.36341, 0.78027, 0.66643, 0.76561, 0.10441, 0.11748,
    0.088733, 0.2211, 0.10152, 1.1999, 1.9465, 0.46924, 0.35956, 0.22948, 0.39382, 0.12301,
    0.044489, 0.060799, 0.037095, 0.051898, 0.12731, 0.087988, 0.050131, 0.081775, 0.22541,
    0.23311, 0.37031, 0.89996, 0.66274, 0.5761, 1.3662, 0.010771, 0.0065582, 0.0079253,
    0.0083993, 0.016371, 0.012159, 0.012691, 0.014312, 0.077977, 0.081572, 1.2893, 7.7451,
    11.093, 0.019377, 0.021458, 0.096656, 0.11308,
]
_REF_STD: list[float] = [
    0.50195, 0.35262, 0.11365, 0.50347, 0.98625, 0.16476, 0.091365, 0.053007, 0.17502, 0.2766,
    0.17933, 0.10519, 0.077103, 0.18968, 0.304, 0.18745, 0.25515, 0.16696, 0.092374, 0.096785,
    0.074403, 0.19464, 0.081083, 1.0594, 1.9991, 0.46655, 0.38834, 0.3344, 0.36366, 0.19388,
    0.023005, 0.028773, 0.021481, 0.033857, 0.13556, 0.052118, 0.014491, 0.043882, 0.25179,
    0.1282, 0.45871, 0.09966, 0.3002, 0.39673, 1.1965, 0.01139, 0.0073325, 0.0093988,
    0.0081149, 0.01541, 0.011876, 0.012384, 0.01318, 0.07601, 0.067329, 0.88801, 9.4846,
    14.077, 0.028375, 0.029231, 0.12993, 0.14657,
]


def _gaussian_kernel(sigma: float):
    import torch

    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def _blur(x, sigma: float):
    """Separable Gaussian blur of a (B,1,H,W) tensor with reflect padding."""
    import torch.nn.functional as F

    k = _gaussian_kernel(sigma)
    r = k.numel() // 2
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def _gabor_bank():
    """Real Gabor kernels (4 orientations x wavelengths 4, 8 px), zero-mean, L1-normalised."""
    import torch

    size = 11
    half = size // 2
    yy, xx = torch.meshgrid(torch.arange(-half, half + 1.0), torch.arange(-half, half + 1.0),
                            indexing="ij")
    kernels = []
    for lam in (4.0, 8.0):
        sigma = 0.56 * lam
        for theta in (0.0, 45.0, 90.0, 135.0):
            t = math.radians(theta)
            xr = xx * math.cos(t) + yy * math.sin(t)
            yr = -xx * math.sin(t) + yy * math.cos(t)
            g = torch.exp(-(xr**2 + 0.25 * yr**2) / (2 * sigma**2)) * torch.cos(2 * math.pi * xr / lam)
            g = g - g.mean()
            kernels.append(g / g.abs().sum())
    return torch.stack(kernels).unsqueeze(1)  # (8,1,11,11)


def _quantiles(v, qs):
    """Per-row quantiles of a (R,N) tensor via one sort (cheaper than torch.quantile x3)."""
    import torch

    s, _ = torch.sort(v, dim=1)
    n = s.shape[1]
    idx = torch.tensor([min(n - 1, int(round(q * (n - 1)))) for q in qs])
    return s[:, idx]


def _riu2_lut() -> np.ndarray:
    """Map each 8-bit LBP code to its rotation-invariant uniform bin (0..8 ones, 9 = other)."""
    lut = np.empty(256, np.int64)
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        transitions = sum(bits[i] != bits[i - 1] for i in range(8))
        lut[code] = sum(bits) if transitions <= 2 else 9
    return lut


_RIU2 = _riu2_lut()


def _lbp_riu2(gray):
    """Rotation-invariant uniform LBP (P=8, R=1) histogram, 10 bins, of (B,H,W) gray."""
    import torch

    c = gray[:, 1:-1, 1:-1]
    h, w = gray.shape[1] - 2, gray.shape[2] - 2
    offs = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    code = torch.zeros(c.shape, dtype=torch.uint8)
    for i, (dy, dx) in enumerate(offs):
        code |= (gray[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] >= c).to(torch.uint8) << i
    b = gray.shape[0]
    binned = torch.from_numpy(_RIU2)[code.reshape(b, -1).long()]
    flat = binned + 10 * torch.arange(b).unsqueeze(1)
    hist = torch.bincount(flat.reshape(-1), minlength=10 * b).reshape(b, 10).float()
    return hist / hist.sum(1, keepdim=True)


def _glcm(gray, levels: int = 8):
    """Symmetric normalised GLCM (offsets right and down) -> 5 Haralick-style statistics."""
    import torch

    q = torch.clamp((gray * levels).long(), 0, levels - 1)
    b = q.shape[0]
    base = (torch.arange(b) * levels * levels).view(b, 1)
    counts = torch.zeros(b, levels * levels)
    for a, c in ((q[:, :, :-1], q[:, :, 1:]), (q[:, :-1, :], q[:, 1:, :])):
        for i, j in ((a, c), (c, a)):
            idx = (i * levels + j).reshape(b, -1) + base
            counts += torch.bincount(idx.reshape(-1), minlength=b * levels * levels).reshape(b, -1).float()
    p = (counts / counts.sum(1, keepdim=True)).view(b, levels, levels)
    ii, jj = torch.meshgrid(torch.arange(levels, dtype=torch.float32),
                            torch.arange(levels, dtype=torch.float32), indexing="ij")
    contrast = (p * (ii - jj) ** 2).sum((1, 2))
    homog = (p / (1.0 + (ii - jj).abs())).sum((1, 2))
    energy = (p**2).sum((1, 2)).sqrt()
    mu = (p * ii).sum((1, 2))
    var = (p * (ii - mu.view(b, 1, 1)) ** 2).sum((1, 2))
    corr = (p * (ii - mu.view(b, 1, 1)) * (jj - mu.view(b, 1, 1))).sum((1, 2)) / (var + 1e-6)
    entropy = -(p * torch.log(p + 1e-12)).sum((1, 2))
    return torch.stack([contrast, homog, energy, corr, entropy], 1)


def _max3x3(x):
    """3x3 maximum filter of (B,1,H,W) via shifted slices (cheaper than max_pool2d on CPU)."""
    import torch
    import torch.nn.functional as F

    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    row = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return torch.maximum(torch.maximum(row[..., :-2, :], row[..., 1:-1, :]), row[..., 2:, :])


def _mean_std(v, dim: int):
    """Mean and (population) standard deviation along ``dim`` in one pass."""
    m = v.mean(dim)
    return m, ((v * v).mean(dim) - m * m).clamp(min=0).sqrt()


def _blobs(hema, sigma: float, thr: float):
    """DoG blobs at scale ``sigma`` on (B,1,H,W) hematoxylin OD: density, response, area."""
    import torch

    dog = _blur(hema, sigma) - _blur(hema, 1.6 * sigma)
    peaks = (dog >= _max3x3(dog)) & (dog > thr)
    n_px = dog.shape[-1] * dog.shape[-2]
    density = peaks.flatten(1).sum(1).float() * (1000.0 / n_px)
    response = torch.clamp(dog, min=0).flatten(1).mean(1)
    area = (dog > thr).flatten(1).float().mean(1)
    return density, response, area


def describe_raw(x):
    """Raw (unstandardised) descriptors of a (B,3,H,W) float batch in [0,1] -> (B,D)."""
    import torch
    import torch.nn.functional as F

    x = x.float()
    if x.shape[-1] != WORK_PX or x.shape[-2] != WORK_PX:
        x = F.interpolate(x, size=(WORK_PX, WORK_PX), mode="area")
    b = x.shape[0]
    od = -torch.log(torch.clamp(x, min=1.0 / 255.0))
    m = _HED_FROM_RGB
    hed = torch.stack([(od[:, 0] * float(m[0, j]) + od[:, 1] * float(m[1, j])
                        + od[:, 2] * float(m[2, j])).clamp(min=0) for j in range(3)], 1)
    flat = hed.flatten(2)  # (B,3,N)
    sub = hed[:, :, ::2, ::2].reshape(b * 3, -1)  # quantiles on every 4th pixel (sort cost)
    q = _quantiles(sub, (0.1, 0.5, 0.9)).reshape(b, 3, 3)
    s_mean, s_std = _mean_std(flat, 2)
    stain = torch.cat([s_mean.unsqueeze(2), s_std.unsqueeze(2), q], 2).reshape(b, 15)

    rgb = x.flatten(2)
    mx, mn = x.max(1).values, x.min(1).values
    sat = ((mx - mn) / (mx + 1e-3)).flatten(1)
    od_sum = od.sum(1).flatten(1)
    h_mean, e_mean = flat[:, 0].mean(1), flat[:, 1].mean(1)
    sat_mean, sat_std = _mean_std(sat, 1)
    colour = torch.cat([*_mean_std(rgb, 2), sat_mean.unsqueeze(1), sat_std.unsqueeze(1),
                        od_sum.mean(1, keepdim=True), (h_mean / (e_mean + 0.05)).unsqueeze(1)], 1)

    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    fractions = torch.stack([
        (od_sum < 0.25).float().mean(1),
        (flat[:, 0] > 0.15).float().mean(1),
        (flat[:, 0] > 0.35).float().mean(1),
        (flat[:, 1] > 0.15).float().mean(1),
        (gray.flatten(1) < 0.35).float().mean(1),
    ], 1)

    lbp = _lbp_riu2(gray)
    glcm = _glcm(gray)
    small = F.avg_pool2d(gray.unsqueeze(1), 2)
    gabor = F.conv2d(F.pad(small, (5, 5, 5, 5), mode="reflect"), _gabor_bank()).abs().flatten(2).mean(2)
    gx = gray[:, :, 2:] - gray[:, :, :-2]
    gy = gray[:, 2:, :] - gray[:, :-2, :]
    grad = torch.sqrt(gx[:, 1:-1, :] ** 2 + gy[:, :, 1:-1] ** 2).flatten(1)
    hist = torch.stack([torch.histc(g, bins=16, min=0.0, max=1.0) for g in gray.flatten(1)])
    hist = hist / hist.sum(1, keepdim=True)
    gray_entropy = -(hist * torch.log(hist + 1e-12)).sum(1)
    gradf = torch.stack([*_mean_std(grad, 1), gray_entropy], 1)

    hema = hed[:, :1]
    d1, r1, a1 = _blobs(hema, 1.0, 0.04)
    d2, r2, a2 = _blobs(F.avg_pool2d(hema, 2), 1.0, 0.04)  # sigma 2 px at full WORK_PX
    blobs = torch.stack([d1, d2, r1, r2, a1, a2], 1)
    out = torch.cat([stain, colour, fractions, lbp, glcm, gabor, gradf, blobs], 1)
    assert out.shape[1] == len(FEATURE_NAMES)  # internal invariant, not an input check
    return out


def _build_module():
    import torch
    from torch import nn

    class BuiltinDescriptor(nn.Module):
        """nn.Module wrapper: (B,3,H,W) float in [0,1] -> standardised (B,D) descriptors."""

        def __init__(self) -> None:
            super().__init__()
            mean = torch.tensor(_REF_MEAN, dtype=torch.float32)
            std = torch.tensor(_REF_STD, dtype=torch.float32)
            self.register_buffer("ref_mean", mean, persistent=False)
            self.register_buffer("ref_std", std, persistent=False)

        def forward(self, x):
            raw = describe_raw(x.float().cpu())
            return ((raw - self.ref_mean) / self.ref_std).to(x.device)

    return BuiltinDescriptor()


def build_builtin():
    """The builtin descriptor module (deterministic; no parameters)."""
    return _build_module()


def constants_sha256() -> str:
    """Identity of the descriptor definition: version + standardisation constants."""
    import hashlib

    blob = repr((VERSION, FEATURE_NAMES, _REF_MEAN, _REF_STD)).encode()
    return hashlib.sha256(blob).hexdigest()
