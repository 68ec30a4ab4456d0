"""The shape of the package, checked: imports form no cycle, and a job's steps import only the
steps below them, so a change to a lower step never needs a higher one.

A job goes cli → spec → plan → runner → worker → task/engine → output → commit. The runner
conducts it: it calls plan, submits to the workers and commits through the output, so it imports
them; plan and worker are one layer (neither knows the other). A sharded run's steps (sharded)
are the runner's, shared out: they sit above it. Imports under ``TYPE_CHECKING`` are
not imports at run time and are not counted; imports inside functions are."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batchnlp"
# Each layer may import the layers to its right; the spec is the data every step reads.
STEPS = ["cli", "sharded", "runner", "plan|worker", "tasks|engine", "output", "commit"]
SHARED = {"spec"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


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


def step(module: str) -> int | None:
    """The position of ``module`` in STEPS, or None when it is no step (a helper any step may use)."""
    short = module.removeprefix("batchnlp.")
    for position, names in enumerate(STEPS):
        if any(short == name or short.startswith(name + ".") for name in names.split("|")):
            return position
    return None


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


def test_each_step_imports_only_later_steps_and_the_spec():
    backwards = []
    for module, imported in GRAPH.items():
        here = step(module)
        if here is None:
            continue
        for other in imported:
            there = step(other)
            if there is not None and there < here and other.removeprefix("batchnlp.") not in SHARED:
                backwards.append(f"{module} imports {other}")
    assert not backwards, "a step imports an earlier step:\n" + "\n".join(sorted(backwards))


def test_the_checks_see_the_steps():
    """Guard against the checks above passing because they read nothing."""
    assert {"batchnlp.runner", "batchnlp.output", "batchnlp.plan"} <= set(GRAPH)
    assert {"batchnlp.plan", "batchnlp.worker", "batchnlp.output"} <= GRAPH["batchnlp.runner"]
    assert [step(f"batchnlp.{name}") for name in ("cli", "tasks.qa", "commit", "record")] == [0, 4, 6, None]


def test_no_module_reaches_into_another_modules_private_names():
    """What a module shares is public: ``from batchnlp.x import _name`` or ``x._name`` on a batchnlp
    module makes a private helper part of two modules' contracts without saying so."""
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = {  # names bound to batchnlp modules here: `from batchnlp.formats import jsonl`
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
