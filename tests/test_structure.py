"""The package's shape rules (issue #7), checked on every run: no module over 800 lines, and no
module reading another object's private attribute. Complexity (no function above 20) is ruff's C901,
line length its E501 (pyproject.toml; CI runs ruff)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tinker_sync"
MAX_LINES = 800
# namedtuple's public API is spelled with a leading underscore
_PUBLIC_UNDERSCORE = frozenset({"_replace", "_asdict", "_fields", "_make", "_field_defaults"})


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _defined_private(tree: ast.AST) -> set[str]:
    """Underscore names this module defines: functions, classes, assignments, attrs fields, parameters."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if n.startswith("_")}


def _foreign_private_reads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = _defined_private(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__") and node.attr.endswith("__") or node.attr in _PUBLIC_UNDERSCORE:
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in ("self", "cls"):
            continue
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
            continue
        if node.attr not in own:
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_is_over_800_lines() -> None:
    long = {str(p.relative_to(PACKAGE.parent)): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_no_module_reads_a_private_attribute_it_does_not_define() -> None:
    """``obj._name`` only where this module itself defines ``_name`` (its own classes' state)."""
    reads = [r for p in _modules() for r in _foreign_private_reads(p)]
    assert reads == []


def test_the_checker_finds_a_foreign_private_read(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text(
        "class A:\n    def f(self, other):\n        self._mine = 1\n        return other._theirs, other._mine\n"
    )
    assert _foreign_private_reads(sample) == ["m.py:4: other._theirs"]
