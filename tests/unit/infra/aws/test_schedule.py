"""The nightly schedule: its time zone, the spec it submits for its scheduled time, and what the job
role must reach for it."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from tests.unit.infra.aws.deployment import (
    SCHEDULED_TIME,
    TICKETS_SPEC,
    DeployedStack,
    api_request,
    batchnlp_args,
    client,
    in_image_workdir,
    job_definition,
    may,
    parse_run,
    plan_run,
    role_policies,
    s3_parts,
)


def test_a_schedule_in_a_daylight_saving_gap_misses_a_night() -> None:
    """Why ScheduleTimezone defaults to UTC: 02:30 does not exist in Europe/Berlin on the last
    Sunday of March, so EventBridge Scheduler skips that night; 03:30 (the test stack's) exists
    every day. UTC has no gap."""
    from zoneinfo import ZoneInfo

    def exists(day: date, hour: int, minute: int, zone: str) -> bool:
        local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(zone))
        return local.astimezone(timezone.utc).astimezone(ZoneInfo(zone)).replace(tzinfo=None) == local.replace(
            tzinfo=None
        )

    days = [date(2026, 1, 1) + timedelta(days=n) for n in range(365)]
    assert [d for d in days if not exists(d, 2, 30, "Europe/Berlin")] == [date(2026, 3, 29)]
    assert all(exists(d, 3, 30, "Europe/Berlin") for d in days)
    assert all(exists(d, 2, 0, "UTC") for d in days)


def submission(stack: DeployedStack) -> dict[str, Any]:
    """The SubmitJob request the schedule sends, as EventBridge Scheduler would fill it in."""
    target = client("scheduler").get_schedule(Name=stack.physical["NightlySchedule"])["Target"]
    text = target["Input"]
    # The scheduled time alone: it is the same for every delivery of one invocation, where the
    # execution id and attempt number are not.
    assert re.findall(r"<aws\.scheduler\.[a-z-]+>", text) == ["<aws.scheduler.scheduled-time>"]
    return json.loads(text.replace("<aws.scheduler.scheduled-time>", SCHEDULED_TIME))


def scheduled_command(stack: DeployedStack) -> list[str]:
    """Submit the schedule's request to moto's Batch; the container command of the job it makes,
    after AWS Batch's Ref:: substitution with the job's parameters (defaults + request)."""
    batch = client("batch")
    request = submission(stack)
    api = api_request(batch, "SubmitJob", request)  # a valid SubmitJob call
    (job,) = batch.describe_jobs(jobs=[batch.submit_job(**api)["jobId"]])["jobs"]
    assert (job["jobQueue"], job["jobDefinition"]) == (request["JobQueue"], request["JobDefinition"])
    if "nodeProperties" in job:
        command = job["nodeProperties"]["nodeRangeProperties"][0]["container"]["command"]
    else:
        command = job_definition(stack, "SingleNodeJobDefinition")["containerProperties"]["command"]
    return batchnlp_args(command, job["parameters"])


def test_schedule_fires_nightly_in_its_time_zone(aws: dict[str, Any]) -> None:
    stack = aws["stacks"]["nightly"]
    schedule = client("scheduler").get_schedule(Name="nightly-nightly")
    assert schedule["ScheduleExpression"] == "cron(30 3 * * ? *)"
    assert schedule["ScheduleExpressionTimezone"] == "Europe/Berlin"
    assert schedule["State"] == "ENABLED"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    target = schedule["Target"]
    assert target["Arn"] == "arn:aws:scheduler:::aws-sdk:batch:submitJob"  # ${AWS::Partition} = aws here
    assert target["RoleArn"] == stack.get_att("SchedulerRole", "Arn")
    assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 3600, "MaximumRetryAttempts": 5}
    assert target["DeadLetterConfig"] == {"Arn": stack.get_att("ScheduleDeadLetterQueue", "Arn")}
    defaults = client("scheduler").get_schedule(Name="tickets-nightly")
    assert (defaults["ScheduleExpression"], defaults["ScheduleExpressionTimezone"]) == ("cron(0 2 * * ? *)", "UTC")


SCHEDULED_RUNS = [
    # stack, queue, job definition, spec, the dated input and output the run resolves to
    (
        "nightly",
        "SingleNodeJobQueue",
        "SingleNodeJobDefinition",
        "jobs/nightly-labels.yaml",  # ${yesterday}: the day before the scheduled time's date
        ("s3://acme-lake/raw/reviews/dt=2026-11-23/", "s3://acme-lake/labelled/reviews/dt=2026-11-23/"),
    ),
    (
        "tickets",
        "MultiNodeJobQueue",
        "MultiNodeJobDefinition",
        TICKETS_SPEC,  # ${run_date}: the scheduled time's date
        ("s3://acme-lake/raw/tickets/dt=2026-11-24/", "s3://acme-labels/tickets/dt=2026-11-24/"),
    ),
]


@pytest.mark.parametrize(("name", "queue", "definition", "spec", "paths"), SCHEDULED_RUNS)
def test_schedule_submits_the_spec_for_its_scheduled_time(
    aws: dict[str, Any], name: str, queue: str, definition: str, spec: str, paths: tuple[str, str]
) -> None:
    stack = aws["stacks"][name]
    assert submission(stack) == {
        "JobName": f"{name}-nightly",
        "JobQueue": stack.physical[queue],
        "JobDefinition": stack.physical[definition],
        "Parameters": {"spec": spec, "run_date": SCHEDULED_TIME},
    }
    args = scheduled_command(stack)
    params = parse_run(args)
    assert (params["spec_file"], params["run_date"], params["resume"]) == (spec, SCHEDULED_TIME, True)
    assert (params["input"], params["output"]) == (None, None)  # the spec names both
    # Every delivery of one night's invocation resolves to the same dated output: a duplicate
    # finds it committed and exits 0, a retry resumes it.
    job = plan_run(args)
    assert (job.input, job.output, job.mode) == (*paths, "resume")


@pytest.mark.parametrize("name", ["nightly", "tickets"])
def test_job_role_reaches_what_the_scheduled_run_reads_and_writes(aws: dict[str, Any], name: str) -> None:
    stack = aws["stacks"][name]
    multi_node = stack.parameters["ScheduledJobType"] == "multi-node"
    statements = role_policies(stack, "MultiNodeJobRole" if multi_node else "JobRole")
    args = scheduled_command(stack)
    job = plan_run(args)
    spec = parse_run(args)["spec_file"]
    if spec.startswith("s3://"):
        assert may(statements, "s3:GetObject", "arn:aws:s3:::" + spec.removeprefix("s3://"))
    bucket, key = s3_parts(job.input)
    assert may(statements, "s3:GetObject", f"arn:aws:s3:::{bucket}/{key}part-0001.jsonl.zst")
    assert may(statements, "s3:ListBucket", f"arn:aws:s3:::{bucket}", prefix=key)
    bucket, key = s3_parts(job.output)
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
        for name in ("part-00000.parquet", "_manifest.json", "_lock.json", "_SUCCESS", "_rejected/part-00000.jsonl"):
            assert may(statements, action, f"arn:aws:s3:::{bucket}/{key}{name}"), (action, name)
    assert may(statements, "s3:ListBucket", f"arn:aws:s3:::{bucket}", prefix=key)
    assert not may(statements, "s3:PutObject", f"arn:aws:s3:::{bucket}/elsewhere/{key}_SUCCESS")
    # batchnlp's HeadBucket check of the output bucket is s3:ListBucket without s3:prefix.
    assert may(statements, "s3:ListBucket", f"arn:aws:s3:::{bucket}")


def test_job_role_reads_the_default_specs_models(aws: dict[str, Any]) -> None:
    stack = aws["stacks"]["nightly"]
    statements = role_policies(stack, "JobRole")
    job = plan_run(scheduled_command(stack))
    for task in job.tasks:
        bucket, key = s3_parts(task.model)
        assert may(statements, "s3:GetObject", f"arn:aws:s3:::{bucket}/{key}config.json"), task.model
        assert may(statements, "s3:ListBucket", f"arn:aws:s3:::{bucket}", prefix=key), task.model


@pytest.mark.parametrize(("queue", "definition", "nodes"), [("gpu", "gpu", None), ("multi-node", "multi-node", 3)])
def test_batchnlp_submit_reaches_the_stacks_queues_and_definitions(
    aws: dict[str, Any], queue: str, definition: str, nodes: int | None
) -> None:
    from batchnlp.deploy.aws_batch import Submission

    stack = aws["stacks"]["nightly"]
    # batchnlp submit --spec jobs/nightly-labels.yaml --queue nightly-gpu --job-definition nightly-gpu ...
    submitted = Submission(
        "jobs/nightly-labels.yaml", f"nightly-{queue}", f"nightly-{definition}", nodes=nodes, run_date="2026-11-24"
    )
    with in_image_workdir():
        request = submitted.request()
    batch = client("batch")
    (job,) = batch.describe_jobs(jobs=[batch.submit_job(**request)["jobId"]])["jobs"]
    logical = "MultiNodeJobDefinition" if nodes else "SingleNodeJobDefinition"
    assert job["jobDefinition"] == stack.physical[logical]
    overrides = (
        request["nodeOverrides"]["nodePropertyOverrides"][0]["containerOverrides"]
        if nodes
        else request["containerOverrides"]
    )
    environment = {item["name"]: item["value"] for item in overrides["environment"]}
    job_spec = plan_run(overrides["command"], env=environment)  # the spec travels inline
    assert (job_spec.output, job_spec.mode) == ("s3://acme-lake/labelled/reviews/dt=2026-11-23/", "resume")
