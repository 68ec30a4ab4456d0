"""The markers that pick the fast subset, put on and held to what each test does.

``cluster``: starts a Dask cluster or runs a job through one; ``s3``: uses the moto S3 server;
``slow``: any other test over a couple of seconds (registered in pyproject.toml). A test gets
``cluster`` or ``s3`` from the fixtures it uses (:data:`FIXTURE_MARKERS`), or from its module's
``pytestmark`` or its own decorator where it starts them itself. This plugin (loaded by
tests/conftest.py) also counts what each test starts, and fails a test that started a LocalCluster,
a moto server, a ``batchnlp run`` or a ``dask scheduler``/``worker`` process without the marker,
so ``pytest -m "not cluster and not s3"`` never starts one.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pytest

# Fixtures that start a cluster or a moto server, and the marker of every test that uses one.
FIXTURE_MARKERS = {"scheduler": "cluster", "lake_scheduler": "cluster", "s3_proxy": "s3", "lake_s3": "s3"}

STARTED: Counter[str] = Counter()  # what this session's tests started, by the marker it needs
_BEFORE = pytest.StashKey[Counter]()


# Programs whose command starts a cluster: a batchnlp job, a Dask scheduler or worker.
CLUSTER_COMMANDS = {"batchnlp": {"run"}, "dask": {"scheduler", "worker"}}


def starts_a_cluster(args: str | Iterable[Any]) -> bool:
    """Whether a command line starts one of :data:`CLUSTER_COMMANDS` (the program itself, or
    ``python -m`` it, possibly behind a wrapper such as ``unshare``), not just for its --help."""
    words = shlex.split(args) if isinstance(args, str) else [str(word) for word in args]
    for i, word in enumerate(words[:-1]):
        commands = CLUSTER_COMMANDS.get(os.path.basename(word), set())
        if (i == 0 or words[i - 1] == "-m") and words[i + 1] in commands:
            return "--help" not in words[i + 2 :]
    return False


def _count(owner: type, method: str, marker: str, when: Callable[..., bool] | None = None) -> None:
    """Wrap ``owner.method`` so that each call (each one ``when`` accepts) counts one start."""
    original = getattr(owner, method)

    @functools.wraps(original)
    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        if when is None or when(*args, **kwargs):
            STARTED[marker] += 1
        return original(self, *args, **kwargs)

    setattr(owner, method, counted)


def _popen_args(args: Any = (), *_: Any, **__: Any) -> bool:
    return starts_a_cluster(args)


def pytest_configure(config: pytest.Config) -> None:
    from distributed import LocalCluster
    from moto.server import ThreadedMotoServer

    from tests.support.s3proxy import ServerProcess

    _count(LocalCluster, "__init__", "cluster")
    _count(ThreadedMotoServer, "start", "s3")
    _count(ServerProcess, "__init__", "s3")  # moto in a child process
    _count(subprocess.Popen, "__init__", "cluster", _popen_args)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Before ``-m`` selects: a test using a cluster or S3 fixture gets that fixture's marker."""
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_BEFORE] = STARTED.copy()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A passed test that started what its markers do not say fails (its fixtures' setup counts)."""
    report = yield
    if report.when == "call" and report.passed and _BEFORE in item.stash:
        started = STARTED - item.stash[_BEFORE]
        missing = sorted(marker for marker in started if item.get_closest_marker(marker) is None)
        if missing:
            report.outcome = "failed"
            report.longrepr = (
                f"{item.nodeid} started {dict(started)} but is not marked {' or '.join(missing)}: mark the "
                "test (@pytest.mark.NAME) or its module (pytestmark), see tests/support/markers.py"
            )
    return report
