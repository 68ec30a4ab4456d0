"""Secrets stay out of what batchnlp stores and submits: a sharded run's plan under OUTPUT, and the
AWS Batch jobs `batchnlp submit` makes (which take credentials as Batch `secrets` only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from tests.integration.test_safety import (
    REPO,
    SECRETS,
    everything_written,
    leaks,
    presigner,
    put_jsonl,
    secret_sandbox,
    upload_dir,
)


def batchnlp(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchnlp", *args],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(REPO)},
        timeout=300,
    )


@pytest.mark.cluster
def test_a_sharded_runs_plan_keeps_a_presigned_urls_signature_out_of_output(s3_proxy, s3, bucket, tiny_model, tmp_path):
    """Two shards and the commit of one run whose input is a presigned URL (SigV4 with a session
    token): the shards read the input through the URL their command gives, while the plan they
    store under OUTPUT, and everything else written, holds no signature, credential or token."""
    env = secret_sandbox(tmp_path / "root")
    model = upload_dir(s3, tiny_model, bucket, "models/sst2")
    put_jsonl(s3, bucket, "in/night.jsonl", 40)
    url = presigner().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "in/night.jsonl"})
    query = dict(item.split("=", 1) for item in url.split("?", 1)[1].split("&"))
    assert {"X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token"} <= set(query)
    output = f"s3://{bucket}/out/"
    common = ["--input-format", "jsonl", "--model", f"sentiment={model}", "--workers", "1", "--run-id", "night"]
    runs = {}
    for shard in ("0/2", "1/2"):
        runs[shard] = batchnlp(["run", url, output, *common, "--rows-per-partition", "10", "--shard", shard], env)
        assert runs[shard].returncode == 0, runs[shard].stderr[-3000:]
    runs["commit"] = batchnlp(["commit", output, "--run-id", "night"], env)
    assert runs["commit"].returncode == 0, runs["commit"].stderr[-3000:]
    written = everything_written(s3, bucket, tmp_path / "root", runs, inputs=("in/", "models/"))
    assert f"s3://{bucket}/out/_progress/_plan.json" in written and f"s3://{bucket}/out/_SUCCESS" in written
    assert b"part-00003" in written[f"s3://{bucket}/out/_manifest.json"]  # both shards' four units committed
    secrets = {name: query[name] for name in ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token")}
    assert leaks(written, {**secrets, **{k: SECRETS[k] for k in ("env key", "env secret", "env token")}}) == []


# --- batchnlp submit -------------------------------------------------------------------------------

SPEC = "input: s3://lake/reviews/dt=${yesterday}/\noutput: s3://lake/labels/dt=${run_date}/\ntasks: [sentiment]\n"
KEY_ID, SECRET_KEY = SECRETS["spec key"], SECRETS["spec secret"]
HF_TOKEN = "hf_" + SECRETS["option secret"][:34]
PRESIGNED = (
    f"https://lake.s3.amazonaws.com/in.jsonl?X-Amz-Credential={KEY_ID}%2F20261124&X-Amz-Signature=f00d1e5ca1ab1e"
)
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:batchnlp/hf-token-AbCdEf"


@pytest.fixture
def batch() -> Iterator[Any]:
    """moto's AWS Batch in this process (jobs recorded, not run), with two job definitions."""
    import boto3
    from moto import mock_aws

    fake = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with mock.patch.dict(os.environ, fake), mock_aws(config={"batch": {"use_docker": False}}):
        for name in [key for key in os.environ if key.startswith("AWS_ENDPOINT_URL")]:
            del os.environ[name]  # the S3 fixtures of other tests point clients at a loopback server
        client = boto3.client("batch")
        role = boto3.client("iam").create_role(RoleName="batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        environment = client.create_compute_environment(
            computeEnvironmentName="batchnlp-ce", type="UNMANAGED", state="ENABLED", serviceRole=role
        )
        order = [{"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}]
        client.create_job_queue(jobQueueName="gpu", state="ENABLED", priority=1, computeEnvironmentOrder=order)
        container = {
            "image": "batchnlp:test",
            "command": ["--help"],
            "resourceRequirements": [{"type": "VCPU", "value": "4"}, {"type": "MEMORY", "value": "16384"}],
            "secrets": [{"name": "DB_PASSWORD", "valueFrom": "arn:aws:ssm:us-east-1:123456789012:parameter/db"}],
        }
        client.register_job_definition(jobDefinitionName="batchnlp", type="container", containerProperties=container)
        nodes = {
            "numNodes": 2,
            "mainNode": 0,
            "nodeRangeProperties": [
                {"targetNodes": "0:0", "container": container},
                {"targetNodes": "1:", "container": container},
            ],
        }
        client.register_job_definition(jobDefinitionName="batchnlp-multi-node", type="multinode", nodeProperties=nodes)
        yield client


def submit(*args: str) -> Any:
    result = CliRunner().invoke(main, ["submit", "--queue", "gpu", "--run-date", "2026-11-25", *args])
    assert "Traceback" not in result.output, result.output
    return result


SMUGGLED = {  # where a credential may ride along, and where the refusal says it is
    "inline spec": (
        [],
        SPEC + f"storage_options:\n  key: {KEY_ID}\n  secret: {SECRET_KEY}\n",
        "the spec",
        "storage_options.secret",
    ),
    "inline spec URL": ([], SPEC.replace("s3://lake/reviews/dt=${yesterday}/", PRESIGNED), "the spec", "(input)"),
    "env value": (["--env", f"AWS_SECRET_ACCESS_KEY={SECRET_KEY}"], SPEC, "--env AWS_SECRET_ACCESS_KEY", ""),
    "env token": (["--env", f"HF_TOKEN={HF_TOKEN}"], SPEC, "--env HF_TOKEN", ""),
    "param": (["--param", f"source={PRESIGNED}"], SPEC, "--param source", ""),
    "storage option": (
        ["--", "--storage-option", f"secret={SECRET_KEY}"],
        SPEC,
        "--storage-option secret (its value)",
        "",
    ),
    "storage option =": (["--", f"--storage-option=token={HF_TOKEN}"], SPEC, "--storage-option token (its value)", ""),
    "catalog option": (["--", "--catalog-option", "s3.secret-access-key=plain"], SPEC, "s3.secret-access-key", ""),
    "option URL": (
        ["--", "--storage-option", f"endpoint_url=https://me:{SECRET_KEY}@s3.example/"],
        SPEC,
        "--storage-option endpoint_url (its value)",
        "",
    ),
    "model URL": (
        ["--", "--model", f"sentiment=https://me:{SECRET_KEY}@models.example/sst2/"],
        SPEC,
        "run argument",
        "",
    ),
}


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry run", "submitted"])
@pytest.mark.parametrize("case", list(SMUGGLED))
def test_submit_refuses_a_credential_in_the_jobs_command_or_environment(batch, tmp_path, case, dry_run):
    args, text, place, detail = SMUGGLED[case]
    spec = tmp_path / "nightly.yaml"
    spec.write_text(text)
    flags, run_args = (args[: args.index("--")], args[args.index("--") :]) if "--" in args else (args, [])
    extra = ["--dry-run"] if dry_run else []
    result = submit("--spec", str(spec), "--job-definition", "batchnlp", *flags, *extra, *run_args)
    assert result.exit_code == 2, result.output
    assert place in result.output and detail in result.output
    assert "--secret NAME=ARN" in result.output and "Secrets Manager" in result.output
    for secret in (KEY_ID, SECRET_KEY, HF_TOKEN, "f00d1e5ca1ab1e", "plain"):
        assert secret not in result.output.replace("explain", "")
    assert batch.list_jobs(jobQueue="gpu")["jobSummaryList"] == []  # nothing submitted


def test_a_clean_submission_still_goes_with_its_options(batch, tmp_path):
    """Options that name no credential pass: the refusal is not a blanket one."""
    spec = tmp_path / "nightly.yaml"
    spec.write_text(SPEC + "storage_options:\n  anon: false\n  client_kwargs: {region_name: eu-west-1}\n")
    result = submit(
        "--spec", str(spec), "--job-definition", "batchnlp", "--env", "HF_HUB_OFFLINE=1", "--env", "KMS_KEY_ARN=arn:x",
        "--", "--storage-option", "endpoint_url=https://s3.eu-west-1.amazonaws.com", "--workers", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_secret_maps_a_secrets_manager_arn_to_a_variable_of_every_container(batch, tmp_path):
    """SubmitJob has no per-job secrets: the job runs on a revision of its definition whose containers
    map the variable (the definition's own secrets kept); a second submission reuses that revision."""
    spec = tmp_path / "nightly.yaml"
    spec.write_text(SPEC)
    dry = submit("--spec", str(spec), "--job-definition", "batchnlp", "--secret", f"HF_TOKEN={SECRET_ARN}", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"HF_TOKEN from {SECRET_ARN}" in dry.stderr
    assert json.loads(dry.stdout)["jobDefinition"] == "batchnlp", "stdout stays the request alone, for scripts"
    assert len(batch.describe_job_definitions(jobDefinitionName="batchnlp")["jobDefinitions"]) == 1  # dry: nothing made
    jobs = []
    for _ in range(2):
        result = submit("--spec", str(spec), "--job-definition", "batchnlp", "--secret", f"HF_TOKEN={SECRET_ARN}")
        assert result.exit_code == 0, result.output
        jobs.append(result.output.split("job id ")[1].split()[0])
    first, again = (job["jobDefinition"] for job in batch.describe_jobs(jobs=jobs)["jobs"])
    assert first == again and first.endswith("job-definition/batchnlp:2")  # one new revision, reused
    (revision,) = batch.describe_job_definitions(jobDefinitions=[first])["jobDefinitions"]
    assert revision["containerProperties"]["secrets"] == [
        {"name": "DB_PASSWORD", "valueFrom": "arn:aws:ssm:us-east-1:123456789012:parameter/db"},
        {"name": "HF_TOKEN", "valueFrom": SECRET_ARN},
    ]
    assert revision["containerProperties"]["image"] == "batchnlp:test"
    # The job's own request names no such variable: its value comes from the definition's secrets.
    for job in batch.describe_jobs(jobs=jobs)["jobs"]:
        assert "HF_TOKEN" not in {item["name"] for item in job["container"].get("environment", [])}


def test_secret_reaches_every_node_of_a_multi_node_definition():
    """moto describes no nodeProperties of a multi-node definition: the registration request built
    from one as AWS describes it (the stack's two node groups) maps the variable in both."""
    from batchnlp.deploy.secrets import with_secrets

    kept = {"name": "DB_PASSWORD", "valueFrom": "arn:aws:ssm:us-east-1:123456789012:parameter/db"}
    nodes = [
        {"targetNodes": "0:0", "container": {"image": "batchnlp:test", "secrets": [kept]}},
        {"targetNodes": "1:", "container": {"image": "batchnlp:test"}},
    ]
    request = {
        "jobDefinitionName": "nightly-multi-node",
        "type": "multinode",
        "nodeProperties": {"numNodes": 2, "mainNode": 0, "nodeRangeProperties": nodes},
    }
    wanted = with_secrets(request, {"HF_TOKEN": SECRET_ARN}, "nightly-multi-node")
    mapped = {"name": "HF_TOKEN", "valueFrom": SECRET_ARN}
    assert [n["container"]["secrets"] for n in wanted["nodeProperties"]["nodeRangeProperties"]] == [
        [kept, mapped],
        [mapped],
    ]


@pytest.mark.parametrize(
    "secret",
    ["HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz0123456789", "HF-TOKEN=" + SECRET_ARN, "HF_TOKEN=arn:aws:s3:::bucket/k"],
)
def test_secret_takes_a_variable_name_and_a_secret_or_parameter_arn(tmp_path, secret):
    spec = tmp_path / "nightly.yaml"
    spec.write_text(SPEC)
    result = submit("--spec", str(spec), "--job-definition", "batchnlp", "--secret", secret, "--dry-run")
    assert result.exit_code == 2 and "--secret" in result.output
    assert "hf_abcdefghijklmnopqrstuvwxyz0123456789" not in result.output


@pytest.mark.parametrize(
    ("stored", "source", "whole"),
    [
        (  # a presigned object: the URL itself, query and all
            "https://lake.s3.amazonaws.com/in.jsonl",
            PRESIGNED,
            PRESIGNED,
        ),
        (  # a file below a URL with user info gets the user info back
            "https://host.example/lake/dt=1/a.jsonl",
            "https://me:pw@host.example/lake/",
            "https://me:pw@host.example/lake/dt=1/a.jsonl",
        ),
        ("s3://lake/raw/a.jsonl", "s3://lake/raw/", "s3://lake/raw/a.jsonl"),  # nothing was redacted
        ("https://other.example/a.jsonl", "https://me:pw@host.example/lake/", "https://other.example/a.jsonl"),
    ],
)
def test_a_stored_plans_paths_get_their_credentials_back_from_the_readers_input(stored, source, whole):
    from batchnlp.util.redaction import redact_url, unredact_url

    assert unredact_url(stored, source) == whole
    assert redact_url(whole) == stored  # what the plan stored is what the redaction made of it
