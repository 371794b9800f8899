"""The source's shape rules (see ../shared/ARCHITECTURE.md): a module past 400 lines is
usually two concerns, a function past 60 lines several steps that want names."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "inferplane"
# Declarative tables, long by nature: one metric or field per few lines.
TABLES = {"telemetry/metrics.py:Metrics.__init__"}


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, ast.AST]]:
    out: list[tuple[str, ast.AST]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ClassDef):
            out += _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out.append((f"{prefix}{node.name}", node))
            out += _functions(node, f"{prefix}{node.name}.")
    return out


def test_no_module_over_400_lines() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long


def test_no_function_over_60_lines() -> None:
    long = {}
    for path in SRC.rglob("*.py"):
        for name, node in _functions(ast.parse(path.read_text())):
            assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            where = f"{path.relative_to(SRC)}:{name}"
            if size > 60 and where not in TABLES:
                long[where] = size
    assert not long
