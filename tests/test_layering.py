"""Who knows whom: no import ring in ``vramgate/``, and no module using another module's private names.

The import graph is built with :mod:`ast` from every import statement of every module, wherever it stands: at the
top, inside a function (a lazy import) or under ``if TYPE_CHECKING:``. A module that needs another only for a type
still knows it.

The rule for packages: importing ``a.b.c`` (or ``from a.b.c import x``) is an edge to the module ``a.b.c`` alone,
not to the ``__init__`` of its parents (they only re-export, and Python runs them first anyway); ``from a.b import
c`` is an edge to ``a.b.c`` when ``c`` is a submodule, else to ``a.b``'s ``__init__``, which re-exports it. So a
package's ``__init__`` depends on every submodule it re-exports, and a module inside the package that imports a
name through its own package's ``__init__`` (``from vramgate.actors import Recorder`` inside ``vramgate.actors``)
closes a ring: modules import their siblings directly; only outsiders use the re-exports.

Private names: ``obj._name`` where ``obj`` is not ``self`` or ``cls`` and ``_name`` is not defined in the same
module, and ``from m import _name`` of a name (not a submodule) from another module. Public names of a private
module (``from vramgate._ticket import Ticket``) are fine, and so are private names of third-party modules reached
through their own module object (``torch._C``): this is about vramgate's modules keeping their own secrets.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vramgate"

# No ring is known: the gate's helpers (_shell, _ticket, _quote, compat) know the gate through the Protocols of
# vramgate/_facade.py, not through gate.py. A ring added here must be one that cannot be broken, and says why.
KNOWN_RINGS: set[frozenset[str]] = set()
KNOWN_PRIVATE: set[tuple[str, str]] = set()
#: Names that start with an underscore to stay clear of field names, and are public API (namedtuple's).
PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package by dotted name: its file, and whether it is a package's ``__init__``."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


MODULES = modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, (path, _) in MODULES.items()}


def imported_module(name: str, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` names, with relative imports resolved against module ``name``."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[name][1]
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names if alias.name in MODULES)
            elif isinstance(node, ast.ImportFrom):
                target = imported_module(name, node)
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    if submodule in MODULES:
                        graph[name].add(submodule)
                    elif target in MODULES:
                        graph[name].add(target)
    return graph


def rings(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself), each as one
    cycle through all of its modules' shortest paths, for printing."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def connect(start: str) -> None:  # Tarjan, iteratively
        nonlocal counter
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            connect(name)
    return found


def cycle_through(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One import cycle inside ``component``: from its first module back to it."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    return component


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_here(tree: ast.Module) -> set[str]:
    """Names a module defines: functions, classes, variables, ``self.x``/``cls.x`` attributes and slots."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and is_private(node.value):
            names.add(node.value)  # __slots__ entries
    return names


def third_party_names(tree: ast.Module) -> set[str]:
    """Local names bound to modules outside vramgate (``import torch``, ``import anyio.lowlevel as low``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("vramgate"):
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and not node.level and not (node.module or "").startswith("vramgate"):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def root_name(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def private_uses() -> set[tuple[str, str]]:
    """``(file, use)`` for every use of another module's private name."""
    uses: set[tuple[str, str]] = set()
    for name, tree in TREES.items():
        path = MODULES[name][0].relative_to(PACKAGE.parent).as_posix()
        defined = defined_here(tree)
        foreign = third_party_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in PUBLIC_UNDERSCORED:
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                if node.attr in defined or root_name(node.value) in foreign:
                    continue
                uses.add((path, ast.unparse(node)))
            elif isinstance(node, ast.ImportFrom):
                target = imported_module(name, node)
                if not target.startswith("vramgate"):
                    continue
                for alias in node.names:
                    if is_private(alias.name) and f"{target}.{alias.name}" not in MODULES:
                        uses.add((path, f"from {target} import {alias.name}"))
    return uses


def test_the_module_graph_sees_lazy_and_type_checking_imports() -> None:
    graph = import_graph()
    assert "vramgate.messages" in graph["vramgate.actors.system"]  # a top-level import
    assert "vramgate.gate" in graph["vramgate.metrics"]  # under TYPE_CHECKING only
    assert "vramgate.policy.learning" in graph["vramgate.gate"]  # lazily, in a function only
    assert "vramgate._facade" in graph["vramgate._ticket"]  # under TYPE_CHECKING only
    assert "vramgate.actors.system" in graph["vramgate.actors"]  # an __init__ depends on what it re-exports


def test_the_ring_finder_finds_a_ring_and_prints_its_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    found = rings(graph)
    assert found == [["a", "b", "c"], ["e"]]
    assert cycle_through(graph, found[0]) == ["a", "b", "c", "a"]


def test_no_import_ring_outside_the_known_ones() -> None:
    graph = import_graph()
    found = {frozenset(component): component for component in rings(graph)}
    unknown = [cycle_through(graph, component) for key, component in found.items() if key not in KNOWN_RINGS]
    assert not unknown, "import rings:\n" + "\n".join(" -> ".join(cycle) for cycle in unknown)
    stale = [sorted(ring) for ring in KNOWN_RINGS if ring not in found]
    assert not stale, f"KNOWN_RINGS entries that no longer occur (remove them): {stale}"


def test_no_module_uses_another_modules_private_names() -> None:
    uses = private_uses()
    unknown = sorted(uses - KNOWN_PRIVATE)
    assert not unknown, "private names used across modules:\n" + "\n".join(f"{f}: {u}" for f, u in unknown)
    stale = sorted(KNOWN_PRIVATE - uses)
    assert not stale, f"KNOWN_PRIVATE entries that no longer occur (remove them): {stale}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from vramgate import gate\ngate._hidden()\n", {"gate._hidden"}),
        ("from vramgate.actors.system import _single_error\n", {"from vramgate.actors.system import _single_error"}),
        ("class A:\n    def f(self, o):\n        self._x = 1\n        return o._x\n", set()),  # defined here
        ("def f(o):\n    o._secret = 1\n", {"o._secret"}),  # assigning another object's private attribute
        ("import torch\ntorch._C\n", set()),  # a third-party module's own business
        ("def f(p):\n    return p._replace(a=1)\n", set()),  # namedtuple API
    ],
)
def test_the_private_name_check(source: str, expected: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TREES, "vramgate.probe", ast.parse(source))
    monkeypatch.setitem(MODULES, "vramgate.probe", (PACKAGE / "probe.py", False))
    found = {use for path, use in private_uses() if path == "vramgate/probe.py"}
    assert found == expected
