"""Sharded nights: the schedule starts the state machine, which runs an array job of shards, then the
commit (moto's Step Functions interpreter against its Batch)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from tests.unit.infra.aws.deployment import (
    ACCOUNT,
    REGION,
    SCHEDULED_TIME,
    DeployedStack,
    api_request,
    client,
    may,
    parse_run,
    role_policies,
)


def sharded(stack: DeployedStack) -> DeployedStack:
    """The same deployed stack, as resolved with ScheduledJobType=sharded."""
    view = copy.copy(stack)
    view.parameters = {**stack.parameters, "ScheduledJobType": "sharded"}
    return view


@contextmanager
def service_tasks_cased_as_on_aws() -> Iterator[None]:
    """moto 5.2.5's Step Functions interpreter hands a task's PascalCase parameters (``JobName``) to
    boto3 unchanged and reads its camelCase response as is (``JobId``), so every ``batch:submitJob``
    task fails with ``States.Runtime: 'JobName'``; its own converters, given botocore's model, make
    the calls Step Functions makes. (A fix of moto, not of batchnlp.)"""
    from botocore.session import get_session
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service import (
        StateTaskService,
    )

    def operation(task: Any, service: str | None, action: str | None) -> Any:
        model = get_session().get_service_model(task._get_boto_service_name(service))
        wanted = task._get_boto_service_action(action).replace("_", "")
        return model.operation_model(next(op for op in model.operation_names if op.lower() == wanted))

    def parameters(
        task: Any, parameters: dict, boto_service_name: str | None = None, service_action_name: str | None = None
    ) -> None:
        task._to_boto_request(parameters, operation(task, boto_service_name, service_action_name).input_shape)

    def response(
        task: Any, response: Any, boto_service_name: str | None = None, service_action_name: str | None = None
    ) -> None:
        task._from_boto_response(response, operation(task, boto_service_name, service_action_name).output_shape)

    with (
        mock.patch.object(StateTaskService, "_normalise_parameters", parameters),
        mock.patch.object(StateTaskService, "_normalise_response", response),
    ):
        yield


def run_execution(machine: str, payload: str) -> dict[str, Any]:
    """Start an execution of ``machine`` in moto's interpreter and wait for its end."""
    import time

    sfn = client("stepfunctions")
    with service_tasks_cased_as_on_aws():
        execution = sfn.start_execution(stateMachineArn=machine, input=payload)["executionArn"]
        for _ in range(600):  # a bound on a hang, not a timing assertion
            described = sfn.describe_execution(executionArn=execution)
            if described["status"] != "RUNNING":
                return described
            time.sleep(0.1)
    raise AssertionError(f"execution {execution} still running")


def test_a_sharded_schedule_starts_the_state_machine_which_may_submit_to_the_stacks_queue(aws: dict[str, Any]) -> None:
    stack = aws["stacks"]["nightly"]
    machine = stack.physical["ShardedNightStateMachine"]
    schedule = sharded(stack).properties("NightlySchedule")
    assert schedule["Target"]["Arn"] == machine  # the templated Step Functions target
    assert json.loads(schedule["Target"]["Input"]) == {"run_date": "<aws.scheduler.scheduled-time>"}
    scheduler = client("scheduler")
    scheduler.create_schedule(**api_request(scheduler, "CreateSchedule", {**schedule, "Name": "nightly-sharded"}))
    assert scheduler.get_schedule(Name="nightly-sharded")["Target"]["Arn"] == machine
    # The scheduler role may start it; the state machine's role may submit this stack's jobs only.
    statements = {s["Sid"]: s for s in role_policies(stack, "SchedulerRole")}
    assert statements["StartShardedNight"]["Resource"] == machine
    grants = role_policies(stack, "ShardedNightRole")
    assert may(grants, "batch:SubmitJob", stack.physical["SingleNodeJobQueue"])
    assert may(grants, "batch:SubmitJob", f"arn:aws:batch:{REGION}:{ACCOUNT}:job-definition/nightly-gpu:3")
    assert not may(grants, "batch:SubmitJob", stack.physical["MultiNodeJobQueue"])
    rule = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/StepFunctionsGetEventsForBatchJobsRule"
    assert may(grants, "events:PutRule", rule) and may(grants, "batch:DescribeJobs", "*")


def test_a_sharded_night_runs_an_array_job_of_shards_then_the_commit(aws: dict[str, Any]) -> None:
    stack = aws["stacks"]["nightly"]
    schedule = sharded(stack).properties("NightlySchedule")
    payload = schedule["Target"]["Input"].replace("<aws.scheduler.scheduled-time>", SCHEDULED_TIME)
    execution = run_execution(stack.physical["ShardedNightStateMachine"], payload)
    assert execution["status"] == "SUCCEEDED", execution
    batch = client("batch")
    listed = batch.list_jobs(
        jobQueue=stack.physical["SingleNodeJobQueue"], filters=[{"name": "JOB_NAME", "values": ["nightly-*"]}]
    )
    by_name = {job["jobName"]: job["jobId"] for job in listed["jobSummaryList"] if ":" not in job["jobId"]}  # no child
    array, commit = batch.describe_jobs(
        jobs=[by_name["nightly-shards-2026-11-24"], by_name["nightly-commit-2026-11-24"]]
    )["jobs"]
    assert array["arrayProperties"]["size"] == int(stack.parameters["ShardCount"]) == 8
    assert (array["jobDefinition"], commit["jobDefinition"]) == (stack.physical["SingleNodeJobDefinition"],) * 2
    assert commit["createdAt"] >= array["stoppedAt"]  # submitted once the whole array had succeeded
    (child,) = batch.describe_jobs(jobs=[f"{array['jobId']}:5"])["jobs"]
    command = child["container"]["command"]
    run = parse_run(command)
    assert (run["shards"], run["run_id"], run["run_date"], run["resume"]) == (8, "2026-11-24", "2026-11-24", True)
    assert run["spec_file"] == "jobs/nightly-labels.yaml" and command[:2] == ["run", "--spec"]
    finalize = commit["container"]["command"]
    from batchnlp.cli import main

    with main.commands["commit"].make_context("commit", finalize[1:]) as context:
        assert (context.params["run_id"], context.params["spec_file"]) == ("2026-11-24", "jobs/nightly-labels.yaml")
