"""dvc.yaml: each stage's deps cover every module of this repo that its command can run.

A stage reruns when one of its deps changes; a module it runs but does not list (the
train stage's ``export.py``, whose graph goes into ``model.pt``) changes its outputs
without DVC noticing. What a command runs is found from the source, without importing
it: starting at the stage's ``python -m`` module, follow every function and class that
reachable code names, and every module that reachable code imports (a module's top
level runs when it is imported; a function's imports only when the function is named
by reachable code). Only this repo's packages (``bridgenet``, ``flows``) count.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bridgenet", "flows")
# Functions not followed, with why they cannot change a stage's outputs.
NOT_FOLLOWED = {
    # Prefect's retry decision after a task failed: imports the tracking errors to classify it
    ("flows.common", "retry_transient"),
}


def module_file(name: str) -> Path | None:
    """The file of module ``name`` of this repo, or None (another package's, or not a module)."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    path = REPO.joinpath(*parts)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


@dataclass
class Unit:
    """A module's top level, or one top-level function or class: what it imports and names."""

    imports: set[str] = field(default_factory=set)
    bindings: dict[str, tuple[str, ...]] = field(default_factory=dict)  # ("module", M) | ("attr", M, a)
    names: set[str] = field(default_factory=set)
    attributes: set[tuple[str, str]] = field(default_factory=set)  # (name, attribute)


def _guarded_by(node: ast.AST, name: str) -> bool:
    test = getattr(node, "test", None)
    if isinstance(test, ast.Compare):
        test = test.left
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == name) or (isinstance(test, ast.Attribute) and test.attr == name))


def _scan(nodes: list[ast.AST], package: str, unit: Unit) -> None:
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if _guarded_by(node, "TYPE_CHECKING"):  # never runs
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                unit.imports.add(alias.name)
                bound = alias.name if alias.asname else alias.name.split(".")[0]
                unit.bindings[alias.asname or bound] = ("module", bound)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            unit.imports.add(base)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = module_file(sub) is not None
                if is_module:
                    unit.imports.add(sub)
                unit.bindings[alias.asname or alias.name] = ("module", sub) if is_module else ("attr", base, alias.name)
        elif isinstance(node, ast.Name):
            unit.names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            unit.attributes.add((node.value.id, node.attr))
        stack.extend(ast.iter_child_nodes(node))


class Module:
    """One source file split into its top level and its top-level functions and classes."""

    def __init__(self, name: str, path: Path, is_main: bool) -> None:
        tree = ast.parse(path.read_text(), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        self.top, self.defs = Unit(), {}
        top_nodes: list[ast.AST] = []
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                # decorators, default values and base classes run at import time
                top_nodes += node.decorator_list
                if isinstance(node, ast.ClassDef):
                    top_nodes += node.bases
                else:
                    top_nodes += [d for d in (*node.args.defaults, *node.args.kw_defaults) if d is not None]
                self.defs[node.name] = Unit()
                _scan(node.body, package, self.defs[node.name])
            elif is_main or not _guarded_by(node, "__name__"):
                top_nodes.append(node)
        _scan(top_nodes, package, self.top)


def modules_run_by(entry: str) -> set[str]:
    """The repo files (relative paths) that ``python -m entry`` can run."""
    modules: dict[str, Module] = {}
    todo: list[tuple[str, str | None]] = []
    done: set[tuple[str, str | None]] = set()

    def load(name: str) -> None:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # a package's __init__ runs first
            sub = ".".join(parts[:i])
            path = module_file(sub)
            if path is not None and sub not in modules:
                modules[sub] = Module(sub, path, is_main=sub == entry)
                todo.append((sub, None))

    def follow(module: str, name: str, seen: frozenset = frozenset()) -> None:
        if module_file(f"{module}.{name}") is not None:
            load(f"{module}.{name}")
        elif module in modules and (module, name) not in seen:
            found = modules[module]
            if name in found.defs:
                if (module, name) not in NOT_FOLLOWED:
                    todo.append((module, name))
            elif name in found.top.bindings:  # imported there (a re-export)
                resolve(found.top.bindings[name], seen | {(module, name)})

    def resolve(binding: tuple[str, ...], seen: frozenset = frozenset()) -> None:
        load(binding[1])
        if binding[0] == "attr":
            follow(binding[1], binding[2], seen)

    load(entry)
    while todo:
        key = todo.pop()
        if key in done:
            continue
        done.add(key)
        module = modules[key[0]]
        unit = module.top if key[1] is None else module.defs[key[1]]
        bindings = {**module.top.bindings, **unit.bindings}
        for name in unit.imports:
            load(name)
        for name in unit.names:
            if name in bindings:
                resolve(bindings[name])
            elif name in module.defs:
                follow(key[0], name)
        for name, attribute in unit.attributes:
            if bindings.get(name, ("",))[0] == "module":
                resolve(("attr", bindings[name][1], attribute))
    return {module_file(name).relative_to(REPO).as_posix() for name in modules}


def dvc_stages() -> dict[str, dict]:
    """Each stage of dvc.yaml (a ``foreach`` stage's ``do`` part) by name."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def test_module_finder_sees_lazy_imports_of_reached_functions_only() -> None:
    run = modules_run_by("flows.train")
    assert {"bridgenet/train.py", "bridgenet/export.py", "bridgenet/stages.py", "flows/common.py"} <= run
    # stages.py imports the register stage lazily, inside a function the train flow never names
    assert "bridgenet/register.py" not in run and "bridgenet/tracking/runs.py" not in run


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_stage_deps_cover_the_modules_its_command_runs(stage: str) -> None:
    spec = dvc_stages()[stage]
    command = re.match(r"python -m ([\w.]+)", spec["cmd"])
    assert command, f"dvc.yaml stage {stage}: cmd {spec['cmd']!r} is not `python -m MODULE ...`"
    deps = [str(d).rstrip("/") for d in spec.get("deps", []) if "${" not in str(d)]
    missing = sorted(f for f in modules_run_by(command.group(1))
                     if not any(f == d or f.startswith(f"{d}/") for d in deps))
    assert not missing, f"dvc.yaml stage {stage}: deps miss {missing} (run by `{spec['cmd']}`)"
