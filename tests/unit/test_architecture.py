"""The shape of the package, checked: every module sits in a folder (or is one of the few
top-level modules), imports form no cycle, and imports point one way, down the layers below, so a
change to a lower layer never needs a higher one. docs/architecture.md draws these layers.

Imports under ``TYPE_CHECKING`` are not imports at run time and are not counted; imports inside
functions are. Task registry entries name their code as strings (``"batchnlp.tasks.qa:..."``)
and are loaded on demand, as plugins are: those are not imports either.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

PACKAGE = REPO / "batchnlp"

# Top to bottom: a unit imports only units of the layers below its own (and itself). Units of one
# layer are siblings that never import each other. A new module must sit in one of these units.
LAYERS: list[list[str]] = [
    ["__main__"],
    ["cli"],
    ["batchnlp", "api"],  # the public Python API: the package root and batchnlp.api
    ["deploy", "distillation"],
    ["observe"],
    ["execution"],
    ["cluster", "ledger"],
    ["spec"],
    ["tasks"],
    ["inference"],
    ["io"],
    ["util"],
    ["errors", "version", "testing"],
]
UNITS = {unit: depth for depth, layer in enumerate(LAYERS) for unit in layer}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def unit(module: str) -> str:
    """The folder (or top-level module) ``module`` belongs to: batchnlp.io.formats.jsonl → io."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports(name: str) -> set[str]:
    """The batchnlp modules ``name`` imports at run time (a name imported from a package counts as
    the package, unless it is a submodule)."""
    tree = ast.parse(MODULES[name].read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("batchnlp"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("batchnlp"))
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imports(name) for name in MODULES}


def test_every_module_sits_in_a_layer():
    unplaced = sorted(name for name in MODULES if unit(name) not in UNITS)
    assert not unplaced, f"modules in no layer of LAYERS (put them in a folder, or add the folder): {unplaced}"


def test_every_folder_says_its_job_and_what_it_may_import():
    folders = sorted(path.parent for path in PACKAGE.glob("*/__init__.py"))
    assert {folder.name for folder in folders} <= set(UNITS)
    silent = [
        f.name
        for f in folders
        if "May import" not in (ast.get_docstring(ast.parse((f / "__init__.py").read_text())) or "")
    ]
    assert not silent, f"folders whose __init__ docstring does not say what they may import: {silent}"


def test_no_module_imports_itself_through_others():
    cycles = []
    for start in GRAPH:
        path, seen = [start], {start}
        frontier = [(start, iter(GRAPH[start]))]
        while frontier:
            _, children = frontier[-1]
            child = next(children, None)
            if child is None:
                frontier.pop()
                path.pop()
            elif child == start:
                cycles.append(" → ".join([*path, start]))
            elif child not in seen:
                seen.add(child)
                path.append(child)
                frontier.append((child, iter(GRAPH[child])))
    assert not cycles, "circular imports:\n" + "\n".join(sorted(set(cycles)))


def test_imports_point_down_the_layers():
    upward = []
    for module, imported in GRAPH.items():
        here = unit(module)
        for other in imported:
            there = unit(other)
            if there != here and UNITS.get(there, -1) <= UNITS.get(here, -1):
                upward.append(f"{module} ({here}) imports {other} ({there})")
    assert not upward, "imports that do not point down the layers:\n" + "\n".join(sorted(upward))


def test_the_checks_see_the_package():
    """Guard against the checks above passing because they read nothing."""
    assert len(MODULES) > 80
    assert {"batchnlp.execution.plan", "batchnlp.execution.worker", "batchnlp.ledger.output"} <= GRAPH[
        "batchnlp.execution.runner"
    ]
    assert [unit(name) for name in ("batchnlp.cli", "batchnlp.tasks.qa", "batchnlp.io.formats.jsonl")] == [
        "cli",
        "tasks",
        "io",
    ]
    assert "batchnlp.tasks" in GRAPH["batchnlp.spec"]  # the spec validates task names against the registry


def test_no_module_reaches_into_another_modules_private_names():
    """What a module shares is public: ``from batchnlp.x import _name`` or ``x._name`` on a batchnlp
    module makes a private helper part of two modules' contracts without saying so."""
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = {  # names bound to batchnlp modules here: `from batchnlp.io.formats import jsonl`
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("batchnlp")
            for alias in node.names
            if f"{node.module}.{alias.name}" in MODULES
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("batchnlp"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                found += [f"{name}: from {node.module} import {a}" for a in private]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                found.append(f"{name}: {node.value.id}.{node.attr}")
    assert not found, found
