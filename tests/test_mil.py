"""Registry-driven contract tests for every MIL model, losses, and the standard-MIL poison test."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
import torch

from pathstrat.errors import ConfigError, UnknownNameError
from pathstrat.mil import MODELS, build_model
from pathstrat.mil.losses import cox_ph_loss, discrete_nll, make_loss
from pathstrat.mil.targets import TargetSpec, infer_target

D = 8
HEADS = {"a": 1, "b": 3}
NAMES = MODELS.names()


def _small(name: str) -> dict:
    """The model's registered small settings (``register_model(..., test_hparams=...)``)."""
    hp = MODELS.get(name).test_hparams
    assert hp, f"MIL model '{name}' has no test_hparams: register_model(..., test_hparams={{...}})"
    return dict(hp)


# attention modes of the ABMIL family: HEADS has two heads, so the default ("auto") is
# per-target attention; the shared single-map mode is covered by its own cases
VARIANTS = {f"{n}[shared]": (n, {"attention": "shared"}) for n in ("abmil", "abmil_gated")}
# TransMIL's batched exact-attention path (bags of the suite fit 64 landmarks; its 4 test
# landmarks take the per-bag Nystrom path)
VARIANTS["transmil[exact]"] = ("transmil", {"num_landmarks": 64})
CASES = NAMES + sorted(VARIANTS)


def _model(case: str, seed: int = 0) -> torch.nn.Module:
    name, extra = VARIANTS.get(case, (case, {}))
    torch.manual_seed(seed)
    return build_model(name, D, HEADS, **{**_small(name), **extra})


def _claim(case: str) -> bool:
    return MODELS.get(VARIANTS.get(case, (case, {}))[0]).permutation_invariant


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 10, D, generator=g)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 4:] = False
    return x, mask


def test_every_model_has_small_settings_and_metadata():
    missing = [n for n in NAMES if not MODELS.get(n).test_hparams]
    assert not missing, (f"MIL model(s) {missing} registered without small test settings: add "
                         "register_model(..., test_hparams={'dim': 16, ...}) so the contract "
                         "suite stays fast")
    for name in NAMES:
        spec = MODELS.get(name)
        assert spec.citation and spec.description
        params = inspect.signature(spec.cls.__init__).parameters
        assert set(spec.defaults) <= set(params), name
        assert set(spec.test_hparams) <= set(params), name
        assert "test_hparams" not in spec.defaults, name
        assert set(spec.describe()) >= {"name", "standard_mil", "permutation_invariant", "defaults"}


def test_published_defaults():
    m = build_model("abmil_gated", 1024, {"y": 1})
    assert m.proj[0].out_features == 512 and m.attn.v[0].out_features == 256
    assert m.proj[2].p == 0.25 and m.attn.u is not None
    assert build_model("abmil", 1024, {"y": 1}).attn.u is None
    t = build_model("transmil", 64, {"y": 2})
    assert t.layer1.attn.m == 256 and t.layer1.attn.heads == 8


def test_transmil_batched_path_equals_the_per_bag_reference():
    """Whole-batch exact attention (packed tokens, masked keys, PPEG on zero-embedded grids,
    one summed PPEG kernel, banded sequence convolution, class-token-only last layer) computes
    the same embedding, attention and gradients as ``_one``, the paper's per-bag computation."""
    torch.manual_seed(0)
    m = build_model("transmil", D, HEADS, dim=16, n_heads=2, num_landmarks=64, dropout=0.0)
    sizes = [1, 2, 5, 9, 17, 30]  # squares of side 1..6, tile copies when not square
    x = torch.randn(len(sizes), 34, D, generator=torch.Generator().manual_seed(1)) * 3
    mask = torch.zeros(len(sizes), 34, dtype=torch.bool)
    for i, n in enumerate(sizes):
        mask[i, torch.randperm(34, generator=torch.Generator().manual_seed(i))[:n]] = True
    emb, att = m._packed(x, mask)
    ref = [m._one(x[i, mask[i]]) for i in range(len(sizes))]
    for i, (e, a) in enumerate(ref):
        torch.testing.assert_close(emb[i], e, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(att[i, mask[i]], a, rtol=1e-5, atol=1e-6)
        assert float(att[i, ~mask[i]].detach().abs().sum()) == 0.0
    grads = torch.autograd.grad(emb.pow(2).sum(), list(m.parameters()), allow_unused=True)
    ref_grads = torch.autograd.grad(sum(e.pow(2).sum() for e, _ in ref), list(m.parameters()),
                                    allow_unused=True)
    for (name, _), g, r in zip(m.named_parameters(), grads, ref_grads, strict=True):
        if r is None:
            assert g is None, name
            continue
        torch.testing.assert_close(g, r, rtol=1e-3, atol=5e-3 * float(r.abs().max()) + 1e-8, msg=name)


def test_unknown_model_and_hparam_errors():
    with pytest.raises(UnknownNameError, match="abmil"):
        build_model("abmill", D, HEADS)
    with pytest.raises(ConfigError, match="attn_dimm"):
        build_model("abmil", D, HEADS, attn_dimm=3)


@pytest.mark.parametrize("name", CASES)
def test_shapes_and_attention_normalised(name):
    model = _model(name).eval()
    x, mask = _batch()
    out = model(x, mask)
    assert {k: tuple(v.shape) for k, v in out.logits.items()} == {"a": (3, 1), "b": (3, 3)}
    assert out.attention.shape == (3, 10) and out.embedding.shape[0] == 3
    assert torch.allclose(out.attention.sum(1), torch.ones(3), atol=1e-5)
    assert (out.attention[~mask] == 0).all() and (out.attention >= 0).all()
    assert out.aux_loss.shape == () and float(out.aux_loss) == 0.0


@pytest.mark.parametrize("name", CASES)
def test_padding_does_not_change_outputs(name):
    model = _model(name).eval()
    x, mask = _batch()
    garbage = x.clone()
    garbage[~mask] = 1e3  # padded tiles hold junk: must be ignored
    out = model(garbage, mask)
    for b in range(3):
        n = int(mask[b].sum())
        alone = model(x[b : b + 1, :n], torch.ones(1, n, dtype=torch.bool))
        for k in HEADS:
            torch.testing.assert_close(out.logits[k][b], alone.logits[k][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.attention[b, :n], alone.attention[0], atol=1e-5, rtol=1e-4)
        if out.attention_branches is not None:
            torch.testing.assert_close(out.attention_branches[b, :, :n],
                                       alone.attention_branches[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_permutation_invariance_matches_claim(name):
    model = _model(name).eval()
    x, mask = _batch()
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    full = torch.ones(3, 10, dtype=torch.bool)
    a, b = model(x, full), model(x[:, perm], full)
    same = all(torch.allclose(a.logits[k], b.logits[k], atol=1e-5) for k in HEADS)
    assert same == _claim(name), (
        f"{name}: permutation invariance {same} but the registry claims {_claim(name)}")
    if same:
        torch.testing.assert_close(a.attention[:, perm], b.attention, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_every_parameter_gets_a_gradient(name):
    model = _model(name).train()
    x, mask = _batch()
    out = model(x, mask, bag_labels=torch.tensor([0, 1, 0]))
    loss = sum(v.sum() for v in out.logits.values()) + out.aux_loss
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, f"{name}: no gradient for {missing}"
    if name.startswith("clam"):
        assert float(out.aux_loss.detach()) > 0


@pytest.mark.parametrize("name", CASES)
def test_eval_mode_is_deterministic(name):
    m1, m2 = _model(name, seed=5).eval(), _model(name, seed=5).eval()
    x, mask = _batch()
    o1, o2, o3 = m1(x, mask), m1(x, mask), m2(x, mask)
    for k in HEADS:
        assert torch.equal(o1.logits[k], o2.logits[k]) and torch.equal(o1.logits[k], o3.logits[k])


@pytest.mark.parametrize("name", ["abmil", "abmil_gated"])
def test_per_target_attention_one_branch_per_head(name):
    """Multi-head ABMIL defaults to one attention branch per head; each head reads only its own
    attention-pooled embedding, and `attention` is the mean of the branches."""
    model = _model(name).eval()
    assert model.attention_mode == "per_target"
    x, mask = _batch()
    out = model(x, mask)
    assert out.branch_names == list(HEADS) and out.attention_branches.shape == (3, 2, 10)
    torch.testing.assert_close(out.attention_branches.sum(-1), torch.ones(3, 2))
    assert (out.attention_branches.permute(0, 2, 1)[~mask] == 0).all()
    torch.testing.assert_close(out.attention, out.attention_branches.mean(1))
    # head "a" is scored from branch 0 only: changing branch 1's attention scores leaves it alone
    with torch.no_grad():
        model.attn.w.weight[1] += 5.0
        model.attn.w.bias[1] -= 3.0
    out2 = model(x, mask)
    torch.testing.assert_close(out2.logits["a"], out.logits["a"])
    torch.testing.assert_close(out2.attention_branches[:, 0], out.attention_branches[:, 0])
    assert not torch.allclose(out2.logits["b"], out.logits["b"])
    # by hand: head b = linear layer on the branch-1 attention-weighted sum of projected tiles
    h = model.proj(x)
    emb_b = torch.einsum("bn,bne->be", out2.attention_branches[:, 1], h)
    torch.testing.assert_close(out2.logits["b"], model.heads.layers["b"](emb_b), atol=1e-5, rtol=1e-4)


def test_attention_mode_resolution_and_errors():
    single = build_model("abmil", D, {"y": 1}, **_small("abmil"))
    assert single.attention_mode == "shared" and single.attn.w.out_features == 1
    out = single.eval()(*_batch())
    assert out.attention_branches is None and out.branch_names is None
    forced = build_model("abmil_gated", D, {"y": 1}, attention="per_target", **_small("abmil"))
    assert forced.attention_mode == "per_target" and forced.eval()(*_batch()).branch_names == ["y"]
    assert build_model("abmil", D, HEADS, attention="shared").attn.w.out_features == 1
    assert build_model("abmil", D, {"a": 1, "b": 1, "c": 1}).attn.w.out_features == 3
    with pytest.raises(ConfigError, match="per_target"):
        build_model("abmil", D, HEADS, attention="per_head")


def test_standard_mil_poison_test_for_models_that_claim_it():
    """Raff & Holt (2023): a poison tile seen only in negative training bags must not be learned."""
    from pathstrat.testing import run_poison_test

    claimers = [n for n in NAMES if MODELS.get(n).standard_mil]
    assert claimers == ["maxpool"]  # see docs/mil.md for the measured table of every model
    for name in claimers:
        for seed in (0, 1):
            res = run_poison_test(name, seed=seed, epochs=25, **_small(name))
            assert res["train_auroc"] > 0.95, res  # it did learn the training task
            assert res["passed"], res


def test_poison_test_detects_a_model_that_uses_negative_evidence():
    """The test has teeth: mean pooling (no standard-MIL claim) learns the poison and fails."""
    from pathstrat.testing import run_poison_test

    res = run_poison_test("meanpool", seed=0, epochs=25, **_small("meanpool"))
    assert res["train_auroc"] > 0.95 and res["test_auroc"] < 0.75, res


# --- losses -----------------------------------------------------------------------------------

def test_cox_efron_equals_lifelines_partial_likelihood():
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(0)
    x = rng.standard_normal(80)
    t = np.round(rng.exponential(np.exp(-0.8 * x)) * 4) + 1  # many tied times
    e = (rng.random(80) < 0.7).astype(float)
    cph = CoxPHFitter().fit(pd.DataFrame({"x": x, "t": t, "e": e}), "t", "e")
    beta = torch.tensor(cph.params_["x"], dtype=torch.float64, requires_grad=True)
    loss = cox_ph_loss(beta * torch.tensor(x), torch.tensor(t), torch.tensor(e), "efron")
    assert -float(loss.detach()) * e.sum() == pytest.approx(cph.log_likelihood_, rel=1e-5)
    loss.backward()
    assert abs(float(beta.grad)) < 1e-3  # lifelines' estimate maximises our likelihood


def test_cox_breslow_by_hand_and_equal_to_efron_without_ties():
    risk = torch.tensor([0.5, -0.2, 0.1, 0.3])
    time = torch.tensor([1.0, 1.0, 2.0, 3.0])
    event = torch.tensor([1.0, 1.0, 1.0, 0.0])
    r = risk.double().numpy()
    ex = np.exp(r)
    ll = (r[0] + r[1] - 2 * np.log(ex.sum())) + (r[2] - np.log(ex[2:].sum()))
    assert float(cox_ph_loss(risk, time, event, "breslow")) == pytest.approx(-ll / 3, rel=1e-5)
    distinct = torch.tensor([1.0, 1.5, 2.0, 3.0])
    assert float(cox_ph_loss(risk, distinct, event, "breslow")) == pytest.approx(
        float(cox_ph_loss(risk, distinct, event, "efron")), rel=1e-6)
    assert float(cox_ph_loss(risk, time, torch.zeros(4))) == 0.0


def test_discrete_nll_by_hand():
    logits = torch.tensor([[0.2, -0.1, 0.4], [1.0, 0.0, -1.0]])
    h = torch.sigmoid(logits).double()
    # patient 0: event in bin 1; patient 1: censored in bin 0
    want = (-(torch.log(1 - h[0, 0]) + torch.log(h[0, 1])) - torch.log(1 - h[1, 0])) / 2
    got = discrete_nll(logits, torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert float(got) == pytest.approx(float(want), rel=1e-5)


def test_missing_labels_are_masked_and_class_weights_balance():
    df = pd.DataFrame({"m1": [1, 0, np.nan, 1], "m2": [np.nan, 1, 0, 0], "y": [1, 0, 0, 0]})
    ml = infer_target(df, "m1,m2")
    assert ml.kind == "multilabel" and ml.n_outputs == 2
    y = torch.tensor(ml.encode(df))
    loss = make_loss([ml], weighting=None)
    logits = torch.zeros(4, 2, requires_grad=True)
    total, _ = loss({ml.name: logits}, {ml.name: y})
    assert float(total) == pytest.approx(np.log(2), rel=1e-6)  # mean over the 6 known labels
    total.backward()
    assert logits.grad[2, 0] == 0 and logits.grad[0, 1] == 0  # missing labels give no gradient
    binary = infer_target(df, "y")
    state = binary.fit(binary.encode(df))
    assert state["pos_weight"] == [3.0]


def test_discrete_bins_come_from_training_rows_only():
    train = pd.DataFrame({"t": [1.0, 2.0, 3.0, 4.0], "e": [1, 1, 1, 1]})
    spec = TargetSpec("survival", "discrete", time_col="t", event_col="e", n_bins=2)
    assert spec.fit_raw(train)["cuts"] == [2.5]
    test = pd.DataFrame({"t": [100.0, 0.5], "e": [0, 1]})
    enc = spec.encode(test, spec.fit_raw(train))
    assert enc[:, 0].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb"])
def test_clam_batched_instance_loss_equals_the_per_bag_loop(name):
    """The batched instance loss (no subtyping, the default) equals the per-bag reference in
    value and in every gradient, with bags smaller than 2 x k_sample and a bag of one tile (no
    pair: left out); a batch of one-tile bags gives zero in both."""
    torch.manual_seed(3)
    model = build_model(name, 12, {"y": 3}, dim=16, attn_dim=8, k_sample=4).double().eval()  # eval: no dropout between the two passes
    lengths = [1, 2, 3, 7, 9, 20]
    x = torch.randn(len(lengths), max(lengths), 12, dtype=torch.float64)
    mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    classes = torch.tensor([0, 2, 1, 2, 0, 1])
    values, grads = [], []
    for fn in ("_instance_loss_batched", "_instance_loss_loop"):
        model.zero_grad()
        h, a, _ = model.pool(x, mask)
        loss = getattr(model, fn)(h, a, mask, classes)
        loss.backward()
        values.append(float(loss))
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert values[0] == pytest.approx(values[1], rel=1e-6)  # both score in float32
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-8), k
    one = torch.ones(2, 1, dtype=torch.bool)
    h, a, _ = model.pool(x[:2, :1], one)
    assert [float(getattr(model, fn)(h, a, one, classes[:2]))
            for fn in ("_instance_loss_batched", "_instance_loss_loop")] == [0.0, 0.0]
