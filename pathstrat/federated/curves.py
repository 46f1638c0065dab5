"""Per-round learning curves of a federation: one row per round and site, plus the aggregate.

Built from what the coordinator already holds: each site's reply metrics (training loss, held-out
loss and head metrics) and the aggregated round metrics (weighted means, pooled AUROC). Written
as ``round_curves.csv`` next to ``federation.json`` and drawn in the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes

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
            if k == "num-examples":
                agg["n-eval"] = v  # summed over the sites by aggregate_metrics
            elif not isinstance(v, list) and k != "dp-weight":
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
            if k.startswith("eval/"):  # held-out metrics of the previous round's model
                if int(rnd) - 1 in by_round:  # (evaluate_with_train)
                    prev = row(int(rnd) - 1, str(ev["site"]))
                    prev["n-eval" if k == "eval/num-examples" else k[len("eval/"):]] = v
            elif k == "num-examples":
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


def plot_round_curves(curves: pd.DataFrame, kept_round: int | None = None,
                      axes: tuple[Axes, Axes] | None = None) -> tuple[Axes, Axes]:
    """Training and held-out loss per site (thin) and aggregated (thick) on the first axes, the
    aggregated metrics per round (pooled AUROC, per-head means) on the second; the kept round is
    marked. Draws into ``axes`` (a pair) or a new 10 x 3.6 in figure; returns the pair."""
    metric_cols = [c for c in curves.columns if "." in c and not c.endswith(".n")
                   and pd.api.types.is_numeric_dtype(curves[c])]
    if axes is None:
        from matplotlib.figure import Figure

        axes = tuple(Figure(figsize=(10, 3.6)).subplots(1, 2))
    ax_loss, ax_m = axes
    agg = curves[curves["site"] == AGGREGATE].sort_values("round")
    for site, g in curves[curves["site"] != AGGREGATE].groupby("site"):
        g = g.sort_values("round")
        for col, ls in (("train-loss", "--"), ("eval-loss", "-")):
            if col in g:
                ax_loss.plot(g["round"], g[col], ls, lw=0.8, alpha=0.6, label=f"{site} {col}")
    for col, ls in (("train-loss", "--"), ("eval-loss", "-")):
        if col in agg and agg[col].notna().any():
            ax_loss.plot(agg["round"], agg[col], ls, lw=2.5, color="k", label=f"aggregate {col}")
    ax_loss.set(xlabel="round", ylabel="loss", title="loss per round")
    for col in metric_cols:
        if agg[col].notna().any():
            ax_m.plot(agg["round"], agg[col], "o-", ms=3, label=f"aggregate {col}")
    ax_m.set(xlabel="round", title="held-out metrics (aggregated)")
    for ax in (ax_loss, ax_m):
        if kept_round is not None:
            ax.axvline(kept_round, color="tab:red", ls=":", label=f"kept round {kept_round}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    ax_loss.figure.tight_layout()
    return ax_loss, ax_m


def report_html(run_dir) -> str:
    """The federated-rounds part of ``report.html``: the kept round and why, the curves figure
    and the aggregated per-round table ('' for a run that is not federated)."""
    import html
    import json
    from pathlib import Path

    run = Path(run_dir)
    fed_json, csv = run / "federation.json", run / "round_curves.csv"
    if not fed_json.exists():
        return ""
    from pathstrat.report import fig_png, img_tag, na, table

    summary = json.loads(fed_json.read_text(encoding="utf-8"))
    sel = summary.get("selection") or {}
    out = "<h3>Federated rounds</h3>"
    if sel:
        out += (f"<p>Kept round {sel.get('kept_round')} of {sel.get('last_round')}: "
                f"{html.escape(str(sel.get('reason', '')))}.</p>")
    failed = sorted({s for r in summary.get("rounds", []) for s in r.get("failed_sites", [])})
    if failed or summary.get("refused"):
        out += (f"<p class=\"warn\">Sites refused: {html.escape(', '.join(summary.get('refused') or {}) or 'none')}; "
                f"failed in some round: {html.escape(', '.join(failed) or 'none')}.</p>")
    if not csv.exists():
        return out + na("round_curves.csv absent (federation run by an older pathstrat)")
    curves = pd.read_csv(csv)
    out += img_tag(fig_png(plot_round_curves(curves, sel.get("kept_round"))[0].figure), "federated round curves")
    agg = curves[curves["site"] == AGGREGATE].drop(columns=["site", "failed"])
    keep = [c for c in agg.columns if not c.endswith(".n") and agg[c].notna().any()]
    return out + table(agg[keep])


__all__ = ["AGGREGATE", "plot_round_curves", "report_html", "round_curves"]
