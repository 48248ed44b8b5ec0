"""What a Python source file imports, for the tests that hold the layering to its rules."""

from __future__ import annotations

import ast
from pathlib import Path


def imported_tops(path: Path) -> set[str]:
    """The top-level packages `path` imports (absolute imports only: relative ones stay inside)."""
    tops: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            tops.add(node.module.split(".")[0])
    return tops
