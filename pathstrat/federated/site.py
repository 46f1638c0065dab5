"""One site's side of the federation: its data, its checks, its local training and evaluation.

A :class:`LocalSite` reads the site's own manifest and feature files once (through
``pathstrat.training.load_bags``), checks that they match the federation (encoder id and feature
dimension, label columns), splits patients into local training and held-out sets, and trains or
evaluates the global model with ``pathstrat.training.train_one_epoch`` / ``evaluate``. Everything it
returns is a model state or an aggregate: counts, histograms, metrics.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pathstrat.errors import (
    ConfigError,
    FeatureDimError,
    ManifestError,
    PathstratError,
    SchemaError,
)
from pathstrat.federated.config import FederationConfig, SiteConfig
from pathstrat.federated.stats import site_label_stats, time_grid

log = logging.getLogger(__name__)


class SiteRefusedError(PathstratError, ValueError):
    """A site's data does not match the federation (encoder, feature dimension, columns).

    ``public`` is the part of the message that may be sent to the coordinator (no paths, no ids);
    the full message stays in the site's log.
    """

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public


@dataclass
class GlobalState:
    """What the federation agreed before training: fold state and classes per head."""

    target_states: dict[str, dict[str, Any]]
    classes: dict[str, list[Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"target_states": self.target_states, "classes": self.classes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GlobalState:
        return cls(dict(d.get("target_states", {})), dict(d.get("classes", {})))


def resolved_specs(fed: FederationConfig, state: GlobalState | None) -> list:
    """TargetSpecs with agreed classes filled in (multiclass heads without declared classes)."""
    specs = fed.specs()
    for s in specs:
        if s.impl.categorical and not s.classes:
            s.classes = list((state.classes if state else {}).get(s.name, []))
            if not s.classes:
                raise ConfigError(f"Multiclass head '{s.name}' has no classes: declare them in the "
                                  "federation config or let the sites report them at join time.")
    return specs


def build_global_model(fed: FederationConfig, state: GlobalState) -> nn.Module:
    """The federation's MIL model (same seed everywhere, so every site starts identical)."""
    from pathstrat import mil

    torch.manual_seed(fed.seed)
    heads = {s.name: s.n_outputs for s in resolved_specs(fed, state)}
    return mil.build_model(fed.model, fed.feature_dim, heads, **fed.hparams)


def in_holdout(patient_id: str, seed: int, fraction: float) -> bool:
    """Deterministic per-patient held-out assignment (same answer at every site and centrally)."""
    h = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


class ProximalLoss(nn.Module):
    """FedProx: the task loss plus (mu/2) * ||w - w_global||^2 over the model's parameters.

    Wraps a MultiTaskLoss so that ``pathstrat.training.train_one_epoch`` trains with it unchanged.
    """

    def __init__(self, base: nn.Module, model: nn.Module, mu: float) -> None:
        super().__init__()
        self.base, self.model, self.mu = base, model, float(mu)
        self.losses = base.losses  # train_one_epoch reads the first head's spec from here
        self.anchor = [p.detach().clone() for p in model.parameters()]

    def forward(self, logits, targets):
        total, parts = self.base(logits, targets)
        prox = sum(((p - a) ** 2).sum() for p, a in zip(self.model.parameters(), self.anchor,
                                                           strict=True))
        return total + 0.5 * self.mu * prox, parts


class LocalSite:
    """A site's data, loaded once; the handlers of the ClientApp call into it."""

    def __init__(self, site: SiteConfig, fed: FederationConfig) -> None:
        from pathstrat.cohort import check_spec_targets, load_manifest
        from pathstrat.training.engine import resolve_device

        self.site, self.fed = site, fed
        self.device = resolve_device(site.device or fed.device)
        if not site.manifest.exists():
            raise SiteRefusedError(f"Site '{site.name}': manifest '{site.manifest}' does not exist.",
                                   f"Site '{site.name}': its manifest file does not exist.")
        df = load_manifest(site.manifest, check_files=False)
        self._check_columns(df)
        if fed.pinned_pipeline is not None:  # started from a package: its pinned pipeline only
            from pathstrat.sharing.federate import refuse_unpinned

            refuse_unpinned(fed, site.name, site.features_dir, df["slide_id"].astype(str).tolist())
        try:
            df = check_spec_targets(df, fed.specs(), source=f"site '{site.name}' manifest")
        except ManifestError as exc:
            raise SiteRefusedError(f"Site '{site.name}' cannot join: {exc}",
                                   f"Site '{site.name}' cannot join: its manifest has invalid "
                                   "labels, times or events (see the site's log).") from exc
        try:
            if site.cache_dir is not None:
                from pathstrat.federated.sitecache import load_cached_store

                store, _ = load_cached_store(site.manifest, df, site.features_dir, fed.level,
                                             site.cache_dir, lambda: self._load_bags(df))
            else:
                store = self._load_bags(df)
        except FeatureDimError as exc:  # features disagree among themselves
            raise SiteRefusedError(f"Site '{site.name}' cannot join: {exc}",
                                   f"Site '{site.name}' cannot join: its feature files disagree "
                                   "in encoder or dimension.") from exc
        self._check_features(store)
        self._check_finite(store, site.features_dir)
        self.store = store
        table = store.table
        if "split" in table.columns:
            held = table["split"].astype(str).str.lower().isin(["test", "heldout", "held-out"])
        else:
            held = table["patient_id"].astype(str).map(
                lambda p: in_holdout(p, fed.seed, fed.holdout_fraction))
        self.eval_idx = np.flatnonzero(held.to_numpy())
        self.train_idx = np.flatnonzero(~held.to_numpy())
        if len(self.train_idx) == 0:
            msg = (f"Site '{site.name}' has no training patients after holding out "
                   f"{fed.holdout_fraction:.0%}; add patients or lower holdout_fraction.")
            raise SiteRefusedError(msg, msg)
        log.info("site %s: %d training and %d held-out bags (encoder %s, dim %d)", site.name,
                 len(self.train_idx), len(self.eval_idx), store.encoder_id, store.dim)

    # --- checks ---------------------------------------------------------------------------
    def _check_columns(self, df) -> None:
        missing = sorted({c for s in self.fed.specs() for c in s.needed_columns} - set(df.columns))
        if missing:
            msg = (f"Site '{self.site.name}' cannot join: its manifest lacks the column(s) "
                   f"{missing} that the federation's heads need. Add them (empty = missing label).")
            raise SiteRefusedError(f"{msg} Manifest: {self.site.manifest}", msg)

    def _check_features(self, store) -> None:
        fed, name = self.fed, self.site.name
        if store.encoder_id != fed.encoder_id or store.dim != fed.feature_dim:
            msg = (f"Site '{name}' refuses to join: its features come from encoder "
                   f"'{store.encoder_id}' with dimension {store.dim}, but the federation trains on "
                   f"encoder '{fed.encoder_id}' with dimension {fed.feature_dim}. Re-embed this "
                   f"site's slides with `pathstrat embed --encoder {fed.encoder_id}` (same weights) "
                   "and point features-dir at that folder.")
            raise SiteRefusedError(msg, msg)

    def _load_bags(self, df):
        """All bags of the site; feature files that `read_bag` refuses as non-finite refuse the
        site (naming them in its log), any other unusable file stops it as before."""
        import re

        from pathstrat.io import FailureLog
        from pathstrat.training.data import load_bags

        failures = FailureLog(self.site.features_dir / ".site-failures.csv", "federated")
        store = load_bags(df, self.site.features_dir, level=self.fed.level, failures=failures)
        nonfinite = [r for r in failures.rows if r["error_type"] == "NonFiniteError"]
        other = [r for r in failures.rows if r["error_type"] != "NonFiniteError"]
        if other:
            raise SchemaError(f"Site '{self.site.name}': {other[0]['reason']}")
        if nonfinite:
            bad = []
            for r in nonfinite:
                m = re.search(r"(\d+ of \d+) tiles", r["reason"])
                bad.append(f"{r['path']} ({m.group(1) if m else '?'} tiles)")
            self._refuse_nonfinite(bad)
        return store

    def _refuse_nonfinite(self, bad: list[str]) -> None:
        """One refusal for non-finite features: files and tile counts in the site's log only."""
        fix = ("Re-embed those slides with `pathstrat embed` (or remove them from the manifest) "
               "before joining.")
        raise SiteRefusedError(
            f"Site '{self.site.name}' cannot join: {len(bad)} feature file(s) contain NaN or "
            f"infinite values: {'; '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}. {fix}",
            f"Site '{self.site.name}' cannot join: {len(bad)} of its feature files contain NaN "
            f"or infinite values (file names in the site's log). {fix}")

    def _check_finite(self, store, features_dir) -> None:
        """Refuse the site when any feature value is NaN or infinite (names file and tile count
        in the site's log; the coordinator only learns how many files are affected)."""
        bad: list[str] = []
        for b in store.bags:
            ok = finite_rows(b.features)
            if bool(ok.all()):
                continue
            for i, sid in enumerate(b.slide_ids):
                n = int((~ok[b.offsets[i]:b.offsets[i + 1]]).sum())
                if n:
                    bad.append(f"{features_dir}/{sid}.h5 ({n} of "
                               f"{b.offsets[i + 1] - b.offsets[i]} tiles)")
        if bad:
            self._refuse_nonfinite(bad)

    # --- join statistics --------------------------------------------------------------------
    def join_stats(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Counts and histograms of the training split (what the federation agrees on)."""
        edges = time_grid(self.fed.time_max, self.fed.time_grid_bins) if self.fed.time_max else None
        rows = self.store.table.iloc[self.train_idx]
        metrics: dict[str, Any] = {"n-train": len(self.train_idx), "n-eval": len(self.eval_idx)}
        config: dict[str, str] = {}
        for spec in self.fed.specs():
            m, c = site_label_stats(spec, rows, edges=edges)
            metrics.update(m)
            config.update(c)
        return metrics, config

    # --- training / evaluation -----------------------------------------------------------------
    def _targets(self, specs, state: GlobalState) -> dict[str, np.ndarray]:
        out = {}
        for s in specs:
            try:
                out[s.name] = s.encode(self.store.table, state.target_states.get(s.name))
            except ManifestError as exc:
                raise SiteRefusedError(f"Site '{self.site.name}': {exc}",
                                       f"Site '{self.site.name}': labels of head '{s.name}' do not "
                                       "match the federation's classes.") from exc
        return out

    def model(self, arrays: dict[str, torch.Tensor], state: GlobalState) -> nn.Module:
        model = build_global_model(self.fed, state)
        model.load_state_dict(arrays)
        return model.to(self.device)

    def train(self, arrays: dict[str, torch.Tensor], state: GlobalState, *, epochs: int,
              proximal_mu: float = 0.0, seed: int = 0,
              lr: float | None = None) -> tuple[dict[str, torch.Tensor], float]:
        """Local epochs from the global weights; returns the new weights and the mean loss.

        ``lr`` is the round's learning rate from the coordinator's schedule (default ``fed.lr``).
        A non-finite loss or weight raises :class:`SiteRefusedError` (never sent to the server).
        """
        from pathstrat.mil.losses import make_loss
        from pathstrat.training.data import BagDataset, make_loader
        from pathstrat.training.engine import train_one_epoch

        fed = self.fed
        specs = resolved_specs(fed, state)
        model = self.model(arrays, state)
        loss_fn: nn.Module = make_loss(specs, state.target_states)
        if proximal_mu > 0:
            loss_fn = ProximalLoss(loss_fn, model, proximal_mu)
        loss_fn.to(self.device)
        ds = BagDataset(self.store, self.train_idx, self._targets(specs, state),
                        max_tiles=fed.max_tiles, train=True, seed=seed)
        loader = make_loader(ds, fed.batch_size, shuffle=True, seed=seed)
        opt = torch.optim.AdamW(model.parameters(), lr=float(lr or fed.lr),
                                weight_decay=fed.weight_decay)
        torch.manual_seed(seed)
        loss = float("nan")
        for epoch in range(epochs):
            loss = train_one_epoch(model, loader, loss_fn, opt, device=self.device)
            if not np.isfinite(loss):
                msg = (f"Site '{self.site.name}': local training gave a non-finite loss ({loss}) in "
                       f"epoch {epoch + 1}; the update is not sent. Lower the federation's lr or "
                       "check this site's features (`pathstrat federated check-site`).")
                raise SiteRefusedError(msg, msg)
        new = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        bad = [k for k, v in new.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            msg = (f"Site '{self.site.name}': local training gave non-finite weights ({bad[:3]}); "
                   "the update is not sent. Lower the federation's lr.")
            raise SiteRefusedError(msg, msg)
        return new, loss

    def predict(self, arrays: dict[str, torch.Tensor], state: GlobalState, which: str = "eval"):
        """(table rows, {head: scores}, {head: encoded labels}, loss) of one split."""
        from pathstrat.mil.losses import make_loss
        from pathstrat.training.data import BagDataset, make_loader
        from pathstrat.training.engine import evaluate

        specs = resolved_specs(self.fed, state)
        idx = self.eval_idx if which == "eval" else self.train_idx
        targets = self._targets(specs, state)
        model = self.model(arrays, state)
        loader = make_loader(BagDataset(self.store, idx, targets), 1, shuffle=False)
        res = evaluate(model, loader, make_loss(specs, state.target_states) if len(idx) else None,
                       device=self.device)
        scores = {s.name: s.decode_with_state(res.outputs[s.name], state.target_states.get(s.name, {}))
                  for s in specs} if len(idx) else {}
        labels = {s.name: targets[s.name][res.index] for s in specs}
        return self.store.table.iloc[res.index], scores, labels, res.loss

    def evaluate(self, arrays: dict[str, torch.Tensor], state: GlobalState) -> dict[str, Any]:
        """Metrics of the global model on this site's held-out patients (aggregates only)."""
        specs = resolved_specs(self.fed, state)
        rows, scores, labels, loss = self.predict(arrays, state, "eval")
        if len(self.eval_idx) and not np.isfinite(loss):
            msg = (f"Site '{self.site.name}': the global model gives a non-finite held-out loss "
                   f"({loss}); nothing is reported for this round.")
            raise SiteRefusedError(msg, msg)
        # NaN (never 0.0) when there is nothing to evaluate: the aggregate skips non-finite values
        out: dict[str, Any] = {"num-examples": len(self.eval_idx),
                               "eval-loss": float(loss) if len(self.eval_idx) else float("nan")}
        for s in specs:
            out.update(head_metrics(s, rows, scores.get(s.name), labels[s.name], self.fed.score_bins))
        return out


def finite_rows(features: torch.Tensor) -> np.ndarray:
    """Per tile: True when all its feature values are finite (bit test for float16/32: an
    all-ones exponent is inf or NaN; fast on memory-mapped CPU arrays)."""
    a = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if a.dtype == np.float16:
        return ((a.view(np.uint16) & 0x7C00) != 0x7C00).all(axis=1)
    if a.dtype == np.float32:
        return ((a.view(np.uint32) & 0x7F800000) != 0x7F800000).all(axis=1)
    return np.isfinite(a).all(axis=1)


def head_metrics(spec, rows, score, y, score_bins: int) -> dict[str, Any]:
    """Fixed keys per head (``<head>.<metric>`` plus ``<head>.n``, as the head's kind defines
    them in :mod:`pathstrat.mil.kinds`); NaN where undefined."""
    if score is None:
        score = np.zeros((0,))
    return spec.impl.federated_metrics(spec, rows, score, y, score_bins)


def check_site(site: SiteConfig, fed: FederationConfig) -> dict[str, Any]:
    """Run a site's join checks locally (before starting its SuperNode); raises SiteRefusedError.

    Returns the aggregate statistics the site would share when joining.
    """
    local = LocalSite(site, fed)
    stats, names = local.join_stats()
    return {"site": site.name, "encoder_id": local.store.encoder_id, "feature_dim": local.store.dim,
            **stats, **names}
