"""The fast tier (`bash scripts/test.sh --fast` = pytest -m "not slow") still touches every test module.

A module whose every test is marked `slow` (or that sets a module-level `pytestmark` with `slow`) would
vanish from the tier a developer runs often, so the tier would stop saying anything about that part of
the code. Read from the source (AST), so the check costs nothing and needs no collection.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _is_slow(dec: ast.expr) -> bool:
    """`@pytest.mark.slow` (also called, e.g. `@pytest.mark.slow(...)`)."""
    node = dec.func if isinstance(dec, ast.Call) else dec
    return isinstance(node, ast.Attribute) and node.attr == "slow"


def _module_is_slow(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            marks = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            if any(_is_slow(m) for m in marks):
                return True
    return False


def fast_tests(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    if _module_is_slow(tree):
        return []
    return [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name.startswith("test_") and not any(_is_slow(d) for d in n.decorator_list)]


def test_every_test_module_has_a_fast_test():
    missing = [p.name for p in sorted(TESTS.glob("test_*.py")) if not fast_tests(p)]
    assert not missing, f"modules with no test outside the slow tier (mark fewer tests slow): {missing}"


def test_the_check_sees_slow_marks(tmp_path):
    """Not vacuous: a module with only slow tests, and one marked slow as a whole, have no fast test."""
    (tmp_path / "a.py").write_text("import pytest\n@pytest.mark.slow\ndef test_x():\n    pass\n")
    (tmp_path / "b.py").write_text("import pytest\npytestmark = [pytest.mark.slow]\ndef test_y():\n    pass\n")
    (tmp_path / "c.py").write_text("import pytest\n@pytest.mark.slow\ndef test_x():\n    pass\ndef test_z():\n    pass\n")
    assert fast_tests(tmp_path / "a.py") == [] and fast_tests(tmp_path / "b.py") == []
    assert fast_tests(tmp_path / "c.py") == ["test_z"]
