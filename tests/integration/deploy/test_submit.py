"""`batchnlp submit` and `status` against moto's AWS Batch server (over HTTP, like S3 in these tests)."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
import yaml
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.deploy.aws_batch import Submission

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


# ------------------------------------------------------------------ sharded nights (array job + commit job)


def job_ids(output: str) -> list[str]:
    """The job ids `submit` printed, in submission order (the commit job last)."""
    ids = [
        line.split("job id ")[1].split()[0] for line in output.splitlines() if line.lstrip().startswith("submitted ")
    ]
    assert ids, output
    return ids


def parsed(command: list[str]) -> dict:
    """``command`` parsed by the real CLI (a misspelt flag or a missing value fails here)."""
    with main.commands[command[0]].make_context(command[0], list(command[1:])) as context:
        return context.params


def test_shards_submit_an_array_job_and_a_commit_job_that_waits_for_all_of_it(batch, tmp_path):
    client, queue = batch
    spec = tmp_path / "nightly.yaml"
    spec.write_text(SPEC)
    result = invoke(
        "submit", "--spec", str(spec), "--queue", queue, "--job-definition", "batchnlp", "--shards", "4",
        "--run-date", "2026-11-25", "--param", "table=reviews", "--", "--workers", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    array_id, commit_id = job_ids(result.output)
    assert f"batchnlp status {commit_id} --follow" in result.output
    assert f"--array-job-id {array_id} --job-status FAILED" in result.output
    assert "--shards 4 --run-id 2026-11-25 --only-shards I,J" in result.output
    array, commit = client.describe_jobs(jobs=[array_id, commit_id])["jobs"]
    assert array["jobName"] == "batchnlp-nightly-2026-11-25-shards" and array["arrayProperties"]["size"] == 4
    (child,) = client.describe_jobs(jobs=[f"{array_id}:3"])["jobs"]
    run = parsed(child["container"]["command"])
    assert (run["shards"], run["shard"], run["run_id"], run["run_date"]) == (4, None, "2026-11-25", "2026-11-25")
    assert (run["resume"], run["spec_file"], run["param"], run["workers"]) == (
        True,
        "env:BATCHNLP_SPEC",
        (("table", "reviews"),),
        2,
    )
    # The commit job: no dependency type, so it waits for the array job as a whole.
    assert commit["dependsOn"] == [{"jobId": array_id}]
    assert commit["jobName"] == "batchnlp-nightly-2026-11-25-commit"
    finalize = parsed(commit["container"]["command"])
    assert commit["container"]["command"][0] == "commit"
    assert (finalize["run_id"], finalize["run_date"], finalize["spec_file"]) == (
        "2026-11-25",
        "2026-11-25",
        "env:BATCHNLP_SPEC",
    )
    assert (finalize["param"], finalize["log_format"]) == ((("table", "reviews"),), "json")
    for job in (child, commit):
        environment = {item["name"]: item["value"] for item in job["container"]["environment"]}
        assert yaml.safe_load(environment["BATCHNLP_SPEC"]) == yaml.safe_load(SPEC)


def test_the_run_id_is_the_run_date_unless_given_and_the_commit_job_may_go_elsewhere(tmp_path):
    spec = tmp_path / "nightly.yaml"
    spec.write_text(SPEC)
    common = ["submit", "--spec", str(spec), "--queue", "gpu-spot", "--job-definition", "gpu", "--shards", "3"]
    result = invoke(*common, "--run-date", "2026-11-25T02:00:00Z", "--dry-run")
    assert result.exit_code == 0, result.output
    requests = json.loads(result.output)
    (array,) = requests["shards"]
    assert parsed(array["containerOverrides"]["command"])["run_id"] == "2026-11-25"  # the date of the timestamp
    assert requests["finalize"]["jobQueue"] == "gpu-spot" and requests["finalize"]["jobDefinition"] == "gpu"
    result = invoke(
        *common,
        "--run-id",
        "backfill-7",
        "--finalize-queue",
        "cpu",
        "--finalize-job-definition",
        "cpu-def",
        "--dry-run",
    )
    requests = json.loads(result.output)
    assert parsed(requests["shards"][0]["containerOverrides"]["command"])["run_id"] == "backfill-7"
    finalize = requests["finalize"]
    assert (finalize["jobQueue"], finalize["jobDefinition"]) == ("cpu", "cpu-def")
    assert parsed(finalize["containerOverrides"]["command"])["run_id"] == "backfill-7"


def test_only_shards_reruns_those_shards_and_a_new_commit_job(batch):
    client, queue = batch
    result = invoke(
        "submit", "--spec", "s3://lake/specs/nightly.yaml", "--queue", queue, "--job-definition", "batchnlp",
        "--shards", "8", "--run-id", "2026-11-24", "--run-date", "2026-11-24", "--only-shards", "5,3,5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    three, five, commit_id = job_ids(result.output)
    jobs = {job["jobId"]: job for job in client.describe_jobs(jobs=[three, five, commit_id])["jobs"]}
    for job_id, index in ((three, 3), (five, 5)):
        job = jobs[job_id]
        assert job["jobName"] == f"batchnlp-nightly-2026-11-24-shard-{index}-of-8" and "arrayProperties" not in job
        run = parsed(job["container"]["command"])
        assert (run["shard"], run["shards"], run["run_id"]) == (f"{index}/8", None, "2026-11-24")
    assert jobs[commit_id]["dependsOn"] == [{"jobId": three}, {"jobId": five}]
    assert parsed(jobs[commit_id]["container"]["command"])["run_id"] == "2026-11-24"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shards", "1"], "1 is not in the range 2<=x<=10000"),
        (["--shards", "10001"], "10001 is not in the range 2<=x<=10000"),
        (["--shards", "4", "--nodes", "2"], "--shards and --nodes exclude each other"),
        (["--shards", "4", "--only-shards", "3"], "name it, --run-id ID"),
        (["--only-shards", "3", "--run-id", "r"], "need --shards N"),
        (["--finalize-queue", "cpu"], "need --shards N"),
        (
            ["--shards", "4", "--run-id", "r", "--only-shards", "1,4"],
            "--only-shards [4]: shards of --shards 4 run from 0 to 3",
        ),
        (["--shards", "4", "--run-id", "r", "--only-shards", "1,x"], "indexes joined by commas"),
        (["--shards", "100", "--run-id", "r", "--only-shards", ",".join(map(str, range(21)))], "at most 20 jobs"),
    ],
)
def test_sharded_submissions_refuse_what_aws_batch_or_the_run_cannot_do(flags, message):
    result = invoke("submit", "--spec", "s3://lake/specs/n.yaml", "--queue", "q", "--job-definition", "d", *flags)
    assert result.exit_code == 2 and message in result.output, result.output
