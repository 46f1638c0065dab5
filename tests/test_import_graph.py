"""The package's import graph: no cycles among pathstrat modules at module level.

Imports are read with ``ast`` (nothing is imported): statements at module level, inside
top-level ``if``/``try`` blocks, but not inside functions (runtime-local imports, used to keep
``pathstrat --help`` fast) and not under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_files(root: Path, package: str = "pathstrat") -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``package`` under ``root``."""
    out = {}
    for p in sorted((root / package).rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt], runtime: bool):
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif runtime and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield from _module_level(node.body, runtime)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level(node.body, runtime)
            yield from _module_level(node.orelse, runtime)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _module_level(block, runtime)
        elif runtime and hasattr(node, "body"):  # with / for / while inside functions
            yield from _module_level(node.body, runtime)


def import_graph(mods: dict[str, Path], *, runtime: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports (the deepest existing module of each name).
    With ``runtime``, imports inside functions count too."""
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _module_level(ast.parse(path.read_text()).body, runtime):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    head = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(head + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycles_at_module_level():
    graph = import_graph(module_files(ROOT))
    assert "pathstrat.survival.analysis" in graph["pathstrat.survival"]  # the parser sees imports
    assert cycles(graph) == []


def test_runner_does_not_import_the_cli():
    """`pathstrat demo` runs the runner; the runner must not import the CLI back (not even
    inside a function: runner.demo <-> commands.pipeline was such a circle)."""
    graph = import_graph(module_files(ROOT), runtime=True)
    runner = [m for m in graph if m.startswith("pathstrat.runner")]
    assert runner and not any(t == "pathstrat.cli" or t.startswith("pathstrat.commands")
                              for m in runner for t in graph[m])


def test_cycle_detector_finds_a_planted_cycle(tmp_path):
    """Negative control: a package whose modules import each other is reported, a
    TYPE_CHECKING-only or function-local import is not."""
    pkg = tmp_path / "pathstrat"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pathstrat.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("try:\n    from .. import c\nexcept ImportError:\n    pass\n")
    (pkg / "c.py").write_text("import pathstrat.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from pathstrat import e\n")
    (pkg / "e.py").write_text("def f():\n    from pathstrat import d\n")
    mods = module_files(tmp_path)
    assert cycles(import_graph(mods)) == [["pathstrat.a", "pathstrat.c", "pathstrat.sub.b"]]
    assert import_graph(mods, runtime=True)["pathstrat.e"] == {"pathstrat.d"}
