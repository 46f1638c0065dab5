"""Federated transport: packed weights (packing.py) and the SuperNode poll clock (supernode.py).

Issue 13 (fast rounds): packing must be exact for every MIL model and refuse a model it does not
fit; aggregation on packed vectors must equal per-tensor aggregation; the poll clock must poll
fast only while a run is active and fall back to Flower's 3 s when idle.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from pathstrat.federated.packing import PACKED_PREFIX, PackingError, is_packed, pack, unpack  # noqa: E402
from pathstrat.federated.supernode import FLOWER_IDLE_S, PollClock, patch  # noqa: E402
from pathstrat.mil import MODELS, build_model  # noqa: E402


def _hparams(name: str) -> dict:
    return dict(MODELS.get(name).test_hparams)


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, in_dim=12, heads={"y": 1}, **_hparams(name))


@pytest.mark.parametrize("name", MODELS.names())
def test_pack_unpack_is_exact_for_every_model(name):
    sd = _model(name).state_dict()
    rec = pack(sd)
    assert is_packed(rec) and all(k.startswith(PACKED_PREFIX) for k in rec.keys())
    assert len(rec.keys()) <= 2 < len(sd)  # one array per dtype instead of one per tensor
    back = unpack(rec, _model(name, seed=1).state_dict())
    assert list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert torch.equal(back[k], v), k


def test_unpack_refuses_another_architecture_and_passes_named_records_through():
    from flwr.app import ArrayRecord

    small = _model("abmil").state_dict()
    torch.manual_seed(0)
    bigger = build_model("abmil", in_dim=12, heads={"y": 1}, dim=32, attn_dim=8).state_dict()
    with pytest.raises(PackingError, match="fewer than this model needs"):
        unpack(pack(small), bigger)
    with pytest.raises(PackingError, match="more values than this model has"):
        unpack(pack(bigger), small)
    named = unpack(ArrayRecord(small), bigger)  # named arrays: as they are
    assert list(named) == list(small) and all(torch.equal(named[k], small[k]) for k in small)


def test_fedavg_on_packed_weights_equals_per_tensor_fedavg():
    """Flower's own FedAvg aggregation (the function FedAvg.aggregate_train calls), packed vs
    named, gives the same model, and both equal a hand-computed weighted mean."""
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    states = [_model("abmil", seed=s).state_dict() for s in range(3)]
    n = [5, 11, 7]

    def contents(make):
        return [RecordDict({"arrays": make(sd), "metrics": MetricRecord({"num-examples": k})})
                for sd, k in zip(states, n, strict=True)]

    named = aggregate_arrayrecords(contents(ArrayRecord), "num-examples").to_torch_state_dict()
    packed = unpack(aggregate_arrayrecords(contents(pack), "num-examples"), states[0])
    w = np.asarray(n, dtype=np.float64) / sum(n)
    for k in states[0]:
        expect = sum(wi * sd[k].double() for wi, sd in zip(w, states, strict=True))
        torch.testing.assert_close(packed[k].double(), expect, rtol=1e-6, atol=1e-7)
        assert torch.equal(packed[k], named[k]), k


def test_audit_accepts_packed_model_arrays_only():
    from pathstrat.federated.audit import check_egress

    sd = _model("abmil").state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    total = sum(v.numel() for v in sd.values())
    ok = [{"site": "A", "message_type": "train", "records": [
        {"kind": "array", "key": "arrays",
         "entries": {PACKED_PREFIX + "float32": {"shape": [total], "dtype": "float32"}}}]}]
    assert check_egress(ok, shapes) == []
    extra = [{"site": "A", "message_type": "train", "records": [
        {"kind": "array", "key": "arrays",
         "entries": {PACKED_PREFIX + "float32": {"shape": [total + 3], "dtype": "float32"}}}]}]
    assert any("not the model's" in p for p in check_egress(extra, shapes))


class _FakeTime:
    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def sleep(self, s: float) -> None:
        self.slept.append(round(s, 6))
        self.now += s

    def monotonic(self) -> float:
        return self.now


def test_poll_clock_is_fast_while_active_then_backs_off_to_flowers_interval():
    t = _FakeTime()
    clock = PollClock(fast_s=0.05, window_s=1.0, sleep=t.sleep, monotonic=t.monotonic)
    clock.sleep(3)  # never active: backoff from fast_s
    assert t.slept == [0.05]
    clock.mark_activity()
    t.slept.clear()
    for _ in range(10):  # 0.5 s of idle polling inside the 1 s window: all fast
        clock.sleep(3)
    assert t.slept == [0.05] * 10
    t.now += 1.0  # the window has passed: doubling backoff, capped at Flower's 3 s
    t.slept.clear()
    for _ in range(9):
        clock.sleep(3)
    assert t.slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0]
    assert max(t.slept) == FLOWER_IDLE_S
    clock.mark_activity()  # a new message resets to fast polling
    t.slept.clear()
    clock.sleep(3)
    clock.sleep(0.5)  # Flower's reply / object waits are capped at fast_s
    clock.sleep(0.01)  # shorter sleeps are kept
    assert t.slept == [0.05, 0.05, 0.01]
    assert clock.perf_counter is __import__("time").perf_counter  # everything else is `time`


def test_patch_wraps_the_supernode_loop_and_refuses_an_unknown_layout():
    import time

    calls = []

    def pull_objects(ids, pull_object_fn, *, initial_backoff=1, backoff_cap=10):
        calls.append((initial_backoff, backoff_cap))
        return {}

    module = types.SimpleNamespace(
        time=time, pull_objects=pull_objects,
        _pull_and_store_message=lambda **kw: kw.get("run"),
        _push_messages=lambda **kw: None)
    t = _FakeTime()
    clock = PollClock(fast_s=0.05, window_s=10.0, sleep=t.sleep, monotonic=t.monotonic)
    assert patch(module, clock) is True
    assert module.time is clock
    module.pull_objects([], None)
    assert calls == [(0.05, 1.0)]
    t.now = 100.0
    assert module._pull_and_store_message(run=None) is None  # nothing pulled: no activity
    clock.sleep(3)
    assert t.slept == [0.05]  # first backoff step, not "active"
    clock.sleep(3)
    assert t.slept == [0.05, 0.1]
    assert module._pull_and_store_message(run=7) == 7  # a message: active again
    clock.sleep(3)
    assert t.slept[-1] == 0.05
    assert patch(types.SimpleNamespace(time=time), clock) is False  # another Flower layout


def test_patch_fits_the_installed_flower():
    """The installed Flower's SuperNode loop has the layout patch() relies on (else the launcher
    would silently run the stock 3 s poll)."""
    import importlib

    loop = importlib.import_module("flwr.supernode.start_client_internal")
    saved = {k: getattr(loop, k) for k in ("time", "pull_objects", "_pull_and_store_message",
                                           "_push_messages")}
    try:
        assert patch(loop, PollClock()) is True
    finally:
        for k, v in saved.items():
            setattr(loop, k, v)
