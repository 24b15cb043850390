"""The package's layers, checked from the source: no import circle anywhere, and a clean bottom.

Every import counts, including those under `if TYPE_CHECKING:` and inside functions: a circle
hidden that way is still a circle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import shepherd

ROOT = Path(shepherd.__file__).parent
BOTTOM = ("shepherd.config", "shepherd.errors", "shepherd.headers", "shepherd.request_keys")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_anywhere_in_the_package() -> None:
    assert _cycles(_import_graph()) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_bottom_layer_imports_nothing_of_shepherd() -> None:
    graph = _import_graph()
    for module in BOTTOM:
        assert graph[module] == set(), f"{module} imports {sorted(graph[module])}"


def test_transports_know_nothing_of_routing_and_only_tests_use_the_harness() -> None:
    graph = _import_graph()
    upper = ("shepherd.routers", "shepherd.api", "shepherd.middleware", "shepherd.policies")
    for module, imports in graph.items():
        if module.startswith("shepherd.transport"):
            assert not any(i.startswith(upper) for i in imports), (module, imports)
        if not module.startswith("shepherd.testing"):
            assert not any(i.startswith("shepherd.testing") for i in imports), (module, imports)
