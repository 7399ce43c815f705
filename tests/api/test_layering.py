"""api/ speaks HTTP over core.jobs; the engine (core.adapt) stays behind core.jobs. Only the torch-free
recipe types that the request schemas are made of may be imported from it."""

from __future__ import annotations

import ast

from tests.conftest import REPO

ALLOWED = ("core.adapt.recipe", "core.adapt.methods")


def _adapt_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import of a core.adapt module, at any depth (function-level ones too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from core.adapt import data` imports the submodule `core.adapt.data`.
            if node.module in ("core", "core.adapt"):
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return [(line, m) for line, m in found if m == "core.adapt" or m.startswith("core.adapt.")]


def _allowed(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ALLOWED)


def test_api_imports_only_recipe_types_from_the_engine() -> None:
    files = sorted((REPO / "api").rglob("*.py"))
    assert files
    wrong = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in files
        for line, module in _adapt_imports(ast.parse(path.read_text(), filename=str(path)))
        if not _allowed(module)
    ]
    assert not wrong, "api/ reaches into the engine; go through core.jobs:\n" + "\n".join(wrong)


def test_the_scan_sees_every_import_form() -> None:
    tree = ast.parse(
        "import core.adapt.data\nfrom core.adapt import models\nfrom core import adapt\n"
        "def f():\n    from core.adapt.trainer import train\n"
        "from core.adapt.recipe import parse_recipe\nfrom core.adapt.methods.lora import LoRAConfig\n"
    )
    assert [m for _, m in _adapt_imports(tree) if not _allowed(m)] == [
        "core.adapt.data", "core.adapt.models", "core.adapt", "core.adapt.trainer"
    ]
