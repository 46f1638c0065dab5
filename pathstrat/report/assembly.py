"""Assembly of the report: every registered section in order, each isolated from the others'
failures, into one self-contained HTML file (:func:`build_report`)."""

from __future__ import annotations

import logging
from datetime import UTC
from pathlib import Path

import pandas as pd

from pathstrat.report import sections  # noqa: F401 - registers the sections in report order
from pathstrat.report.files import RunFiles
from pathstrat.report.markup import CSS, ORDER, SECTIONS, esc, na, redact_paths

log = logging.getLogger(__name__)


def render(rf: RunFiles) -> str:
    """The report HTML: every registered section, each isolated from the others' failures."""
    body, nav = [], []
    for key in ORDER:
        title, fn = SECTIONS.get(key)
        try:
            content = fn(rf)
        except Exception as exc:  # noqa: BLE001 - a broken input must not hide the other sections
            log.warning("report section '%s' failed: %s", key, exc)
            content = na(f"{type(exc).__name__}: {exc}")
        if key in rf.notes:
            content = f"<p><em>{esc(rf.notes[key])}</em></p>" + content
        nav.append(f'<a href="#{key}">{esc(title)}</a>')
        body.append(f'<section id="{key}"><h2>{esc(title)}</h2>{content}</section>')
    from datetime import datetime

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>pathstrat report: {esc(rf.run.name)}</title><style>{CSS}</style></head><body>"
            f"<h1>pathstrat report: {esc(rf.run.name)}</h1><p>Run directory {esc(rf.run)}, "
            f"generated {stamp}.</p><nav>{''.join(nav)}</nav>{''.join(body)}</body></html>\n")


def build_report(run_dir: str | Path, *, manifest: pd.DataFrame | str | Path | None = None, out: str | Path | None = None,
                 n_boot: int = 200, seed: int = 0, notes: dict[str, str] | None = None,
                 show_paths: bool = False) -> Path:
    """Write ``<run>/report.html`` (or ``out``) and return its path.

    The report only reads the run's files: a section whose file is missing says so. Outputs
    the run lacks (survival, selection) are computed before, by
    :func:`pathstrat.runner.derived.derive_missing`, whose notes (by section key) are shown at
    the top of their sections. Reports get shared: absolute paths are shortened to
    ``…/<file name>`` unless ``show_paths``.
    """
    from pathstrat.cohort import read_table
    from pathstrat.errors import SchemaError
    from pathstrat.io import write_text_atomic

    run = Path(run_dir)
    if not run.is_dir():
        raise SchemaError(f"run directory '{run}' does not exist.")
    man = None
    if manifest is not None:
        man = manifest if isinstance(manifest, pd.DataFrame) else read_table(manifest, what="Table")
    rf = RunFiles(run, man, n_boot=n_boot, seed=seed, notes=dict(notes or {}))
    if man is None:
        cfg = rf.config()
        cand = cfg.get("manifest") or (cfg.get("cohort") or {}).get("manifest")
        if cand and Path(cand).is_file():
            rf.manifest = read_table(cand, what="Table")
    html = render(rf)
    return write_text_atomic(Path(out) if out else run / "report.html",
                             html if show_paths else redact_paths(html))
