"""TransMIL (Shao et al. 2021): Nyström self-attention over tiles + PPEG positional encoding.

Written from the paper (no extra package). Each bag is processed on its valid tiles only, so
padding never changes the output; the tile order matters (PPEG convolves a square token grid),
so the model does not claim permutation invariance.

Speed (issue 18): :meth:`TransMIL._one` is the reference, one bag at a time. When every bag of
a batch fits the exact-attention regime (class token + square grid <= ``num_landmarks``, i.e.
bags of up to ~255 tiles with the default 256 landmarks), :meth:`TransMIL._packed` computes the
same function for the whole batch at once: per-token layers (projection, LayerNorm, q/k/v and
output projections) run on the concatenated tokens of all bags (no padding), attention and the
sequence convolution run on a zero-padded (B, L, ...) batch with padded keys masked, and PPEG
convolves each bag's s x s grid embedded in a zero grid of the batch's largest side (zeros
outside a bag's grid are exactly the convolution's zero padding; the 7/5/3 kernels are summed
into one 7x7 kernel, the same linear map). The depthwise sequence convolution of the attention
is a banded (Toeplitz) matrix product, and the second layer computes only the class token's
output (the only one the model reads): on CPU, depthwise convolutions' backward passes and
per-bag matrix products were most of the time. The outputs equal ``_one`` to
float tolerance (tests/test_mil.py); only the order of floating-point sums differs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pathstrat.mil.base import Heads, MILOutput, register_model, zero_loss

_FORCE_LOOP = False  # benchmarks: time the per-bag reference path


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
                dim=512, n_heads=8, num_landmarks=256, pinv_iterations=6, dropout=0.1,
                test_hparams={"dim": 16, "n_heads": 2, "num_landmarks": 4})
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

    def _packed(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every bag of the batch at once (exact attention only): (embedding (B, dim), attention
        (B, N)), the same function as :meth:`_one` per bag (see the module docstring)."""
        dev = x.device
        b_size, n_max = mask.shape
        n = mask.sum(1).cpu()
        side = torch.ceil(torch.sqrt(n.double())).long().clamp_min(1)
        seq = side * side + 1  # class token + square grid, per bag
        l_max, s_max = int(seq.max()), int(side.max())
        h = self.fc(x[mask])  # (valid tiles, dim), row-major over (bag, position)
        starts = torch.cumsum(n, 0) - n
        bag = torch.repeat_interleave(torch.arange(b_size), seq)  # bag of each packed token
        pos = torch.arange(int(seq.sum())) - torch.repeat_interleave(torch.cumsum(seq, 0) - seq, seq)
        grid_j = (pos - 1).clamp_min(0)  # position of a tile token in its bag's square grid
        tile = grid_j % n[bag]  # the valid tile a token copies (the square is filled cyclically)
        is_cls = pos == 0
        src = torch.where(is_cls, torch.zeros_like(tile), 1 + starts[bag] + tile).to(dev)
        toks = torch.cat([self.cls_token[0].to(h.dtype), h])[src]  # (tokens, dim)
        geo = {"pad": (bag * l_max + pos).to(dev), "b": b_size, "l": l_max,
               "keys": (torch.arange(l_max)[None] < seq[:, None]).to(dev),
               "cls": (torch.cumsum(seq, 0) - seq).to(dev)}
        toks = toks + self._attend(self.layer1, toks, geo)[0]
        feat = ~is_cls  # PPEG: bag b's s x s grid in the top-left corner of a zero s_max grid
        cell = (bag * s_max * s_max + (grid_j // side[bag]) * s_max + grid_j % side[bag])[feat].to(dev)
        grid = toks.new_zeros(b_size * s_max * s_max, toks.shape[1]).index_copy(0, cell, toks[feat.to(dev)])
        grid = grid.view(b_size, s_max, s_max, -1).permute(0, 3, 1, 2)
        grid = grid + _ppeg_conv(self.ppeg, grid)
        toks = toks.index_copy(0, _rows(feat).to(dev),
                               grid.permute(0, 2, 3, 1).reshape(-1, toks.shape[1])[cell])
        out, att = self._attend(self.layer2, toks, geo, cls_only=True)
        emb = self.norm(toks[geo["cls"]] + out)
        # class-token attention over tokens -> tiles (a tile's copies in the square add up)
        tok_att = att.reshape(-1)[geo["pad"]][feat.to(dev)]
        target = (bag * n_max)[feat] + _positions(mask)[(starts[bag] + tile)[feat]]
        tile_att = tok_att.new_zeros(b_size * n_max).index_add_(0, target.to(dev), tok_att)
        tile_att = tile_att.view(b_size, n_max)
        return emb, tile_att / tile_att.sum(1, keepdim=True).clamp_min(1e-12)

    @staticmethod
    def _attend(layer: TransLayer, toks: torch.Tensor, geo: dict, cls_only: bool = False):
        """``layer``'s attention branch (before the residual) on packed tokens: per-token
        projections packed, exact masked attention and the residual convolution padded.
        ``cls_only`` returns only the class tokens' outputs (B, dim) and their attention (B, L)."""
        attn = layer.attn
        inner = attn.heads * attn.dim_head
        b, l_max = geo["b"], geo["l"]
        normed = layer.norm(toks)
        w = attn.to_qkv.weight  # no bias: q, k, v are row blocks of one projection
        if cls_only:
            q = nn.functional.linear(normed[geo["cls"]], w[:inner])[:, None]  # (B, 1, inner)
            kv = nn.functional.linear(normed, w[inner:])
        else:
            qkv = attn.to_qkv(normed)
            q, kv = qkv[:, :inner], qkv[:, inner:]

        def padded(t: torch.Tensor) -> torch.Tensor:  # packed (T, inner) -> (B, heads, L, dh)
            full = t.new_zeros(b * l_max, t.shape[1]).index_copy(0, geo["pad"], t)
            return full.view(b, l_max, attn.heads, attn.dim_head).transpose(1, 2).float()

        k, v = padded(kv[:, :inner]), padded(kv[:, inner:])
        q = (q.reshape(b, 1, attn.heads, attn.dim_head).transpose(1, 2).float() if cls_only
             else padded(q)) * attn.scale
        scores = (q @ k.transpose(-1, -2)).masked_fill(~geo["keys"][:, None, None], float("-inf"))
        probs = torch.softmax(scores, -1)
        # zeros beyond each bag = the convolution's own zero padding
        out = probs @ v + _seq_conv(attn.res_conv.weight, v, rows=1 if cls_only else None)
        out = out.transpose(1, 2).reshape(b, -1, inner).to(toks.dtype)
        if cls_only:
            return attn.to_out(out[:, 0]), probs[:, :, 0].mean(1)
        return attn.to_out(out.reshape(b * l_max, inner)[geo["pad"]]), None

    def forward(self, x, mask=None, bag_labels=None) -> MILOutput:
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        n_max = int(mask.sum(1).max()) if mask.numel() else 0
        if not _FORCE_LOOP and 0 < n_max and math.ceil(math.sqrt(n_max)) ** 2 + 1 <= self.layer1.attn.m and bool(mask.any(1).all()):
            emb, att = self._packed(x, mask)
            return MILOutput(self.heads(emb), att.to(emb.dtype), emb, zero_loss(emb))
        embs, atts = [], []
        for b in range(x.shape[0]):
            valid = mask[b].nonzero().squeeze(1)
            emb, att = self._one(x[b, valid])
            full = torch.zeros(x.shape[1], device=x.device, dtype=att.dtype)
            atts.append(full.index_copy(0, valid, att))
            embs.append(emb)
        emb = torch.stack(embs)
        return MILOutput(self.heads(emb), torch.stack(atts), emb, zero_loss(emb))


def _seq_conv(weight: torch.Tensor, v: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """``nn.Conv2d(H, H, (K, 1), padding=(K // 2, 0), groups=H, bias=False)`` applied to ``v``
    (B, H, L, d) as a banded matrix product (H, rows, L) @ v; ``rows`` keeps the first outputs."""
    k, length = weight.shape[2], v.shape[2]
    d = torch.arange(length, device=v.device)[None] - torch.arange(rows or length, device=v.device)[:, None] + k // 2
    band = weight.view(weight.shape[0], k)[:, d.clamp(0, k - 1)] * ((d >= 0) & (d < k)).to(v.dtype)
    return band.to(v.dtype) @ v


def _ppeg_conv(ppeg: PPEG, grid: torch.Tensor) -> torch.Tensor:
    """Sum of PPEG's depthwise 7/5/3 convolutions as one convolution with the summed kernels."""
    big = max(c.kernel_size[0] for c in ppeg.convs)
    weight = sum(nn.functional.pad(c.weight, [(big - c.kernel_size[0]) // 2] * 4) for c in ppeg.convs)
    bias = sum(c.bias for c in ppeg.convs)
    return nn.functional.conv2d(grid, weight.to(grid.dtype), bias.to(grid.dtype), padding=big // 2,
                                groups=grid.shape[1])


def _rows(feat: torch.Tensor) -> torch.Tensor:
    """Row numbers of the packed tokens selected by boolean ``feat``."""
    return feat.nonzero().squeeze(1)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position within its bag (column of ``mask``) of every valid tile, row-major."""
    return mask.nonzero()[:, 1].cpu()
