"""The import DAG of house.md, checked by walking every module's AST."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "sipedge"
#: Never imported by the sans-I/O core.
IO_MODULES = ("asyncio", "socket", "ssl", "selectors", "logging.handlers", "prometheus_client")
#: package -> sipedge sub-packages/modules it must not import.
FORBIDDEN = {
    "sip": ("sipedge.gateway", "sipedge.proxy", "sipedge.transport", "sipedge.catalogue",
            "sipedge.daemon", "sipedge.cli", "sipedge.config"),
    "gateway": ("sipedge.proxy", "sipedge.transport", "sipedge.daemon", "sipedge.cli"),
    "catalogue": ("sipedge.proxy", "sipedge.transport", "sipedge.daemon", "sipedge.cli"),
    "proxy": ("sipedge.transport", "sipedge.daemon", "sipedge.cli", "sipedge.config"),
}
#: Shell modules (asyncio/socket allowed, TID251-exempt in pyproject.toml) that no core
#: package may import either.
SHELL_MODULES = ("sipedge.notify", "sipedge.lab", "sipedge.verify")
FORBIDDEN = {layer: banned + SHELL_MODULES for layer, banned in FORBIDDEN.items()}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _matches(name: str, banned: str) -> bool:
    return name == banned or name.startswith(banned + ".")


CORE_FILES = [p for pkg in FORBIDDEN for p in sorted((PKG / pkg).rglob("*.py"))]


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_core_imports_no_io(path: Path) -> None:
    bad = {n for n in imported_modules(path) for io in IO_MODULES if _matches(n, io)}
    assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_layers_import_only_downwards(path: Path) -> None:
    layer = path.relative_to(PKG).parts[0]
    banned = FORBIDDEN[layer]
    bad = {n for n in imported_modules(path) for b in banned if _matches(n, b)}
    assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}"
