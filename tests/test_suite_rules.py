"""Rules of the test suite itself, read from its source: a test that can pass by checking nothing
is worse than none (STYLE habit 7)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
LOOPS = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
CHECK_CALLS = {"validate", "raises", "fail"}  # beside assert_* (numpy, pandas, our helpers)


def is_check(node: ast.AST) -> bool:
    """An assert statement, or a call that fails the test: assert_*(...), validate, pytest.raises."""
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        return name.startswith("assert") or name in CHECK_CALLS
    return False


def holds_on_empty(node: ast.AST) -> bool:
    """``assert all(<comprehension>)`` or ``assert not any(<comprehension>)``: true when nothing
    is iterated (``assert any(...)`` is not: it fails on nothing)."""
    if not isinstance(node, ast.Assert):
        return False
    negated = isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not)
    test = node.test.operand if isinstance(node.test, ast.UnaryOp) and negated else node.test
    return (
        isinstance(test, ast.Call)
        and isinstance(test.func, ast.Name)
        and test.func.id == ("any" if negated else "all")
        and bool(test.args)
        and isinstance(test.args[0], LOOPS)
    )


def checks_in_loops(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[bool]:
    """For each check in ``function`` (not in functions it defines): is it inside a loop, or a
    loop itself (``all`` over a comprehension)?"""
    found: list[bool] = []

    def visit(node: ast.AST, in_loop: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, SCOPES):
                continue
            if is_check(child):
                found.append(in_loop or holds_on_empty(child))
            visit(child, in_loop or isinstance(child, LOOPS))

    visit(function, False)
    return found


def loop_only_tests(source: str) -> list[str]:
    """The test functions whose every check is inside a loop: they pass on an empty collection."""
    return [
        node.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test")
        and (checks := checks_in_loops(node))
        and all(checks)
    ]


def test_the_scan_finds_a_test_that_checks_only_inside_a_loop() -> None:
    source = """
def test_loop_only(rows):
    for row in rows:
        assert row
    assert all(r > 0 for r in rows)
    assert not any(r < 0 for r in rows)

def test_counted(rows):
    assert len(rows) == 3
    for row in rows:
        assert row

def test_strict_zip(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)

def test_raises_in_a_loop(values):
    for value in values:
        with pytest.raises(ValueError):
            parse(value)

def test_helper_defined_inside(rows):
    def check(row):
        assert row
    check(rows[0])
    assert_legal(rows)

def test_some_row(rows):
    assert any(r > 0 for r in rows)
"""
    assert loop_only_tests(source) == ["test_loop_only", "test_strict_zip", "test_raises_in_a_loop"]


def test_no_test_checks_only_inside_a_loop() -> None:
    files = sorted(TESTS.rglob("*.py"))
    assert len(files) > 50
    offenders = [
        f"{path.relative_to(TESTS)}::{name}" for path in files for name in loop_only_tests(path.read_text())
    ]
    assert offenders == [], "give each a count or non-empty check before its loop: " + ", ".join(offenders)
