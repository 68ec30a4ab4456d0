"""`batchnlp submit` and `status` against moto's AWS Batch server (over HTTP, like S3 in these tests)."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
import yaml
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.submit import Submission

SPEC = "input: s3://lake/reviews/dt=${yesterday}/\noutput: s3://lake/labels/dt=${run_date}/\ntasks: [sentiment]\n"


@pytest.fixture
def batch(s3_proxy):
    """A queue and a job definition on moto's server; jobs are recorded, not run (no Docker here)."""
    import boto3

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    config = urllib.request.Request(
        f"{endpoint}/moto-api/config", data=json.dumps({"batch": {"use_docker": False}}).encode(), method="POST"
    )
    urllib.request.urlopen(config).close()
    client = boto3.client("batch", endpoint_url=endpoint)
    role = boto3.client("iam", endpoint_url=endpoint).create_role(
        RoleName=f"batch-{os.urandom(4).hex()}", AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]
    environment = client.create_compute_environment(
        computeEnvironmentName=f"ce-{os.urandom(4).hex()}", type="UNMANAGED", state="ENABLED", serviceRole=role
    )
    queue = f"gpu-{os.urandom(4).hex()}"
    client.create_job_queue(
        jobQueueName=queue,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}],
    )
    requirements = [{"type": "VCPU", "value": "4"}, {"type": "MEMORY", "value": "16384"}]
    client.register_job_definition(
        jobDefinitionName="batchnlp",
        type="container",
        containerProperties={"image": "batchnlp:test", "command": ["--help"], "resourceRequirements": requirements},
    )
    return client, queue


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def test_submit_sends_the_spec_inline_with_a_fixed_run_date_and_resume(batch, tmp_path):
    client, queue = batch
    spec = tmp_path / "nightly.yaml"
    spec.write_text(SPEC)
    result = invoke(
        "submit", "--spec", str(spec), "--queue", queue, "--job-definition", "batchnlp",
        "--run-date", "2026-11-25", "--param", "table=reviews", "--env", "HF_HUB_OFFLINE=1", "--", "--workers", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    job_id = result.output.split("job id ")[1].split()[0]
    assert f"#jobs/detail/{job_id}" in result.output
    job = client.describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["jobName"] == "batchnlp-nightly-2026-11-25"
    assert job["jobQueue"].endswith(f"job-queue/{queue}")
    assert job["container"]["command"] == [
        "run", "--spec", "env:BATCHNLP_SPEC", "--resume", "--run-date", "2026-11-25", "--log-format", "json",
        "--param", "table=reviews", "--workers", "2",
    ]  # fmt: skip
    environment = {item["name"]: item["value"] for item in job["container"]["environment"]}
    assert yaml.safe_load(environment["BATCHNLP_SPEC"]) == yaml.safe_load(SPEC)
    assert environment["HF_HUB_OFFLINE"] == "1"

    status = invoke("status", job_id)
    assert status.exit_code == 0, status.output
    assert (
        f"batchnlp-nightly-2026-11-25 ({job_id}): " in status.output and "logs: CloudWatch log stream" in status.output
    )


def test_the_container_reads_the_spec_it_was_sent(tmp_path, monkeypatch):
    """What submit puts in the request is what `batchnlp run` in the container reads back."""
    spec = tmp_path / "nightly.yaml"
    spec.write_text(f"input: {tmp_path}/in/dt=${{yesterday}}/\noutput: {tmp_path}/out/\n")
    request = Submission(str(spec), "q", "d", run_date="2026-11-25T02:00:00Z").request()
    overrides = request["containerOverrides"]
    for item in overrides["environment"]:
        monkeypatch.setenv(item["name"], item["value"])
    result = invoke(*overrides["command"])
    assert result.exit_code == 2 and "in/dt=2026-11-24 does not exist" in result.output


def test_multi_node_jobs_override_every_node_and_s3_specs_go_by_reference(batch):
    request = Submission("s3://lake/specs/nightly.yaml", "q", "d", nodes=4).request(today="2026-11-25")
    assert request["jobName"] == "batchnlp-nightly-2026-11-25" and "containerOverrides" not in request
    assert request["nodeOverrides"]["numNodes"] == 4
    (node_range,) = request["nodeOverrides"]["nodePropertyOverrides"]
    assert node_range["targetNodes"] == "0:"
    assert node_range["containerOverrides"]["command"][:4] == [
        "run",
        "--spec",
        "s3://lake/specs/nightly.yaml",
        "--resume",
    ]
    assert node_range["containerOverrides"]["environment"] == []


def test_dry_run_prints_the_request_a_scheduler_target_sends(tmp_path):
    spec = tmp_path / "nightly.yaml"
    spec.write_text(SPEC)
    result = invoke("submit", "--spec", str(spec), "--queue", "q", "--job-definition", "d", "--dry-run")
    assert result.exit_code == 0, result.output
    request = json.loads(result.output)
    assert request["jobQueue"] == "q" and request["containerOverrides"]["command"][:4] == [
        "run", "--spec", "env:BATCHNLP_SPEC", "--resume",
    ]  # fmt: skip


def test_aws_refusals_are_one_line_errors(batch, tmp_path):
    spec = tmp_path / "nightly.yaml"
    spec.write_text(SPEC)
    result = invoke("submit", "--spec", str(spec), "--queue", "no-such-queue", "--job-definition", "batchnlp")
    assert result.exit_code == 2
    assert "AWS Batch refused to submit the job to queue 'no-such-queue'" in result.output
    result = invoke("status", "00000000-0000-0000-0000-000000000000")
    assert result.exit_code == 2 and "AWS Batch knows no job" in result.output
