"""The architecture, checked: plugins use only the public API, one caller of pm.hook, no
import cycles, and the core names built-in plugins only in DEFAULT_PLUGINS."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import router
import router.workers

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_FILES = sorted((ROOT / "plugins").rglob("*.py")) + sorted((ROOT / "docs" / "examples").rglob("*.py"))
CORE_FILES = sorted((ROOT / "router").rglob("*.py"))
PUBLIC = {"router": set(router.__all__), "router.workers": set(router.workers.__all__)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) for every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def test_plugins_import_only_the_public_api():
    bad = []
    for path in PLUGIN_FILES:
        for line, module, names in imports(path):
            if module != "router" and not module.startswith("router."):
                continue
            allowed = PUBLIC.get(module)
            if allowed is None or not names or not set(names) <= allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} {names}")
    assert bad == [], "plugins may import only names in router.__all__ / router.workers.__all__"


def test_public_names_exist():
    for module, names in ((router, router.__all__), (router.workers, router.workers.__all__)):
        missing = [n for n in names if not hasattr(module, n)]
        assert missing == []


def test_only_the_facade_calls_hooks():
    callers = []
    for path in CORE_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "hook":
                callers.append(str(path.relative_to(ROOT)))
    assert set(callers) == {"router/hooks.py"}


def test_no_import_cycles_among_router_and_plugins():
    files = {module_name(p): p for p in [*CORE_FILES, *(ROOT / "plugins").rglob("*.py")]}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        for _, module, names in imports(path):
            for target in [f"{module}.{n}" for n in names] + [module]:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
                    break
        graph[name] = deps
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_core_names_builtin_plugins_only_in_the_default_list():
    for path in CORE_FILES:
        for line, module, _ in imports(path):
            assert not module.startswith("plugins"), f"{path.relative_to(ROOT)}:{line} imports {module}"
