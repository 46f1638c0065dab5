"""Egress audit: a record of everything a site sends, and a checker for it.

``make_audit_mod`` is a Flower client mod (outermost, so it sees the final reply after DP
clipping) that appends a JSON line per outgoing message to
``<audit_dir>/<site>.jsonl``: message type, round, and per record its keys, array names with
shape/dtype/sha256, and metric/config values. ``check_egress`` verifies such a log against what
is allowed to leave: model arrays of the right names and shapes, and a fixed vocabulary of
aggregate metrics and counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pathstrat.federated.packing import is_packed, packed_sizes

log = logging.getLogger(__name__)

# Keys a site may send besides model arrays (regular expressions over record entries).
ALLOWED_METRIC_KEYS = (
    r"num-examples", r"num_examples", r"loss", r"dp-weight", r"n-train", r"n-eval", r"train-loss", r"eval-loss",
    r"[^.]+\.(pos|neg|class_counts|moments|event_hist|time_hist)",
    r"[^.]+\.(auroc|auprc|balanced_accuracy|accuracy|f1|brier|c_index|mae|rmse|pearson_r|"
    r"macro_auroc|n|hist_pos|hist_neg)",
)
ALLOWED_CONFIG_KEYS = (
    r"site", r"accepted", r"reason", r"encoder-id", r"feature-dim", r"pathstrat-version",
    r"[^.]+\.classes",
)
# SecAgg+ protocol entries (public keys, encrypted key shares, masked quantised vectors).
SECAGG_KEYS = {"pk1", "pk2", "ctxts", "dsts", "masked_params", "nids", "shares"}



def summarize(message: Any, site: str) -> dict[str, Any]:
    """JSON-friendly description of a Flower Message's content (arrays by shape and hash)."""
    content = message.content
    records: list[dict[str, Any]] = []
    for key, rec in content.array_records.items():
        entries = {}
        for name, arr in rec.items():
            nd = arr.numpy()
            entries[name] = {"shape": list(nd.shape), "dtype": str(nd.dtype),
                             "sha256": hashlib.sha256(nd.tobytes()).hexdigest()[:16]}
        records.append({"kind": "array", "key": key, "entries": entries})
    for key, rec in content.metric_records.items():
        records.append({"kind": "metric", "key": key, "values": {k: _plain(v) for k, v in rec.items()}})
    for key, rec in content.config_records.items():
        records.append({"kind": "config", "key": key, "values": {k: _plain(v) for k, v in rec.items()}})
    md = message.metadata
    return {"site": site, "message_type": md.message_type, "group_id": md.group_id,
            "has_error": message.has_error(),
            "error": message.error.reason if message.has_error() else None, "records": records}


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"bytes": len(v)}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def make_audit_mod(resolve: Callable[[Any], tuple[str, Path | None]]):
    """Client mod writing each outgoing reply's summary to ``<audit_dir>/<site>.jsonl``.

    ``resolve(context) -> (site name, audit_dir or None)``; no directory means no log.
    """

    def audit_mod(msg, ctx, call_next):
        reply = call_next(msg, ctx)
        try:
            site, audit_dir = resolve(ctx)
        except Exception:  # noqa: BLE001 - a site without config cannot be audited; reply anyway
            return reply
        if audit_dir is not None:
            d = Path(audit_dir)
            d.mkdir(parents=True, exist_ok=True)
            line = json.dumps(summarize(reply, site), default=str)
            # one O_APPEND write per line: safe with several simulation workers
            fd = os.open(d / f"{_safe(site)}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        return reply

    return audit_mod


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "site"


def read_audit(audit_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All summaries under ``audit_dir`` (one JSON object per outgoing message)."""
    out = []
    for p in sorted(Path(audit_dir).glob("*.jsonl")):
        out += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]
    return out


def check_egress(summaries: Iterable[Mapping[str, Any]], model_shapes: Mapping[str, tuple[int, ...]],
                 forbidden: Iterable[str] = ()) -> list[str]:
    """Violations in an audit log: arrays that are not model parameters, unknown metric keys,
    or any ``forbidden`` string (patient ids, slide ids, paths) anywhere in the log."""
    problems: list[str] = []
    metric_re = re.compile("|".join(f"(?:{k})" for k in ALLOWED_METRIC_KEYS) + r"\Z")
    config_re = re.compile("|".join(f"(?:{k})" for k in ALLOWED_CONFIG_KEYS) + r"\Z")
    forbidden = [f for f in forbidden if f]
    for i, s in enumerate(summaries):
        where = f"message {i} ({s.get('site')}, {s.get('message_type')})"
        blob = json.dumps(s)
        for f in forbidden:
            if f in blob:
                problems.append(f"{where}: contains forbidden string '{f}'")
        for rec in s.get("records", []):
            if rec["kind"] == "array" and is_packed(rec["entries"]):  # packing.py
                shapes = [tuple(m["shape"]) for m in rec["entries"].values()]
                total = sum(shp[0] for shp in shapes if len(shp) == 1)
                if any(len(shp) != 1 for shp in shapes) or total != packed_sizes(model_shapes):
                    problems.append(f"{where}: packed arrays {shapes} are not the model's "
                                    f"{packed_sizes(model_shapes)} parameter values")
            elif rec["kind"] == "array":
                for name, meta in rec["entries"].items():
                    want = model_shapes.get(name)
                    if want is None or tuple(meta["shape"]) != tuple(want):
                        problems.append(f"{where}: array '{name}' {meta['shape']} is not a model "
                                        "parameter")
            elif rec["kind"] == "metric":
                for k, v in rec["values"].items():
                    if not metric_re.match(k):
                        problems.append(f"{where}: metric '{k}' is not an allowed aggregate")
                    vals = v if isinstance(v, list) else [v]
                    if not all(isinstance(x, (int, float)) for x in vals):
                        problems.append(f"{where}: metric '{k}' is not numeric")
            elif rec["kind"] == "config":
                key = rec["key"]
                if key == "secaggplus_configs":
                    allowed = lambda k: k in SECAGG_KEYS  # noqa: E731
                elif key.endswith(".metrics"):  # legacy fitres/evaluateres metrics (SecAgg+ path)
                    allowed = metric_re.match
                elif key.endswith(".status"):
                    allowed = lambda k: k in ("code", "message")  # noqa: E731
                else:
                    allowed = config_re.match
                for k in rec["values"]:
                    if not allowed(k):
                        problems.append(f"{where}: config entry '{k}' is not allowed to leave")
    return problems
