"""Pooling and attention MIL models: mean/max pooling, ABMIL (plain, gated), CLAM-SB/MB, DSMIL.

All take ``x`` (B, N, D) and ``mask`` (B, N) bool and return :class:`MILOutput`. Hyperparameter
defaults follow the papers (512 projection, 256 attention hidden, dropout 0.25).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pathstrat.mil.base import (
    GatedAttention,
    Heads,
    MILOutput,
    masked_max,
    masked_mean,
    masked_softmax,
    projection,
    register_model,
    zero_loss,
)


def _full_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()


@register_model("meanpool", standard_mil=False, permutation_invariant=True,
                citation="Wang et al. 2018, Revisiting multiple instance neural networks (MI-Net, mean)",
                description="Projection then mean over tiles; uniform attention.",
                dim=512, dropout=0.25,
                test_hparams={"dim": 16})
class MeanPoolMIL(nn.Module):
    """Mean pooling baseline: every tile counts equally."""

    def __init__(self, in_dim: int, heads: dict[str, int], dim: int = 512, dropout: float = 0.25):
        super().__init__()
        self.proj = projection(in_dim, dim, dropout)
        self.heads = Heads(dim, heads)

    def forward(self, x, mask=None, bag_labels=None) -> MILOutput:
        mask = _full_mask(x, mask)
        h = self.proj(x)
        emb = masked_mean(h, mask)
        att = masked_softmax(torch.zeros(mask.shape, device=x.device), mask)
        return MILOutput(self.heads(emb), att, emb, zero_loss(emb))


@register_model("maxpool", standard_mil=True, permutation_invariant=True,
                citation="Wang et al. 2018, Revisiting multiple instance neural networks (mi-Net)",
                description="Instance-level logits, max over tiles (a bag is positive iff one tile is).",
                dim=512, dropout=0.25,
                test_hparams={"dim": 16})
class MaxPoolMIL(nn.Module):
    """mi-Net: score every tile with each head, bag logit = max over valid tiles.

    Because the bag score is a max of instance scores, evidence can only raise a bag's score: a
    tile seen only in negative bags cannot be learned as a "negative" signal (standard MIL).
    """

    def __init__(self, in_dim: int, heads: dict[str, int], dim: int = 512, dropout: float = 0.25):
        super().__init__()
        self.proj = projection(in_dim, dim, dropout)
        self.heads = Heads(dim, heads)

    def forward(self, x, mask=None, bag_labels=None) -> MILOutput:
        mask = _full_mask(x, mask)
        h = self.proj(x)
        inst = self.heads(h)  # head -> (B, N, n)
        logits = {k: masked_max(v, mask)[0] for k, v in inst.items()}
        first = inst[self.heads.names[0]][..., 0]
        att = masked_softmax(first, mask)
        emb = masked_max(h, mask)[0]
        return MILOutput(logits, att, emb, zero_loss(emb))


class _AttentionMIL(nn.Module):
    """ABMIL core shared by ABMIL and CLAM: projection, attention, attention-weighted sum."""

    def __init__(self, in_dim: int, heads: dict[str, int], dim: int, attn_dim: int,
                 dropout: float, gated: bool, n_branches: int = 1):
        super().__init__()
        self.proj = projection(in_dim, dim, dropout)
        self.attn = GatedAttention(dim, attn_dim, dropout, gated=gated, n_branches=n_branches)

    def pool(self, x: torch.Tensor, mask: torch.Tensor):
        h = self.proj(x)
        a = masked_softmax(self.attn(h).transpose(1, 2), mask.unsqueeze(1))  # (B, K, N)
        emb = torch.einsum("bkn,bne->bke", a.to(h.dtype), h)  # (B, K, E)
        return h, a, emb


ATTENTION_MODES = ("auto", "shared", "per_target")


def resolve_attention_mode(mode: str, heads: dict[str, int]) -> str:
    """``auto`` -> ``per_target`` for multi-head models, ``shared`` for one head."""
    if mode not in ATTENTION_MODES:
        from pathstrat.errors import ConfigError

        raise ConfigError(f"attention='{mode}' unknown; use one of {list(ATTENTION_MODES)}.")
    if mode == "auto":
        return "per_target" if len(heads) > 1 else "shared"
    return mode


@register_model("abmil", standard_mil=False, permutation_invariant=True,
                citation="Ilse, Tomczak & Welling 2018, Attention-based deep multiple instance learning",
                description="Attention-weighted sum of projected tiles (tanh attention); with several "
                            "heads one attention branch per target (attention='per_target').",
                dim=512, attn_dim=256, dropout=0.25, gated=False, attention="auto",
                test_hparams={"dim": 16, "attn_dim": 8})
class ABMIL(_AttentionMIL):
    """Attention MIL (Ilse et al. 2018); ``gated=True`` is the gated-attention variant.

    ``attention="per_target"`` gives every head its own attention branch (shared projection and
    hidden attention layer, one score vector per head, as in multi-branch CLAM): each head is
    scored from its own attention-pooled embedding, so the responder head can attend to other
    tiles than the biomarker or survival head. ``attention`` of the output is then the mean of
    the branches, ``attention_branches`` (B, H, N) the per-head maps in ``branch_names`` order.
    ``"shared"`` is the original single map; ``"auto"`` picks per_target for > 1 head.
    """

    def __init__(self, in_dim: int, heads: dict[str, int], dim: int = 512, attn_dim: int = 256,
                 dropout: float = 0.25, gated: bool = False, attention: str = "auto"):
        self.attention_mode = resolve_attention_mode(attention, heads)
        per_target = self.attention_mode == "per_target"
        super().__init__(in_dim, heads, dim, attn_dim, dropout, gated,
                         n_branches=len(heads) if per_target else 1)
        self.heads = Heads(dim, heads)
        self.branch_names = list(heads) if per_target else None

    def forward(self, x, mask=None, bag_labels=None) -> MILOutput:
        mask = _full_mask(x, mask)
        _, a, embs = self.pool(x, mask)  # a (B, K, N), embs (B, K, E)
        if self.branch_names is None:
            emb = embs[:, 0]
            return MILOutput(self.heads(emb), a[:, 0], emb, zero_loss(emb))
        logits = {k: self.heads.layers[k](embs[:, i]) for i, k in enumerate(self.branch_names)}
        emb = embs.mean(1)
        return MILOutput(logits, a.mean(1), emb, zero_loss(emb), attention_branches=a,
                         branch_names=list(self.branch_names))


@register_model("abmil_gated", standard_mil=False, permutation_invariant=True,
                citation="Ilse, Tomczak & Welling 2018, Attention-based deep multiple instance learning",
                description="ABMIL with gated attention tanh(Vh) * sigmoid(Uh); per-target branches "
                            "with several heads.",
                dim=512, attn_dim=256, dropout=0.25, gated=True, attention="auto",
                test_hparams={"dim": 16, "attn_dim": 8})
class GatedABMIL(ABMIL):
    """Gated-attention ABMIL (same class, different registered default)."""


class _CLAMBase(_AttentionMIL):
    """CLAM: gated attention + instance-level clustering on the top/bottom-k attended tiles.

    The clustering loss keys on the first head (a classification head): its class index comes
    from ``bag_labels`` in training, or from the model's own prediction when absent.
    """

    def __init__(self, in_dim, heads, dim, attn_dim, dropout, k_sample, aux_weight, subtyping,
                 multi_branch: bool):
        self.first = next(iter(heads))
        self.n_classes = max(2, int(heads[self.first]))
        super().__init__(in_dim, heads, dim, attn_dim, dropout, gated=True,
                         n_branches=self.n_classes if multi_branch else 1)
        self.k_sample, self.aux_weight, self.subtyping = int(k_sample), float(aux_weight), subtyping
        self.instance_classifiers = nn.ModuleList(nn.Linear(dim, 2) for _ in range(self.n_classes))

    def _classes(self, logits: torch.Tensor, bag_labels: torch.Tensor | None) -> torch.Tensor:
        pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
        if bag_labels is None:
            return pred.detach()
        lab = bag_labels.to(pred.device).long().view(-1)
        return torch.where(lab >= 0, lab, pred.detach())

    def instance_loss(self, h, a, mask, classes) -> torch.Tensor:
        """Mean CE of instance classifiers on pseudo-labelled top-k (1) and bottom-k (0) tiles.

        Without ``subtyping`` (the default) every bag contributes its own class only, and the
        whole batch is scored at once (:meth:`_instance_loss_batched`, the same value as the
        per-bag loop below up to the order of tied attention scores)."""
        if not self.subtyping:
            return self._instance_loss_batched(h, a, mask, classes)
        return self._instance_loss_loop(h, a, mask, classes)

    def _instance_loss_loop(self, h, a, mask, classes) -> torch.Tensor:
        """The per-bag reference (and the subtyping path: out-of-class bags add label-0 tiles)."""
        losses = []
        for b in range(h.shape[0]):
            valid = mask[b].nonzero().squeeze(1)
            k = min(self.k_sample, valid.numel() // 2)
            if k < 1:
                continue
            for c in range(self.n_classes):
                in_class = c == int(classes[b])
                if not in_class and not self.subtyping:
                    continue
                scores = a[b, c if a.shape[1] > 1 else 0, valid]
                order = torch.argsort(scores, descending=True)
                top, bottom = valid[order[:k]], valid[order[-k:]]
                clf = self.instance_classifiers[c]
                if in_class:
                    feats = torch.cat([h[b, top], h[b, bottom]])
                    target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(h.device)
                else:
                    feats, target = h[b, top], torch.zeros(k, dtype=torch.long, device=h.device)
                losses.append(F.cross_entropy(clf(feats).float(), target))
        if not losses:
            return self._no_instance_loss(h)
        return torch.stack(losses).mean()

    def _no_instance_loss(self, h) -> torch.Tensor:
        """Zero, still connected to the instance classifiers (no bag has two tiles)."""
        return zero_loss(h).float() + 0.0 * sum(p.sum() for p in self.instance_classifiers.parameters())

    def _instance_loss_batched(self, h, a, mask, classes) -> torch.Tensor:
        """:meth:`instance_loss` without subtyping for all bags at once: per bag b of class c,
        the mean CE of classifier c on its top-k (label 1) and bottom-k (label 0) tiles by
        branch c's attention (k = min(k_sample, tiles // 2)), averaged over bags with k >= 1.
        One top-k, one gather and one batched product instead of a loop over the bags: the loop
        was ~10% of a CLAM training step on small bags."""
        n = mask.sum(1)
        k = torch.clamp(n // 2, max=self.k_sample)  # (B,)
        used = k >= 1
        if not bool(used.any()):
            return self._no_instance_loss(h)
        kmax = int(k.max())
        classes = classes.long().view(-1)
        branch = classes if a.shape[1] > 1 else torch.zeros_like(classes)
        scores = a.gather(1, branch[:, None, None].expand(-1, 1, a.shape[2]))[:, 0].float()
        top = torch.topk(scores.masked_fill(~mask, float("-inf")), kmax, dim=1).indices
        bottom = torch.topk(scores.masked_fill(~mask, float("inf")), kmax, dim=1, largest=False).indices
        idx = torch.cat([top, bottom], dim=1)  # (B, 2 kmax)
        feats = h.gather(1, idx[..., None].expand(-1, -1, h.shape[2]))  # (B, 2 kmax, E)
        weight = torch.stack([c.weight for c in self.instance_classifiers])[classes]  # (B, 2, E)
        bias = torch.stack([c.bias for c in self.instance_classifiers])[classes]  # (B, 2)
        logits = (torch.bmm(feats, weight.transpose(1, 2)) + bias[:, None]).float()
        target = torch.cat([torch.ones_like(top), torch.zeros_like(bottom)], dim=1)
        ce = F.cross_entropy(logits.reshape(-1, 2), target.reshape(-1), reduction="none").view_as(target)
        slot = torch.arange(kmax, device=h.device)[None]
        keep = torch.cat([slot < k[:, None]] * 2, dim=1)  # a bag's first k of its kmax slots
        per_bag = (ce * keep).sum(1) / (2 * k).clamp_min(1)
        return per_bag[used].mean()


@register_model("clam_sb", standard_mil=False, permutation_invariant=True,
                citation="Lu et al. 2021, Data-efficient and weakly supervised computational pathology "
                         "on whole-slide images (CLAM), Nature Biomedical Engineering",
                description="Single-branch gated attention + instance clustering loss (top/bottom-k).",
                dim=512, attn_dim=256, dropout=0.25, k_sample=8, aux_weight=0.3, subtyping=False,
                test_hparams={"dim": 16, "attn_dim": 8, "k_sample": 2})
class CLAMSB(_CLAMBase):
    """CLAM single branch: one attention map shared by all classes."""

    def __init__(self, in_dim, heads, dim=512, attn_dim=256, dropout=0.25, k_sample=8,
                 aux_weight=0.3, subtyping=False):
        super().__init__(in_dim, heads, dim, attn_dim, dropout, k_sample, aux_weight, subtyping,
                         multi_branch=False)
        self.heads = Heads(dim, heads)

    def forward(self, x, mask=None, bag_labels=None) -> MILOutput:
        mask = _full_mask(x, mask)
        h, a, emb = self.pool(x, mask)
        emb = emb[:, 0]
        logits = self.heads(emb)
        aux = zero_loss(emb)
        if self.training:
            classes = self._classes(logits[self.first], bag_labels)
            aux = self.aux_weight * self.instance_loss(h, a, mask, classes)
        return MILOutput(logits, a[:, 0], emb, aux)


@register_model("clam_mb", standard_mil=False, permutation_invariant=True,
                citation="Lu et al. 2021, Data-efficient and weakly supervised computational pathology "
                         "on whole-slide images (CLAM), Nature Biomedical Engineering",
                description="One gated attention branch and bag classifier per class of the first "
                            "head + instance clustering loss.",
                dim=512, attn_dim=256, dropout=0.25, k_sample=8, aux_weight=0.3, subtyping=False,
                test_hparams={"dim": 16, "attn_dim": 8, "k_sample": 2})
class CLAMMB(_CLAMBase):
    """CLAM multi branch: class c is scored from its own attention-pooled embedding."""

    def __init__(self, in_dim, heads, dim=512, attn_dim=256, dropout=0.25, k_sample=8,
                 aux_weight=0.3, subtyping=False):
        super().__init__(in_dim, heads, dim, attn_dim, dropout, k_sample, aux_weight, subtyping,
                         multi_branch=True)
        self.n_first = int(heads[self.first])
        self.class_scores = nn.ModuleList(nn.Linear(dim, 1) for _ in range(self.n_classes))
        others = {k: v for k, v in heads.items() if k != self.first}
        self.heads = Heads(dim, others) if others else None

    def forward(self, x, mask=None, bag_labels=None) -> MILOutput:
        mask = _full_mask(x, mask)
        h, a, embs = self.pool(x, mask)  # a (B, K, N), embs (B, K, E)
        s = torch.cat([self.class_scores[c](embs[:, c]) for c in range(self.n_classes)], dim=1)
        first = s[:, 1:2] - s[:, 0:1] if self.n_first == 1 else s
        emb = embs.mean(1)
        logits = {self.first: first}
        if self.heads is not None:
            logits.update(self.heads(emb))
        aux = zero_loss(emb)
        if self.training:
            classes = self._classes(first, bag_labels)
            aux = self.aux_weight * self.instance_loss(h, a, mask, classes)
        return MILOutput(logits, a.mean(1), emb, aux, attention_branches=a)


@register_model("dsmil", standard_mil=False, permutation_invariant=True,
                citation="Li, Li & Eliceiri 2021, Dual-stream multiple instance learning network "
                         "for whole slide image classification with self-supervised contrastive "
                         "learning, CVPR",
                description="Max-instance stream + attention to the critical instance by distance.",
                dim=512, q_dim=128, dropout=0.25,
                test_hparams={"dim": 16, "q_dim": 8})
class DSMIL(nn.Module):
    """DSMIL: instance classifier picks a critical tile per output of the first head; every tile is
    weighted by the similarity of its query to the critical tile's query; the first head averages
    the max-instance and bag-stream logits."""

    def __init__(self, in_dim: int, heads: dict[str, int], dim: int = 512, q_dim: int = 128,
                 dropout: float = 0.25):
        super().__init__()
        self.first = next(iter(heads))
        self.n_c = int(heads[self.first])
        self.proj = projection(in_dim, dim, dropout)
        self.inst = nn.Linear(dim, self.n_c)
        self.q = nn.Sequential(nn.Linear(dim, q_dim), nn.ReLU(), nn.Linear(q_dim, q_dim), nn.Tanh())
        self.v = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim))
        self.bag = nn.Linear(self.n_c * dim, self.n_c)  # = Conv1d(C, C, kernel=dim) of the paper
        others = {k: v for k, v in heads.items() if k != self.first}
        self.heads = Heads(dim, others) if others else None
        self.q_scale = 1.0 / math.sqrt(q_dim)

    def forward(self, x, mask=None, bag_labels=None) -> MILOutput:
        mask = _full_mask(x, mask)
        h = self.proj(x)
        inst = self.inst(h)  # (B, N, C)
        max_inst, crit = masked_max(inst, mask)  # (B, C)
        q = self.q(h)  # (B, N, Q)
        q_crit = torch.gather(q, 1, crit.unsqueeze(-1).expand(-1, -1, q.shape[-1]))  # (B, C, Q)
        scores = torch.einsum("bnq,bcq->bcn", q, q_crit) * self.q_scale
        a = masked_softmax(scores, mask.unsqueeze(1))  # (B, C, N)
        bag_embs = torch.einsum("bcn,bne->bce", a.to(h.dtype), self.v(h))  # (B, C, E)
        bag_logit = self.bag(bag_embs.flatten(1))
        emb = bag_embs.mean(1)
        logits = {self.first: 0.5 * (max_inst + bag_logit)}
        if self.heads is not None:
            logits.update(self.heads(emb))
        return MILOutput(logits, a.mean(1), emb, zero_loss(emb), attention_branches=a)
