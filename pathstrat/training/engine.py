"""The training step, evaluation and early-stopped fitting of one MIL model (reused by federated).

``train_one_epoch`` and ``evaluate`` are plain functions over a model, a loader of padded bags
and a :class:`~pathstrat.mil.losses.MultiTaskLoss`; ``fit`` adds AdamW, a cosine or one-cycle
schedule and early stopping on a validation loader (restoring the best weights).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pathstrat.errors import ConfigError, TrainingDivergedError
from pathstrat.mil.losses import MultiTaskLoss, bag_labels
from pathstrat.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class TrainParams:
    """Optimisation settings of one fit."""

    epochs: int = 30
    lr: float = 2e-4
    weight_decay: float = 1e-2
    schedule: str = "constant"  # constant | cosine | onecycle
    patience: int = 8
    grad_clip: float | None = 1.0
    device: str = "cpu"
    amp: bool = True  # used on CUDA only (bfloat16 autocast)
    where: str = ""  # "repeat 0 fold 3" in error messages
    max_padding: float | None = None  # split batches padding above this (see forward_grouped)
    progress: bool = True  # a bar over epochs on a terminal (nothing off a terminal)


@dataclass
class EvalResult:
    """Outputs of :func:`evaluate`: bag indices, raw head outputs, loss, per-bag attention."""

    index: np.ndarray
    outputs: dict[str, np.ndarray]
    loss: float
    attention: list[np.ndarray] = field(default_factory=list)
    attention_branches: list[np.ndarray | None] = field(default_factory=list)
    branch_names: list[str] | None = None  # per-target attention branches (head names)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU runs are then bit-reproducible)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _autocast(device: str, amp: bool):
    if amp and str(device).startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _first_labels(loss_fn: MultiTaskLoss, targets: dict[str, torch.Tensor], device):
    first = next(iter(loss_fn.losses.values()))
    lab = bag_labels(first.spec, targets[first.spec.name])
    return None if lab is None else lab.to(device)


_FIX = ("Check the features for NaN/inf values, lower `lr`, or keep `grad_clip` (default 1.0); "
        "nothing of this fold was saved.")


def _where(where: str) -> str:
    return f"{where}, " if where else ""


def length_groups(lengths: list[int], max_padding: float) -> list[list[int]]:
    """Split one batch (tile counts ``lengths``) into groups, longest first, so each group's
    padded size (members x longest) is at most ``max_padding`` x its unpadded size."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) + 1) * lengths[cur[0]] > max_padding * (sum(lengths[j] for j in cur) + lengths[i]):
            groups.append(cur)
            cur = []
        cur.append(i)
    return [*groups, cur] if cur else groups


#: Padding (tile slots x feature dim) a batch must waste before it is split into length groups:
#: below it, extra forward passes cost more than the padded compute they save (measured on CPU,
#: 8 bags of 3-40 tiles: grouping made TransMIL epochs 1.5x slower, ABMIL no faster).
MIN_GROUP_SAVING = 1 << 22


def should_group(lengths: list[int], dim: int, max_padding: float | None) -> bool:
    """True when a batch of ``lengths`` pads above ``max_padding`` x its unpadded compute and
    the padding is worth at least :data:`MIN_GROUP_SAVING` values."""
    if max_padding is None or len(lengths) < 2:
        return False
    padded, real = len(lengths) * max(lengths), sum(lengths)
    return padded > max_padding * real and (padded - real) * dim >= MIN_GROUP_SAVING


def forward_grouped(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, lengths: list[int],
                    bag_labels: torch.Tensor | None, max_padding: float | None):
    """``model(x, mask)`` -> ``(logits, aux_loss)``, run on groups of similar length when the
    batch pads to more than ``max_padding`` x its unpadded compute and that padding is large
    (:func:`should_group`; batch of one where padding dominates). Each bag's logits do not depend on the other bags of its forward pass, so the
    logits (and the loss computed once on the whole batch, e.g. a Cox risk set) are those of the
    padded batch; the auxiliary loss is the group-size weighted mean of the groups' (CLAM's
    per-bag instance-loss mean). ``lengths`` are the bags' tile counts (tiles first, as
    :func:`~pathstrat.training.data.collate_bags` pads)."""
    b = len(lengths)
    if not should_group(lengths, x.shape[-1], max_padding):
        out = model(x, mask, bag_labels=bag_labels)
        return out.logits, out.aux_loss
    groups = length_groups(lengths, max_padding)
    logits: dict[str, list[torch.Tensor]] = {}
    aux = x.new_zeros(())
    for g in groups:
        idx = torch.as_tensor(g, device=x.device)
        n = lengths[g[0]]
        out = model(x[idx, :n], mask[idx, :n], bag_labels=None if bag_labels is None else bag_labels[idx])
        for k, v in out.logits.items():
            logits.setdefault(k, []).append(v)
        aux = aux + out.aux_loss.float() * (len(g) / b)
    rows = [i for g in groups for i in g]  # bag of each concatenated row
    inv = torch.as_tensor([rows.index(i) for i in range(b)], device=x.device)
    return {k: torch.cat(v)[inv] for k, v in logits.items()}, aux


def train_one_epoch(model: nn.Module, loader, loss_fn: MultiTaskLoss,
                    optimizer: torch.optim.Optimizer, *, scheduler=None, device: str = "cpu",
                    amp: bool = False, grad_clip: float | None = None, where: str = "",
                    collect: dict[str, list] | None = None, max_padding: float | None = None) -> float:
    """One pass over ``loader``; returns the mean total loss (task losses + model aux loss).

    A non-finite loss or gradient norm, or non-finite weights after the epoch, raise
    :class:`~pathstrat.errors.TrainingDivergedError` naming ``where`` and the step. ``collect`` (a dict)
    receives the training-mode outputs (``index``, ``logits``) for a per-epoch training metric.
    ``max_padding`` (e.g. 1.2) runs a batch padding above it as groups of similar length
    (:func:`forward_grouped`); None runs every batch padded.
    """
    model.train()
    total, n = 0.0, 0
    non_blocking = str(device).startswith("cuda")
    for step, batch in enumerate(loader):
        x = batch["x"].to(device, non_blocking=non_blocking)
        mask = batch["mask"].to(device, non_blocking=non_blocking)
        targets = {k: v.to(device, non_blocking=non_blocking) for k, v in batch["targets"].items()}
        lengths = batch["mask"].sum(1).tolist()
        with _autocast(device, amp):
            raw, aux = forward_grouped(model, x, mask, lengths, _first_labels(loss_fn, targets, device),
                                       max_padding)
        logits = {k: v.float() for k, v in raw.items()}
        loss, _ = loss_fn(logits, targets)
        loss = loss + aux.float()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDivergedError(f"{_where(where)}step {step}: the training loss is {value}. {_FIX}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            norm = float(nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
            if not math.isfinite(norm):
                raise TrainingDivergedError(f"{_where(where)}step {step}: the gradient norm is {norm}. {_FIX}")
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if collect is not None:
            collect.setdefault("index", []).append(batch["index"].numpy())
            for k, v in logits.items():
                collect.setdefault(k, []).append(v.detach().cpu())
        total += value * x.shape[0]
        n += x.shape[0]
    check_finite_weights(model, where)
    return total / max(n, 1)


def check_finite_weights(model: nn.Module, where: str = "") -> None:
    """Raise :class:`TrainingDivergedError` when any parameter or buffer of ``model`` is NaN or inf."""
    bad = [k for k, v in model.state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingDivergedError(f"{_where(where)}non-finite weights in {', '.join(bad[:3])}"
                             f"{f' (+{len(bad) - 3} more)' if len(bad) > 3 else ''}. {_FIX}")


@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn: MultiTaskLoss | None = None, *,
             device: str = "cpu", amp: bool = False, keep_attention: bool = False) -> EvalResult:
    """Whole-bag inference; the loss is computed once over all bags (a Cox risk set needs them)."""
    model.eval()
    idx, outs, targets = [], {}, {}
    atts, branches, names = [], [], None
    for batch in loader:
        x, mask = batch["x"].to(device), batch["mask"].to(device)
        with _autocast(device, amp):
            out = model(x, mask)
        idx.append(batch["index"].cpu().numpy())
        for k, v in out.logits.items():
            outs.setdefault(k, []).append(v.float().cpu())
        for k, v in batch["targets"].items():
            targets.setdefault(k, []).append(v.cpu())
        if keep_attention:
            m = batch["mask"].cpu().numpy()
            a = out.attention.float().cpu().numpy()
            ab = None if out.attention_branches is None else out.attention_branches.float().cpu().numpy()
            names = names or out.branch_names
            for i in range(len(m)):
                atts.append(a[i, m[i]])
                branches.append(None if ab is None else ab[i][:, m[i]])
    logits = {k: torch.cat(v) for k, v in outs.items()}
    index = np.concatenate(idx) if idx else np.zeros(0, int)
    order = _dataset_order(loader, index)  # length-sorted batches back in the dataset's order
    if order is not None:
        index, atts, branches = index[order], [atts[i] for i in order] if atts else atts, \
            [branches[i] for i in order] if branches else branches
        t_order = torch.as_tensor(order)
        logits = {k: v[t_order] for k, v in logits.items()}
        targets = {k: [torch.cat(v)[t_order]] for k, v in targets.items()}
    loss = float("nan")
    if loss_fn is not None and targets:
        loss = float(loss_fn(logits, {k: torch.cat(v) for k, v in targets.items()})[0])
    return EvalResult(index, {k: v.numpy() for k, v in logits.items()}, loss, atts, branches, names)


def _dataset_order(loader, index: np.ndarray) -> np.ndarray | None:
    """Permutation putting ``index`` (bags in loader order) in the order of the loader's
    dataset (``BagDataset.indices``); None when already in that order or not applicable."""
    ds_idx = getattr(getattr(loader, "dataset", None), "indices", None)
    if ds_idx is None or len(ds_idx) != len(index) or len(set(ds_idx.tolist())) != len(ds_idx):
        return None
    pos = {int(b): i for i, b in enumerate(ds_idx)}
    if any(int(b) not in pos for b in index):
        return None
    order = np.argsort([pos[int(b)] for b in index], kind="stable")
    return None if np.array_equal(order, np.arange(len(order))) else order


def make_optimizer(model: nn.Module, params: TrainParams, steps_per_epoch: int):
    """AdamW plus a per-step scheduler (cosine annealing, one-cycle or none).

    ``foreach``: torch picks the per-tensor Python loop on CPU; the multi-tensor kernels give
    bit-identical weights and cut a TransMIL (2.2M parameters, 25 tensors) step from 17 to 12 ms
    on one CPU thread (docs/mil.md)."""
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay,
                            foreach=True)
    total = max(1, params.epochs * max(1, steps_per_epoch))
    if params.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=params.lr * 0.01)
    elif params.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=params.lr, total_steps=total)
    elif params.schedule == "constant":
        sched = None
    else:
        raise ConfigError(f"Schedule '{params.schedule}' unknown; use cosine, onecycle or constant.")
    return opt, sched


def fit(model: nn.Module, train_loader, val_loader, loss_fn: MultiTaskLoss,
        params: TrainParams, *,
        metric_fn: Callable[[np.ndarray, dict[str, np.ndarray]], float] | None = None,
        ) -> list[dict[str, Any]]:
    """Train with early stopping on the validation loss; the best epoch's weights are restored.

    Without a validation loader the model trains for ``params.epochs`` epochs. Each history row
    holds ``epoch, train_loss`` and, when a validation loader is given, ``val_loss``; with
    ``metric_fn(index, outputs) -> float`` also ``train_metric`` (training-mode outputs of the
    epoch) and ``val_metric``.
    """
    device = params.device
    model.to(device)
    loss_fn.to(device)
    opt, sched = make_optimizer(model, params, len(train_loader))
    history: list[dict[str, Any]] = []
    bar = Progress(params.epochs, params.where or "training", unit="epoch", bar_only=True,
                   enable_bar=None if params.progress else False)
    try:
        _fit_epochs(model, train_loader, val_loader, loss_fn, params, metric_fn, opt, sched, history, bar)
    finally:
        bar.close()
    return history


def _fit_epochs(model, train_loader, val_loader, loss_fn, params, metric_fn, opt, sched, history,
                bar) -> None:
    """The epochs of :func:`fit` (appends to ``history``; restores the best weights)."""
    device = params.device
    best, best_state, bad = float("inf"), None, 0
    for epoch in range(params.epochs):
        where = f"{params.where}, epoch {epoch}" if params.where else f"epoch {epoch}"
        collect: dict[str, list] | None = {} if metric_fn is not None else None
        tr = train_one_epoch(model, train_loader, loss_fn, opt, scheduler=sched, device=device,
                             amp=params.amp, grad_clip=params.grad_clip, where=where,
                             collect=collect, max_padding=params.max_padding)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": tr}
        if collect:
            row["train_metric"] = metric_fn(np.concatenate(collect.pop("index")),
                                            {k: torch.cat(v).numpy() for k, v in collect.items()})
        if val_loader is not None:
            ev = evaluate(model, val_loader, loss_fn, device=device, amp=params.amp)
            val = ev.loss
            row["val_loss"] = val
            if metric_fn is not None:
                row["val_metric"] = metric_fn(ev.index, ev.outputs)
            if val < best - 1e-6 or best_state is None:
                best, bad = val, 0
                best_state = copy.deepcopy(model.state_dict())
                row["best"] = True
            else:
                bad += 1
        history.append(row)
        bar.update(1)
        log.debug("epoch %d: %s", epoch, row)
        if val_loader is not None and bad >= params.patience:
            log.debug("early stop after epoch %d (best val loss %.4f)", epoch, best)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
