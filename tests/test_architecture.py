"""The package's shape: no import cycle, small modules, one inference path."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bridgenet"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, at any depth of its code (``TYPE_CHECKING`` blocks excepted)."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for node in ast.walk(tree) if isinstance(node, ast.If)
               and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"}
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if id(node) in skipped:
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: imports(path, modules) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            strongconnect(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package():
    # a package's __init__ importing its own submodules is not a cycle between modules
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in import_graph().items()}
    assert cycles(graph) == []


def test_the_model_contract_imports_no_model_code():
    """Reading a model file's meta or loading a scripted graph must not import timm or the network."""
    graph = import_graph()
    for light in ("bridgenet.model.contract", "bridgenet.model.scorers", "bridgenet.model.scripted"):
        assert not graph[light] & {"bridgenet.model.network", "bridgenet.model.backbone", "bridgenet.model.io"}, light


def test_maps_are_pasted_into_the_frame_in_one_place():
    """Running the network and upsampling its maps into the frame happens in bridgenet.inference only."""
    callers = sorted(module_name(p) for p in PACKAGE.rglob("*.py") if "paste_maps(" in p.read_text()
                     and module_name(p) != "bridgenet.data.crop")
    assert callers == ["bridgenet.inference"]


def test_no_module_of_the_package_is_over_400_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
