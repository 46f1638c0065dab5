"""Federated MIL with Flower: aggregate statistics, DP guarantee, site checks, simulated federations.

The simulations run the real ServerApp/ClientApp under Flower's Simulation Runtime on a generated
feature cohort with a planted signal (pathstrat.testing.make_feature_cohort).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pathstrat.errors import ConfigError
from pathstrat.federated import FederationConfig, SiteConfig
from pathstrat.federated import stats as S
from pathstrat.federated.privacy import dp_guarantee, gaussian_delta, gaussian_epsilon

ROOT = Path(__file__).resolve().parents[1]
flwr = pytest.importorskip("flwr", reason="needs the [federated] extra (pip install 'pathstrat[federated]')")


# --- aggregate statistics -------------------------------------------------------------------

def test_histogram_quantiles_within_one_bin_of_raw_quantiles(rng):
    t = rng.exponential(10.0, 500)
    edges = S.time_grid(60.0, 120)
    counts = S.histogram(t, edges)
    assert counts.sum() == 500  # times beyond the grid land in the last bin, none are lost
    qs = [0.25, 0.5, 0.75]
    got = S.histogram_quantiles(counts, edges, qs)
    want = np.quantile(t, qs)
    assert np.all(np.abs(np.asarray(got) - want) <= edges[1] - edges[0] + 1e-9)


def test_merged_site_histograms_equal_pooled_histogram(rng):
    edges = S.time_grid(30.0, 30)
    parts = [rng.uniform(0, 40, n) for n in (7, 20, 13)]
    merged = S.merge_site_stats(({"s.time_hist": S.histogram(p, edges).tolist()}, {}) for p in parts)
    np.testing.assert_array_equal(merged["s.time_hist"], S.histogram(np.concatenate(parts), edges))


def test_pooled_auroc_from_histograms_matches_sklearn(rng):
    from sklearn.metrics import roc_auc_score

    bins = 50
    y = rng.integers(0, 2, 400)
    s = np.clip(0.3 * y + rng.normal(0.35, 0.2, 400), 0, 1)
    s = (np.floor(s * bins).clip(0, bins - 1) + 0.5) / bins  # scores at bin centres: exact
    pos, neg = S.score_histograms(y, s, bins)
    assert S.auroc_from_histograms(pos, neg) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_global_state_from_counts_equals_pooled_fit(rng):
    from pathstrat.mil.targets import TargetSpec

    df = pd.DataFrame({"y": rng.integers(0, 2, 90), "score": rng.normal(5, 2, 90),
                       "time": rng.exponential(8, 90), "event": rng.integers(0, 2, 90)})
    sites = [df.iloc[:20], df.iloc[20:55], df.iloc[55:]]
    edges = S.time_grid(40.0, 400)
    specs = [TargetSpec("y", "binary", ["y"], classes=[0, 1]),
             TargetSpec("score", "regression", ["score"]),
             TargetSpec("surv", "discrete", time_col="time", event_col="event", n_bins=4)]
    for spec in specs:
        merged = S.merge_site_stats(S.site_label_stats(spec, d, edges=edges) for d in sites)
        state, _ = S.global_target_state(spec, merged, edges=edges)
        pooled = spec.fit_raw(df)
        if spec.kind == "discrete":
            assert np.allclose(state["cuts"], pooled["cuts"], atol=edges[1] - edges[0])
        else:
            for k, v in pooled.items():
                assert np.allclose(state[k], v), (spec.name, k)


def test_multiclass_classes_agreed_from_site_counts():
    from pathstrat.mil.targets import TargetSpec

    spec = TargetSpec("sub", "multiclass", ["sub"])
    a = pd.DataFrame({"sub": ["A", "A", "B"]})
    b = pd.DataFrame({"sub": ["C", "B", "B", "B"]})
    merged = S.merge_site_stats([S.site_label_stats(spec, a, edges=None),
                                 S.site_label_stats(spec, b, edges=None)])
    state, classes = S.global_target_state(spec, merged, edges=None)
    assert classes == ["A", "B", "C"]
    counts = np.array([2, 4, 1.0])
    assert np.allclose(state["class_weight"], counts.sum() / (3 * counts))


# --- differential privacy guarantee ---------------------------------------------------------

def test_gaussian_epsilon_inverts_delta_and_composes():
    for z in (0.7, 1.0, 2.0):
        eps = gaussian_epsilon(1 / z, 1e-5)
        assert gaussian_delta(1 / z, eps) == pytest.approx(1e-5, rel=1e-3)
    g = dp_guarantee(noise_multiplier=1.0, clipping_norm=0.5, rounds=9, delta=1e-5)
    assert g.epsilon_total == pytest.approx(gaussian_epsilon(3.0, 1e-5), rel=1e-6)  # mu*sqrt(9)
    assert g.epsilon_per_round < g.epsilon_total < 9 * g.epsilon_per_round
    # never worse than the classic Dwork-Roth bound where that applies (epsilon < 1)
    z = 6.0
    classic = math.sqrt(2 * math.log(1.25 / 1e-5)) / z
    assert gaussian_epsilon(1 / z, 1e-5) <= classic
    assert f"{g.epsilon_per_round:.3g}" in g.describe() and "add/remove one site" in g.describe()


# --- configuration and local site checks ----------------------------------------------------

def test_discrete_survival_needs_shared_time_grid():
    with pytest.raises(ConfigError, match="time_max"):
        FederationConfig.from_json(json.dumps({
            "targets": [{"name": "s", "kind": "discrete", "time_col": "t", "event_col": "e"}],
            "encoder_id": "x", "feature_dim": 4}))


def test_site_config_from_supernode_node_config(tmp_path):
    s = SiteConfig.from_node_config({"site-name": "hospA", "manifest": str(tmp_path / "m.csv"),
                                     "features-dir": str(tmp_path), "require-dp": True})
    assert s.name == "hospA" and s.require_dp and s.features_dir == tmp_path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """120 patients, 3 sites; 4 training patients per site (small sites), the rest held out."""
    from pathstrat.testing import make_feature_cohort

    out = tmp_path_factory.mktemp("fedcohort")
    fdir, man = make_feature_cohort(out, n_patients=120, dim=64, seed=1, tasks=("binary",),
                                    tiles=(12, 20), strength=3.0, signal_fraction=0.3)
    df = pd.read_csv(man)
    df["site"] = np.array(["A", "B", "C"])[np.arange(len(df)) % 3]
    df["split"] = np.where(df.groupby("site").cumcount() < 4, "train", "test")
    df.to_csv(man, index=False)
    return fdir, man, out


def fed_config(**kw) -> FederationConfig:
    base = dict(model="meanpool", hparams={"dim": 32, "dropout": 0.0},
                targets=[{"name": "responder", "kind": "binary"}], encoder_id="synthetic",
                feature_dim=64, rounds=8, local_epochs=2, lr=5e-3, seed=0)
    return FederationConfig(**{**base, **kw})


def test_site_with_other_encoder_or_dim_is_refused(cohort, tmp_path):
    from pathstrat.federated.site import LocalSite, SiteRefusedError
    from pathstrat.testing import make_feature_cohort

    fdir, man, _ = cohort
    site = SiteConfig(name="hospX", manifest=man, features_dir=fdir)
    with pytest.raises(SiteRefusedError, match=r"hospX.*encoder 'synthetic' with dimension 64.*"
                                                r"dimension 32"):
        LocalSite(site, fed_config(feature_dim=32))
    with pytest.raises(SiteRefusedError, match=r"hospX.*federation trains on encoder 'uni'"):
        LocalSite(site, fed_config(encoder_id="uni"))
    with pytest.raises(SiteRefusedError, match=r"lacks the column\(s\) \['grade'\]"):
        LocalSite(site, fed_config(targets=[{"name": "grade", "kind": "binary"}]))
    fd2, m2 = make_feature_cohort(tmp_path, n_patients=6, dim=64, seed=2, tasks=("binary",),
                                  tiles=(4, 6), encoder_id="other")
    with pytest.raises(SiteRefusedError, match="encoder 'other'"):
        LocalSite(SiteConfig(name="hospY", manifest=m2, features_dir=fd2), fed_config())


# --- simulated federations -------------------------------------------------------------------

@pytest.fixture(scope="module")
def federation(cohort, tmp_path_factory):
    """3 sites x 8 rounds x 2 local epochs; every outgoing message audited (sites run in-process;
    the Ray-based Flower Simulation Runtime is exercised by the dropout test)."""
    from pathstrat.federated import simulate, split_sites

    fdir, man, _ = cohort
    out = tmp_path_factory.mktemp("fedrun")
    sites = split_sites(man, out, features_dir=fdir, audit_dir=out / "audit")
    summary = simulate(fed_config(), sites, out / "run", backend="inprocess")
    return summary, out, sites


_LOCAL: dict = {}


def _local(site: SiteConfig, fed: FederationConfig):
    from pathstrat.federated.site import LocalSite

    key = (site.name, str(site.manifest))
    if key not in _LOCAL:
        _LOCAL[key] = LocalSite(site, fed)
    return _LOCAL[key]


def _pooled_auroc(weights, sites, fed):
    """AUROC of a model on the held-out patients of all sites together (independent metric)."""
    from sklearn.metrics import roc_auc_score

    from pathstrat.federated.site import GlobalState

    state = GlobalState({"responder": {"pos_weight": [1.0]}}, {})
    ys, ss = [], []
    for s in sites:
        _, sc, lab, _ = _local(s, fed).predict(weights, state)
        ys.append(lab["responder"])
        ss.append(sc["responder"])
    return roc_auc_score(np.concatenate(ys), np.concatenate(ss))


def test_federated_model_matches_central_and_beats_sites_alone(federation, cohort, tmp_path):
    from safetensors.torch import load_file

    from pathstrat.federated.site import GlobalState, build_global_model

    summary, out, sites = federation
    fdir, man, _ = cohort
    fed = fed_config()
    assert [s["name"] for s in sorted(summary["sites"], key=lambda s: s["name"])] == ["A", "B", "C"]
    assert summary["refused"] == {} and len(summary["rounds"]) == 8
    weights = load_file(str(out / "run" / "checkpoints" / "fold0.safetensors"))
    fed_auc = _pooled_auroc(weights, sites, fed)

    # the same model trained centrally on all training patients, and each site alone
    state = GlobalState({"responder": {"pos_weight": [1.0]}}, {})
    w0 = build_global_model(fed, state).state_dict()
    epochs = fed.rounds * fed.local_epochs
    all_site = SiteConfig(name="central", manifest=man, features_dir=fdir)
    central, _ = _local(all_site, fed).train(w0, state, epochs=epochs, seed=0)
    central_auc = _pooled_auroc(central, sites, fed)
    alone = {s.name: _pooled_auroc(_local(s, fed).train(w0, state, epochs=epochs, seed=0)[0],
                                   sites, fed) for s in sites}
    print(f"federated {fed_auc:.3f} central {central_auc:.3f} alone {alone}")
    assert central_auc > 0.9
    assert abs(fed_auc - central_auc) <= 0.03
    assert all(fed_auc >= a + 0.04 for a in alone.values()), alone
    # the server's pooled AUROC from score histograms agrees with the exact pooled AUROC
    final = summary["final_metrics"]
    assert final["responder.pooled_auroc"] == pytest.approx(fed_auc, abs=0.02)
    assert final["responder.n"] == 108


def test_no_raw_data_leaves_a_site(federation, cohort):
    from pathstrat.federated import check_egress, read_audit
    from pathstrat.federated.site import GlobalState, build_global_model

    summary, out, sites = federation
    _, man, _ = cohort
    log = read_audit(out / "audit")
    kinds = {m["message_type"] for m in log}
    assert kinds == {"query.join", "train", "evaluate"}
    assert sum(m["message_type"] == "train" for m in log) == 3 * 8
    model = build_global_model(fed_config(), GlobalState({}, {}))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    df = pd.read_csv(man)
    forbidden = (df["patient_id"].tolist() + df["slide_id"].tolist()
                 + [str(Path(p).parent) for p in df["path"]] + [str(man)])
    assert check_egress(log, shapes, forbidden) == []
    # arrays are exactly the model parameters (packed: one float32 vector of them), nothing else
    n_values = sum(v.numel() for v in model.state_dict().values())
    for m in log:
        arrays = [r for r in m["records"] if r["kind"] == "array"]
        if m["message_type"] == "train":
            assert {k: v["shape"] for k, v in arrays[0]["entries"].items()} == {
                "pathstrat.packed.float32": [n_values]}
        else:
            assert arrays == []
    # the checker does catch a leak
    leak = {"site": "A", "message_type": "train", "records": [
        {"kind": "array", "key": "arrays", "entries": {"features": {"shape": [15, 64]}}},
        {"kind": "metric", "key": "metrics", "values": {"patient_ages": [61, 72]}},
        {"kind": "config", "key": "c", "values": {"patient": df["patient_id"][0]}}]}
    problems = check_egress([leak], shapes, forbidden)
    assert len(problems) == 4


def test_global_checkpoint_works_with_predict_and_report(federation, cohort, tmp_path):
    from safetensors.torch import load_file
    from sklearn.metrics import roc_auc_score

    from pathstrat.report import build_report
    from pathstrat.training.inference import predict

    summary, out, sites = federation
    fdir, man, _ = cohort
    test = pd.read_csv(man).query("split == 'test'")
    test.to_csv(tmp_path / "test.csv", index=False)
    pred_dir = predict(out / "run", fdir, tmp_path / "test.csv", tmp_path / "pred", n_boot=50)
    pred = pd.read_csv(pred_dir / "predictions.csv")
    auc = roc_auc_score(pred["y_true"], pred["score"])
    weights = load_file(str(out / "run" / "checkpoints" / "fold0.safetensors"))
    assert len(pred) == 108
    assert auc == pytest.approx(_pooled_auroc(weights, sites, fed_config()), abs=1e-6)
    html = build_report(pred_dir).read_text()
    assert "responder" in html


def test_site_finetunes_global_model(federation, tmp_path):
    from pathstrat.federated import finetune_site

    summary, out, sites = federation
    res = finetune_site(out / "run", sites[0], tmp_path / "tuned", epochs=3)
    assert set(res["before"]) >= {"responder.auroc", "eval-loss"}
    assert res["after"]["responder.auroc"] > 0.5
    spec = json.loads((tmp_path / "tuned" / "checkpoints" / "model.json").read_text())
    assert spec["federated"]["finetuned_at"] == "A"
    assert len(spec["folds"][0]["training_patient_ids"]) == 4  # stays at the site


def _renamed(fdir: Path, manifest: Path, prefix: str) -> pd.DataFrame:
    """Give another generated cohort its own slide and patient ids (and feature file names)."""
    df = pd.read_csv(manifest)
    for sid in df["slide_id"]:
        (fdir / f"{sid}.h5").rename(fdir / f"{prefix}{sid}.h5")
    df["slide_id"] = prefix + df["slide_id"]
    df["patient_id"] = prefix + df["patient_id"]
    df["path"] = [str(fdir / f"{s}.h5") for s in df["slide_id"]]
    return df


def test_refused_sites_and_dropout_do_not_stop_the_federation(cohort, tmp_path):
    """5 SuperNodes via the CLI: two refuse (encoder, dimension), one fails from round 2."""
    from pathstrat.cli import main
    from pathstrat.testing import make_feature_cohort

    fdir, man, _ = cohort
    df = pd.read_csv(man)
    df = df[df["site"].isin(["A", "B", "C"])].groupby("site").head(8)  # small and quick
    f64, m64 = make_feature_cohort(tmp_path / "enc", n_patients=6, dim=64, seed=5, tasks=("binary",),
                                   tiles=(4, 6), encoder_id="uni")
    f32, m32 = make_feature_cohort(tmp_path / "dim", n_patients=6, dim=32, seed=6, tasks=("binary",),
                                   tiles=(4, 6))
    other = pd.concat([_renamed(f64, m64, "D").assign(site="D_wrong_encoder", split="train"),
                       _renamed(f32, m32, "E").assign(site="E_wrong_dim", split="train")])
    pd.concat([df, other]).to_csv(tmp_path / "manifest.csv", index=False)
    cfg = fed_config(rounds=3, local_epochs=1, strategy="fedprox", proximal_mu=0.1,
                     min_sites=2).model_dump(mode="json")
    (tmp_path / "fed.json").write_text(json.dumps({"federation": cfg}))
    rc = main(["federated", "simulate", str(tmp_path / "manifest.csv"), "--features", str(fdir),
               "--site-features", f"D_wrong_encoder={f64}", "--site-features", f"E_wrong_dim={f32}",
               "--config", str(tmp_path / "fed.json"), "--out", str(tmp_path / "run"),
               "--drop-site", "C=2", "--workers", "1"])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "federation.json").read_text())
    assert sorted(summary["refused"]) == ["D_wrong_encoder", "E_wrong_dim"]
    assert "encoder 'uni'" in summary["refused"]["D_wrong_encoder"]
    assert "dimension 32" in summary["refused"]["E_wrong_dim"]
    assert str(tmp_path) not in json.dumps(summary)  # no site paths reach the coordinator
    rounds = {r["round"]: r for r in summary["rounds"]}
    assert rounds[1]["failed_sites"] == []
    assert rounds[2]["failed_sites"] == ["C"] and rounds[3]["failed_sites"] == ["C"]
    # rounds 2 and 3 still aggregated and evaluated with the two remaining sites
    assert rounds[3]["evaluate"]["num-examples"] == 8
    assert (tmp_path / "run" / "checkpoints" / "fold0.safetensors").exists()
    errs = [e for e in summary["events"] if e.get("error")]
    assert all("dropped out" in e["error"] for e in errs) and {e["site"] for e in errs} == {"C"}


@pytest.fixture
def in_process_flower():
    """Flower Messages outside a running federation need a task identity (as run_simulation sets)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    return TaskIdentity


def test_dp_clips_each_site_update_and_server_adds_calibrated_noise(cohort, in_process_flower):
    """ClientApp handlers in-process: clipping to C, require-dp policy, noise std z*C/m."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from pathstrat.federated.client import PrivacyPolicyError, build_client_app
    from pathstrat.federated.server import agree, make_strategy
    from pathstrat.federated.site import build_global_model

    fdir, man, out = cohort
    z, clip = 1.0, 0.05
    fed = fed_config(rounds=4, dp={"noise_multiplier": z, "clipping_norm": clip})
    sites = [SiteConfig(name=n, manifest=out / f"{n}.csv", features_dir=fdir, require_dp=True)
             for n in ("A", "B")]
    df = pd.read_csv(man)
    for s in sites:
        df[df["site"] == s.name].to_csv(s.manifest, index=False)
    app = build_client_app(sites)
    ctxs = [Context(run_id=1, node_id=10 + i, node_config={"partition-id": i}, state=RecordDict(),
                    run_config={}) for i in range(2)]
    joined = {}
    for i, ctx in enumerate(ctxs):
        join = Message(RecordDict({"config": ConfigRecord({"federation": fed.to_json()})}),
                       dst_node_id=10 + i, message_type="query.join")
        rep = app(join, ctx)
        assert rep.content["site"]["accepted"]
        joined[10 + i] = {"name": sites[i].name, "info": dict(rep.content["site"]),
                          "stats": dict(rep.content["stats"])}
    state = agree(fed, joined)
    g = build_global_model(fed, state).state_dict()
    base = {"federation": fed.to_json(), "global": json.dumps(state.to_dict()), "server-round": 1}

    def train_msg(node, **extra):
        return Message(RecordDict({"arrays": ArrayRecord(g), "config": ConfigRecord({**base, **extra})}),
                       dst_node_id=node, message_type="train")

    with pytest.raises(PrivacyPolicyError, match="site 'A' requires differential privacy"):
        app(train_msg(10), ctxs[0])
    replies = [app(train_msg(10 + i, clipping_norm=clip), ctxs[i]) for i in range(2)]
    updates = []
    for r in replies:
        new = r.content["arrays"].to_torch_state_dict()
        d = torch.cat([(new[k].double() - g[k].double()).flatten() for k in g])
        assert 0 < float(d.norm()) <= clip * (1 + 1e-5)  # the whole update is clipped to C
        updates.append(d)
        assert r.content["metrics"]["dp-weight"] == 1
    strategy = make_strategy(fed, n_sites=2)
    agg, _ = strategy.aggregate_train(1, replies)
    got = torch.cat([torch.as_tensor(a.numpy()).double().flatten() for a in agg.values()])
    noise = got - torch.cat([g[k].double().flatten() for k in g]) - (updates[0] + updates[1]) / 2
    assert float(noise.std()) == pytest.approx(z * clip / 2, rel=0.1)  # Flower: std = z*C/m


def test_federated_extra_resolves_offline():
    """flwr is installed within the extra's bounds and pip resolves `.[federated]` offline."""
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement

    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    req = Requirement(py["project"]["optional-dependencies"]["federated"][0])
    assert req.name == "flwr" and md.version("flwr") in req.specifier
    # pathstrat's own bounds must admit what flwr pins (typer<0.21, rich<15)
    for dep in py["project"]["dependencies"]:
        r = Requirement(dep)
        if r.name in ("typer", "rich"):
            assert md.version(r.name) in r.specifier
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
                           "--no-build-isolation", "--disable-pip-version-check", f"{ROOT}[federated]"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Would install pathstrat" in proc.stdout


def test_init_app_writes_a_valid_flower_app(tmp_path):
    """`pathstrat federated init-app` output passes Flower's own app validation (modules load)."""
    from flwr.cli.config_utils import load_and_validate

    from pathstrat.cli import main

    cfg = tmp_path / "fed.yaml"
    cfg.write_text("federation:\n  model: abmil\n  encoder_id: uni\n  feature_dim: 1024\n"
                   "  targets: [{name: responder, kind: binary}]\n")
    rc = main(["federated", "init-app", str(tmp_path / "app"), "--config", str(cfg),
               "--address", "link.example.org:9093", "--root-cert", "/certs/ca.crt"])
    assert rc == 0
    config, _ = load_and_validate(tmp_path / "app" / "pyproject.toml", check_module=True)
    assert config["tool"]["flwr"]["app"]["components"]["serverapp"] == "pathstrat.federated.serverapp:server_app"
    assert config["tool"]["flwr"]["app"]["components"]["clientapp"] == "pathstrat.federated.clientapp:client_app"
    assert config["tool"]["flwr"]["app"]["config"]["config-file"] == str(cfg.resolve())
    conn = (tmp_path / "app" / "superlink-connection.toml").read_text()
    assert 'address = "link.example.org:9093"' in conn and "/certs/ca.crt" in conn
    # the connection must parse with Flower's own reader (it requires an absolute CA path)
    import tomllib

    from flwr.cli.flower_config import parse_superlink_connection

    def parsed(app):
        text = (tmp_path / app / "superlink-connection.toml").read_text()
        return parse_superlink_connection(tomllib.loads(text)["superlink"]["pathstrat"], "pathstrat")

    assert parsed("app").root_certificates == "/certs/ca.crt" and not parsed("app").insecure
    base = ["federated", "init-app", "--config", str(cfg), "--address", "127.0.0.1:8000"]
    assert main([*base[:2], str(tmp_path / "rel"), *base[2:], "--root-cert", "ca.crt"]) == 0
    assert parsed("rel").root_certificates == str(Path("ca.crt").resolve())
    assert main([*base[:2], str(tmp_path / "local"), *base[2:], "--insecure"]) == 0
    assert parsed("local").insecure and parsed("local").root_certificates is None
    assert main([*base[:2], str(tmp_path / "none"), *base[2:]]) == 2  # neither: one clear error
    assert not (tmp_path / "none").exists()


def test_fraction_sampling_trains_a_subset_each_round(cohort, tmp_path):
    from pathstrat.federated import simulate, split_sites

    fdir, man, _ = cohort
    df = pd.read_csv(man)
    df.groupby("site").head(6).to_csv(tmp_path / "m.csv", index=False)
    sites = split_sites(tmp_path / "m.csv", tmp_path, features_dir=fdir)
    fed = fed_config(rounds=3, local_epochs=1, fraction_train=0.6, fraction_evaluate=1.0, seed=3)
    summary = simulate(fed, sites, tmp_path / "run", backend="inprocess")
    for r in (1, 2, 3):
        trained = [e["site"] for e in summary["events"] if e["round"] == r and e["type"] == "train"]
        evaluated = [e for e in summary["events"] if e["round"] == r and e["type"] == "evaluate"]
        assert len(trained) == 2 and len(set(trained)) == 2  # ceil(0.6 * 3) sites train
        assert len(evaluated) == 3


def test_secagg_plus_gives_the_fedavg_model_without_revealing_updates(cohort, tmp_path):
    """SecAgg+ (Flower's legacy workflow + secaggplus_mod): same global model as plain FedAvg up
    to quantisation, and no site sends its weights in the clear (only masked vectors)."""
    from safetensors.torch import load_file

    from pathstrat.federated import check_egress, read_audit, simulate, split_sites
    from pathstrat.federated.site import GlobalState, build_global_model

    fdir, man, _ = cohort
    df = pd.read_csv(man)
    df.groupby("site").head(6).to_csv(tmp_path / "m.csv", index=False)
    sites = split_sites(tmp_path / "m.csv", tmp_path, features_dir=fdir, audit_dir=tmp_path / "audit")
    plain = fed_config(rounds=1, local_epochs=1)
    secure = fed_config(rounds=1, local_epochs=1,
                        secagg={"num_shares": 3, "reconstruction_threshold": 2})
    simulate(plain, [s.model_copy(update={"audit_dir": None}) for s in sites], tmp_path / "plain",
             backend="inprocess")
    summary = simulate(secure, sites, tmp_path / "secure", backend="inprocess")
    a = load_file(str(tmp_path / "plain" / "checkpoints" / "fold0.safetensors"))
    b = load_file(str(tmp_path / "secure" / "checkpoints" / "fold0.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    assert summary["secagg"] and summary["final_metrics"]["responder.n"] == len(df.groupby("site").head(6).query("split == 'test'"))
    log = read_audit(tmp_path / "audit")
    train = [m for m in log if m["message_type"] == "train"]
    assert len(train) == 3 * 4  # four SecAgg+ stages per site
    for m in train:
        for r in m["records"]:
            if r["kind"] == "array":
                assert r["entries"] == {}  # cleared by secaggplus_mod: weights never in the clear
    shapes = {k: tuple(v.shape) for k, v in
              build_global_model(secure, GlobalState({}, {})).state_dict().items()}
    assert check_egress(log, shapes, df["patient_id"].tolist() + df["slide_id"].tolist()) == []


def test_check_site_and_privacy_commands(cohort, tmp_path, capsys):
    from pathstrat.cli import main

    fdir, man, _ = cohort
    (tmp_path / "fed.json").write_text(json.dumps({"federation": fed_config().model_dump(mode="json")}))
    assert main(["federated", "check-site", "-c", str(tmp_path / "fed.json"), "--manifest", str(man),
                 "--features", str(fdir), "--name", "hospA"]) == 0
    shared = json.loads(capsys.readouterr().out)
    df = pd.read_csv(man)
    train = df[df["split"] == "train"]
    assert shared["n-train"] == len(train) and shared["n-eval"] == len(df) - len(train)
    assert shared["responder.pos"] == [int(train["responder"].sum())]
    assert main(["federated", "check-site", "-c", str(tmp_path / "fed.json"), "--manifest", str(man),
                 "--features", str(fdir)]) == 0
    bad = fed_config(feature_dim=32).model_dump(mode="json")
    (tmp_path / "bad.json").write_text(json.dumps({"federation": bad}))
    assert main(["federated", "check-site", "-c", str(tmp_path / "bad.json"), "--manifest", str(man),
                 "--features", str(fdir)]) == 2
    assert "refuses to join" in capsys.readouterr().err
    assert main(["federated", "privacy", "-z", "1.0", "-C", "1.0", "--rounds", "4"]) == 0
    g = dp_guarantee(1.0, 1.0, 4, 1e-5)
    assert f"({g.epsilon_total:.3g}, 1e-05)" in capsys.readouterr().out


def test_every_head_kind_trains_federated(tmp_path):
    """Binary, multi-label, Cox and discrete-time survival heads in one federated model."""
    from pathstrat.federated import simulate, split_sites
    from pathstrat.testing import make_feature_cohort

    fdir, man = make_feature_cohort(tmp_path / "c", n_patients=45, dim=16, seed=3,
                                    tasks=("binary", "multilabel", "survival"), tiles=(6, 10))
    df = pd.read_csv(man)
    df["site"] = np.array(["A", "B", "C"])[np.arange(len(df)) % 3]
    df.to_csv(man, index=False)
    time_max = float(np.ceil(df["time"].max()))
    fed = fed_config(model="abmil", hparams={"dim": 16}, feature_dim=16, rounds=3, local_epochs=2,
                     time_max=time_max, time_grid_bins=20, targets=[
                         {"name": "responder", "kind": "binary"},
                         {"name": "markers", "kind": "multilabel", "columns": ["marker_a", "marker_b"]},
                         {"name": "os", "kind": "cox", "time_col": "time", "event_col": "event"},
                         {"name": "osd", "kind": "discrete", "time_col": "time", "event_col": "event",
                          "n_bins": 4}])
    sites = split_sites(man, tmp_path / "s", features_dir=fdir)
    summary = simulate(fed, sites, tmp_path / "run", backend="inprocess")
    assert summary["refused"] == {} and len(summary["rounds"]) == 3
    for r in summary["rounds"]:
        assert r["failed_sites"] == []
        for key in ("responder.auroc", "markers.macro_auroc", "os.c_index", "osd.c_index"):
            assert np.isfinite(r["evaluate"][key]), (r["round"], key)
    losses = [r["evaluate"]["eval-loss"] for r in summary["rounds"]]
    assert losses[-1] < losses[0]  # the shared model learns across rounds
    agreed = summary["agreed"]["target_states"]
    assert len(agreed["markers"]["pos_weight"]) == 2
    cuts = agreed["osd"]["cuts"]  # agreed from time histograms: 3 increasing inner cut points
    assert len(cuts) == 3 and all(0 < a < b < time_max for a, b in zip(cuts, cuts[1:], strict=False))
    spec = json.loads((tmp_path / "run" / "checkpoints" / "model.json").read_text())
    assert {"responder", "markers", "os", "osd"} <= set(json.dumps(spec).split('"'))
