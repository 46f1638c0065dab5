"""TransMIL (Shao et al. 2021): Nyström self-attention over tiles + PPEG positional encoding.

Written from the paper (no extra package). Each bag is processed on its valid tiles only, so
padding never changes the output; the tile order matters (PPEG convolves a square token grid),
so the model does not claim permutation invariance.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pathstrat.mil.base import Heads, MILOutput, register_model, zero_loss


def moore_penrose_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Iterative Moore-Penrose pseudo-inverse of softmax kernels (Razavi et al.; Nyströmformer)."""
    abs_x = x.abs()
    z = x.transpose(-1, -2) / (abs_x.sum(-1).amax() * abs_x.sum(-2).amax())
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class NystromAttention(nn.Module):
    """Multi-head self-attention approximated with ``num_landmarks`` segment-mean landmarks
    (Xiong et al. 2021). Sequences no longer than the landmark count use exact attention.

    Landmarks are means of ``num_landmarks`` contiguous, nearly equal segments of the sequence,
    so no padding tokens enter the approximation.
    """

    def __init__(self, dim: int, heads: int = 8, num_landmarks: int = 256, pinv_iterations: int = 6,
                 residual_kernel: int = 33, dropout: float = 0.1) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim // heads
        self.m, self.iters = int(num_landmarks), int(pinv_iterations)
        self.scale = self.dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, 3 * heads * self.dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * self.dim_head, dim), nn.Dropout(dropout))
        self.res_conv = nn.Conv2d(heads, heads, (residual_kernel, 1), padding=(residual_kernel // 2, 0),
                                  groups=heads, bias=False)

    def forward(self, x: torch.Tensor, cls_attention: bool = False):
        """x (1, n, dim) -> (out (1, n, dim), attention of token 0 over all tokens (n,) or None)."""
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2).float()
                   for t in self.to_qkv(x).chunk(3, dim=-1))
        q = q * self.scale
        if n <= self.m:
            out = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        else:
            seg = torch.arange(n, device=x.device) * self.m // n
            counts = torch.bincount(seg, minlength=self.m).to(q.dtype)[:, None]
            ql = q.new_zeros(b, self.heads, self.m, self.dim_head).index_add_(2, seg, q) / counts
            kl = k.new_zeros(b, self.heads, self.m, self.dim_head).index_add_(2, seg, k) / counts
            a1 = torch.softmax(q @ kl.transpose(-1, -2), -1)
            a2 = torch.softmax(ql @ kl.transpose(-1, -2), -1)
            a3 = torch.softmax(ql @ k.transpose(-1, -2), -1)
            out = (a1 @ moore_penrose_pinv(a2, self.iters)) @ (a3 @ v)
        out = out + self.res_conv(v)
        out = out.transpose(1, 2).reshape(b, n, -1).to(x.dtype)
        att = None
        if cls_attention:
            att = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2), -1)[0, :, 0].mean(0)
        return self.to_out(out), att


class TransLayer(nn.Module):
    """Pre-norm residual Nyström attention block."""

    def __init__(self, dim: int, heads: int, num_landmarks: int, pinv_iterations: int,
                 dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, heads, num_landmarks, pinv_iterations, dropout=dropout)

    def forward(self, x: torch.Tensor, cls_attention: bool = False):
        out, att = self.attn(self.norm(x), cls_attention)
        return x + out, att


class PPEG(nn.Module):
    """Pyramid position encoding generator: depthwise 7/5/3 convolutions on the square token grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        cls, feat = x[:, :1], x[:, 1:]
        grid = feat.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


@register_model("transmil", standard_mil=False, permutation_invariant=False,
                citation="Shao et al. 2021, TransMIL: Transformer based correlated multiple instance "
                         "learning for whole slide image classification, NeurIPS",
                description="Class token + two Nyström attention layers with PPEG between them.",
                dim=512, n_heads=8, num_landmarks=256, pinv_iterations=6, dropout=0.1)
class TransMIL(nn.Module):
    """TransMIL; ``attention`` is the class token's last-layer attention over tiles."""

    def __init__(self, in_dim: int, heads: dict[str, int], dim: int = 512, n_heads: int = 8,
                 num_landmarks: int = 256, pinv_iterations: int = 6, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layer1 = TransLayer(dim, n_heads, num_landmarks, pinv_iterations, dropout)
        self.ppeg = PPEG(dim)
        self.layer2 = TransLayer(dim, n_heads, num_landmarks, pinv_iterations, dropout)
        self.norm = nn.LayerNorm(dim)
        self.heads = Heads(dim, heads)

    def _one(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One bag (n, D) of valid tiles -> (embedding (dim,), tile attention (n,))."""
        n = x.shape[0]
        h = self.fc(x.unsqueeze(0))
        side = max(1, math.ceil(math.sqrt(n)))
        idx = torch.cat([torch.arange(n), torch.arange(side * side - n) % n]).to(x.device)
        h = torch.cat([self.cls_token.to(h.dtype), h[:, idx]], dim=1)
        h, _ = self.layer1(h)
        h = self.ppeg(h, side)
        h, att = self.layer2(h, cls_attention=True)
        tile_att = torch.zeros(n, device=x.device, dtype=att.dtype).index_add_(0, idx, att[1:])
        return self.norm(h)[0, 0], tile_att / tile_att.sum().clamp_min(1e-12)

    def forward(self, x, mask=None, bag_labels=None) -> MILOutput:
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        embs, atts = [], []
        for b in range(x.shape[0]):
            valid = mask[b].nonzero().squeeze(1)
            emb, att = self._one(x[b, valid])
            full = torch.zeros(x.shape[1], device=x.device, dtype=att.dtype)
            atts.append(full.index_copy(0, valid, att))
            embs.append(emb)
        emb = torch.stack(embs)
        return MILOutput(self.heads(emb), torch.stack(atts), emb, zero_loss(emb))
