"""Length-bucketed training batches: every bag once per epoch, seeded, less padding, same loss."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pathstrat.errors import ConfigError
from pathstrat.mil import MODELS, build_model
from pathstrat.training.data import (
    Bag,
    BagDataset,
    BagStore,
    LengthBucketSampler,
    make_loader,
    padding_ratio,
    should_bucket,
)

SIZES = [3, 700, 5, 40, 1000, 12, 8, 300, 2, 64, 9, 500, 7, 30, 4, 150, 6, 90, 11, 20]


def _store(sizes=SIZES, dim: int = 6) -> BagStore:
    g = torch.Generator().manual_seed(0)
    bags = [Bag(f"b{i}", f"p{i}", [f"b{i}"], torch.randn(n, dim, generator=g),
                np.zeros((n, 2), np.int64), [0, n]) for i, n in enumerate(sizes)]
    return BagStore(bags, pd.DataFrame({"patient_id": [b.patient_id for b in bags]}), dim, None)


def test_every_bag_once_per_epoch_and_seeded():
    s = LengthBucketSampler(np.array(SIZES), 4, seed=3, pool_batches=2)
    epochs = [s.epoch_batches() for _ in range(4)]
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(len(SIZES)))
        assert len(batches) == len(s) == 5
    assert epochs[0] != epochs[1]  # batch composition and order change between epochs
    again = LengthBucketSampler(np.array(SIZES), 4, seed=3, pool_batches=2)
    assert [again.epoch_batches() for _ in range(4)] == epochs
    other = LengthBucketSampler(np.array(SIZES), 4, seed=4, pool_batches=2)
    assert [other.epoch_batches() for _ in range(4)] != epochs


def test_bucketing_cuts_padding_below_the_goal():
    from pathstrat.training.engine import length_groups

    lengths = np.array(SIZES)
    bucketed = LengthBucketSampler(lengths, 4, seed=0).epoch_batches()  # one pool: fully sorted
    order = np.argsort(lengths)
    rand = np.random.default_rng(0).permutation(len(lengths))
    random_ratio = padding_ratio(lengths, [rand[i:i + 4] for i in range(0, 20, 4)])
    assert random_ratio > 2.0
    assert padding_ratio(lengths, bucketed) == pytest.approx(
        padding_ratio(lengths, [order[i:i + 4] for i in range(0, 20, 4)]))
    assert padding_ratio(lengths, bucketed) < 0.6 * random_ratio
    # sizes 2..1000 in batches of 4 still pad by 1.6x sorted; the training step runs such
    # batches as length groups, which stay within the 1.2x goal
    grouped = [[b[i] for i in g] for b in bucketed for g in length_groups(lengths[b].tolist(), 1.2)]
    assert padding_ratio(lengths, grouped) <= 1.2
    # by hand: batches [3, 5] and [1000] pad to 2 * 5 + 1000 over 3 + 5 + 1000
    assert padding_ratio(np.array([3, 5, 1000]), [[0, 1], [2]]) == pytest.approx(1010 / 1008)
    assert should_bucket(lengths, 4) and not should_bucket(np.full(20, 50), 4)


def test_auto_loader_buckets_varied_bags_and_keeps_plain_batches_for_equal_ones():
    y = {"y": (np.arange(20) % 2).astype(np.float32)}
    varied = make_loader(BagDataset(_store(), np.arange(20), y, train=True), 4, shuffle=True,
                         bucket="auto")
    assert isinstance(varied.batch_sampler, LengthBucketSampler)
    equal = make_loader(BagDataset(_store([10] * 20), np.arange(20), y, train=True), 4,
                        shuffle=True, bucket="auto")
    assert not isinstance(equal.batch_sampler, LengthBucketSampler)
    # max_tiles caps the training length, so capped bags count as equal
    capped = make_loader(BagDataset(_store([600, 700, 800, 900] * 5), np.arange(20), y,
                                    max_tiles=64, train=True), 4, shuffle=True, bucket="auto")
    assert not isinstance(capped.batch_sampler, LengthBucketSampler)
    with pytest.raises(ConfigError, match="bucket"):
        make_loader(BagDataset(_store(), np.arange(20), y), 4, shuffle=True, bucket="yes")


def test_balanced_draws_with_bucketing_follow_the_class_weights():
    lengths = np.array(SIZES)
    w = np.where(np.arange(20) < 4, 1 / 4, 1 / 16)  # 4 bags of class 0, 16 of class 1
    s = LengthBucketSampler(lengths, 4, seed=0, weights=w)
    drawn = np.concatenate([np.concatenate(s.epoch_batches()) for _ in range(200)])
    assert len(drawn) == 200 * 20
    assert abs(np.mean(drawn < 4) - 0.5) < 0.03  # each class half of the draws


def test_bucketed_abmil_loss_equals_the_unpadded_per_bag_loss():
    """ABMIL masks padding: a bucketed padded batch gives each bag the logit (and the batch the
    BCE loss) of that bag run alone without padding."""
    store = _store()
    y = (np.arange(20) % 2).astype(np.float32)
    torch.manual_seed(0)
    model = build_model("abmil", 6, {"y": 1}, dim=16, attn_dim=8).eval()
    loader = make_loader(BagDataset(store, np.arange(20), {"y": y}, train=True), 4,
                         shuffle=True, seed=1, bucket=True)
    seen = []
    with torch.no_grad():
        for batch in loader:
            out = model(batch["x"], batch["mask"]).logits["y"][:, 0]
            ref = torch.stack([model(store.bags[int(i)].features[None].float(),
                                     torch.ones(1, store.bags[int(i)].features.shape[0], dtype=torch.bool)
                                     ).logits["y"][0, 0] for i in batch["index"]])
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
            bce = torch.nn.functional.binary_cross_entropy_with_logits
            torch.testing.assert_close(bce(out, batch["targets"]["y"]), bce(ref, torch.as_tensor(y[batch["index"]])))
            seen += batch["index"].tolist()
    assert sorted(seen) == list(range(20))


def test_length_groups_by_hand_and_under_the_padding_bound():
    from pathstrat.training.engine import length_groups

    # longest first; [1000] alone, then 40 and 30 (2 x 40 <= 1.2 x 70), then 5 and 3 (10 <= 9.6? no)
    assert length_groups([3, 1000, 40, 5, 30], 1.2) == [[1], [2, 4], [3], [0]]
    for groups, lengths in [(length_groups(SIZES[:8], 1.2), SIZES[:8])]:
        assert sorted(i for g in groups for i in g) == list(range(8))
        assert all(len(g) * max(lengths[i] for i in g) <= 1.2 * sum(lengths[i] for i in g) for g in groups)


def test_grouped_forward_keeps_logits_loss_and_gradients_of_the_padded_batch(monkeypatch):
    """A padded batch of very different bags run as length groups: same logits, same loss,
    same gradients as the one padded forward pass (ABMIL masks padding; dropout off)."""
    from pathstrat.training import engine
    from pathstrat.training.data import collate_bags
    from pathstrat.training.engine import forward_grouped, should_group

    # small padding is not worth extra forward passes; large padding is
    assert not should_group(SIZES[:8], 6, 1.2) and should_group(SIZES[:8], 1024, 1.2)
    assert not should_group([1000] * 8, 1024, 1.2) and not should_group(SIZES[:8], 1024, None)
    monkeypatch.setattr(engine, "MIN_GROUP_SAVING", 0)  # group this small test batch

    store = _store()
    items = [(store.bags[i].features, {"y": torch.tensor(float(i % 2))}, i) for i in range(8)]
    batch = collate_bags(items)
    torch.manual_seed(0)
    model = build_model("abmil", 6, {"y": 1}, dim=16, attn_dim=8, dropout=0.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    lengths = batch["mask"].sum(1).tolist()
    grouped, aux = forward_grouped(model, batch["x"], batch["mask"], lengths, None, 1.2)
    loss_g = bce(grouped["y"][:, 0], batch["targets"]["y"]) + aux
    grads_g = torch.autograd.grad(loss_g, list(model.parameters()))
    padded = model(batch["x"], batch["mask"]).logits
    loss_p = bce(padded["y"][:, 0], batch["targets"]["y"])
    grads_p = torch.autograd.grad(loss_p, list(model.parameters()))
    torch.testing.assert_close(grouped["y"], padded["y"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_g, loss_p)
    for g, p in zip(grads_g, grads_p, strict=True):
        torch.testing.assert_close(g, p, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["abmil", "transmil"])
def test_length_sorted_evaluation_equals_one_bag_at_a_time(name):
    """make_eval_loader batches bags of similar length; evaluate returns outputs, loss and
    attention in the dataset's order, equal to the batch-of-one evaluation."""
    from pathstrat.mil.losses import make_loss
    from pathstrat.mil.targets import TargetSpec
    from pathstrat.training.data import make_eval_loader
    from pathstrat.training.engine import evaluate

    store = _store([3, 40, 5, 41, 12, 8, 30, 2, 64, 9, 7, 33])
    idx = np.array([5, 0, 11, 2, 7, 9, 1, 4])
    y = {"y": (np.arange(12) % 2).astype(np.float32)}
    torch.manual_seed(0)
    exact = {"num_landmarks": 128} if name == "transmil" else {}  # bags fit: exact attention path
    model = build_model(name, 6, {"y": 1}, **{**MODELS.get(name).test_hparams, **exact})
    loss = make_loss([TargetSpec("y", "binary", classes=[0, 1])])
    loader = make_eval_loader(BagDataset(store, idx, y))
    assert len(loader) < len(idx)  # fewer forward passes
    lengths = [store.bags[i].features.shape[0] for i in idx]
    for b in loader.batch_sampler:
        assert len(b) * max(lengths[i] for i in b) <= 1.2 * sum(lengths[i] for i in b)
    grouped = evaluate(model, loader, loss, keep_attention=True)
    single = evaluate(model, make_loader(BagDataset(store, idx, y), 1), loss, keep_attention=True)
    np.testing.assert_array_equal(grouped.index, idx)
    np.testing.assert_array_equal(single.index, idx)
    np.testing.assert_allclose(grouped.outputs["y"], single.outputs["y"], rtol=1e-5, atol=1e-6)
    assert grouped.loss == pytest.approx(single.loss, rel=1e-6)
    for a, b in zip(grouped.attention, single.attention, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
