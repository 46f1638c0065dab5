"""Stage orchestration for `pathstrat run` (see :func:`run_pipeline`)."""

from pathstrat.layout import RESOLVED_CONFIG, RUN_LOG
from pathstrat.runner.context import RunContext, RunSummary, StageReport
from pathstrat.runner.core import STAGE_DEFS, run_pipeline

__all__ = ["RESOLVED_CONFIG", "RUN_LOG", "STAGE_DEFS", "RunContext", "RunSummary", "StageReport",
           "run_pipeline"]
