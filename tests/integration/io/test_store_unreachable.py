"""Every command meets a store it cannot reach with a clear error, an exit code a scheduler can act
on, and a wait that suits it: 30 s of retries where a person waits, 5 minutes in a nightly run."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from tests.conftest import S3_ENV
from tests.support import REPO

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
NIGHTLY = str(REPO / "jobs" / "nightly-labels.yaml")
SUBMIT = ["submit", "--spec", NIGHTLY, "--queue", "q", "--job-definition", "d"]

COMMANDS = {
    "submit-backfill-dry-run": [*SUBMIT, "--from", "2026-11-01", "--to", "2026-11-03", "--shards", "4", "--dry-run"],
    "submit-backfill": [*SUBMIT, "--from", "2026-11-01", "--to", "2026-11-03"],
    "plan": ["plan", "s3://acme-lake/raw/", "s3://acme-lake/labelled/", "--task", "sentiment"],
    "inspect": ["inspect", "s3://acme-lake/labelled/"],
    "commit": ["commit", "s3://acme-lake/labelled/", "--run-id", "2026-11-24"],
    "distill": ["distill", "s3://acme-lake/labelled/", "{tmp}/student"],
    "models-pull": ["models", "pull", "{model}", "s3://acme-lake/models/sst2/"],
    "models-digest": ["models", "digest", "s3://acme-lake/models/sst2/"],
    "models-ls": ["models", "ls", "s3://acme-lake/models/"],
    "run": ["run", "s3://acme-lake/raw/", "s3://acme-lake/labelled/", "--task", "sentiment"],
}


def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.cluster
def test_every_command_says_the_store_is_unreachable(name, tmp_path, tiny_model):
    args = [arg.format(tmp=tmp_path, model=tiny_model) for arg in COMMANDS[name]]
    env = {
        **os.environ,
        **S3_ENV,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
        "BATCHNLP_S3_RETRY_SECONDS": "0.5",  # the budget itself is tested below
    }
    done = subprocess.run(
        [sys.executable, "-m", "batchnlp", *args], env=env, capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output  # transient: the scheduler retries
    assert "is failing or unreachable" in output and "s3://acme-lake/" in output, output  # what it could not reach
    assert "this is a bug" not in output and "Traceback" not in output, output


INTERACTIVE = {
    "plan": ["plan", "s3://{bucket}/raw/", "s3://{bucket}/out/", "--task", "sentiment", "--verbose"],
    "inspect": ["inspect", "s3://{bucket}/out/"],
    "models-digest": ["models", "digest", "s3://{bucket}/models/sst2/"],
    "submit-dry-run": [*SUBMIT, "--param", "table={bucket}", "--dry-run", "--from", "2026-11-01", "--to", "2026-11-01"],
}


@pytest.mark.parametrize(
    ("args", "budget"),
    [*((args, 30) for args in INTERACTIVE.values()), (["run", "s3://{bucket}/raw/", "s3://{bucket}/out/"], 300)],
    ids=[*INTERACTIVE, "run"],
)
def test_a_person_waits_30_s_for_a_failing_store_a_nightly_run_5_minutes(
    args, budget, bucket, s3_proxy, caplog, monkeypatch
):
    """The budget each command sets, read from the retry handler's first words on a fault (one 503, then
    the store answers; commands that configure logging print them, the others log them): no test waits
    30 s. BATCHNLP_S3_RETRY_SECONDS, when set, wins everywhere."""
    monkeypatch.delenv("BATCHNLP_S3_RETRY_SECONDS", raising=False)
    caplog.set_level(logging.INFO, logger="batchnlp.util.retry")
    s3_proxy.inject("503", "*", f"/{bucket}", times=1)
    said = CliRunner().invoke(main, [arg.format(bucket=bucket) for arg in args]).output + caplog.text
    assert f"retrying for up to {budget} s" in said, said

    caplog.clear()
    monkeypatch.setenv("BATCHNLP_S3_RETRY_SECONDS", "7")
    s3_proxy.inject("503", "*", f"/{bucket}", times=1)
    said = CliRunner().invoke(main, [arg.format(bucket=bucket) for arg in args]).output + caplog.text
    assert "retrying for up to 7 s" in said, said


def test_a_storage_failure_no_call_site_named_is_still_no_bug():
    """The CLI's net: a real botocore failure against a closed port that reached a command unmapped."""
    import boto3
    from botocore.config import Config

    from batchnlp.errors import JobFailed
    from batchnlp.io.storage import unnamed_storage_error

    endpoint = f"http://127.0.0.1:{closed_port()}"
    client = boto3.client("s3", endpoint_url=endpoint, config=Config(retries={"total_max_attempts": 1}), **KEYS)
    with pytest.raises(Exception) as raised:
        client.head_object(Bucket="acme-lake", Key="labelled/_SUCCESS")
    failure = unnamed_storage_error(raised.value)
    assert isinstance(failure, JobFailed) and failure.exit_code == 1
    assert "is failing or unreachable" in str(failure) and f"{endpoint}/acme-lake/labelled/_SUCCESS" in str(failure)
    assert str(failure).startswith(f"the store kept failing to reach {endpoint}/"), str(failure)
    assert unnamed_storage_error(ValueError("a bug")) is None, "anything else is still reported as a bug"
