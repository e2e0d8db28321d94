"""No two reasonrl modules import each other, directly or around a loop (an import inside a
function counts: it is a cycle all the same, only deferred)."""

import ast
from pathlib import Path

import reasonrl

ROOT = Path(reasonrl.__file__).parent


def _imports() -> dict[str, set[str]]:
    """Module → the reasonrl modules it imports (``from pkg import name`` counts as the
    submodule ``pkg.name`` when there is one, else as ``pkg``)."""
    files = {
        ".".join(("reasonrl", *f.relative_to(ROOT).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): f
        for f in ROOT.rglob("*.py")
    }
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in files else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (depth-first search for a back edge), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_around_a_loop():
    assert _cycle(_imports()) is None


def _packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph between reasonrl's packages and top-level modules (reasonrl.train, …)."""
    top = lambda name: ".".join(name.split(".")[:2])  # noqa: E731
    packages: dict[str, set[str]] = {top(name): set() for name in graph}
    for name, deps in graph.items():
        packages[top(name)] |= {top(d) for d in deps} - {top(name)}
    return packages


def test_the_package_graph_merges_modules():
    graph = {
        "reasonrl.a.x": {"reasonrl.b.y"},
        "reasonrl.b.y": {"reasonrl.a.z"},
        "reasonrl.a.z": set(),
    }
    assert _cycle(_packages(graph)) == ["reasonrl.a", "reasonrl.b", "reasonrl.a"]


def test_no_package_imports_itself_around_a_loop():
    # e.g. models → tasks → rewards → models, or eval → pipeline → train → eval
    assert _cycle(_packages(_imports())) is None
