"""Lint: no module over MAX_MODULE lines and no function over MAX_FUNCTION lines, unless it says why.

A function's length is its code: from its `def` to its end, less its docstring (documentation is not what
makes a function hard to follow).

A module or function may be longer when its docstring contains a line starting with "Long because" (the reason),
so that length is a decision written down, not an accident. Run by `make lint`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE = 500
MAX_FUNCTION = 60
REASON = "Long because"


def _explained(node: ast.AST) -> bool:
    doc = ast.get_docstring(node) or ""
    return any(line.strip().startswith(REASON) for line in doc.splitlines())


def _docstring_lines(node: ast.AST) -> int:
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


def problems(root: Path) -> list[str]:
    """Every module and function of the package under `root` over its limit without a stated reason."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE and not _explained(tree):
            found.append(f"{path}: {lines} lines (limit {MAX_MODULE}); split it or say why ('{REASON} ...')")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
                if length > MAX_FUNCTION and not _explained(node):
                    found.append(f"{path}:{node.lineno}: {node.name} is {length} lines (limit {MAX_FUNCTION})")
    return found


if __name__ == "__main__":
    found = problems(Path(sys.argv[1] if len(sys.argv) > 1 else "src/headattr"))
    print("\n".join(found) or "sizes: every module and function within its limit")
    sys.exit(1 if found else 0)
