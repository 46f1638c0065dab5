"""Benchmark: federated wall time against the same local epochs run in one process.

Generates a feature cohort split into ``--sites`` sites, then measures:

* **local**: in one process with every site's data loaded once, for each round and site the
  same local training epochs and held-out evaluation the federation runs (the compute floor);
* **federated**: the whole federation, either ``--mode inprocess`` (the real ServerApp/ClientApp
  and Flower messages delivered in this process: message, aggregation and selection cost) or
  ``--mode deployment`` (SuperLink + one SuperNode per site as separate processes on localhost,
  ``flwr run``; by default ``--isolation process`` with one long-running site executor per
  SuperNode, ``--isolation subprocess`` for a fresh ClientApp process per message);
* **site load**: a fresh process loading one site's store from its feature files (cold) and
  from the memory-mapped site cache (what every ClientApp process after the first does).

Prints one JSON object: seconds, the ratio federated / local, and the overhead per round
((federated - local) / rounds). Usage:
``python scripts/bench_federated.py [--mode deployment] [--rounds 3] [--patients 150]``
(``--isolation subprocess`` for Flower's per-message ClientApp processes).

``--heterogeneous``: quality, not speed. Sites with a planted site shift (label prevalence and a
per-site feature offset, :func:`pathstrat.federated.simulation.make_shifted_sites`) train with
FedAvg, FedProx, local-only (each site a federation of one: same schedule and round selection)
and pooled (``pathstrat.training.engine.fit`` on all sites' patients, early-stopped on their
held-out patients), plus FedAvg followed by per-site fine-tuning
(:func:`pathstrat.federated.finetune_site`, what ``pathstrat federated finetune`` runs). AUROC and
log loss with patient-bootstrap 95 % CIs (``metrics.bootstrap_ci``) on an unshifted, balanced
external split and on each site's own test patients (``site`` models are averaged over the
three sites' models on the external split).
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
    ap.add_argument("--isolation", choices=["process", "subprocess"], default="process",
                    help="deployment: SuperNode --isolation (process: one long-running site "
                         "executor per site; subprocess: a flwr-clientapp process per message)")
    ap.add_argument("--stock-supernode", action="store_true",
                    help="deployment: Flower's own flower-supernode (3 s idle poll) instead of "
                         "pathstrat.federated.supernode")
    ap.add_argument("--heterogeneous", action="store_true",
                    help="FedAvg vs FedProx vs local-only vs pooled (+ fine-tuning) on sites with "
                         "a planted shift (see the module docstring)")
    ap.add_argument("--prevalence", type=float, nargs="+", default=(0.2, 0.5, 0.8),
                    help="heterogeneous: label prevalence per site")
    ap.add_argument("--shift", type=float, default=1.5, help="heterogeneous: feature offset norm")
    ap.add_argument("--site-patients", type=int, default=60, help="heterogeneous: per site")
    ap.add_argument("--site-test", type=int, default=40, help="heterogeneous: test patients per site")
    ap.add_argument("--external", type=int, default=150, help="heterogeneous: external test patients")
    ap.add_argument("--mu", type=float, default=0.1, help="heterogeneous: FedProx mu")
    ap.add_argument("--finetune-epochs", type=int, default=5)
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.heterogeneous:
        heterogeneous(args)
        return

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
        with LocalDeployment(work / "deploy", nodes, isolation=args.isolation,
                             fast_pull_s=0.0 if args.stock_supernode else 0.05,
                             env={"PATHSTRAT_FL_THREADS": "1"}) as dep:
            t0 = time.perf_counter()  # daemons up; time the run as a user submits it
            cli(["federated", "init-app", str(work / "app"), "-c", str(work / "fed.json"), "--out",
                 str(work / "run"), "--address", f"127.0.0.1:{dep.port}", "--insecure"])
            dep.run(work / "app", timeout_s=3600)
    fed_s = time.perf_counter() - t0

    summary_path = work / "run" / "federation.json"
    timing = (json.loads(summary_path.read_text()).get("timing_s", {}) if summary_path.exists()
              else {})
    load["tiles_in_site_A"] = int(sum(b.features.shape[0] for b in locals_[0].store.bags))
    print(json.dumps({
        "mode": args.mode, "isolation": args.isolation if args.mode == "deployment" else None,
        "supernode": ("flower-supernode" if args.stock_supernode else "pathstrat.federated.supernode")
        if args.mode == "deployment" else None,
        "sites": args.sites, "patients": args.patients, "dim": args.dim,
        "tiles_per_slide": list(args.tiles), "rounds": args.rounds,
        "local_epochs": args.local_epochs, "model": args.model,
        "evaluate_with_train": args.evaluate_with_train,
        "cohort_generation_s": round(gen_s, 2),
        "local_one_process_s": round(local_s, 2), "federated_s": round(fed_s, 2),
        "ratio_federated_over_local": round(fed_s / local_s, 2),
        "overhead_per_round_s": round((fed_s - local_s) / args.rounds, 2),
        # the coordinator's own clock: the round loop alone, without the once-per-run costs
        # (flwr run submission, the ServerApp process's imports, join, final checkpoint)
        "rounds_phase_s": timing.get("rounds"),
        "once_per_run_s": round(fed_s - timing["rounds"], 2) if "rounds" in timing else None,
        "overhead_per_round_in_round_loop_s": (round((timing["rounds"] - local_s) / args.rounds, 2)
                                               if "rounds" in timing else None),
        "site_load_fresh_process": load,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads 1",
    }, indent=2))


def heterogeneous(args) -> None:
    """The ``--heterogeneous`` comparison (see the module docstring); prints one JSON object."""
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from sklearn.metrics import log_loss, roc_auc_score

    from pathstrat.federated import FederationConfig, SiteConfig, finetune_site, simulate
    from pathstrat.federated.simulation import make_shifted_sites
    from pathstrat.federated.site import GlobalState, LocalSite, build_global_model, resolved_specs
    from pathstrat.metrics import bootstrap_ci
    from pathstrat.mil.losses import make_loss
    from pathstrat.testing import make_feature_cohort
    from pathstrat.training.data import BagDataset, make_loader
    from pathstrat.training.engine import TrainParams, fit

    torch.set_num_threads(1)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_fed_het_"))
    work.mkdir(parents=True, exist_ok=True)
    names = [chr(ord("A") + i) for i in range(len(args.prevalence))]
    need = len(names) * (args.site_patients + args.site_test) + args.external
    t0 = time.perf_counter()
    fdir0, man0 = make_feature_cohort(work / "pool", n_patients=int(need * 1.6), dim=args.dim,
                                      seed=args.seed, tasks=("binary",), tiles=(8, 16),
                                      strength=2.5, signal_fraction=0.3)
    het = make_shifted_sites(man0, fdir0, work / "het", prevalence=dict(zip(names, args.prevalence,
                                                                            strict=True)),
                             shift=args.shift, n_train=args.site_patients, n_test=args.site_test,
                             n_external=args.external, seed=args.seed)
    fdir = het["features_dir"]
    fed = FederationConfig(model=args.model, hparams={"dim": 32},
                           targets=[{"name": "responder", "kind": "binary"}], encoder_id="synthetic",
                           feature_dim=args.dim, rounds=args.rounds, local_epochs=args.local_epochs,
                           lr=1e-3, seed=args.seed)

    def weights(run: Path):
        return load_file(str(run / "checkpoints" / "fold0.safetensors"))

    models: dict[str, dict[str, object]] = {}  # method -> {"global" | site: state dict}
    summaries = {}
    for method, cfg in (("FedAvg", fed),
                        (f"FedProx (mu {args.mu:g})", fed.model_copy(update={
                            "strategy": "fedprox", "proximal_mu": args.mu}))):
        summaries[method] = simulate(cfg, het["sites"], work / method.split()[0], backend="inprocess")
        models[method] = {"global": weights(work / method.split()[0])}
    state = GlobalState.from_dict(summaries["FedAvg"]["agreed"])
    local_states = {}
    models["local-only"] = {}
    for site in het["sites"]:
        one = fed.model_copy(update={"min_sites": 1, "expected_sites": 1})
        res = simulate(one, [site], work / f"local_{site.name}", backend="inprocess")
        models["local-only"][site.name] = weights(work / f"local_{site.name}")
        local_states[site.name] = GlobalState.from_dict(res["agreed"])
    models[f"FedAvg + fine-tune ({args.finetune_epochs} ep)"] = {}
    for site in het["sites"]:
        finetune_site(work / "FedAvg", site, work / f"ft_{site.name}", epochs=args.finetune_epochs,
                      seed=args.seed)
        models[f"FedAvg + fine-tune ({args.finetune_epochs} ep)"][site.name] = weights(
            work / f"ft_{site.name}")
    pooled = LocalSite(SiteConfig(name="pooled", manifest=het["pooled"], features_dir=fdir), fed)
    specs = resolved_specs(fed, state)
    targets = pooled._targets(specs, state)
    model = build_global_model(fed, state)
    fit(model, make_loader(BagDataset(pooled.store, pooled.train_idx, targets, train=True,
                                      seed=args.seed), 1, shuffle=True, seed=args.seed),
        make_loader(BagDataset(pooled.store, pooled.eval_idx, targets), 1),
        make_loss(specs, state.target_states),
        TrainParams(epochs=fed.rounds * fed.local_epochs, lr=fed.lr, weight_decay=fed.weight_decay,
                    patience=8))
    models["pooled"] = {"global": {k: v.detach() for k, v in model.state_dict().items()}}
    train_s = time.perf_counter() - t0

    flat = fed.model_copy(update={"holdout_fraction": 0.0})
    evals = {"external": het["external"], **het["site_tests"]}
    readers = {k: LocalSite(SiteConfig(name=k, manifest=m, features_dir=fdir), flat)
               for k, m in evals.items()}

    def scores(w, st, split: str) -> tuple[np.ndarray, np.ndarray]:
        _, sc, lab, _ = readers[split].predict(w, st, "train")
        return np.asarray(lab["responder"], float), np.asarray(sc["responder"], float)

    def metrics(runs: list[tuple[np.ndarray, np.ndarray]]):
        def fn(idx):
            auc, ll = [], []
            for y, p in runs:
                yy, pp = y[idx], np.clip(p[idx], 1e-6, 1 - 1e-6)
                auc.append(roc_auc_score(yy, pp) if 0 < yy.sum() < len(yy) else np.nan)
                ll.append(log_loss(yy, pp, labels=[0, 1]))
            return {"auroc": float(np.mean(auc)), "log_loss": float(np.mean(ll))}
        return bootstrap_ci(fn, len(runs[0][0]), n_boot=args.boot, seed=args.seed)

    table = {}
    for method, ms in models.items():
        row = {}
        for split in evals:
            if "global" in ms:
                runs = [scores(ms["global"], state, split)]
            elif split == "external":
                runs = [scores(w, local_states.get(s, state) if method == "local-only" else state,
                               split) for s, w in ms.items()]
            else:
                st = local_states[split] if method == "local-only" else state
                runs = [scores(ms[split], st, split)]
            row[split] = {k: {q: round(v[q], 3) for q in ("mean", "ci_low", "ci_high")}
                          for k, v in metrics(runs).items()}
        table[method] = row
    kept = {m: s["selection"]["kept_round"] for m, s in summaries.items()}
    print(json.dumps({"sites": dict(zip(names, args.prevalence, strict=True)), "shift": args.shift,
                      "site_patients": args.site_patients, "site_test": args.site_test,
                      "external": args.external, "rounds": args.rounds,
                      "local_epochs": args.local_epochs, "kept_round": kept,
                      "train_s": round(train_s, 1), "table": table}, indent=1))
    cols = list(evals)
    lines = ["| method | " + " | ".join(f"{c} AUROC [95% CI] / log loss" for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for method, row in table.items():
        cells = [f"{row[c]['auroc']['mean']:.3f} [{row[c]['auroc']['ci_low']:.2f}, "
                 f"{row[c]['auroc']['ci_high']:.2f}] / {row[c]['log_loss']['mean']:.3f}" for c in cols]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
