"""The report's sections, one module per group: :mod:`.run` (cohort, performance, learning,
adaptation), :mod:`.decisions` (survival, forest, selection, trial, heatmaps) and
:mod:`.provenance` (config). Importing this package registers them; their order is
:data:`pathstrat.report.markup.ORDER`."""

from pathstrat.report.sections import decisions, provenance, run  # noqa: F401 - registers them
