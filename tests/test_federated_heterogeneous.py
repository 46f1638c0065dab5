"""Heterogeneous sites (issue 13): FedProx's proximal term against a hand computation, and per-site
fine-tuning after federation on sites with a planted shift (label prevalence 0.1 vs 0.9 and a
per-site feature offset, pathstrat.federated.simulation.make_shifted_sites). The measured
comparison FedAvg / FedProx / local-only / pooled is `scripts/bench_federated.py --heterogeneous`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("flwr", reason="needs the [federated] extra (pip install 'pathstrat[federated]')")


class _ZeroLoss(nn.Module):
    """A task loss that is 0 with no gradient: leaves only the proximal term."""

    losses = ()

    def forward(self, logits, targets):
        return logits.sum() * 0.0, {}


def test_proximal_term_equals_hand_computation_and_its_gradient():
    from pathstrat.federated.site import ProximalLoss

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    anchor = [p.detach().numpy().copy() for p in model.parameters()]
    mu = 0.37
    prox = ProximalLoss(_ZeroLoss(), model, mu)
    rng = np.random.default_rng(1)
    deltas = [rng.normal(size=a.shape).astype(np.float32) for a in anchor]
    with torch.no_grad():  # the local model moves away from the global one
        for p, d in zip(model.parameters(), deltas, strict=True):
            p.add_(torch.from_numpy(d))
    total, _ = prox(model(torch.ones(2, 4)), None)
    want = 0.5 * mu * sum(float((d.astype(np.float64) ** 2).sum()) for d in deltas)
    assert float(total.detach()) == pytest.approx(want, rel=1e-5)
    total.backward()  # d/dw (mu/2)||w - w_global||^2 = mu (w - w_global)
    for p, d in zip(model.parameters(), deltas, strict=True):
        np.testing.assert_allclose(p.grad.numpy(), mu * d, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def shifted_federation(tmp_path_factory):
    from pathstrat.federated import FederationConfig, simulate
    from pathstrat.federated.simulation import make_shifted_sites
    from pathstrat.testing import make_feature_cohort

    out = tmp_path_factory.mktemp("fedhet")
    fdir, man = make_feature_cohort(out / "pool", n_patients=200, dim=16, seed=0, tasks=("binary",),
                                    tiles=(4, 8), strength=2.5, signal_fraction=0.3)
    het = make_shifted_sites(man, fdir, out / "het", prevalence={"A": 0.1, "B": 0.9}, shift=3.0,
                             n_train=80, seed=0)
    fed = FederationConfig(model="abmil", hparams={"dim": 8},
                           targets=[{"name": "responder", "kind": "binary"}], encoder_id="synthetic",
                           feature_dim=16, rounds=3, local_epochs=1, lr=1e-3, holdout_fraction=0.4)
    summary = simulate(fed, het["sites"], out / "run", backend="inprocess")
    return het, fed, summary, out


def test_planted_shift_sites_have_their_prevalence_and_offset(shifted_federation):
    from pathstrat.cohort import read_table
    from pathstrat.features import read_bag

    het, _, _, _ = shifted_federation
    means = {}
    for site, p in zip(het["sites"], (0.1, 0.9), strict=True):
        df = read_table(site.manifest)
        assert len(df) == 80 and df["responder"].mean() == pytest.approx(p)
        feats = np.concatenate([read_bag(path).features.astype(np.float64) for path in df["path"]])
        means[site.name] = feats.mean(axis=0)
    # the two sites' mean tiles differ by about 3 * (u_A - u_B) (Gaussian background, mean 0)
    want = 3.0 * (het["directions"]["A"] - het["directions"]["B"])
    got = means["A"] - means["B"]
    assert np.linalg.norm(got - want) < 0.35 * np.linalg.norm(want)


def test_finetuning_at_a_shifted_site_lowers_its_heldout_loss(shifted_federation):
    """After 3 FedAvg rounds the global model fits neither site's prevalence; 3 epochs of
    `pathstrat federated finetune` at each site lower that site's held-out log loss (computed here
    with sklearn on the site's held-out patients, and as reported in finetune.json)."""
    from safetensors.torch import load_file
    from sklearn.metrics import log_loss

    from pathstrat.federated import finetune_site
    from pathstrat.federated.site import GlobalState, LocalSite

    het, fed, summary, out = shifted_federation
    state = GlobalState.from_dict(summary["agreed"])
    before_w = load_file(str(out / "run" / "checkpoints" / "fold0.safetensors"))
    for site in het["sites"]:
        res = finetune_site(out / "run", site, out / f"ft_{site.name}", epochs=3, seed=0)
        after_w = load_file(str(out / f"ft_{site.name}" / "checkpoints" / "fold0.safetensors"))
        local = LocalSite(site, fed)
        losses = []
        for w in (before_w, after_w):
            _, scores, labels, _ = local.predict(w, state, "eval")
            p = np.clip(np.asarray(scores["responder"], float), 1e-7, 1 - 1e-7)
            losses.append(log_loss(np.asarray(labels["responder"], float), p, labels=[0, 1]))
        assert losses[1] < 0.9 * losses[0], (site.name, losses)
        assert res["after"]["eval-loss"] < res["before"]["eval-loss"]
        assert res["before"]["num-examples"] == len(local.eval_idx) >= 20
