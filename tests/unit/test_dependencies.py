"""What a plain ``pip install batchnlp`` pulls in is what the package runs on: every runtime
dependency in pyproject.toml is imported by the package, so a test-only library (``datasets``) is
not installed on every worker image in production."""

from __future__ import annotations

import ast

import tomllib
from packaging.requirements import Requirement

from tests.support import REPO as ROOT

PACKAGE = ROOT / "batchnlp"
# Distribution name -> the module it is imported as, where they differ.
MODULE = {"pyyaml": "yaml"}
# Used without an import statement: fsspec loads s3fs for s3:// URLs.
LOADED_BY_PLUGIN = {"s3fs"}


def imported_modules() -> set[str]:
    """Top-level names of every module the package imports, anywhere (in functions too)."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_runtime_dependency_is_used_by_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = [Requirement(line).name.lower() for line in project["dependencies"]]
    imported = imported_modules()
    unused = [
        name
        for name in names
        if name not in LOADED_BY_PLUGIN and MODULE.get(name, name.replace("-", "_")) not in imported
    ]
    assert not unused, f"runtime dependencies the package never imports (move them to an extra): {unused}"
