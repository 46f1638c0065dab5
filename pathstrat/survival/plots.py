"""Survival figures: Kaplan-Meier curves with at-risk table, forest plot of hazard ratios.

Like lifelines, each function draws into ``ax`` (a new figure's axes when None) and returns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def at_risk_times(time: Sequence[float], n: int = 6) -> list[float]:
    """Round tick times from 0 to the longest follow-up for the at-risk table."""
    from matplotlib.ticker import MaxNLocator

    tmax = float(np.max(time))
    ticks = MaxNLocator(nbins=n - 1, min_n_ticks=3).tick_values(0.0, tmax)
    return [float(t) for t in ticks if 0 <= t <= tmax]


def _new_axes(figsize: tuple[float, float]) -> Axes:
    """Axes of a new (pyplot-free) figure, for a plot called without ``ax``."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize).add_subplot(111)


def plot_km(fitters: dict[str, Any], ax: Axes | None = None, *,
            times: Sequence[float] | None = None, at_risk: bool = True,
            xlabel: str = "time") -> Axes:
    """Kaplan-Meier curves with 95% bands and (optionally) the at-risk table under the axes;
    returns ``ax``."""
    from lifelines.plotting import add_at_risk_counts

    if ax is None:
        ax = _new_axes((7, 5.5))

    for kmf in fitters.values():
        kmf.plot_survival_function(ax=ax, ci_show=True, show_censors=True,
                                   censor_styles={"ms": 4, "marker": "|"})
    ax.set_xlabel(xlabel)
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    if times is not None:
        ax.set_xticks(list(times))
    if at_risk and fitters:
        add_at_risk_counts(*fitters.values(), ax=ax, fig=ax.figure,
                           rows_to_show=["At risk", "Events"],
                           xticks=list(times) if times is not None else None)
    return ax


def plot_forest(rows: Sequence[dict[str, Any]], ax: Axes | None = None) -> Axes:
    """Forest plot of hazard ratios (log x axis) with 95% CIs; rows need label/hr/ci_low/ci_high.
    Returns ``ax``."""
    rows = [r for r in rows if np.isfinite(r.get("hr", np.nan))]
    if ax is None:
        ax = _new_axes((7, 0.5 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows, strict=True):
        ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color="0.2", lw=1.5)
        ax.plot([r["hr"]], [yi], "s", color="tab:blue", ms=6)
    ax.axvline(1.0, color="0.5", ls="--", lw=1)
    ax.set_xscale("log")
    lo = min([r["ci_low"] for r in rows if r["ci_low"] > 0] + [1.0])
    hi = max([r["ci_high"] for r in rows if np.isfinite(r["ci_high"])] + [1.0])
    nice = [v * m for m in (0.01, 0.1, 1, 10, 100) for v in (1, 2, 5)]
    ticks = [t for t in nice if lo / 1.05 <= t <= hi * 1.05] or [1.0]
    ticks = ticks if len(ticks) >= 3 else sorted({round(lo, 2), 1.0, round(hi, 2)} | set(ticks))
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['label']}  {r['hr']:.2f} ({r['ci_low']:.2f}-{r['ci_high']:.2f})"
                        for r in rows])
    ax.set_xlabel("hazard ratio (95% CI)")
    return ax


def forest_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Hazard ratios of a survival summary as forest-plot rows (label, hr, ci_low, ci_high, p)."""
    cox = summary["cox"]
    rows = [{"label": "score (per SD)", **cox["score_per_sd"]}]
    if isinstance(cox.get("group"), list):
        rows += [{"label": r["term"].replace("group_", "") + " vs " + summary["groups"][0], **r}
                 for r in cox["group"]]
    if isinstance(cox.get("multivariable"), dict) and "terms" in cox["multivariable"]:
        rows += [{"label": f"adj. {r['term']}", **r} for r in cox["multivariable"]["terms"]]
    if isinstance(cox.get("interaction"), dict) and "hr_per_arm" in cox["interaction"]:
        rows += [{"label": f"score in arm {k}", **v}
                 for k, v in cox["interaction"]["hr_per_arm"].items()]
    return [{k: r[k] for k in ("label", "hr", "ci_low", "ci_high", "p")} for r in rows]
