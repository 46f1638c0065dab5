"""Model weights as one flat array per dtype in Flower messages ("packed" ArrayRecords).

Flower 1.41 sends every entry of an ``ArrayRecord`` as its own objects (an ``Array`` and its
``ArrayChunk``), and each object is one HTTP request per hop (SuperLink -> SuperNode -> ClientApp
and back): an ABMIL state dict of 12 tensors is ~24 objects, pulled ~30 ms apiece on a loaded
machine, four hops a round. Packed, the same weights are one array per dtype (usually one
``float32`` array), a handful of objects.

The layout is the model's ``state_dict`` order; both sides build the same architecture from the
agreed federation state, so the receiver unpacks into its own template (:func:`unpack`), and a
size mismatch is refused (:class:`PackingError`), never reshaped. Element-wise aggregation
(FedAvg, FedProx, DP clipping by the update's global L2 norm and per-value noise, SecAgg+
quantisation) gives exactly the per-tensor result on the packed vector.
Messages with named arrays (older pathstrat coordinators, tools that address parameters by
name) still work: :func:`unpack` passes them through and the client answers in kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pathstrat.errors import PathstratError

#: Prefix of the packed entries' names: ``pathstrat.packed.<numpy dtype>``.
PACKED_PREFIX = "pathstrat.packed."


class PackingError(PathstratError, ValueError):
    """A packed record does not fit the receiver's model (another architecture or version)."""


def _dtype_key(t: Any) -> str:
    return PACKED_PREFIX + str(t.detach().cpu().numpy().dtype if hasattr(t, "detach")
                               else np.asarray(t).dtype)


def pack(state: Mapping[str, Any]):
    """An ``ArrayRecord`` with one flat array per dtype, tensors in ``state``'s order."""
    from flwr.app import ArrayRecord

    groups: dict[str, list[np.ndarray]] = {}
    for t in state.values():
        a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        groups.setdefault(PACKED_PREFIX + str(a.dtype), []).append(a.reshape(-1))
    return ArrayRecord(array_dict={k: _array(np.concatenate(v)) for k, v in groups.items()})


def _array(a: np.ndarray):
    from flwr.app import Array

    return Array.from_numpy_ndarray(np.ascontiguousarray(a))


def is_packed(record: Mapping[str, Any]) -> bool:
    """True when ``record`` holds packed weights (every entry a ``pathstrat.packed.*`` name)."""
    keys = list(record.keys())
    return bool(keys) and all(k.startswith(PACKED_PREFIX) for k in keys)


def unpack(record, template: Mapping[str, Any]) -> dict[str, Any]:
    """The torch state dict in ``record``: packed entries split into ``template``'s names, shapes
    and order (its tensors' dtypes choose the packed entry); named records as they are."""
    import torch

    if not is_packed(record):
        return record.to_torch_state_dict()
    flat = {k: record[k].numpy() for k in record.keys()}
    offsets = dict.fromkeys(flat, 0)
    out: dict[str, Any] = {}
    for name, t in template.items():
        key = _dtype_key(t)
        if key not in flat:
            raise PackingError(f"packed weights have no {key.removeprefix(PACKED_PREFIX)} array "
                               f"for parameter '{name}'; the sender's model is not this one")
        n, start = int(t.numel()), offsets[key]
        if start + n > flat[key].size:
            raise PackingError(f"packed {key.removeprefix(PACKED_PREFIX)} weights hold "
                               f"{flat[key].size} values, fewer than this model needs; the "
                               "sender's model is not this one")
        out[name] = torch.from_numpy(flat[key][start:start + n].reshape(tuple(t.shape)).copy())
        offsets[key] = start + n
    left = {k: flat[k].size - offsets[k] for k in flat if flat[k].size != offsets[k]}
    if left:
        raise PackingError(f"packed weights hold more values than this model has ({left}); the "
                           "sender's model is not this one")
    return out


def packed_sizes(model_shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Total number of values of a model with these parameter shapes (all packed entries)."""
    return int(sum(int(np.prod(s, dtype=np.int64)) for s in model_shapes.values()))


__all__ = ["PACKED_PREFIX", "PackingError", "is_packed", "pack", "packed_sizes", "unpack"]
