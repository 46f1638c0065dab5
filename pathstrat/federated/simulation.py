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

from pathstrat.errors import ConfigError, ManifestError, import_optional
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
                            f"columns are {list(df.columns)}. Add it or pass `site_col`.")
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


def _inprocess_grid_cls():
    from flwr.serverapp import Grid

    class InProcessGrid(Grid):
        """Delivers each message to the ClientApp of its node in this process, one at a time.

        Same ServerApp, ClientApp (with its mods), strategies and Message objects as Flower's
        Simulation Runtime, without Ray: a copy of each message's content goes to the node, an
        exception in the ClientApp becomes an error reply. Fast and deterministic (tests).
        """

        delivers_directly = True  # rounds.exchange: no push/pull polling

        def __init__(self, client_app, n_nodes: int) -> None:
            from flwr.app import Context, RecordDict

            self.app = client_app
            self.nodes = {1000 + i: Context(run_id=1, node_id=1000 + i, node_config={
                "partition-id": i, "num-partitions": n_nodes}, state=RecordDict(), run_config={})
                for i in range(n_nodes)}
            from flwr.supercore.run import Run

            self._run = Run.create_empty(run_id=1)

        def set_run(self, run) -> None:
            self._run = run

        @property
        def run(self):
            return self._run

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            from flwr.app import Message

            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self):
            return list(self.nodes)

        def push_messages(self, messages):
            raise NotImplementedError("InProcessGrid delivers with send_and_receive only")

        def pull_messages(self, message_ids):
            raise NotImplementedError("InProcessGrid delivers with send_and_receive only")

        def send_and_receive(self, messages, *, timeout=None):
            import copy

            from flwr.app import Error, Message
            from flwr.common.constant import ErrorCode

            replies = []
            for msg in messages:
                node = msg.metadata.dst_node_id
                delivered = Message(copy.deepcopy(msg.content), node, msg.metadata.message_type,
                                    group_id=msg.metadata.group_id)
                try:
                    reply = self.app(delivered, self.nodes[node])
                except Exception as exc:  # noqa: BLE001 - a failing site becomes an error reply
                    log.warning("site node %d failed: %s", node, exc)
                    reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, str(exc)),
                                    reply_to=delivered)
                replies.append(reply)
            return replies

    return InProcessGrid


def simulate(fed: FederationConfig, sites: Sequence[SiteConfig], out_dir: str | os.PathLike, *,
             workers: int = 2, backend: str = "ray",
             extra_client_mods: Sequence[Any] = ()) -> dict[str, Any]:
    """Run the federation over ``sites``; returns the contents of ``federation.json``.

    ``backend="ray"``: Flower's Simulation Runtime (``run_simulation``; ``workers`` sites train in
    parallel, one CPU each). ``backend="inprocess"``: the same apps and messages delivered one site
    after the other in this process (no Ray start-up; for tests and debugging).
    """
    import_optional("flwr", "federated", "federated training")
    from flwr.simulation import run_simulation

    from pathstrat.federated.client import build_client_app
    from pathstrat.federated.server import build_server_app, run_federation

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fed.expected_sites is None:  # every simulated SuperNode is there from the start
        fed = fed.model_copy(update={"expected_sites": len(sites)})
    (out / "federation.json").unlink(missing_ok=True)
    client = build_client_app(sites, extra_mods=extra_client_mods)
    if backend == "inprocess":
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
        run_federation(_inprocess_grid_cls()(client, len(sites)), fed, out)
        return json.loads((out / "federation.json").read_text(encoding="utf-8"))
    if backend != "ray":
        raise ConfigError(f"Simulation backend '{backend}' unknown; use 'ray' or 'inprocess'.")
    server = build_server_app(fed, out)
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


def make_shifted_sites(manifest: str | os.PathLike, features_dir: str | os.PathLike,
                       out_dir: str | os.PathLike, *, prevalence: Mapping[str, float],
                       shift: float, n_train: int, n_test: int = 0, n_external: int = 0,
                       label: str = "responder", seed: int = 0) -> dict[str, Any]:
    """Sites with a planted site shift, drawn from one generated cohort (method development).

    Each site ``s`` gets ``n_train`` federation patients and ``n_test`` test patients with label
    prevalence ``prevalence[s]`` (patients drawn without replacement, one slide per patient),
    and a **feature shift**: every tile of its slides moves by ``shift`` along the site's own
    random unit direction (a scanner/stain offset). ``n_external`` further patients, balanced and
    unshifted, form an external test split. All feature files go to one folder
    (``<out>/features/<encoder>``; slide ids are unique). Returns ``{"sites": [SiteConfig],
    "site_tests": {site: manifest}, "external": manifest, "pooled": manifest of all sites'
    federation patients, "features_dir": folder, "directions": {site: unit vector}}``.
    """
    import numpy as np

    from pathstrat.cohort import read_table
    from pathstrat.features import read_bag, write_features
    from pathstrat.io import write_dataframe_atomic

    df = read_table(manifest)
    if df["patient_id"].duplicated().any():
        raise ManifestError(f"Manifest '{manifest}' has several slides per patient; "
                            "make_shifted_sites needs one slide per patient.")
    rng = np.random.default_rng(seed)
    pools = {v: list(rng.permutation(df.index[df[label] == v].to_numpy())) for v in (0, 1)}

    def draw(n: int, p: float) -> list[int]:
        k = int(round(n * p))
        if k > len(pools[1]) or n - k > len(pools[0]):
            raise ManifestError(f"Not enough patients in '{manifest}' for {n} with prevalence "
                                f"{p:.2f}; generate a larger cohort.")
        picked = [pools[1].pop() for _ in range(k)] + [pools[0].pop() for _ in range(n - k)]
        return list(rng.permutation(picked))

    out = Path(out_dir)
    fdir_in = Path(features_dir)
    first = read_bag(fdir_in / f"{df['slide_id'].iloc[0]}.h5")
    encoder = str(first.attrs.get("encoder_id", "features"))
    from pathstrat.layout import FeaturesLayout

    fdir = FeaturesLayout(out, encoder).features_dir
    fdir.mkdir(parents=True, exist_ok=True)
    dim = int(first.features.shape[1])

    def write(rows: list[int], offset) -> Any:
        sub = df.loc[rows].copy()
        paths = []
        for sid in sub["slide_id"].astype(str):
            bag = read_bag(fdir_in / f"{sid}.h5")
            feats = bag.features.astype(np.float32) + (0.0 if offset is None else offset)
            dest = fdir / f"{sid}.h5"
            write_features(dest, feats.astype(bag.features.dtype), bag.coords, bag.attrs)
            paths.append(str(dest))
        sub["path"] = paths
        return sub

    sites, tests, pooled, directions = [], {}, [], {}
    for name, p in prevalence.items():
        u = rng.standard_normal(dim).astype(np.float32)
        directions[name] = u / np.linalg.norm(u)
        offset = float(shift) * directions[name]
        train = write(draw(n_train, float(p)), offset)
        path = out / "sites" / _safe(name) / "manifest.csv"
        write_dataframe_atomic(path, train.assign(site=name))
        sites.append(SiteConfig(name=name, manifest=path, features_dir=fdir))
        pooled.append(train.assign(site=name))
        if n_test:
            tests[name] = out / "sites" / _safe(name) / "test.csv"
            write_dataframe_atomic(tests[name], write(draw(n_test, float(p)), offset).assign(site=name))
    result: dict[str, Any] = {"sites": sites, "site_tests": tests, "features_dir": fdir,
                              "directions": directions}
    import pandas as pd

    result["pooled"] = out / "pooled.csv"
    write_dataframe_atomic(result["pooled"], pd.concat(pooled, ignore_index=True))
    if n_external:
        result["external"] = out / "external.csv"
        write_dataframe_atomic(result["external"], write(draw(n_external, 0.5), None)
                               .assign(site="external"))
    return result
