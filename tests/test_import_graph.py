"""minibn's modules import each other without a circle: the graph of minibn-internal imports, read
from every module's source (imports at module level and inside functions alike), has no cycle.

A function-level import that would close a circle ("import inside the function because that module
imports this one") hides the circle from Python but not from the reader; it counts here. An edge goes
to the module named: ``from minibn.nn import normalization`` to minibn.nn.normalization (a
submodule), ``from minibn.nn import Dense`` to the package minibn.nn, whose ``__init__`` has edges to
the modules it imports. Python runs a package's ``__init__`` before any of its submodules, but that
is the import machinery, not a dependency of the submodule, and is not an edge.
"""

import ast
import importlib.util
import pkgutil
from pathlib import Path

import minibn

ROOT = Path(minibn.__file__).resolve().parent


def modules():
    """{module name: source path} of minibn and every module under it."""
    found = {"minibn": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="minibn."):
        spec = importlib.util.find_spec(info.name)
        found[info.name] = Path(spec.origin)
    return found


def imported(name, source, known, is_package=False):
    """The modules of ``known`` that the module ``name`` imports anywhere in its ``source``."""
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                # "import minibn.nn.layer" binds minibn and names minibn.nn.layer: the deepest known module
                parts = alias.name.split(".")
                deepest = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in known),
                               None)
                if deepest:
                    targets.add(deepest)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module not in known:
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets.add(sub if sub in known else module)
    targets.discard(name)
    return targets


def import_graph():
    known = modules()
    return {name: imported(name, path.read_text(encoding="utf-8"), known, path.name == "__init__.py")
            for name, path in known.items()}


def cycles(graph):
    """Every strongly connected component of more than one module (Tarjan's algorithm), each as a
    cycle through it: a list of modules whose last imports the first."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [cycle_through(graph, component) for component in components]


def cycle_through(graph, component):
    """A shortest cycle inside ``component`` through its first module (breadth first)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def describe(cycle):
    return " -> ".join(cycle + [cycle[0]])


def test_the_graph_covers_the_package_and_sees_imports_inside_functions():
    graph = import_graph()
    assert {"minibn", "minibn.nn", "minibn.nn.layer", "minibn.nn.losses", "minibn.measure.hessian",
            "minibn.studies.dln"} <= set(graph)
    assert "minibn.nn.layer" in graph["minibn.nn.losses"]          # module level: from minibn.nn.layer import ...
    assert "minibn.nn.normalization" in graph["minibn.nn.batchnorm"]
    assert graph["minibn.nn.layer"] == {"minibn.backend"}   # the hvp takes the loss's tangent from its caller


def test_cycles_are_found_at_every_level_and_printed():
    sources = {"minibn": "from minibn import d\n",                               # a package's __init__
               "minibn.a": "from minibn import b\n",                             # a submodule by name
               "minibn.b": "def f():\n    import minibn.c.x\n",                   # inside a function
               "minibn.c": "from . import x\n", "minibn.c.x": "from ..a import thing\n",     # relative
               "minibn.d": "import os\nfrom minibn.a import x\n"}
    graph = {name: imported(name, source, set(sources), is_package=name in ("minibn", "minibn.c"))
             for name, source in sources.items()}
    assert graph == {"minibn": {"minibn.d"}, "minibn.a": {"minibn.b"}, "minibn.b": {"minibn.c.x"},
                     "minibn.c": {"minibn.c.x"}, "minibn.c.x": {"minibn.a"},
                     "minibn.d": {"minibn.a"}}
    assert [describe(c) for c in cycles(graph)] == ["minibn.a -> minibn.b -> minibn.c.x -> minibn.a"]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_minibn():
    found = cycles(import_graph())
    assert not found, "import cycles in minibn:\n" + "\n".join(f"  {describe(c)}" for c in found)
