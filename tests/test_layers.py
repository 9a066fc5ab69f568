"""The layers' arrows point one way: no import circles, and the core never imports the server layer.

gateway/server holds every reach into another library's internals
(docs/architecture.md); the core (hub, subscriptions, presence, brokers,
messages) owns its ports (subscription.Sink, ports.ExitSignal) and is
handed their implementations by the app. Read from the source with ast:
every ``import`` and ``from … import`` of a ``gateway`` module, including
those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.servers import ROOT

PACKAGE = ROOT / "gateway"
# What may use the server layer: the app that composes everything, the command line,
# and the transports (which ask it for a faster path and go without one).
MAY_USE_SERVER = ("gateway.app", "gateway.__main__", "gateway.transports", "gateway.server")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from package import module`` uses the module (the package is
                # its parent, run first by Python, not a use of its names).
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t for t in subs if t in modules] or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_no_module_of_the_gateway_imports_itself_back() -> None:
    """No import circles among gateway's modules (two were: Sink, and presence's library)."""
    graph = _imports()
    graph = {name: {t for t in targets if t != "gateway"} for name, targets in graph.items()}
    assert _circles(graph) == []


def test_only_the_app_and_the_transports_use_the_server_layer() -> None:
    """The core imports nothing of gateway/server: it runs under any server, or none."""
    users = {
        name: sorted(t for t in targets if t.startswith("gateway.server"))
        for name, targets in _imports().items()
        if not name.startswith(MAY_USE_SERVER)
    }
    assert {name: found for name, found in users.items() if found} == {}
