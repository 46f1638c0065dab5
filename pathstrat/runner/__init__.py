"""Stage orchestration for `pathstrat run` (see :func:`run_pipeline`)."""

from pathstrat.runner.context import RunContext, RunSummary, StageReport
from pathstrat.runner.core import RESOLVED_CONFIG, RUN_LOG, STAGE_DEFS, run_pipeline

__all__ = ["RESOLVED_CONFIG", "RUN_LOG", "STAGE_DEFS", "RunContext", "RunSummary", "StageReport",
           "run_pipeline"]
