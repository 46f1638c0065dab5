"""References the federated quality and deployment tests compare a federation with.

``external_auroc`` scores weights on patients no site trained on with sklearn (independent of
``pathstrat.metrics``); ``pooled_weights`` trains the same model on every site's patients in one
place, early-stopped on their held-out patients, with the federation's epoch budget.
"""

from __future__ import annotations

from pathlib import Path


def external_auroc(weights, fed, state, fdir, external: Path, target: str = "responder") -> float:
    """AUROC of ``target`` on the external manifest's patients (every patient scored)."""
    from sklearn.metrics import roc_auc_score

    from pathstrat.federated import SiteConfig
    from pathstrat.federated.site import LocalSite

    ext = LocalSite(SiteConfig(name="external", manifest=external, features_dir=fdir),
                    fed.model_copy(update={"holdout_fraction": 0.0}))
    _, scores, labels, _ = ext.predict(weights, state, "train")
    return float(roc_auc_score(labels[target], scores[target]))


def pooled_weights(fed, state, fdir, pooled_manifest) -> dict:
    """State dict of the model trained on the pooled patients of every site."""
    from pathstrat.federated import SiteConfig
    from pathstrat.federated.site import LocalSite, build_global_model, resolved_specs
    from pathstrat.mil.losses import make_loss
    from pathstrat.training.data import BagDataset, make_loader
    from pathstrat.training.engine import TrainParams, fit

    pooled = LocalSite(SiteConfig(name="pooled", manifest=pooled_manifest, features_dir=fdir), fed)
    specs = resolved_specs(fed, state)
    targets = pooled._targets(specs, state)
    model = build_global_model(fed, state)
    fit(model, make_loader(BagDataset(pooled.store, pooled.train_idx, targets, train=True, seed=0),
                           1, shuffle=True, seed=0),
        make_loader(BagDataset(pooled.store, pooled.eval_idx, targets), 1),
        make_loss(specs, state.target_states),
        TrainParams(epochs=fed.rounds * fed.local_epochs, lr=fed.lr, weight_decay=fed.weight_decay,
                    patience=8))
    return model.state_dict()
