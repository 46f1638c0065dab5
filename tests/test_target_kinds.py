"""Registry-driven contract tests for every target kind (pathstrat.mil.kinds.KINDS).

Each check runs on the kind's own example labels (``TargetKind.example``) and compares with an
independent computation: scikit-learn / lifelines metrics from the manifest labels, the pooled
fit against two sites' shared counts, the fold assignment of a patient-grouped split. The checks
are plain functions so that a kind registered inside a test (the toy kind at the end) runs
through the same matrix; a kind module in ``pathstrat/mil/kinds/`` is imported with the package,
so it is in ``KINDS.names()`` when the matrix below is parametrised.
"""

from __future__ import annotations

import importlib
import json
import pkgutil

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines.utils import concordance_index
from scipy.stats import pearsonr
from sklearn import metrics as skm

from pathstrat.errors import ConfigError, ManifestError
from pathstrat.federated import stats as S
from pathstrat.metrics import METRIC_SETS
from pathstrat.mil import kinds as kinds_pkg
from pathstrat.mil.kinds import KINDS, TargetKind
from pathstrat.mil.kinds.regression import Regression
from pathstrat.mil.losses import make_loss
from pathstrat.mil.targets import TargetSpec, infer_target
from pathstrat.testing import _memory_store
from pathstrat.training.evaluation import compute_metrics, prediction_rows
from pathstrat.training.splits import make_splits, strata

N = 48
NAMES = KINDS.names()


# --- independent references per metric set (manifest labels + the rows' scores) --------------


def _manifest_labels(spec: TargetSpec, df: pd.DataFrame, label: str) -> np.ndarray:
    col = label if label in df.columns else spec.columns[0]
    v = df[col]
    if spec.classes and spec.impl.metric_set == "binary":  # class index of the manifest value
        return np.array([np.nan if pd.isna(x) else spec.classes.index(x) for x in v], float)
    return v.to_numpy()


def _ref_binary(spec, df, label, rows):
    y = _manifest_labels(spec, df, label).astype(float)
    s = rows["score"].to_numpy(float)
    ok = ~np.isnan(y)
    y, s = y[ok].astype(int), s[ok]
    return {"auroc": skm.roc_auc_score(y, s), "auprc": skm.average_precision_score(y, s),
            "brier": skm.brier_score_loss(y, s), "accuracy": skm.accuracy_score(y, s >= 0.5),
            "balanced_accuracy": skm.balanced_accuracy_score(y, s >= 0.5),
            "f1": skm.f1_score(y, s >= 0.5)}


def _ref_multiclass(spec, df, label, rows):
    y = df[spec.columns[0]]
    ok = y.notna().to_numpy()
    probs = rows[[f"prob_{c}" for c in spec.classes]].to_numpy(float)[ok]
    yi = np.array([spec.classes.index(v) for v in y[ok]])
    pred = probs.argmax(1)
    return {"accuracy": skm.accuracy_score(yi, pred),
            "balanced_accuracy": skm.balanced_accuracy_score(yi, pred),
            "auroc": skm.roc_auc_score(yi, probs, multi_class="ovr", average="macro")}


def _ref_regression(spec, df, label, rows):
    y = pd.to_numeric(df[spec.columns[0]], errors="coerce").to_numpy(float)
    s = rows["score"].to_numpy(float)
    ok = ~np.isnan(y)
    return {"mae": skm.mean_absolute_error(y[ok], s[ok]),
            "rmse": float(np.sqrt(skm.mean_squared_error(y[ok], s[ok]))),
            "pearson_r": float(pearsonr(y[ok], s[ok])[0])}


def _ref_survival(spec, df, label, rows):
    t, e = df[spec.time_col].to_numpy(float), df[spec.event_col].to_numpy(float)
    return {"c_index": concordance_index(t, -rows["risk"].to_numpy(float), e)}


REFERENCE = {"binary": _ref_binary, "multiclass": _ref_multiclass, "regression": _ref_regression,
             "survival": _ref_survival}


# --- the checks (one per contract) -------------------------------------------------------------


def check_declaration(name: str) -> None:
    impl = KINDS.get(name)
    assert isinstance(impl, TargetKind) and impl.name == name
    spec, df = impl.example(N, seed=1)
    assert spec.kind == name and spec.impl is impl
    d = spec.to_dict()
    assert TargetSpec.from_dict(json.loads(json.dumps(d))) == spec  # model.json round trip
    assert spec.n_outputs >= 1 and spec.label_names
    assert set(spec.needed_columns) <= set(df.columns)
    assert impl.metric_set in METRIC_SETS
    assert impl.metric_set in REFERENCE, f"add an independent reference for metric set {impl.metric_set}"


def _fit_free_logits(spec: TargetSpec, y: np.ndarray, state: dict, steps: int = 200):
    """Optimise one free logit vector per patient on the kind's loss (trivially learnable)."""
    torch.manual_seed(0)
    logits = torch.nn.Parameter(0.01 * torch.randn(len(y), spec.n_outputs))
    loss_fn = make_loss([spec], {spec.name: state})
    opt = torch.optim.Adam([logits], lr=0.1)
    target = torch.from_numpy(y)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        total, _ = loss_fn({spec.name: logits}, {spec.name: target})
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    return logits.detach().numpy().astype(np.float32), losses


def check_fit_encode_decode(name: str) -> None:
    spec, df = KINDS.get(name).example(N, seed=2)
    train = df.iloc[: N * 2 // 3]
    state = spec.fit_raw(train)
    assert json.loads(json.dumps(state)) == state  # the fold state is plain JSON (checkpoints)
    rev = spec.fit_raw(train.iloc[::-1])  # a set function of the training fold
    assert set(rev) == set(state)
    for k, v in state.items():
        np.testing.assert_allclose(rev[k], v, rtol=1e-9, err_msg=k)
    y = spec.encode(df, state)
    assert y.dtype == np.float32 and len(y) == N
    perm = np.random.default_rng(0).permutation(N)
    np.testing.assert_array_equal(spec.encode(df.iloc[perm], state), y[perm])  # row-wise
    before = spec.impl.epoch_metric(spec, y, _scores(spec, state))[1](np.arange(N), {
        spec.name: np.zeros((N, spec.n_outputs), np.float32)})
    logits, losses = _fit_free_logits(spec, y, state)
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], losses[::40]
    mname, fn = spec.impl.epoch_metric(spec, y, _scores(spec, state))
    after = fn(np.arange(N), {spec.name: logits})
    assert after >= 0.75, (mname, after)
    assert np.isnan(before) or after > before + 0.2, (mname, before, after)
    scores = spec.decode_with_state(logits, state)
    assert len(scores) == N and np.isfinite(scores).all()


def _scores(spec, state):
    return lambda i, o: np.asarray(spec.decode_with_state(o[spec.name][i], state), float)


def _rows(spec: TargetSpec, df: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    store = _memory_store([np.zeros((1, 2), np.float32) for _ in range(len(df))])
    store.table = pd.concat([store.table, df.drop(columns="patient_id").reset_index(drop=True)], axis=1)
    return pd.DataFrame(prediction_rows(store, np.arange(len(df)), {spec.name: scores}, [spec],
                                        fold=0, repeat=0))


def check_metrics_match_reference(name: str) -> None:
    spec, df = KINDS.get(name).example(N, seed=3)
    state = spec.fit_raw(df)
    logits = np.random.default_rng(4).normal(size=(N, spec.n_outputs)).astype(np.float32)
    pred = _rows(spec, df, spec.decode_with_state(logits, state))
    assert set(pred["target"]) == set(spec.label_names)
    metrics, folds = compute_metrics(pred, [spec], n_boot=20, seed=0)
    assert set(metrics) == set(spec.label_names)
    assert all(spec.impl.primary_metric in metrics[label] for label in spec.label_names)
    ref_fn = REFERENCE[spec.impl.metric_set]
    for label in spec.label_names:
        rows = pred[pred["target"] == label].reset_index(drop=True)
        ref = ref_fn(spec, df, label, rows)
        checked = [k for k in ref if k in metrics[label]]
        assert checked, (label, sorted(metrics[label]))
        for k in checked:
            assert metrics[label][k]["mean"] == pytest.approx(ref[k], abs=1e-9), (label, k)
            assert metrics[label][k]["n"] == N


def check_strata(name: str) -> None:
    spec, df = KINDS.get(name).example(N, seed=5)
    col, method = spec.impl.strata(spec)
    assert col in spec.needed_columns  # strata follow the label
    s = strata(df, col, method)
    assert s.shape == (N,) and s.dtype.kind == "i"
    labelled = df[col].notna().to_numpy()
    assert len(np.unique(s[labelled])) >= 2
    folds = make_splits(df, folds=3, seed=0, strat_col=col, strat_kind=method)
    assert folds["patient_id"].is_unique and set(folds["patient_id"]) == set(df["patient_id"])
    fold_of = folds.set_index("patient_id")["fold"].reindex(df["patient_id"]).to_numpy()
    for v in np.unique(s):  # every stratum with enough patients reaches every test fold
        if (s == v).sum() >= 3:
            assert set(fold_of[s == v]) == {0, 1, 2}, (v, fold_of[s == v])


def _stat_values(m: dict) -> dict:
    return {k: np.asarray(v, float) for k, v in m.items()}


def check_federated_statistics(name: str) -> None:
    spec, df = KINDS.get(name).example(N, seed=6)
    edges = S.time_grid(float(df[spec.time_col].max()) * 1.01, 4000) if spec.time_col else None
    a, b = df.iloc[:20], df.iloc[20:]
    sa, sb = spec.impl.site_stats(spec, a, edges=edges), spec.impl.site_stats(spec, b, edges=edges)
    # no patient-level data: counts that are additive over patients and blind to their order
    blob = json.dumps([sa, sb])
    assert not any(p in blob for p in df["patient_id"])
    m2, c2 = spec.impl.site_stats(spec, pd.concat([a, a]), edges=edges)
    m1, c1 = sa
    assert c2 == c1 and set(m2) == set(m1)
    for k, v in _stat_values(m1).items():
        np.testing.assert_allclose(_stat_values(m2)[k], 2 * v, err_msg=k)
    ms, _ = spec.impl.site_stats(spec, a.iloc[::-1], edges=edges)
    for k, v in _stat_values(m1).items():
        np.testing.assert_allclose(_stat_values(ms)[k], v, rtol=1e-12, err_msg=k)
    # two sites' counts give the counts (and the state) of one site holding all patients
    merged = S.merge_site_stats([sa, sb])
    state, classes = spec.impl.global_state(spec, merged, edges=edges, balanced=True)
    one, _ = spec.impl.global_state(spec, S.merge_site_stats([spec.impl.site_stats(spec, df, edges=edges)]),
                                    edges=edges, balanced=True)
    assert set(state) == set(one)
    for k, v in one.items():  # equal up to the order of floating-point sums
        np.testing.assert_allclose(state[k], v, rtol=1e-12, atol=0, err_msg=k)
    pooled = spec.fit_raw(df)
    assert set(state) == set(pooled)
    if not spec.impl.needs_time_grid:  # and the pooled fit itself (binned times: next test)
        for k, v in pooled.items():
            np.testing.assert_allclose(state[k], v, atol=1e-9, rtol=1e-9, err_msg=k)
    assert classes is None  # the example declares its classes
    # evaluation metrics of a site: fixed keys, and equal to the reference where named alike
    logits = np.random.default_rng(7).normal(size=(N, spec.n_outputs)).astype(np.float32)
    score = spec.decode_with_state(logits, pooled)
    out = spec.impl.federated_metrics(spec, df, score, spec.encode(df, pooled), 20)
    assert f"{spec.name}.n" in out and all(k.startswith(f"{spec.name}.") for k in out)
    assert not any(p in json.dumps(out) for p in df["patient_id"])
    rows = _rows(spec, df, score)
    for label in spec.label_names:
        ref = REFERENCE[spec.impl.metric_set](spec, df, label, rows[rows["target"] == label]
                                              .reset_index(drop=True))
        for k, v in ref.items():
            if f"{spec.name}.{k}" in out and len(spec.label_names) == 1:
                assert out[f"{spec.name}.{k}"] == pytest.approx(v, abs=1e-9), k


def test_discrete_cuts_from_two_sites_are_pooled_quantiles_to_one_bin():
    spec, df = KINDS.get("discrete").example(N, seed=6)
    edges = S.time_grid(float(df["time"].max()) * 1.01, 4000)
    sites = [spec.impl.site_stats(spec, d, edges=edges) for d in (df.iloc[:20], df.iloc[20:])]
    state, _ = spec.impl.global_state(spec, S.merge_site_stats(sites), edges=edges, balanced=True)
    ev = df.loc[df["event"] == 1, "time"].to_numpy(float)
    want = np.quantile(ev, [0.25, 0.5, 0.75], method="inverted_cdf")  # the histogram's quantile
    np.testing.assert_allclose(state["cuts"], want, atol=edges[1] - edges[0])


CHECKS = [check_declaration, check_fit_encode_decode, check_metrics_match_reference, check_strata,
          check_federated_statistics]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_kind_contract(check, name):
    check(name)


# --- registry structure --------------------------------------------------------------------------


def test_builtin_kinds_and_one_module_each():
    assert {"binary", "multiclass", "multilabel", "regression", "cox", "discrete"} <= set(NAMES)
    for mod in pkgutil.iter_modules(kinds_pkg.__path__):
        if mod.name == "base":
            continue
        m = importlib.import_module(f"pathstrat.mil.kinds.{mod.name}")
        mine = [n for n, k in KINDS.items() if type(k).__module__ == m.__name__]
        assert mine == [mod.name], (mod.name, mine)  # a kind module registers its own name


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown kind 'ordinal'.*binary"):
        TargetSpec("y", "ordinal")
    df = pd.DataFrame({"t": [1.0, 2.0], "e": [1, 0]})
    with pytest.raises(ConfigError, match="'cox' or 'discrete'"):
        infer_target(df, "survival:weibull", time_col="t", event_col="e")
    with pytest.raises(ManifestError, match="Binary target 'g' needs exactly two values"):
        infer_target(pd.DataFrame({"g": ["a", "b", "c"]}), "g:binary")
    from pathstrat.federated.config import TargetDef

    with pytest.raises(ValueError, match="unknown target kind 'ordinal'"):
        TargetDef(name="y", kind="ordinal")


# --- hand references of the built-in decodings and losses ----------------------------------------


def test_builtin_decodings_by_hand():
    out = np.array([[0.0, 1.0, -2.0], [3.0, -1.0, 0.5]])
    sig = 1 / (1 + np.exp(-out))
    np.testing.assert_allclose(TargetSpec("y", "binary", classes=[0, 1]).decode(out[:, :1]), sig[:, 0])
    np.testing.assert_allclose(TargetSpec("m", "multilabel", columns=["a", "b", "c"]).decode(out), sig)
    soft = np.exp(out) / np.exp(out).sum(1, keepdims=True)
    np.testing.assert_allclose(TargetSpec("c", "multiclass", classes=list("ABC")).decode(out), soft)
    reg = TargetSpec("r", "regression")
    np.testing.assert_allclose(reg.decode_with_state(out[:, :1], {"mean": 10.0, "std": 2.0}),
                               10 + 2 * out[:, 0])
    cox = TargetSpec("s", "cox", time_col="t", event_col="e")
    np.testing.assert_allclose(cox.decode(out[:, :1]), out[:, 0])
    disc = TargetSpec("s", "discrete", time_col="t", event_col="e", n_bins=3)
    surv = np.cumprod(1 - sig, axis=1)
    np.testing.assert_allclose(disc.decode(out), -surv.sum(1))


def test_builtin_class_losses_by_hand():
    logits = torch.tensor([[0.3], [-1.2], [2.0], [0.1]])
    y = torch.tensor([1.0, 0.0, np.nan, 0.0])
    spec = TargetSpec("y", "binary", classes=[0, 1])
    loss = make_loss([spec], {"y": {"pos_weight": [2.0]}})({"y": logits}, {"y": y})[0]
    z, t = logits[:, 0].numpy()[[0, 1, 3]], np.array([1.0, 0.0, 0.0])
    want = np.mean(-(2.0 * t * np.log(1 / (1 + np.exp(-z))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-z)))))
    assert float(loss) == pytest.approx(want, rel=1e-6)
    mc = TargetSpec("c", "multiclass", classes=list("ABC"))
    lg = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.3, 0.1], [0.0, 2.0, 0.0]])
    yc = torch.tensor([0.0, 2.0, -1.0])
    w = np.array([0.5, 1.0, 3.0])
    got = make_loss([mc], {"c": {"class_weight": w.tolist()}})({"c": lg}, {"c": yc})[0]
    logp = lg.numpy() - np.log(np.exp(lg.numpy()).sum(1, keepdims=True))
    want = (w[0] * -logp[0, 0] + w[2] * -logp[1, 2]) / (w[0] + w[2])
    assert float(got) == pytest.approx(want, rel=1e-6)


# --- a kind registered by a test runs through the same matrix and through training ---------------


class Huber(Regression):
    """A toy kind: regression with the Huber loss (what a one-file kind looks like)."""

    name = "huber"

    def loss(self, spec, logits, y, *, pos_weight=None, class_weight=None, ties="efron"):
        import torch.nn.functional as F

        ok = ~y.isnan()
        return F.huber_loss(logits[:, 0][ok], y[ok], delta=1.0) if ok.any() else logits.sum() * 0.0

    def example(self, n, seed=0):
        spec, df = super().example(n, seed)
        return TargetSpec(spec.name, self.name), df


@pytest.fixture
def toy_kind(monkeypatch):
    monkeypatch.setitem(KINDS._entries, Huber.name, Huber())  # removed again after the test
    return Huber.name


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_toy_kind_runs_through_the_matrix(toy_kind, check):
    assert toy_kind in KINDS.names()
    check(toy_kind)


def test_toy_kind_trains_end_to_end(toy_kind, tmp_path):
    from pathstrat.federated.config import TargetDef
    from pathstrat.testing import make_feature_cohort
    from pathstrat.training import train_cv

    fdir, manifest = make_feature_cohort(tmp_path / "c", n_patients=24, dim=6, seed=0, tiles=(4, 8),
                                         tasks=("regression",))
    run = train_cv(features=str(fdir), manifest=str(manifest), targets=["score:huber"],
                   model="meanpool", folds=2, seed=0, out=str(tmp_path / "run"), epochs=2,
                   batch_size=8, n_boot=10, hparams={"dim": 8})
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["score"]) == {"mae", "pearson_r", "rmse"}
    model = json.loads((run / "checkpoints" / "model.json").read_text())
    assert [t["kind"] for t in model["targets"]] == ["huber"]
    assert TargetDef(name="score", kind="huber").spec().impl.name == "huber"
