"""Every use of a dependency's private internal, in one place: each is a small named function here.

batchnlp reaches past a dependency's public API only where that API lacks what a job needs. Each
function below says which private thing it uses, why no public API does the job, and the versions
it was checked against; ``tests/integration/util/test_compat.py`` checks that each internal is still there with the
shape used here (so an upgrade that renames one fails that test by name, not a job at night), and
that no other module of the package touches a dependency's private attribute.

Nothing heavy is imported at module level: each function imports its dependency when called, so
the command line starts as fast as before.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any


def strip_protocol(fs: Any, path: str) -> str:
    """``path`` (a URL, or already ``fs``'s own path) as ``fs``'s own path: ``s3://b/k`` → ``b/k``."""
    # fsspec AbstractFileSystem._strip_protocol, the classmethod each backend overrides with its
    # own rules (s3fs strips s3:// and s3a://; the local filesystem strips file:// and makes the
    # path absolute) and that fsspec, dask and pyiceberg's FsspecFileIO call themselves. Public
    # fsspec.core.strip_protocol and url_to_fs choose the rules from the URL's protocol instead of
    # from ``fs``: a path already stripped ("bucket/key") has none and would get the local rules
    # ("/cwd/bucket/key"). fs.unstrip_protocol is the public inverse only.
    # Checked: fsspec 2026.9.0, s3fs 2026.9.0.
    return fs._strip_protocol(path)


def start_spec_workers(cluster: Any) -> None:
    """Start the workers added to ``cluster.worker_spec`` and return once they have started."""
    # distributed SpecCluster._correct_state: starts (or stops) workers until they match
    # worker_spec; the SpecCluster docstring names it as the way to apply a changed spec. Public
    # scale(n) makes every worker from one template (new_spec), but batchnlp gives each worker its
    # own options (name, GPU, environment), and scale returns before the workers have started;
    # awaiting the cluster, the other documented way, needs an asynchronous cluster.
    # Checked: distributed 2026.8.0.
    cluster.sync(cluster._correct_state)


def stop_fork_server() -> None:
    """Stop this process's multiprocessing fork server now, if it started one (reaping it and
    removing its socket); the next fork starts a new one."""
    # CPython multiprocessing.forkserver: the module's singleton ``_forkserver`` (a ForkServer),
    # its ``_forkserver_pid`` and ``_stop()``. The module has no public way to stop its server or
    # to learn its process: it only stops at interpreter exit, once its imports are done.
    # Checked: CPython 3.11.7.
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if server._forkserver_pid is not None:
        os.kill(server._forkserver_pid, signal.SIGTERM)  # our unreaped child: alive, or a zombie
        server._stop()  # reaps it and removes its socket


def iceberg_schema(schema: Any) -> Any:
    """The Iceberg schema that pyiceberg's ``create_table`` makes of a pyarrow ``schema``; raises
    what it raises for a column Iceberg cannot hold."""
    # pyiceberg Catalog._convert_schema_if_needed (a staticmethod): the conversion create_table
    # and every catalog use, assigning fresh field IDs and honouring the
    # downcast-ns-timestamp-to-us-on-write setting. The public pyiceberg.io.pyarrow.pyarrow_to_schema
    # needs field IDs already in the schema or a name mapping.
    # Checked: pyiceberg 0.12.0.
    from pyiceberg.catalog import Catalog

    return Catalog._convert_schema_if_needed(schema)


def table_location_resolver(catalog: Any) -> Callable[[str | None, str, str], str] | None:
    """``catalog``'s own rule for where a new table goes, called as ``(None, namespace, name)``; None
    for a catalog that does not choose locations in pyiceberg (a REST catalog's server does)."""
    # pyiceberg MetastoreCatalog._resolve_table_location(location, database_name, table_name):
    # the location create_table would give a table (the namespace's location, else the warehouse).
    # pyiceberg has no public way to ask where a table would go before creating it.
    # Checked: pyiceberg 0.12.0.
    return getattr(catalog, "_resolve_table_location", None)


def int8_matmul(a: Any, b: Any) -> Any:
    """The exact int32 product of two int8 matrices, ``a @ b``."""
    # torch._int_mm (aten::_int_mm(Tensor self, Tensor mat2) -> Tensor): int8 × int8 → int32 on
    # oneDNN (VNNI where the CPU has it) or cuBLAS. torch.matmul of int8 tensors gives int8 (the
    # sums overflow), and torch.ao.quantization's dynamic kernels quantise a whole batch with one
    # scale (see int8.py). torch has no public int8 × int8 → int32 product.
    # Checked: torch 2.13.0.
    import torch

    return torch._int_mm(a, b)


def mkldnn_bf16_supported() -> bool:
    """Whether oneDNN computes bf16 on this CPU (True where torch cannot say)."""
    # torch.ops.mkldnn._is_mkldnn_bf16_supported: oneDNN's own test, the one torch's bf16 kernels
    # ask. Public torch.cpu.get_capabilities lists CPU flags, not oneDNN's verdict, and the two
    # differ: torch's mkldnn_bf16_device_check has accepted AVX-512 BW/VL/DQ cores without the
    # BF16 extension.
    # Checked: torch 2.13.0.
    import torch

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else True


AST_RACE = "AST constructor recursion depth mismatch"


def import_past_ast_race(name: str) -> Any:
    """``import name``, tried once more if the interpreter's AST race stopped it.

    CPython before 3.11.8 and 3.12.1 keeps one AST-construction depth per interpreter, not per thread,
    and a conversion that fails or is interleaved with another thread's leaves it off, so a later
    ``compile(..., ast.PyCF_ONLY_AST)`` raises ``SystemError: AST constructor recursion depth mismatch``
    (python/cpython#106905). anyio (which huggingface_hub, and so transformers, imports) compiles its own
    source to an AST at import: a worker importing transformers in its loading thread met it once in CI
    on 3.11.7. Nothing was wrong with the import, and the depth is right again once the other conversion
    ends, so the import is tried again; any other error, or a second failure, is raised.
    """
    import importlib

    try:
        return importlib.import_module(name)
    except SystemError as e:
        if AST_RACE not in str(e):
            raise
    return importlib.import_module(name)
