"""The fast subset stays fast: a test that starts a LocalCluster, a moto server or a job without its
marker fails (tests/support/markers.py), and the markers are registered, so a misspelt one fails too.

Checked in a pytest of its own (a child process, with the repository's settings and the plugin) on
a file of tests that each start one thing, marked and unmarked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.markers import starts_a_cluster

TESTS = """
import subprocess
import sys

import pytest


def start_a_cluster():
    from distributed import LocalCluster

    LocalCluster(n_workers=0, processes=False, dashboard_address=":0").close()


def start_a_moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    server.stop()


def start_a_job():  # a child whose command line ends as a batchnlp run's; "-c pass" runs nothing
    subprocess.run([sys.executable, "-c", "pass", "-m", "batchnlp", "run", "in/", "out/"], check=True)


def test_unmarked_cluster():
    start_a_cluster()


@pytest.mark.cluster
def test_marked_cluster():
    start_a_cluster()


def test_unmarked_moto():
    start_a_moto_server()


@pytest.mark.s3
def test_marked_moto():
    start_a_moto_server()


def test_unmarked_job():
    start_a_job()


@pytest.mark.cluster
def test_marked_job():
    start_a_job()
"""
MISSPELT = "import pytest\n\n\n@pytest.mark.clustr\ndef test_misspelt_marker():\n    pass\n"


def run_pytest(tmp_path: Path) -> str:
    """pytest's report on TESTS and MISSPELT, under pyproject.toml's settings and the markers plugin."""
    (tmp_path / "test_starts.py").write_text(TESTS, encoding="utf-8")
    (tmp_path / "test_misspelt.py").write_text(MISSPELT, encoding="utf-8")
    command = [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path)]
    command += ["-p", "tests.support.markers", "-p", "no:cacheprovider", "--continue-on-collection-errors"]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [*command, "-rA", str(tmp_path)], capture_output=True, text=True, env=environment, timeout=300
    )
    return done.stdout + done.stderr


@pytest.mark.slow  # a pytest in a child process
def test_a_test_that_starts_a_cluster_a_moto_server_or_a_job_unmarked_fails(tmp_path: Path) -> None:
    report = run_pytest(tmp_path)
    ended = {test: outcome for outcome, test in re.findall(r"^(PASSED|FAILED) \S*test_starts\.py::(\w+)", report, re.M)}
    assert ended == {
        "test_unmarked_cluster": "FAILED",
        "test_marked_cluster": "PASSED",
        "test_unmarked_moto": "FAILED",
        "test_marked_moto": "PASSED",
        "test_unmarked_job": "FAILED",
        "test_marked_job": "PASSED",
    }, report
    assert "is not marked cluster" in report and "is not marked s3" in report, report
    assert "'clustr' not found in `markers`" in report, report


@pytest.mark.parametrize(
    ("command", "cluster"),
    [
        (["/venv/bin/batchnlp", "run", "in/", "out/"], True),
        (["python", "-m", "batchnlp", "run", "--spec", "job.yaml"], True),
        ("batchnlp run s3://bucket/in/ s3://bucket/out/", True),
        (["unshare", "-m", "sh", "-c", 'exec "$@"', "sh", "python", "-m", "batchnlp", "run", "in/", "out/"], True),
        (["dask", "scheduler", "--port", "0"], True),
        (["/venv/bin/dask", "worker", "tcp://127.0.0.1:8786"], True),
        (["python", "-m", "batchnlp", "run", "--help"], False),
        (["python", "-m", "batchnlp", "models", "pull", "a", "b"], False),
        (["python", "-m", "batchnlp", "plan", "in/", "out/"], False),
        (["python", "-c", "print('run')"], False),
        (["/bin/sh", "-c", 'exec batchnlp "$@"', "batchnlp", "run", "--spec", "job.yaml"], False),  # a script's $0
    ],
)
def test_a_command_line_starts_a_cluster_when_it_runs_a_job_or_a_dask_process(command, cluster) -> None:
    assert starts_a_cluster(command) is cluster
