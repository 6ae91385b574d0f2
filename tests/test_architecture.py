"""The package's import graph: no import circle inside ``lightning_post/``, and no module that imports one of a higher
layer than its own, following the table of layers in docs/architecture.md (the one place the layers are written).

Every ``import`` / ``from ... import`` of a ``lightning_post`` module counts, at module level or inside a function
(a function-level import only hides a circle from Python, not from a reader). The graph is read from the source
with :mod:`ast`, nothing is imported.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "lightning_post"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The ``lightning_post`` modules that ``name`` imports anywhere in its source (``from pkg import sub`` names
    the submodule ``pkg.sub`` when it is one)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, package.parent): p for p in package.rglob("*.py")}
    return {name: imports_of(name, path, set(paths)) for name, path in paths.items()}


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_the_circle_finder_on_a_known_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set(), "g": {"g"}}
    assert sorted(map(sorted, circles(graph))) == [["a", "b", "c"], ["d", "e"]]


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "lightning_post"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("import os\n\n\ndef f():\n    from lightning_post.top import x\n")
    (pkg / "top.py").write_text("from .sub import leaf\nfrom lightning_post import sub\nx = 1\n")
    graph = import_graph(pkg)
    assert graph == {"lightning_post": set(), "lightning_post.sub": {"lightning_post.sub.leaf"},
                     "lightning_post.sub.leaf": {"lightning_post.top"},
                     "lightning_post.top": {"lightning_post.sub.leaf", "lightning_post.sub"}}
    assert circles(graph) == [{"lightning_post.sub", "lightning_post.sub.leaf", "lightning_post.top"}]


def test_no_import_circle():
    found = [sorted(c) for c in circles(import_graph())]
    assert not found, f"import circles inside lightning_post/ (function-level imports included): {found}"


# ---- layers ------------------------------------------------------------------------------------------------------
LAYER_ROW = re.compile(r"^\|\s*(\d+)\.\s*([^|]+?)\s*\|([^|]*)\|", re.M)


def layer_table(text: str) -> dict[str, int]:
    """``name -> layer`` from the table of docs/architecture.md: rows ``| <n>. <title> | `name`, `pkg/`, ... | ... |``
    in the section "The layers"; ``pkg/`` names a package and every module in it, ``pkg/mod`` or ``mod`` one module,
    ``__init__`` the package root."""
    section = text.split("## The layers", 1)[1].split("\n## ", 1)[0]
    table: dict[str, int] = {}
    rows = LAYER_ROW.findall(section)
    assert [int(n) for n, _, _ in rows] == list(range(len(rows))), "the layers are numbered 0, 1, 2, ... in order"
    for number, _, cell in rows:
        for name in re.findall(r"`([^`]+)`", cell):
            assert name not in table, f"{name} is in two layers"
            table[name] = int(number)
    return table


def layer_of(module: str, table: dict[str, int]) -> int | None:
    """The layer of ``module`` (``lightning_post.x.y``): the most specific name of the table that covers it."""
    best, layer = -1, None
    for name, n in table.items():
        dotted = "lightning_post" if name == "__init__" else "lightning_post." + name.rstrip("/").replace("/", ".")
        covers = module == dotted or (name.endswith("/") and module.startswith(dotted + "."))
        if covers and len(dotted) > best:
            best, layer = len(dotted), n
    return layer


def layer_breaks(graph: dict[str, set[str]], table: dict[str, int]) -> set[tuple[str, str]]:
    """``(importer, imported)`` of every import of a module of a higher layer (modules in no layer are left to
    :func:`test_every_module_has_a_layer`)."""
    layers = {m: layer_of(m, table) for m in graph}
    return {(a, b) for a, targets in graph.items() for b in targets
            if layers[a] is not None and layers.get(b) is not None and layers[b] > layers[a]}


def test_the_layer_table_of_the_docs():
    table = layer_table(ARCHITECTURE.read_text(encoding="utf-8"))
    assert table["records/"] < table["data/"] < table["methods/"] < table["commands/"] < table["cli"]
    assert table["scoring/"] < table["data/"], "the data modules filter with the scorers: scoring is below them"
    assert layer_of("lightning_post.safety.filter", table) < layer_of("lightning_post.safety.redteam", table)
    assert layer_of("lightning_post", table) == table["__init__"] == max(table.values())


def test_the_layer_rule_on_a_known_graph():
    table = layer_table("## The layers\n\n| layer | modules |\n|---|---|\n| 0. low | `errors`, `rec/` |\n"
                        "| 1. mid | `data/`, `cmd/lib` |\n| 2. top | `cmd/`, `__init__` |\n\n## Next\n| 3. x | `y` |\n")
    assert table == {"errors": 0, "rec/": 0, "data/": 1, "cmd/lib": 1, "cmd/": 2, "__init__": 2}
    assert layer_of("lightning_post.cmd.lib", table) == 1 and layer_of("lightning_post.cmd.run", table) == 2
    assert layer_of("lightning_post.other", table) is None
    graph = {"lightning_post.rec.a": {"lightning_post.errors"}, "lightning_post.data.b": {"lightning_post.rec.a"},
             "lightning_post.cmd.lib": {"lightning_post.data.b"}, "lightning_post.errors": set(),
             "lightning_post.data.c": {"lightning_post.cmd.lib", "lightning_post.cmd.run"},
             "lightning_post.cmd.run": set(), "lightning_post.rec.d": {"lightning_post"}, "lightning_post": set()}
    assert layer_breaks(graph, table) == {("lightning_post.data.c", "lightning_post.cmd.run"),
                                          ("lightning_post.rec.d", "lightning_post")}


def test_every_module_has_a_layer():
    table = layer_table(ARCHITECTURE.read_text(encoding="utf-8"))
    missing = sorted(m for m in import_graph() if layer_of(m, table) is None)
    assert not missing, f"modules in no layer of docs/architecture.md (add them to its table): {missing}"


def test_no_module_imports_a_higher_layer():
    table = layer_table(ARCHITECTURE.read_text(encoding="utf-8"))
    found = layer_breaks(import_graph(), table)
    shown = ", ".join(f"{a} (layer {layer_of(a, table)}) -> {b} (layer {layer_of(b, table)})" for a, b in sorted(found))
    assert not found, f"imports of a higher layer (docs/architecture.md, function-level imports included): {shown}"


def test_records_are_pure():
    """records/ imports nothing of the package but ``errors`` and itself, and no torch: a data module, a scorer or a
    command may use a record function without what they carry."""
    graph = import_graph()
    outside = sorted((m, t) for m, targets in graph.items() if m.startswith("lightning_post.records")
                     for t in targets if not t.startswith("lightning_post.records") and t != "lightning_post.errors")
    assert not outside, f"records/ imports more of the package than errors: {outside}"
    torch = sorted(p.name for p in (PACKAGE / "records").glob("*.py")
                   if re.search(r"^\s*(import torch|from torch\b)", p.read_text(encoding="utf-8"), re.M))
    assert not torch, f"records/ modules that import torch: {torch}"
