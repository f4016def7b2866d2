"""The package layout's contract: dependencies point one way, no cycles, no hidden or private cross-imports.

Rule (README, "Layout"): core <- spaces <- cost <- search <- app <- cli, and data is used by app and
cli only. The seed's compatibility modules (``fnas.genotypes`` ...) and ``fnas/__init__.py`` sit on
top and may import anything; nothing inside a subpackage imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "fnas"
ORDER = ("core", "spaces", "cost", "search", "app", "cli")
ALLOWED = {pkg: set(ORDER[: i + 1]) for i, pkg in enumerate(ORDER)}
ALLOWED["data"] = {"data", "core"}
for user in ("app", "cli"):
    ALLOWED[user].add("data")
TOP = {"__init__", "__main__", "genotypes", "model", "operations", "train_cnn_search"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(["fnas", *parts])] = path
    return mods


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not MODULES[module].name == "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, list[str], bool]]:
    """``(imported fnas module, names taken from it, imported inside a function)`` for each import."""
    tree = ast.parse(MODULES[module].read_text())
    local = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fnas"):
                    out.append((alias.name, [], id(node) in local))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            if not base.startswith("fnas"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:
                    out.append((sub, [], id(node) in local))
                else:
                    out.append((base, [alias.name], id(node) in local))
    return out


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] not in TOP else None


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _package(m)))
def test_dependencies_point_one_way(module: str) -> None:
    pkg = _package(module)
    for target, _, _ in _imports(module):
        other = _package(target) if target in MODULES or "." in target else None
        if target.split(".")[1] in TOP and target.count(".") == 1:
            pytest.fail(f"{module} imports the compatibility module {target}")
        if other is not None:
            assert other in ALLOWED[pkg], f"{module} ({pkg}) imports {target} ({other}); allowed: {sorted(ALLOWED[pkg])}"


def test_no_import_cycles() -> None:
    graph = _graph()
    # a package's __init__ importing its own modules is not a cycle of the layout
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycle = stack[stack.index(w):] + [w]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_local_fnas_imports(module: str) -> None:
    hidden = [t for t, _, local in _imports(module) if local]
    assert not hidden, f"{module} imports {hidden} inside a function; import at the top (cycles are not allowed)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_modules(module: str) -> None:
    private = [f"{t}.{n}" for t, names, _ in _imports(module) for n in names if n.startswith("_") and not n.startswith("__")]
    tree = ast.parse(MODULES[module].read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (_resolve(module, node) or "").startswith("fnas"):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fnas"):
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            private.append(f"{node.value.id}.{node.attr}")
    assert not private, f"{module} uses private names of other modules: {sorted(set(private))}"
