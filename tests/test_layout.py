"""The package map holds: ``billfold.kit`` is machinery with no domain knowledge, so nothing in it
imports a model or a domain package when it runs (only type hints may name the settings and the
keyring a sweep's ``Context`` carries)."""

from __future__ import annotations

import ast
from pathlib import Path

import billfold.kit

KIT = Path(billfold.kit.__file__).parent
TYPE_HINTS_ONLY = {"billfold.config", "billfold.accounts.security"}


def _imports(tree: ast.AST, *, hints: bool = False) -> list[tuple[str, bool]]:
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found += [(name, True) for name, _ in _imports(node)]
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, hints))
        elif isinstance(node, ast.Import):
            found += [(alias.name, hints) for alias in node.names]
        found += _imports(node, hints=hints) if not isinstance(node, ast.Import | ast.ImportFrom) else []
    return found


def test_kit_imports_no_model_and_no_domain_package() -> None:
    wrong = []
    for path in sorted(KIT.rglob("*.py")):
        for module, hint in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if not module.startswith("billfold") or module.startswith("billfold.kit"):
                continue
            if hint and module in TYPE_HINTS_ONLY:
                continue
            wrong.append(f"{path.relative_to(KIT.parent)} imports {module}")
    assert not wrong, "\n".join(wrong)
