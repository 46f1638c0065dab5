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
    # a run started from a package pins the pipeline: a cached site must be checked again
    from pathstrat.federated.site import SiteRefusedError

    pinned = {"encoder": {"encoder_id": "synthetic", "tile_px": None}, "tiling": {"tile_px": 256}}
    with pytest.raises(SiteRefusedError, match="tile_px"):
        client.load_site(site, run2.model_copy(update={"pinned_pipeline": pinned}))


def _fab(tmp_path, clientapp: str):
    """A Flower app bundle (FAB) as `pathstrat federated init-app` writes it, with ``clientapp``."""
    import hashlib

    from flwr.cli.build import build_fab_from_disk
    from flwr.common.config import get_metadata_from_config, get_project_config
    from flwr.supercore.fab import Fab
    from flwr.supercore.run import Run

    from pathstrat.cli import main

    cfg = tmp_path / "fed.yaml"
    cfg.write_text("federation:\n  model: abmil\n  encoder_id: uni\n  feature_dim: 1024\n"
                   "  targets: [{name: responder, kind: binary}]\n")
    app = tmp_path / f"app_{clientapp.split(':')[0].replace('.', '_')}"
    assert main(["federated", "init-app", str(app), "--config", str(cfg), "--address",
                 "127.0.0.1:8000", "--insecure"]) == 0
    toml = app / "pyproject.toml"
    toml.write_text(toml.read_text().replace("pathstrat.federated.clientapp:client_app", clientapp))
    content = build_fab_from_disk(app)
    fab_id, version = get_metadata_from_config(get_project_config(app))
    run = Run.create_empty(run_id=1)
    run.fab_id, run.fab_version = fab_id, version
    return run, Fab(hashlib.sha256(content).hexdigest(), content, {})


def test_site_executor_runs_only_the_pathstrat_client_app(tmp_path, monkeypatch):
    """A submitted app that names another ClientApp is refused before any of its code is loaded;
    the pathstrat app is installed and loaded once per FAB."""
    from flwr.clientapp import ClientApp

    from pathstrat.federated.siteexec import ForeignAppError, SiteExecutor

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr_home"))
    ex = SiteExecutor("127.0.0.1:1", insecure=True)
    run, fab = _fab(tmp_path, "pathstrat.federated.clientapp:client_app")
    app = ex._app_for(run, fab)
    assert isinstance(app, ClientApp) and ex._app_for(run, fab) is app
    evil_run, evil_fab = _fab(tmp_path, "os:system")
    with pytest.raises(ForeignAppError, match="names ClientApp 'os:system'"):
        ex._app_for(evil_run, evil_fab)
