"""Report section on configuration and encoder provenance (and federated runs' curves)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from pathstrat.report.files import RunFiles
from pathstrat.report.markup import esc, na, section, table


def _find(obj: Any, keys: tuple[str, ...]) -> Any:
    """First value of any of ``keys`` in a nested dict/list."""
    if isinstance(obj, dict):
        for k in keys:
            if k in obj and not isinstance(obj[k], (dict, list)):
                return obj[k]
        for v in obj.values():
            r = _find(v, keys)
            if r is not None:
                return r
    elif isinstance(obj, list):
        for v in obj:
            r = _find(v, keys)
            if r is not None:
                return r
    return None



def _features_attrs(cfg: Any) -> dict[str, Any] | None:
    """Provenance attrs (encoder id, weights sha256, random flag) of one of the run's feature files."""
    feats = cfg.get("features") if isinstance(cfg, dict) else None
    if not feats or not Path(feats).is_dir():
        return None
    first = next(iter(sorted(Path(feats).glob("*.h5"))), None)
    if first is None:
        return None
    import h5py

    with h5py.File(first, "r") as f:
        keys = ("encoder_id", "weights_sha256", "weights_random", "encoder_dim", "transform")
        return {k: (f.attrs[k].item() if hasattr(f.attrs[k], "item") else f.attrs[k])
                for k in keys if k in f.attrs}


@section("config", "Configuration and encoder provenance")
def _config(rf: RunFiles) -> str:

    cfg_p = rf.path("config.yaml")
    cfg = rf.config() or None
    model = rf.json("checkpoints/model.json")
    sources = [x for x in (model, _features_attrs(cfg), cfg) if x]
    prov = {name: next((v for v in (_find(s, keys) for s in sources) if v is not None), None)
            for name, keys in (("encoder", ("encoder_id", "encoder")),
                               ("weights sha256", ("weights_sha256",)),
                               ("random weights", ("weights_random",)),
                               ("MIL model", ("model", "arch", "mil_model")))}
    out = ""
    if not sources:
        out += na("config.yaml and checkpoints/model.json absent")
    if prov["random weights"] in (True, "true", "True", 1) or str(prov.get("weights sha256")) == "random":
        out += ('<p class="warn">Warning: the encoder used RANDOM weights; these results show the '
                "pipeline works, not that the model has learned pathology.</p>")
    out += table(pd.DataFrame([(k, v) for k, v in prov.items()], columns=["provenance", "value"]))
    out += (f"<h3>config.yaml</h3><pre>{esc(cfg_p.read_text())}</pre>" if cfg_p
            else na("config.yaml absent"))
    if model:
        out += f"<h3>checkpoints/model.json</h3><pre>{esc(json.dumps(model, indent=2))}</pre>"
    if rf.path("federation.json"):  # federated run: kept round, per-round curves (issue 13)
        from pathstrat.federated.curves import report_html

        out += report_html(rf.run)
    return out
