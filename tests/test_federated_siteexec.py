"""A long-running site process (pathstrat.federated.siteexec) serves message after message and run
after run: the site's data are loaded once, but each message uses its own run's configuration."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr", reason="needs the [federated] extra (pip install 'pathstrat[federated]')")


def test_site_store_is_reused_across_runs_with_each_runs_config(tmp_path, monkeypatch):
    from pathstrat.federated import FederationConfig, SiteConfig, client
    from pathstrat.testing import make_feature_cohort

    fdir, man = make_feature_cohort(tmp_path, n_patients=12, dim=8, seed=0, tasks=("binary",),
                                    tiles=(3, 5))
    monkeypatch.setattr(client, "_SITES", {})
    site = SiteConfig(name="A", manifest=man, features_dir=fdir)
    base = dict(targets=[{"name": "responder", "kind": "binary"}], encoder_id="synthetic",
                feature_dim=8, holdout_fraction=0.25)
    run1 = FederationConfig(model="abmil", hparams={"dim": 8}, lr=1e-3, max_tiles=64, **base)
    run2 = FederationConfig(model="meanpool", hparams={}, lr=5e-4, max_tiles=16, **base)
    first = client.load_site(site, run1)
    second = client.load_site(site, run2)
    assert second is first  # same data settings: the bags are not read again
    assert second.fed is run2 and second.fed.model == "meanpool" and second.fed.max_tiles == 16
    # other data settings (held-out fraction) need another store; at most two are kept
    third = client.load_site(site, run2.model_copy(update={"holdout_fraction": 0.5}))
    fourth = client.load_site(site, run2.model_copy(update={"seed": 7}))
    assert third is not first and fourth is not third
    assert len(client._SITES) == 2 and first not in client._SITES.values()
