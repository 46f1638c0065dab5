"""Architecture rules that are cheap to check by reading the source (nothing is imported).

Module size: a module of ``pathstrat`` stays at or under ``MAX_LINES`` lines; a longer one is
split along a seam, or says in its module docstring why it is not, in a sentence starting with
``Size:`` (docs/architecture.md, "Parts and the arrows between them").
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500


def oversized_modules(package: Path, max_lines: int = MAX_LINES) -> list[str]:
    """``path (n lines)`` of every ``.py`` file under ``package`` longer than ``max_lines``
    whose module docstring has no ``Size:`` reason."""
    out = []
    for p in sorted(package.rglob("*.py")):
        text = p.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n <= max_lines:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "Size:" not in doc:
            out.append(f"{p.relative_to(package.parent)} ({n} lines)")
    return out


def test_no_module_over_500_lines_without_a_size_reason():
    bad = oversized_modules(ROOT / "pathstrat")
    assert not bad, (f"module(s) over {MAX_LINES} lines: {bad}; split along a seam, or add a "
                     "'Size: <reason>' sentence to the module docstring")


def test_the_size_check_reads_line_counts_and_docstrings(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "x = 1\n" * 10
    (pkg / "short.py").write_text('"""Short."""\nx = 1\n')
    (pkg / "long.py").write_text('"""Long."""\n' + body)
    (pkg / "excused.py").write_text('"""Long.\n\nSize: one table of constants."""\n' + body)
    assert oversized_modules(pkg, max_lines=10) == ["pkg/long.py (11 lines)"]
