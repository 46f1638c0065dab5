"""Plot conventions (as lifelines): every public plot function draws into the ``ax`` it is
given and returns it; without one it draws into a new figure's axes and returns those."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pathstrat import survival as S
from pathstrat.heatmaps import plot_heatmap
from pathstrat.report import (
    plot_calibration,
    plot_learning_curves,
    plot_pr,
    plot_roc,
    roc_pr_bands,
)
from pathstrat.trial import TrialInputs
from pathstrat.trial.sweep import plot_sweep, sweep_thresholds

RNG = np.random.default_rng(7)
N = 60
TIME = RNG.exponential(10, N)
EVENT = (RNG.random(N) < 0.7).astype(int)
GROUPS = (RNG.random(N) < 0.5).astype(int)
Y = (RNG.random(N) < 0.4).astype(int)
SCORE = np.clip(0.3 * Y + 0.7 * RNG.random(N), 0, 1)


def _fitters():
    return S.kaplan_meier(TIME, EVENT, GROUPS, ["low", "high"])


def _forest_rows():
    return [{"label": "a", "hr": 1.5, "ci_low": 1.1, "ci_high": 2.2},
            {"label": "b", "hr": 0.7, "ci_low": 0.4, "ci_high": 1.3}]


def _history():
    ep = np.arange(5)
    return pd.concat([pd.DataFrame({"repeat": 0, "fold": k, "epoch": ep, "train_loss": 1 / (ep + 1 + k),
                                    "val_loss": 1.1 / (ep + 1 + k)}) for k in range(3)])


def _sweep_table():
    return sweep_thresholds(Y, SCORE, TrialInputs(prevalence=0.4, sensitivity=0.9,
                                                  specificity=0.6, hr_positive=0.6), n_points=5)


THUMB = np.full((40, 60, 3), 200, np.uint8)
GRID = np.linspace(0, 1, 40 * 60).reshape(40, 60)
PLOTS = {
    "survival.plot_km": lambda ax: S.plot_km(_fitters(), ax, at_risk=False),
    "survival.plot_forest": lambda ax: S.plot_forest(_forest_rows(), ax),
    "report.plot_roc": lambda ax: plot_roc(roc_pr_bands(Y, SCORE, n_boot=20, seed=0), ax),
    "report.plot_pr": lambda ax: plot_pr(roc_pr_bands(Y, SCORE, n_boot=20, seed=0), ax),
    "report.plot_calibration": lambda ax: plot_calibration(Y, SCORE, ax),
    "report.plot_learning_curves": lambda ax: plot_learning_curves(_history(), ax),
    "heatmaps.plot_heatmap": lambda ax: plot_heatmap(THUMB, GRID, ax),
    "trial.plot_sweep": lambda ax: plot_sweep(_sweep_table(), ax),
}


def _drawn(ax: Axes) -> int:
    return len(ax.lines) + len(ax.images) + len(ax.collections) + len(ax.patches)


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_plot_draws_into_the_given_axes_and_returns_it(name):
    ax = Figure().add_subplot(111)
    assert PLOTS[name](ax) is ax
    assert _drawn(ax) > 0


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_plot_without_axes_makes_its_own(name):
    ax = PLOTS[name](None)
    assert isinstance(ax, Axes) and _drawn(ax) > 0


def test_km_plot_draws_the_lifelines_curves():
    """The drawn step curves are the Kaplan-Meier estimates (independent: lifelines' fitter)."""
    fitters = _fitters()
    ax = S.plot_km(fitters, Figure().add_subplot(111), at_risk=False)
    for lab, kmf in fitters.items():
        line = next(ln for ln in ax.lines if ln.get_label() == lab)
        ys = np.unique(np.round(line.get_ydata(), 12))
        assert set(ys) == set(np.unique(np.round(kmf.survival_function_.iloc[:, 0], 12)))


def test_forest_plot_marks_each_hazard_ratio():
    rows = _forest_rows()
    ax = S.plot_forest(rows, Figure().add_subplot(111))
    marks = [ln for ln in ax.lines if ln.get_marker() == "s"]
    assert sorted(float(m.get_xdata()[0]) for m in marks) == sorted(r["hr"] for r in rows)
    assert ax.get_xscale() == "log"


def test_learning_curves_one_solid_and_one_dashed_line_per_fold():
    ax = plot_learning_curves(_history(), Figure().add_subplot(111))
    styles = [ln.get_linestyle() for ln in ax.lines]
    assert styles.count("-") == 3 and styles.count("--") == 3


def test_federated_round_curves_draw_into_a_given_pair_of_axes():
    """Two panels (loss per site and aggregated; aggregated metrics) into the given pair, the
    aggregate drawn from the table's own values and the kept round marked on both."""
    from pathstrat.federated.curves import AGGREGATE, plot_round_curves

    rounds = np.arange(1, 5)
    rows = [{"round": r, "site": s, "train-loss": 1 / r + k, "eval-loss": 1.2 / r + k,
             "responder.auroc": np.nan} for k, s in enumerate(["A", "B"]) for r in rounds]
    rows += [{"round": r, "site": AGGREGATE, "train-loss": 1 / r, "eval-loss": 1.1 / r,
              "responder.auroc": 0.5 + r / 10} for r in rounds]
    curves = pd.DataFrame(rows)
    pair = tuple(Figure().subplots(1, 2))
    assert plot_round_curves(curves, kept_round=2, axes=pair) == pair
    agg = next(ln for ln in pair[0].lines if ln.get_label() == "aggregate eval-loss")
    assert np.allclose(agg.get_ydata(), 1.1 / rounds)
    auroc = next(ln for ln in pair[1].lines if ln.get_label() == "aggregate responder.auroc")
    assert np.allclose(auroc.get_ydata(), 0.5 + rounds / 10)
    assert all(any(ln.get_label() == "kept round 2" for ln in ax.lines) for ax in pair)
    own = plot_round_curves(curves)
    assert len(own) == 2 and all(isinstance(a, Axes) for a in own)
