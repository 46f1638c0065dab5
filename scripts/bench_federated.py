"""Benchmark: federated wall time against the same local epochs run in one process.

Generates a feature cohort split into ``--sites`` sites, then measures:

* **local**: in one process with every site's data loaded once, for each round and site the
  same local training epochs and held-out evaluation the federation runs (the compute floor);
* **federated**: the whole federation, either ``--mode inprocess`` (the real ServerApp/ClientApp
  and Flower messages delivered in this process: message, aggregation and selection cost) or
  ``--mode deployment`` (SuperLink + one SuperNode per site as separate processes on localhost,
  ``flwr run``; each message runs in a fresh ClientApp process, as in a real deployment);
* **site load**: a fresh process loading one site's store from its feature files (cold) and
  from the memory-mapped site cache (what every ClientApp process after the first does).

Prints one JSON object: seconds, the ratio federated / local, and the overhead per round
((federated - local) / rounds). Usage:
``python scripts/bench_federated.py [--mode deployment] [--rounds 3] [--patients 150]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOAD_CODE = """
import sys, time
t0 = time.perf_counter()
from pathlib import Path
from pathstrat.federated import FederationConfig, SiteConfig
from pathstrat.federated.site import LocalSite
import h5py, pathstrat.cohort, pathstrat.features, pathstrat.training.data  # imports apart
fed = FederationConfig.from_json(Path(sys.argv[1]).read_text())
cache = None if sys.argv[4] == "-" else Path(sys.argv[4])
t1 = time.perf_counter()
LocalSite(SiteConfig(name="s", manifest=Path(sys.argv[2]), features_dir=Path(sys.argv[3]),
                     cache_dir=cache), fed)
print(time.perf_counter() - t1, t1 - t0)
"""


def _site_load(fed_json: Path, manifest: Path, fdir: Path, cache: Path | None) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LOAD_CODE, str(fed_json), str(manifest), str(fdir),
                          str(cache) if cache else "-"], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    return {"process_s": round(time.perf_counter() - t0, 3), "load_s": round(float(out[0]), 3),
            "imports_s": round(float(out[1]), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["inprocess", "deployment"], default="inprocess")
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--patients", type=int, default=150, help="training patients in all sites")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--tiles", type=int, nargs=2, default=(200, 400))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--model", default="abmil")
    ap.add_argument("--evaluate-with-train", action="store_true",
                    help="held-out metrics inside the next train message (one message per round)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder)")
    ap.add_argument("--load-only", action="store_true", help="only the fresh-process site load "
                    "(cold vs cached), e.g. with --tiles 4000 6000 --dim 1024")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import numpy as np
    import pandas as pd
    import torch

    from pathstrat.federated import FederationConfig, SiteConfig, simulate
    from pathstrat.federated.selection import lr_for_round
    from pathstrat.federated.server import agree
    from pathstrat.federated.site import LocalSite, build_global_model
    from pathstrat.testing import make_feature_cohort

    torch.set_num_threads(1)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_fed_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fdir, man = make_feature_cohort(work / "cohort", n_patients=args.patients, dim=args.dim, seed=0,
                                    tasks=("binary",), tiles=tuple(args.tiles), strength=2.5,
                                    signal_fraction=0.3)
    gen_s = time.perf_counter() - t0
    df = pd.read_csv(man)
    names = [chr(ord("A") + i) for i in range(args.sites)]
    df["site"] = np.array(names)[np.arange(len(df)) % args.sites]
    manifests = {}
    for s in names:
        manifests[s] = work / f"site{s}.csv"
        df[df["site"] == s].to_csv(manifests[s], index=False)
    fed = FederationConfig(model=args.model, hparams={"dim": 32},
                           targets=[{"name": "responder", "kind": "binary"}], encoder_id="synthetic",
                           feature_dim=args.dim, rounds=args.rounds, local_epochs=args.local_epochs,
                           lr=1e-3, expected_sites=args.sites, min_sites=args.sites,
                           join_timeout_s=300, timeout_s=600,
                           evaluate_with_train=args.evaluate_with_train)
    sites = [SiteConfig(name=s, manifest=manifests[s], features_dir=fdir) for s in names]

    fed_json = work / "fed_config.json"
    fed_json.write_text(fed.to_json())
    cold = _site_load(fed_json, manifests["A"], fdir, None)
    _site_load(fed_json, manifests["A"], fdir, work / "load_cache")  # builds the cache entry
    warm = _site_load(fed_json, manifests["A"], fdir, work / "load_cache")
    load = {"slides_in_site_A": int(pd.read_csv(manifests["A"]).shape[0]), "cold_from_h5": cold, "from_site_cache": warm}
    if args.load_only:
        print(json.dumps({"dim": args.dim, "tiles_per_slide": list(args.tiles),
                          "site_load_fresh_process": load,
                          "machine": f"{platform.machine()}, {os.cpu_count()} cores"}, indent=2))
        return

    # local compute floor: same epochs and evaluations, one process, data loaded once
    locals_ = [LocalSite(s, fed) for s in sites]
    joined = {i: {"name": s.name, "info": dict(loc.join_stats()[1]), "stats": loc.join_stats()[0]}
              for i, (s, loc) in enumerate(zip(sites, locals_, strict=True))}
    state = agree(fed, joined)
    weights = build_global_model(fed, state).state_dict()
    t0 = time.perf_counter()
    for rnd in range(1, fed.rounds + 1):
        new = [site.train(weights, state, epochs=fed.local_epochs, seed=fed.seed * 1000 + rnd,
                          lr=lr_for_round(fed, rnd)) for site in locals_]
        n = [len(site.train_idx) for site in locals_]
        weights = {k: sum(w[k] * (ni / sum(n)) for (w, _), ni in zip(new, n, strict=True))
                   for k in weights}
        for site in locals_:
            site.evaluate(weights, state)
    local_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    if args.mode == "inprocess":
        simulate(fed, sites, work / "run", backend="inprocess")
    else:
        from pathstrat.cli import main as cli
        from pathstrat.federated.localdeploy import LocalDeployment

        (work / "fed.json").write_text(json.dumps({"federation": fed.model_dump(mode="json")}))
        nodes = [{"site-name": s, "manifest": str(manifests[s]), "features-dir": str(fdir),
                  "cache-dir": str(work / "cache")} for s in names]
        with LocalDeployment(work / "deploy", nodes) as dep:
            t0 = time.perf_counter()  # daemons up; time the run as a user submits it
            cli(["federated", "init-app", str(work / "app"), "-c", str(work / "fed.json"), "--out",
                 str(work / "run"), "--address", f"127.0.0.1:{dep.port}", "--insecure"])
            dep.run(work / "app", timeout_s=3600)
    fed_s = time.perf_counter() - t0

    load["tiles_in_site_A"] = int(sum(b.features.shape[0] for b in locals_[0].store.bags))
    print(json.dumps({
        "mode": args.mode, "sites": args.sites, "patients": args.patients, "dim": args.dim,
        "tiles_per_slide": list(args.tiles), "rounds": args.rounds,
        "local_epochs": args.local_epochs, "model": args.model,
        "evaluate_with_train": args.evaluate_with_train,
        "cohort_generation_s": round(gen_s, 2),
        "local_one_process_s": round(local_s, 2), "federated_s": round(fed_s, 2),
        "ratio_federated_over_local": round(fed_s / local_s, 2),
        "overhead_per_round_s": round((fed_s - local_s) / args.rounds, 2),
        "site_load_fresh_process": load,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads 1",
    }, indent=2))


if __name__ == "__main__":
    main()
