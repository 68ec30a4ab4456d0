"""The private internals of dependencies that batchnlp uses (batchnlp/util/compat.py) are still there
with the shape it relies on, so an upgrade that renames or reshapes one fails here, by name; and
no other module of the package reaches into a dependency's private attributes."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from batchnlp.util import compat
from tests.support import REPO

PACKAGE = REPO / "batchnlp"
# Private internals batchnlp has used: touching one outside compat.py fails, whatever defines the name.
KNOWN = {
    "_strip_protocol",
    "_correct_state",
    "_forkserver",
    "_forkserver_pid",
    "_stop",
    "_convert_schema_if_needed",
    "_resolve_table_location",
    "_int_mm",
    "_is_mkldnn_bf16_supported",
    "_call_s3",
}
# Documented public APIs that happen to start with an underscore.
PUBLIC = {"_exit", "_replace", "_asdict"}
ATTRIBUTE_FUNCTIONS = {"getattr", "hasattr", "setattr"}


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_fsspec_strips_a_path_by_the_filesystems_own_rules(tmp_path):
    from fsspec.implementations.local import LocalFileSystem
    from fsspec.spec import AbstractFileSystem
    from s3fs import S3FileSystem

    assert isinstance(inspect.getattr_static(AbstractFileSystem, "_strip_protocol"), classmethod)
    s3 = S3FileSystem(anon=True)
    assert compat.strip_protocol(s3, "s3://bucket/out/part-0.jsonl") == "bucket/out/part-0.jsonl"
    assert compat.strip_protocol(s3, "s3a://bucket/out/") == "bucket/out"
    # A path already stripped stays as it is (URL-driven fsspec.core.strip_protocol would make it local).
    assert compat.strip_protocol(s3, "bucket/out/part-0.jsonl") == "bucket/out/part-0.jsonl"
    assert compat.strip_protocol(LocalFileSystem(), (tmp_path / "part-0.jsonl").as_uri()) == str(
        tmp_path / "part-0.jsonl"
    )


@pytest.mark.cluster
def test_distributed_starts_the_workers_added_to_a_clusters_spec():
    from distributed import LocalCluster
    from distributed.core import Status
    from distributed.deploy.spec import SpecCluster

    assert parameters(SpecCluster._correct_state) == ["self"]
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        cluster.worker_spec["one"] = cluster.new_spec
        compat.start_spec_workers(cluster)
        assert {name: worker.status for name, worker in cluster.workers.items()} == {"one": Status.running}
        assert len(cluster.scheduler.workers) == 1


def test_the_fork_server_is_stopped_and_reaped():
    from multiprocessing import forkserver

    assert isinstance(forkserver._forkserver, forkserver.ForkServer)
    assert hasattr(forkserver._forkserver, "_forkserver_pid")
    assert parameters(forkserver._forkserver._stop) == []
    # In a process of its own: this one's fork server may be serving the cluster tests' workers.
    script = (
        "import os\n"
        "from multiprocessing import forkserver\n"
        "from batchnlp.util.compat import stop_fork_server\n"
        "forkserver.ensure_running()\n"
        "pid = forkserver._forkserver._forkserver_pid\n"
        "stop_fork_server()\n"
        "assert forkserver._forkserver._forkserver_pid is None\n"
        "try:\n"
        "    os.waitpid(pid, os.WNOHANG)\n"
        "except ChildProcessError:\n"
        "    print('reaped', pid)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=os.environ)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("reaped ")


def test_pyiceberg_converts_an_arrow_schema_as_create_table_does():
    pytest.importorskip("pyiceberg")
    from pyiceberg.catalog import Catalog
    from pyiceberg.schema import Schema

    assert isinstance(inspect.getattr_static(Catalog, "_convert_schema_if_needed"), staticmethod)
    converted = compat.iceberg_schema(pa.schema([("text", pa.string()), ("score", pa.float32())]))
    assert isinstance(converted, Schema)
    assert converted.as_arrow().names == ["text", "score"]
    with pytest.raises(ValueError, match="Null type"):
        compat.iceberg_schema(pa.schema([("nothing", pa.null())]))


def test_pyiceberg_tells_where_a_new_table_would_go(tmp_path):
    pytest.importorskip("pyiceberg")
    from pyiceberg.catalog import MetastoreCatalog

    from batchnlp.io.tables.iceberg import load

    assert parameters(MetastoreCatalog._resolve_table_location) == ["self", "location", "database_name", "table_name"]
    warehouse = (tmp_path / "warehouse").as_uri()
    catalog = load("lake", {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": warehouse})
    catalog.create_namespace("annotated")
    resolve = compat.table_location_resolver(catalog)
    assert resolve is not None
    assert resolve(None, "annotated", "reviews") == f"{warehouse}/annotated/reviews"


def test_torch_multiplies_int8_matrices_exactly_into_int32():
    assert [a.name for a in torch.ops.aten._int_mm.default._schema.arguments] == ["self", "mat2"]
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (32, 64), dtype=torch.int8, generator=generator)
    b = torch.randint(-127, 128, (64, 16), dtype=torch.int8, generator=generator)
    product = compat.int8_matmul(a, b)
    assert product.dtype == torch.int32
    assert torch.equal(product, (a.long() @ b.long()).int())


def test_torch_says_whether_onednn_computes_bf16():
    schema = torch.ops.mkldnn._is_mkldnn_bf16_supported.default._schema
    assert schema.arguments == [] and [str(r.type) for r in schema.returns] == ["bool"]
    assert compat.mkldnn_bf16_supported() is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def own_private_names(package: Path) -> set[str]:
    """Private names batchnlp defines itself: functions, classes, module names, assigned names and attributes."""
    names = {path.stem for path in package.rglob("*.py")}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def private_names_used(node: ast.AST) -> list[str]:
    """The private attribute names ``node`` reaches for on something other than ``self``/``cls``:
    ``x._name``, ``getattr(x, "_name")`` (or hasattr/setattr), ``from dependency import _name``."""
    if isinstance(node, ast.Attribute):
        mine = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
        return [] if mine else [node.attr]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ATTRIBUTE_FUNCTIONS:
        name = node.args[1] if len(node.args) >= 2 else None
        return [name.value] if isinstance(name, ast.Constant) and isinstance(name.value, str) else []
    if isinstance(node, ast.ImportFrom) and node.level == 0 and not (node.module or "").startswith("batchnlp"):
        return [alias.name for alias in node.names]
    return []


def foreign_private_uses(package: Path) -> list[str]:
    """Each place outside compat.py that touches a private attribute batchnlp does not define itself
    (or a known dependency internal, wherever defined), as ``path:line: code``."""
    own = own_private_names(package) - KNOWN
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "util" / "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [n for n in private_names_used(node) if n.startswith("_") and not n.startswith("__")]
            if any(name not in own | PUBLIC for name in names):
                code = ast.unparse(node).splitlines()[0]
                found.append((str(path.relative_to(package.parent)), node.lineno, code))
    return [f"{where}:{line}: {code}" for where, line, code in sorted(found)]


def test_only_compat_touches_a_dependencys_private_internals():
    uses = foreign_private_uses(PACKAGE)
    assert not uses, (
        "private internals of a dependency used outside batchnlp/util/compat.py; give each a named function "
        "there (what it uses, why no public API does it, the versions checked) and a check in this file:\n"
        + "\n".join(uses)
    )


def test_the_check_finds_each_kind_of_private_use(tmp_path):
    """Guard against the check above passing because it reads nothing."""
    package = tmp_path / "batchnlp"
    (package / "util").mkdir(parents=True)
    (package / "util" / "compat.py").write_text("def strip(fs, path):\n    return fs._strip_protocol(path)\n")
    (package / "step.py").write_text(
        "from torch import _int_mm\n"
        "from batchnlp.step import _own\n"
        "class Step:\n"
        "    def __init__(self, fs, cluster, catalog):\n"
        "        self._fs = fs\n"
        "        fs._strip_protocol('s3://b/k')\n"
        "        self._fs._call_s3('get_object')\n"
        "        cluster._lock\n"
        "        getattr(catalog, '_resolve_table_location', None)\n"
        "        _own(self._fs, Step._fs)\n"
        "def _own(*args):\n"
        "    return args\n"
    )
    assert [use.split(": ", 1)[1] for use in foreign_private_uses(package)] == [
        "from torch import _int_mm",
        "fs._strip_protocol",
        "self._fs._call_s3",
        "cluster._lock",
        "getattr(catalog, '_resolve_table_location', None)",
    ]


class RacingFinder:
    """Meets the import of ``name`` with ``error`` the first ``times`` times, as the interpreter's AST race
    meets anyio's import: the real import machinery, one finder ahead of the others."""

    def __init__(self, name: str, error: str, times: int) -> None:
        self.name, self.error, self.times, self.calls = name, error, times, 0

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == self.name:
            self.calls += 1
            if self.calls <= self.times:
                raise SystemError(self.error)
        return None


@pytest.mark.parametrize(
    "error, times, imported",
    [
        ("AST constructor recursion depth mismatch (before=240, after=231)", 1, True),  # CI's, on 3.11.7
        ("AST constructor recursion depth mismatch (before=240, after=231)", 2, False),  # twice: raised
        ("some other interpreter error", 1, False),
    ],
)
def test_an_import_is_tried_again_past_the_ast_race_only(error, times, imported):
    name = "xml.dom.pulldom"  # a standard module nothing here imports
    sys.modules.pop(name, None)
    finder = RacingFinder(name, error, times)
    sys.meta_path.insert(0, finder)
    try:
        if imported:
            assert compat.import_past_ast_race(name).__name__ == name and finder.calls == 2
        else:
            with pytest.raises(SystemError, match=error.split(" (")[0]):
                compat.import_past_ast_race(name)
    finally:
        sys.meta_path.remove(finder)
        sys.modules.pop(name, None)
