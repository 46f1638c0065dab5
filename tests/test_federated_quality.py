"""Federated model quality and robustness: round selection, LR schedule, early stopping, curves,
non-finite inputs and updates (issue 13 item 1; issue 11 item 1, federated part).

The generated cohort has three training sites of 50 patients and 150 external test patients
(pathstrat.testing.make_feature_cohort: 128-dim features, a planted signal in 30% of the tiles of
responders). With these settings a federated ABMIL trained for 12 rounds at a constant learning
rate overfits (the aggregated held-out loss turns up after round 8).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _federated_refs import external_auroc, pooled_weights

from pathstrat.federated import FederationConfig, SiteConfig

flwr = pytest.importorskip("flwr", reason="needs the [federated] extra (pip install 'pathstrat[federated]')")

DIM = 128


@pytest.fixture(scope="module")
def ext_cohort(tmp_path_factory):
    """(features dir, training manifest with a site column, external test manifest, out dir)."""
    from pathstrat.testing import make_feature_cohort

    out = tmp_path_factory.mktemp("fedq")
    fdir, man = make_feature_cohort(out, n_patients=300, dim=DIM, seed=7, tasks=("binary",),
                                    tiles=(8, 16), strength=2.5, signal_fraction=0.3)
    df = pd.read_csv(man)
    idx = np.arange(len(df))
    df["site"] = np.where(idx < 150, np.array(["A", "B", "C"])[idx % 3], "external")
    df[df["site"] != "external"].to_csv(out / "train.csv", index=False)
    df[df["site"] == "external"].to_csv(out / "external.csv", index=False)
    return fdir, out / "train.csv", out / "external.csv", out


def quality_config(**kw) -> FederationConfig:
    """The issue's setting (ABMIL, FedAvg, 12 rounds x 2 local epochs, lr 1e-3); selection, LR
    schedule and the rest are the defaults."""
    base = dict(model="abmil", hparams={"dim": 32}, targets=[{"name": "responder", "kind": "binary"}],
                encoder_id="synthetic", feature_dim=DIM, rounds=12, local_epochs=2, lr=1e-3)
    return FederationConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def default_run(ext_cohort):
    from pathstrat.federated import simulate, split_sites

    fdir, train, _, out = ext_cohort
    sites = split_sites(train, out / "split", features_dir=fdir)
    summary = simulate(quality_config(), sites, out / "run", backend="inprocess")
    return summary, out / "run", sites


def test_federated_within_003_auroc_of_pooled_training_on_external_split(ext_cohort, default_run):
    """Default selection + LR schedule: federated ABMIL on an external split is within 0.03 AUROC
    of the same model trained on the pooled training patients (early-stopped on the pooled
    held-out patients with pathstrat.training.engine.fit)."""
    from safetensors.torch import load_file

    from pathstrat.federated.site import GlobalState

    fdir, train, external, _ = ext_cohort
    summary, run, _ = default_run
    fed = quality_config()
    state = GlobalState.from_dict(summary["agreed"])
    fed_auc = external_auroc(load_file(str(run / "checkpoints" / "fold0.safetensors")), fed, state,
                             fdir, external)
    pooled_auc = external_auroc(pooled_weights(fed, state, fdir, train), fed, state, fdir, external)
    print(f"external AUROC: federated {fed_auc:.3f} (kept round {summary['selection']['kept_round']}),"
          f" pooled {pooled_auc:.3f}")
    assert pooled_auc > 0.8
    assert fed_auc >= pooled_auc - 0.03


def test_kept_round_is_the_best_aggregated_heldout_loss_and_curves_agree(default_run):
    summary, run, _ = default_run
    sel = summary["selection"]
    losses = {r["round"]: r["evaluate"]["eval-loss"] for r in summary["rounds"]}
    assert sel["criterion"] == "eval-loss"
    assert sel["kept_round"] == min(losses, key=losses.get)
    assert sel["value"] == pytest.approx(losses[sel["kept_round"]])
    assert f"round {sel['kept_round']} had the lowest" in sel["reason"]
    assert [r["kept"] for r in summary["rounds"]].count(True) == 1
    spec = json.loads((run / "checkpoints" / "model.json").read_text())
    assert spec["federated"]["kept_round"] == sel["kept_round"]
    # server-side cosine schedule: lr in round 1, lr * lr_min_fraction in the last round
    lrs = [r["lr"] for r in summary["rounds"]]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))

    curves = pd.read_csv(run / "round_curves.csv")
    assert len(curves) == 12 * 4  # 3 sites + the aggregate per round
    agg = curves[curves["site"] == "all sites"].set_index("round")
    sites = curves[curves["site"] != "all sites"]
    for rnd, g in sites.groupby("round"):
        # the aggregate held-out loss is the held-out-count weighted mean of the sites' losses
        want = float((g["eval-loss"] * g["n-eval"]).sum() / g["n-eval"].sum())
        assert agg.loc[rnd, "eval-loss"] == pytest.approx(want, rel=1e-6)
        assert agg.loc[rnd, "eval-loss"] == pytest.approx(losses[rnd], rel=1e-6)
        want_tr = float((g["train-loss"] * g["n-train"]).sum() / g["n-train"].sum())
        assert agg.loc[rnd, "train-loss"] == pytest.approx(want_tr, rel=1e-6)
    assert agg["kept"].sum() == 1 and int(agg.index[agg["kept"]][0]) == sel["kept_round"]
    assert agg["responder.pooled_auroc"].notna().all()


def test_report_shows_kept_round_and_round_curves(default_run):
    import base64
    import io
    import re

    from PIL import Image

    from pathstrat.report import build_report, fmt

    summary, run, _ = default_run
    html = build_report(run, n_boot=20).read_text()
    part = html.split('<section id="config">')[1].split("</section>")[0]
    sel = summary["selection"]
    assert f"Kept round {sel['kept_round']} of 12" in part and "lowest aggregated held-out" in part
    kept = next(r for r in summary["rounds"] if r["kept"])
    assert fmt(kept["evaluate"]["eval-loss"]) in part
    imgs = [Image.open(io.BytesIO(base64.b64decode(b)))
            for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', part)]
    assert len(imgs) == 1 and imgs[0].size[0] > 400


def test_lr_schedules_and_selector_rules():
    from pathstrat.federated.selection import RoundSelector, lr_for_round

    cos = quality_config(rounds=5, lr=1.0, lr_min_fraction=0.2)
    assert [lr_for_round(cos, r) for r in range(1, 6)] == pytest.approx(
        [0.2 + 0.4 * (1 + np.cos(np.pi * k / 4)) for k in range(5)])
    step = quality_config(rounds=9, lr=1.0, lr_schedule="step", lr_step_rounds=3, lr_min_fraction=0.3)
    assert [lr_for_round(step, r) for r in range(1, 10)] == pytest.approx(
        [1, 1, 1, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3])
    assert lr_for_round(quality_config(lr_schedule="constant"), 7) == pytest.approx(1e-3)

    # early stopping: patience 2 stops at the 2nd round without improvement; NaN rounds don't count
    sel = RoundSelector(quality_config(patience=2))
    seq = [0.9, 0.7, float("nan"), 0.8, 0.75]
    stops = [sel.update(r, {"eval-loss": v}, f"w{r}") for r, v in enumerate(seq, 1)]
    assert stops == [False, False, False, False, True]
    assert sel.kept() == (2, "w2") and sel.summary()["stopped_early"]
    # pooled AUROC criterion, ties broken by the lower loss
    sel = RoundSelector(quality_config(selection="pooled_auroc"))
    for r, (auc, loss) in enumerate([(0.8, 0.5), (0.9, 0.6), (0.9, 0.4), (0.85, 0.3)], 1):
        sel.update(r, {"responder.pooled_auroc": auc, "eval-loss": loss}, r)
    assert sel.kept() == (3, 3) and sel.criterion == "responder.pooled_auroc"
    # nothing evaluated: the last round is kept, and the reason says so
    sel = RoundSelector(quality_config())
    sel.update(1, {}, "a")
    sel.update(2, {"num-examples": 0.0}, "b")
    assert sel.kept() == (2, "b") and "nothing was evaluated" in sel.summary()["reason"]


def test_early_stopping_ends_the_federation(ext_cohort):
    """patience=1 with a constant, too high learning rate: the run stops at the first round whose
    held-out loss does not improve and keeps the round before it."""
    from pathstrat.federated import simulate, split_sites

    fdir, train, _, out = ext_cohort
    small = pd.read_csv(train).groupby("site").head(16)
    small.to_csv(out / "small.csv", index=False)
    sites = split_sites(out / "small.csv", out / "small_split", features_dir=fdir)
    fed = quality_config(model="meanpool", hparams={"dim": 16}, rounds=10, local_epochs=3, lr=2e-2,
                         lr_schedule="constant", patience=1)
    summary = simulate(fed, sites, out / "es_run", backend="inprocess")
    losses = [r["evaluate"]["eval-loss"] for r in summary["rounds"]]
    sel = summary["selection"]
    n = len(losses)
    assert n < 10 and sel["stopped_early"] and sel["last_round"] == n
    assert losses[-1] >= losses[-2] - 1e-9  # the round that did not improve ended it
    assert all(b < a for a, b in zip(losses[:-1], losses[1:-1], strict=False))
    assert sel["kept_round"] == n - 1 and "stopped early after round" in sel["reason"]


# --- non-finite inputs and updates (issue 11, item 1) ------------------------------------------

def _poison(path: Path, n_bad: int = 3, value: float = float("nan")) -> None:
    """Rewrite one feature file with ``n_bad`` tiles holding ``value``."""
    from pathstrat.features import read_bag, write_features

    bag = read_bag(path, load_views=False)
    feats = np.array(bag.features, dtype=np.float32)
    feats[:n_bad, 0] = value
    write_features(path, feats.astype(np.float16), np.asarray(bag.coords), dict(bag.attrs))


@pytest.fixture
def small_sites(ext_cohort, tmp_path):
    """Three sites of 8 patients each on a private copy of their feature files."""
    import shutil

    from pathstrat.federated import split_sites

    fdir, train, _, _ = ext_cohort
    df = pd.read_csv(train).groupby("site").head(8)
    own = tmp_path / "features"
    own.mkdir()
    for sid in df["slide_id"]:
        shutil.copy(fdir / f"{sid}.h5", own / f"{sid}.h5")
    df["path"] = [str(own / f"{s}.h5") for s in df["slide_id"]]
    df.to_csv(tmp_path / "m.csv", index=False)
    return split_sites(tmp_path / "m.csv", tmp_path / "split", features_dir=own), df, own


def small_config(**kw) -> FederationConfig:
    return quality_config(**{"model": "meanpool", "hparams": {"dim": 16}, "rounds": 3,
                             "local_epochs": 1, **kw})


def test_site_with_nonfinite_features_is_refused(small_sites, tmp_path):
    from pathstrat.federated import simulate
    from pathstrat.federated.site import LocalSite, SiteRefusedError

    sites, df, own = small_sites
    bad_sid = df[df["site"] == "B"]["slide_id"].iloc[2]
    _poison(own / f"{bad_sid}.h5", n_bad=3, value=float("inf"))
    with pytest.raises(SiteRefusedError, match=rf"{bad_sid}\.h5 \(3 of \d+ tiles\)") as info:
        LocalSite(sites[1], small_config())
    assert "NaN or infinite" in str(info.value) and "pathstrat embed" in str(info.value)
    assert bad_sid not in info.value.public and str(own) not in info.value.public

    summary = simulate(small_config(), sites, tmp_path / "run", backend="inprocess")
    assert list(summary["refused"]) == ["B"]
    assert "1 of its feature files contain NaN or infinite values" in summary["refused"]["B"]
    assert sorted(s["name"] for s in summary["sites"]) == ["A", "C"]
    assert bad_sid not in json.dumps(summary)
    from safetensors.torch import load_file

    w = load_file(str(tmp_path / "run" / "checkpoints" / "fold0.safetensors"))
    assert all(bool(np.isfinite(v.numpy()).all()) for v in w.values())


def _corrupt_mod(site_index: int, from_round: int, how: str = "nan"):
    """A ClientApp mod that replaces one site's training update by NaN, or (``how="shorter"``)
    drops the last value of every array (a broken or hostile site, another model)."""
    import torch

    def mod(msg, context, call_next):
        reply = call_next(msg, context)
        nc = dict(context.node_config)
        rnd = int(msg.content["config"].get("server-round", 0)) if "config" in msg.content else 0
        if (msg.metadata.message_type == "train" and int(nc.get("partition-id", -1)) == site_index
                and rnd >= from_round and not reply.has_error()):
            from flwr.app import ArrayRecord

            arrays = reply.content["arrays"].to_torch_state_dict()
            if how == "shorter":
                arrays = {k: v.reshape(-1)[:-1].clone() for k, v in arrays.items()}
            else:
                arrays = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                          for k, v in arrays.items()}
            reply.content["arrays"] = ArrayRecord(arrays)
        return reply

    return mod


def test_server_rejects_an_update_that_does_not_fit_the_global_model(small_sites, tmp_path):
    """A reply one value short (packed weights of another model) is refused before aggregation
    with a reason naming the sizes, never broadcast or reshaped; the federation goes on."""
    from pathstrat.federated import simulate

    sites, _, _ = small_sites
    summary = simulate(small_config(selection="last", rounds=2), sites, tmp_path / "run",
                       backend="inprocess",
                       extra_client_mods=[_corrupt_mod(site_index=1, from_round=1, how="shorter")])
    assert [(r["round"], r["site"]) for r in summary["rejected_updates"]] == [(1, "B"), (2, "B")]
    reason = summary["rejected_updates"][0]["reason"]
    assert "does not fit the global model" in reason and "expected" in reason
    assert all(r["aggregated"] for r in summary["rounds"])  # A and C still aggregated


def test_server_rejects_nonfinite_update_and_records_the_site_as_failed(small_sites, tmp_path):
    from safetensors.torch import load_file

    from pathstrat.federated import simulate
    from pathstrat.federated.site import GlobalState, build_global_model

    sites, df, _ = small_sites
    fed = small_config(selection="last")
    summary = simulate(fed, sites, tmp_path / "run", backend="inprocess",
                       extra_client_mods=[_corrupt_mod(site_index=2, from_round=2)])
    rounds = {r["round"]: r for r in summary["rounds"]}
    assert rounds[1]["failed_sites"] == []
    assert rounds[2]["failed_sites"] == ["C"] and rounds[3]["failed_sites"] == ["C"]
    assert [(r["round"], r["site"]) for r in summary["rejected_updates"]] == [(2, "C"), (3, "C")]
    errs = [e for e in summary["events"] if e.get("error")]
    assert {(e["round"], e["site"], e["type"]) for e in errs} == {(2, "C", "train"), (3, "C", "train")}
    assert all("non-finite model update" in e["error"] for e in errs)
    w = load_file(str(tmp_path / "run" / "checkpoints" / "fold0.safetensors"))
    assert all(bool(np.isfinite(v.numpy()).all()) for v in w.values())
    # the global model still moved in rounds 2-3 (A and B aggregated), and C still evaluated it
    w0 = build_global_model(fed, GlobalState.from_dict(summary["agreed"])).state_dict()
    assert any(float((w[k] - w0[k]).abs().max()) > 0 for k in w)
    assert rounds[3]["evaluate"]["num-examples"] == sum(s["n_eval"] for s in summary["sites"])
    assert np.isfinite(rounds[3]["evaluate"]["eval-loss"])
    curves = pd.read_csv(tmp_path / "run" / "round_curves.csv")
    c = curves[curves["site"] == "C"].set_index("round")["failed"]
    assert c.to_dict() == {1: False, 2: True, 3: True}


def test_rounds_never_report_a_heldout_loss_when_nothing_was_evaluated(small_sites, tmp_path):
    """Sites with no held-out patients: no eval-loss at all (never 0.0), the last round is kept."""
    from pathstrat.federated import simulate
    from pathstrat.federated.site import GlobalState, LocalSite, build_global_model

    sites, _, _ = small_sites
    fed = small_config(holdout_fraction=0.0)
    local = LocalSite(sites[0], fed)
    w0 = build_global_model(fed, GlobalState({"responder": {"pos_weight": [1.0]}}, {})).state_dict()
    m = local.evaluate(w0, GlobalState({"responder": {"pos_weight": [1.0]}}, {}))
    assert m["num-examples"] == 0 and np.isnan(m["eval-loss"])
    summary = simulate(fed, sites, tmp_path / "run", backend="inprocess")
    for r in summary["rounds"]:
        assert "eval-loss" not in r["evaluate"], r["evaluate"]
        assert r["failed_sites"] == [] and "train-loss" in r["train"]
    sel = summary["selection"]
    assert sel["kept_round"] == 3 and "nothing was evaluated" in sel["reason"]


# --- site feature cache shared between ClientApp processes (issue 13, fast rounds) -------------

def test_site_cache_is_reused_across_processes_and_invalidated_by_changes(small_sites, tmp_path):
    import os
    import subprocess
    import sys

    from pathstrat.federated.site import GlobalState, LocalSite, build_global_model
    from pathstrat.federated.sitecache import cache_key

    sites, df, own = small_sites
    cache = tmp_path / "cache"
    site = sites[0].model_copy(update={"cache_dir": cache})
    fed = small_config()
    plain = LocalSite(sites[0], fed)  # reads the feature files, no cache
    first = LocalSite(site, fed)  # reads the files and writes the cache entry
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "features.npy").exists()
    # another process finds the entry (a fresh flwr-clientapp process does the same)
    code = ("import sys, pandas as pd; from pathlib import Path; "
            "from pathstrat.cohort import load_manifest; "
            "from pathstrat.federated.sitecache import load_cached_store; "
            "m = Path(sys.argv[1]); df = load_manifest(m, check_files=False); "
            "s, hit = load_cached_store(m, df, Path(sys.argv[2]), 'slide', Path(sys.argv[3]), "
            "lambda: sys.exit('cache miss')); print(hit, len(s), s.dim)")
    proc = subprocess.run([sys.executable, "-c", code, str(site.manifest), str(site.features_dir),
                           str(cache)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", str(len(plain.store)), str(plain.store.dim)]
    cached = LocalSite(site, fed)
    assert cached.store.attrs["cache"] == str(entries[0])
    # the cached store is the same data: bags, table, splits and the model's metrics
    pd.testing.assert_frame_equal(cached.store.table, plain.store.table)
    for a, b in zip(cached.store.bags, plain.store.bags, strict=True):
        assert (a.key, a.slide_ids, a.offsets) == (b.key, b.slide_ids, b.offsets)
        np.testing.assert_array_equal(a.features.numpy(), b.features.numpy())
        np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(cached.train_idx, plain.train_idx)
    state = GlobalState({"responder": {"pos_weight": [1.0]}}, {})
    w = build_global_model(fed, state).state_dict()
    assert cached.evaluate(w, state)["eval-loss"] == plain.evaluate(w, state)["eval-loss"]
    assert first.store.attrs.get("cache") is None  # the first load read the feature files
    # re-embedding one slide (new bytes, new mtime) or editing the manifest makes a new key
    key0 = cache_key(site.manifest, plain.store.table, site.features_dir, "slide")
    sid = df[df["site"] == "A"]["slide_id"].iloc[0]
    _poison(own / f"{sid}.h5", n_bad=1, value=0.5)
    os.utime(own / f"{sid}.h5", ns=(1, 10**18))
    assert cache_key(site.manifest, plain.store.table, site.features_dir, "slide") != key0
    fresh = LocalSite(site, fed)
    assert fresh.store.attrs["cache"] != str(entries[0])
    bag = next(b for b in fresh.store.bags if b.key == sid)
    assert float(bag.features[0, 0]) == 0.5  # the new entry holds the re-embedded slide
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2


def test_site_cache_on_by_default_for_supernodes_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHSTRAT_SITE_CACHE", str(tmp_path / "c"))
    nc = {"site-name": "A", "manifest": str(tmp_path / "m.csv"), "features-dir": str(tmp_path)}
    assert SiteConfig.from_node_config(nc).cache_dir == tmp_path / "c"
    assert SiteConfig.from_node_config({**nc, "cache-dir": "off"}).cache_dir is None
    assert SiteConfig.from_node_config({**nc, "cache-dir": str(tmp_path / "x")}).cache_dir == tmp_path / "x"
    assert SiteConfig(name="A", manifest=tmp_path / "m.csv", features_dir=tmp_path).cache_dir is None


# --- privacy accounting against an independent accountant (issue 13) ---------------------------

@pytest.mark.parametrize(("z", "clip", "rounds", "delta"),
                         [(1.0, 1.0, 1, 1e-5), (1.0, 0.05, 20, 1e-5), (2.0, 3.0, 50, 1e-6),
                          (0.8, 1.0, 10, 1e-5)])
def test_reported_epsilon_matches_dp_accounting(z, clip, rounds, delta):
    """The (epsilon, delta) of client-side fixed clipping (per round a Gaussian mechanism with
    sensitivity C/m and noise std z*C/m, i.e. noise multiplier z) against Google's dp-accounting:
    equal to its privacy-loss-distribution accountant (tight for Gaussian composition) and never
    above its RDP accountant's bound. The clipping norm scales sensitivity and noise alike."""
    dpa = pytest.importorskip("dp_accounting", reason="needs dp-accounting (the [dev] extra)")
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    from pathstrat.federated.privacy import dp_guarantee

    g = dp_guarantee(z, clip, rounds, delta)
    event = dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z), rounds)
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(event)
    rdp = rdp_privacy_accountant.RdpAccountant()
    rdp.compose(event)
    assert g.epsilon_total == pytest.approx(pld.get_epsilon(delta), rel=1e-3)
    assert g.epsilon_total <= rdp.get_epsilon(delta)
    one = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    one.compose(dpa.GaussianDpEvent(z))
    assert g.epsilon_per_round == pytest.approx(one.get_epsilon(delta), rel=1e-3)


def test_no_sampling_amplification_is_claimed():
    """With fraction_train < 1 the reported epsilon stays the unsampled one: an upper bound on what
    an accountant credits for sampling the sites (Poisson, rate q)."""
    dpa = pytest.importorskip("dp_accounting", reason="needs dp-accounting (the [dev] extra)")
    from dp_accounting.pld import pld_privacy_accountant

    from pathstrat.federated.privacy import dp_guarantee

    g = dp_guarantee(1.0, 1.0, 20, 1e-5)
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.5, dpa.GaussianDpEvent(1.0)), 20))
    assert pld.get_epsilon(1e-5) < g.epsilon_total


def test_evaluate_with_train_gives_the_same_rounds_with_half_the_messages(small_sites, tmp_path):
    """Held-out metrics carried by the next train message (one message per site and round):
    the same global models, the same per-round held-out metrics and the same kept round as
    separate evaluate messages; only the last round sends an evaluate message."""
    from safetensors.torch import load_file

    from pathstrat.federated import simulate

    sites, _, _ = small_sites
    base = simulate(small_config(rounds=4), sites, tmp_path / "two", backend="inprocess")
    fused = simulate(small_config(rounds=4, evaluate_with_train=True), sites, tmp_path / "one",
                     backend="inprocess")
    kinds = pd.Series([e["type"] for e in fused["events"]]).value_counts().to_dict()
    assert kinds == {"train": 12, "evaluate": 3}
    assert pd.Series([e["type"] for e in base["events"]]).value_counts().to_dict() == {
        "train": 12, "evaluate": 12}
    for a, b in zip(base["rounds"], fused["rounds"], strict=True):
        for k in ("eval-loss", "responder.auroc", "responder.pooled_auroc", "num-examples"):
            assert b["evaluate"][k] == pytest.approx(a["evaluate"][k], rel=1e-5, abs=1e-7), (a["round"], k)
        assert b["train"]["train-loss"] == pytest.approx(a["train"]["train-loss"], rel=1e-6)
    assert fused["selection"]["kept_round"] == base["selection"]["kept_round"]
    wa = load_file(str(tmp_path / "two" / "checkpoints" / "fold0.safetensors"))
    wb = load_file(str(tmp_path / "one" / "checkpoints" / "fold0.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6
    ca = pd.read_csv(tmp_path / "two" / "round_curves.csv")
    cb = pd.read_csv(tmp_path / "one" / "round_curves.csv")
    pd.testing.assert_frame_equal(ca[["round", "site", "n-eval", "eval-loss"]],
                                  cb[["round", "site", "n-eval", "eval-loss"]], rtol=1e-5)
