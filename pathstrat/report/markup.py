"""HTML building blocks of the report (inline CSS, tables, embedded PNGs, the 'not available'
note), the section registry and the path redaction of shared reports."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathstrat.registry import Registry
from pathstrat.report.files import RunFiles

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1150px;padding:1.5em;color:#1d2433;line-height:1.45}
h1{border-bottom:3px solid #2c5d8f;padding-bottom:.3em}h2{color:#2c5d8f;margin-top:1.8em}
section{border-top:1px solid #d5dbe3;padding-top:.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
td,th{border:1px solid #c9d1db;padding:.25em .6em;text-align:right}
th{background:#eef2f7}td.t{text-align:left}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #e3e7ec;margin:.3em 0}
.na{color:#8a5300;background:#fff5e0;border-left:4px solid #e0a030;padding:.4em .8em}
.warn{color:#7a0010;background:#ffe9ec;border-left:4px solid #d0203a;padding:.4em .8em}
.grid{display:flex;flex-wrap:wrap;gap:1em}.grid>div{flex:1 1 480px}
pre{background:#f5f7fa;padding:.8em;overflow-x:auto;font-size:.8em}
nav a{margin-right:1em}
"""



def esc(x: Any) -> str:
    """``x`` as HTML-escaped text."""
    return html.escape(str(x))


def na(why: str) -> str:
    """The standard 'not available' note."""
    return f'<p class="na">not available: {esc(why)}</p>'


def fmt(v: Any, nd: int = 3) -> str:
    """A number for a table cell: integers as such, ``nd`` decimals, ``–`` for NaN/None."""
    if isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer() and abs(v) < 1e7:
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{v:.{nd}g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{nd}f}"
    return esc(v) if v is not None else "–"


def table(df: pd.DataFrame, nd: int = 3) -> str:
    """A DataFrame as an HTML table with numbers rounded."""
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v, nd)}</td>" if not isinstance(v, str)
                                    else f'<td class="t">{esc(v)}</td>' for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img_tag(png: bytes, alt: str) -> str:
    """An <img> with the PNG embedded as a data URI."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def fig_png(fig: Any) -> bytes:
    """A figure as PNG bytes (100 dpi, tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def file_img(p: Path | None, alt: str) -> str:
    """A PNG file of the run embedded as an <img> (the 'not available' note when missing)."""
    return img_tag(p.read_bytes(), alt) if p and p.exists() else na(f"{alt}: file missing")


Section = Callable[[RunFiles], str]
SECTIONS: Registry[tuple[str, Section]] = Registry("report section")
#: Report order of the sections (their modules live in :mod:`pathstrat.report.sections`); a
#: section registered under another key is rendered after these.
ORDER: list[str] = ["cohort", "performance", "learning", "adaptation", "survival", "forest",
                    "selection", "trial", "heatmaps", "config"]


def section(key: str, title: str) -> Callable[[Section], Section]:
    """Register a report section under ``key`` (rendered at its place in :data:`ORDER`)."""
    def deco(fn: Section) -> Section:
        SECTIONS.add(key, (title, fn))
        if key not in ORDER:
            ORDER.append(key)
        return fn
    return deco


_DATA_URI = re.compile(r"(data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+)")
_ABS_PATH = re.compile(r"(?<![\w.~/:-])/(?:[^\s'\"<>/&]+/)+([^\s'\"<>/&]*)")


def redact_paths(html: str) -> str:
    """Absolute file paths in ``html`` (outside embedded images) as ``…/<last part>``: where a
    site keeps its slides is not for the people a report is shared with."""
    parts = _DATA_URI.split(html)
    return "".join(p if i % 2 else _ABS_PATH.sub(lambda m: "…/" + m.group(1), p)
                   for i, p in enumerate(parts))
