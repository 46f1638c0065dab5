"""One self-contained HTML report of a run directory (``pathstrat report RUNDIR``).

Every image is embedded as base64 PNG, the CSS is inline and there is no JavaScript, so the
file opens offline and can be mailed. Each section is built from documented run files; a
section whose input is missing still appears and says ``not available: <why>``. The report
computes no stage: outputs a run lacks (survival, selection) are produced beforehand by
:func:`pathstrat.runner.derived.derive_missing` (``pathstrat report`` and ``pathstrat run``
call it).

Modules: :mod:`~pathstrat.report.files` (:class:`RunFiles`), :mod:`~pathstrat.report.markup`
(HTML helpers, section registry, path redaction), :mod:`~pathstrat.report.curves` (ROC/PR/
calibration/learning-curve plots, each taking and returning an ``Axes``),
:mod:`~pathstrat.report.sections` (one module per group of sections) and
:mod:`~pathstrat.report.assembly` (:func:`render`, :func:`build_report`).
"""

from __future__ import annotations

from pathstrat.report.assembly import build_report, render
from pathstrat.report.curves import (
    plot_calibration,
    plot_learning_curves,
    plot_pr,
    plot_roc,
    roc_pr_bands,
)
from pathstrat.report.files import RunFiles
from pathstrat.report.markup import (
    CSS,
    ORDER,
    SECTIONS,
    esc,
    fig_png,
    file_img,
    fmt,
    img_tag,
    na,
    redact_paths,
    section,
    table,
)

__all__ = ["CSS", "ORDER", "SECTIONS", "RunFiles", "build_report", "esc", "fig_png", "file_img",
           "fmt", "img_tag", "na", "plot_calibration", "plot_learning_curves", "plot_pr",
           "plot_roc", "redact_paths", "render", "roc_pr_bands", "section", "table"]
