"""The shape the code keeps so a reader can find their way in: no module under train/ over 400
lines, no function there over 60 (decorators and docstring included). Split along a seam, not
by squeezing lines."""

from __future__ import annotations

import ast
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[1] / "train"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> list[Path]:
    return sorted(TRAIN.rglob("*.py"))


def long_functions(path: Path) -> list[str]:
    """`path:line name (N lines)` for every function or method longer than the limit."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = node.end_lineno - start + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(TRAIN)}:{start} {node.name} ({lines} lines)")
    return found


def test_no_module_under_train_is_over_400_lines():
    assert modules(), TRAIN
    long = {
        str(p.relative_to(TRAIN)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these along a seam: {long}"


def test_no_function_under_train_is_over_60_lines():
    long = [line for path in modules() for line in long_functions(path)]
    assert not long, "split these: " + "; ".join(long)
