"""The import graph: no cycles between modules, and data flows one way — a request enters
http/, is decided by decision/, and is answered by api/ or forwarded by proxy/; factors/
and store/ below know nothing of HTTP (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "gateway"
# Lowest first. A module may import modules of its own layer or of lower layers only.
LAYERS = [
    {"gateway.problems", "gateway.primitives", "gateway.metrics"},
    {"gateway.config"},
    {"gateway.keys", "gateway.store"},
    {"gateway.audit"},
    {"gateway.factors"},
    {"gateway.proxy"},
    {"gateway.decision"},
    {"gateway.api"},
    {"gateway.http"},
    {"gateway.cli", "gateway.client", "gateway", "gateway.__main__"},
]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, name: str) -> set[str]:
    """gateway modules imported at run time (imports under TYPE_CHECKING never run)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _type_checking(node):
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("gateway"):
                    found.add(target)
                    found.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("gateway"))
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    visit([n for n in inner if isinstance(n, ast.stmt | ast.ExceptHandler)]
                          if field != "handlers" else [s for h in inner for s in h.body])
    visit(tree.body)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {m for m in imports_of(path, name) if m in modules and m != name}
    return edges


def layer(module: str) -> int:
    best = -1
    for n, members in enumerate(LAYERS):
        for m in members:
            if module == m or (m != "gateway" and module.startswith(m + ".")):
                best = n
    if best < 0 and module == "gateway":
        best = len(LAYERS) - 1
    assert best >= 0, f"{module} has no layer"
    return best


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_lower_layers_never_import_higher_ones() -> None:
    wrong = [f"{m} imports {n}" for m, targets in graph().items() for n in targets
             if layer(n) > layer(m)]
    assert wrong == []


def test_only_the_http_edge_and_the_endpoints_know_asgi() -> None:
    edges = graph()
    for m, targets in edges.items():
        if layer(m) < layer("gateway.api"):
            assert not any(t.startswith(("gateway.http", "gateway.api")) for t in targets), m


def test_every_subpackage_says_what_it_holds() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()[0]) > 10, init


def test_the_graph_is_really_read() -> None:
    edges = graph()
    assert "gateway.decision.decide" in edges["gateway.http.app"]
    assert "gateway.store" in edges["gateway.decision.uses"]
