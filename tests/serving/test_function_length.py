"""No function in serving/ is longer than 60 lines (issue 21): a longer one
does several things, and each deserves a name and a docstring."""

from __future__ import annotations

import ast

from tests.support.paths import ROOT

LIMIT = 60


def test_no_function_in_serving_is_over_60_lines():
  long = []
  for path in sorted((ROOT / "serving").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > LIMIT:
          long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
  assert not long, "\n".join(long)
