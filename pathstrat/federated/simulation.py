"""Local simulation of K sites from one cohort split by a ``site`` column (method development, tests).

Each site gets its own manifest (the rows of its ``site`` value) and, optionally, its own
features folder; the real ServerApp and ClientApp then run under Flower's Simulation Runtime
(``flwr.simulation.run_simulation``, Ray actors), exchanging exactly the messages a deployment
would.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pathstrat.errors import ManifestError, import_optional
from pathstrat.federated.config import FederationConfig, SiteConfig

log = logging.getLogger(__name__)


def split_sites(manifest: str | os.PathLike, out_dir: str | os.PathLike, site_col: str = "site",
                features_dir: str | os.PathLike | None = None,
                site_features: Mapping[str, str | os.PathLike] | None = None,
                audit_dir: str | os.PathLike | None = None,
                drop_at_round: Mapping[str, int] | None = None) -> list[SiteConfig]:
    """Write ``<out>/sites/<site>/manifest.csv`` per site value; return the SiteConfigs (sorted)."""
    from pathstrat.cohort import load_manifest
    from pathstrat.io import write_dataframe_atomic

    df = load_manifest(manifest, check_files=False)
    if site_col not in df.columns:
        raise ManifestError(f"Manifest '{manifest}' has no '{site_col}' column to split sites by; "
                            f"columns are {list(df.columns)}. Add it or pass --site-col.")
    if df[site_col].isna().any():
        rows = (df.index[df[site_col].isna()] + 2).tolist()[:10]
        raise ManifestError(f"Column '{site_col}' is empty in manifest rows {rows}; every slide "
                            "needs a site.")
    per_patient = df.groupby("patient_id")[site_col].nunique()
    if (per_patient > 1).any():
        bad = per_patient[per_patient > 1].index.tolist()[:10]
        raise ManifestError(f"Patients {bad} appear at more than one site; a patient belongs to "
                            "one site.")
    sites = []
    default_features = Path(features_dir) if features_dir else None
    for name in sorted(df[site_col].astype(str).unique()):
        sub = df[df[site_col].astype(str) == name]
        path = Path(out_dir) / "sites" / _safe(name) / "manifest.csv"
        write_dataframe_atomic(path, sub)
        feats = (site_features or {}).get(name, default_features)
        if feats is None:
            raise ManifestError(f"No features folder for site '{name}'; pass features_dir.")
        sites.append(SiteConfig(name=name, manifest=path, features_dir=Path(feats),
                                audit_dir=Path(audit_dir) if audit_dir else None,
                                drop_at_round=(drop_at_round or {}).get(name)))
    return sites


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "site"


def simulate(fed: FederationConfig, sites: Sequence[SiteConfig], out_dir: str | os.PathLike, *,
             workers: int = 2, extra_client_mods: Sequence[Any] = ()) -> dict[str, Any]:
    """Run the federation over ``sites`` in-process; returns the contents of ``federation.json``.

    ``workers`` simulated sites train in parallel (one CPU each).
    """
    import_optional("flwr", "federated", "federated training")
    from flwr.simulation import run_simulation

    from pathstrat.federated.client import build_client_app
    from pathstrat.federated.server import build_server_app

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fed.expected_sites is None:  # every simulated SuperNode is there from the start
        fed = fed.model_copy(update={"expected_sites": len(sites)})
    (out / "federation.json").unlink(missing_ok=True)
    server = build_server_app(fed, out)
    client = build_client_app(sites, extra_mods=extra_client_mods)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": max(1, int(workers)), "include_dashboard": False,
                             "configure_logging": False}}
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # one CPU per simulated site: keep torch in each Ray worker from oversubscribing the cores
    os.environ.setdefault("PATHSTRAT_FL_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=server, client_app=client, num_supernodes=len(sites),
                       backend_config=backend)
    path = out / "federation.json"
    if not path.exists():
        from pathstrat.federated.server import FederationError

        raise FederationError(f"The simulated federation ended without writing {path}; see the "
                              "log above for the ServerApp error.")
    return json.loads(path.read_text(encoding="utf-8"))
