"""Per-round learning curves of a federation: one row per round and site, plus the aggregate.

Built from what the coordinator already holds: each site's reply metrics (training loss, held-out
loss and head metrics) and the aggregated round metrics (weighted means, pooled AUROC). Written
as ``round_curves.csv`` next to ``federation.json`` and drawn in the report.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

AGGREGATE = "all sites"


def round_curves(rounds: list[dict[str, Any]], events: list[dict[str, Any]]) -> pd.DataFrame:
    """Columns: round, site, lr, kept, failed, n-train, n-eval, train-loss, eval-loss, <head>.<metric>...

    The aggregate row of a round has site ``'all sites'``; a site's row carries its own
    reply metrics (a failed site has ``failed`` set and no metrics for that message).
    """
    by_round = {r["round"]: r for r in rounds}
    rows: dict[tuple[int, str], dict[str, Any]] = {}

    def row(rnd: int, site: str) -> dict[str, Any]:
        key = (rnd, site)
        if key not in rows:
            r = by_round.get(rnd, {})
            rows[key] = {"round": rnd, "site": site, "lr": r.get("lr"), "kept": bool(r.get("kept")),
                         "failed": False}
        return rows[key]

    for r in rounds:
        agg = row(r["round"], AGGREGATE)
        for k, v in r.get("train", {}).items():
            if k == "train-loss":
                agg[k] = v
        for k, v in r.get("evaluate", {}).items():
            if not isinstance(v, list) and k not in ("num-examples", "dp-weight"):
                agg[k] = v
    for ev in events:
        rnd = ev.get("round")
        if rnd is None or rnd not in by_round or ev.get("type") not in ("train", "evaluate"):
            continue
        site = row(int(rnd), str(ev["site"]))
        if "error" in ev:
            site["failed"] = True
            continue
        for k, v in (ev.get("metrics") or {}).items():
            if k == "num-examples":
                site["n-train" if ev["type"] == "train" else "n-eval"] = v
            elif k == "dp-weight" or (ev["type"] == "train" and k != "train-loss"):
                continue
            else:
                site[k] = v
    df = pd.DataFrame(list(rows.values()))
    if df.empty:
        return pd.DataFrame(columns=["round", "site", "lr", "kept", "failed"])
    df["_agg"] = df["site"] != AGGREGATE
    df = df.sort_values(["round", "_agg", "site"]).drop(columns="_agg").reset_index(drop=True)
    first = ["round", "site", "lr", "kept", "failed", "n-train", "n-eval", "train-loss", "eval-loss"]
    cols = [c for c in first if c in df.columns] + sorted(c for c in df.columns if c not in first)
    return df[cols]


__all__ = ["AGGREGATE", "round_curves"]
