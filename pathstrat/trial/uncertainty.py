"""Propagate the uncertainty of prevalence, sensitivity and specificity into the designs.

From a run's ``selection.json`` the draws are a patient bootstrap of its confusion table: resampling
the ``n`` patients with replacement gives multinomial counts of (TP, FN, FP, TN), from which each
draw's prevalence, sensitivity and specificity follow. Without a run, each given interval becomes a
Beta distribution with the same mean and a standard deviation of ``(high - low) / (2 * 1.96)``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from pathstrat.errors import SchemaError
from pathstrat.trial.design import TrialInputs, compare_designs

FIGURES = ("hr_effective", "events", "enrolled", "screened", "accrual", "duration",
           "number_needed_to_screen", "cost")


def counts_from_selection(sel: dict[str, Any]) -> dict[str, int]:
    """Confusion counts of a ``selection.json`` (held-out when present, else development)."""
    block = sel.get("heldout") or sel.get("development")
    if not block or not all(k in block for k in ("tp", "fp", "tn", "fn")):
        raise SchemaError("selection.json has no confusion counts (tp/fp/tn/fn) under 'heldout' or "
                          "'development': rerun `pathstrat select`.")
    c = {k: int(block[k]) for k in ("tp", "fn", "fp", "tn")}
    if c["tp"] + c["fn"] == 0 or c["fp"] + c["tn"] == 0:
        raise SchemaError("selection.json: need both marker-positive and marker-negative patients "
                          f"to estimate sensitivity and specificity (counts {c}).")
    return c


def bootstrap_draws(counts: dict[str, int], n_draws: int, seed: int = 0) -> np.ndarray:
    """``(n_draws, 3)`` array of (prevalence, sensitivity, specificity) from a patient bootstrap."""
    rng = np.random.default_rng(seed)
    keys = ("tp", "fn", "fp", "tn")
    n = sum(counts[k] for k in keys)
    probs = np.array([counts[k] for k in keys], float) / n
    m = rng.multinomial(n, probs, size=n_draws).astype(float)
    tp, fn, fp, tn = m.T
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.column_stack([(tp + fn) / n, tp / (tp + fn), tn / (tn + fp)])
    return out[np.all(np.isfinite(out) & (out > 0), axis=1)]


def beta_draws(value: float, ci: tuple[float, float] | None, n_draws: int,
               rng: np.random.Generator) -> np.ndarray:
    """Draws of a proportion from a Beta matched to ``value`` and the 95% interval ``ci``."""
    if ci is None:
        return np.full(n_draws, value)
    lo, hi = ci
    if not (0 <= lo <= value <= hi <= 1):
        raise SchemaError(f"interval {ci} must contain the value {value} and lie in [0, 1].")
    sd = (hi - lo) / (2 * 1.959963984540054)
    var = sd * sd
    if var <= 0 or value in (0.0, 1.0):
        return np.full(n_draws, value)
    k = value * (1 - value) / var - 1
    if k <= 0:
        raise SchemaError(f"interval {ci} is too wide for a proportion of {value}.")
    return rng.beta(value * k, (1 - value) * k, n_draws)


def design_intervals(inp: TrialInputs, draws: np.ndarray, level: float = 0.95
                     ) -> dict[str, dict[str, dict[str, float]]]:
    """Percentile intervals of every design figure over draws of (prev, sens, spec)."""
    vals: dict[str, dict[str, list[float]]] = {}
    for prev, sens, spec in draws:
        try:
            res = compare_designs(replace(inp, prevalence=float(prev), sensitivity=float(sens),
                                          specificity=float(spec)))
        except Exception:  # a draw outside (0, 1]: skip it, counted below
            continue
        for name, r in res.items():
            d = r.to_dict()
            for f in FIGURES:
                v = d.get(f)
                if v is not None:
                    vals.setdefault(name, {}).setdefault(f, []).append(float(v))
    a = (1 - level) / 2
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, figs in vals.items():
        out[name] = {}
        for f, xs in figs.items():
            x = np.asarray(xs)
            finite = x[np.isfinite(x)]
            if not len(finite):
                continue
            out[name][f] = {"low": float(np.quantile(finite, a)), "high": float(np.quantile(finite, 1 - a)),
                            "n_draws": int(len(finite)),
                            "share_infinite": float(1 - len(finite) / len(x))}
    return out


def ci_or_none(v: Any) -> tuple[float, float] | None:
    """Parse ``"LOW,HIGH"`` (CLI) or a 2-sequence to a tuple; None when empty."""
    if v is None or v == "":
        return None
    if isinstance(v, str):
        parts = [p for p in v.replace(" ", "").split(",") if p]
        if len(parts) != 2:
            raise SchemaError(f"interval {v!r}: give LOW,HIGH, e.g. 0.80,0.92.")
        v = parts
    lo, hi = (float(x) for x in v)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise SchemaError(f"interval {v!r} must be finite.")
    return lo, hi
