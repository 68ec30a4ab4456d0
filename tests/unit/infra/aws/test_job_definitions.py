"""Job definitions: retries, the single-node and multi-node commands through the real `batchnlp run`,
node sizes and log retention."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.unit.infra.aws.deployment import (
    IMAGE,
    REGION,
    DeployedStack,
    batchnlp_args,
    client,
    job_definition,
    parse_run,
    plan_run,
    retry_action,
)

RETRY_CASES = [
    # (exit code, container reason, job status reason) → action
    ((None, "", "Host EC2 (instance i-0abc) terminated."), "RETRY"),  # Spot reclaim or host failure
    ((None, "CannotPullContainerError: pull rate limit", "Task failed to start"), "RETRY"),
    ((1, "", "Essential container in task exited"), "RETRY"),  # batchnlp: transient, --resume continues
    ((143, "", "Essential container in task exited"), "RETRY"),  # SIGTERM, drained, lock released: resumes
    ((2, "", "Essential container in task exited"), "EXIT"),  # batchnlp: bad spec/input/model/output
    ((3, "", "Essential container in task exited"), "EXIT"),  # too many bad input lines: nothing committed
    ((137, "OutOfMemoryError: Container killed due to memory usage", ""), "EXIT"),
    ((None, "ResourceInitializationError: unable to pull secrets", ""), "EXIT"),
]


@pytest.mark.parametrize("logical", ["SingleNodeJobDefinition", "MultiNodeJobDefinition"])
def test_retry_strategy_retries_hosts_pulls_and_exit_1_and_143_only(aws: dict[str, Any], logical: str) -> None:
    definition = job_definition(aws["stacks"]["nightly"], logical)
    strategy = definition["retryStrategy"]
    rules = strategy["evaluateOnExit"]
    assert strategy["attempts"] == 3
    # The lead's five rules, in order (five is AWS Batch's limit).
    assert [(r["action"].upper(), {k: v for k, v in r.items() if k != "action"}) for r in rules] == [
        ("RETRY", {"onStatusReason": "Host EC2*"}),
        ("RETRY", {"onReason": "CannotPullContainerError*"}),
        ("RETRY", {"onExitCode": "1"}),
        ("RETRY", {"onExitCode": "143"}),
        ("EXIT", {"onReason": "*"}),  # nothing falls through to AWS Batch's default, RETRY
    ]
    for (exit_code, reason, status), expected in RETRY_CASES:
        assert retry_action(rules, exit_code, reason, status) == expected, (exit_code, reason, status)


def test_single_node_definition_runs_batchnlp_on_one_gpu(aws: dict[str, Any]) -> None:
    stack = aws["stacks"]["nightly"]
    definition = job_definition(stack, "SingleNodeJobDefinition")
    container = definition["containerProperties"]
    assert definition["type"] == "container"
    assert container["image"] == IMAGE
    requirements = {r["type"]: str(r["value"]) for r in container["resourceRequirements"]}
    assert requirements == {"GPU": "1", "VCPU": "4", "MEMORY": "14336"}
    assert container["jobRoleArn"] == stack.get_att("JobRole", "Arn")
    assert container["executionRoleArn"] == stack.get_att("ExecutionRole", "Arn")
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    assert container["logConfiguration"]["options"]["awslogs-group"] == "/aws/batch/nightly"
    assert definition["parameters"] == {"spec": "jobs/nightly-labels.yaml", "run_date": "today"}
    assert container["command"] == COMMAND
    # The end-of-run EMF line (--log-format json) carries Job=<stack name>, what the alarm watches.
    environment = {item["name"]: item["value"] for item in container["environment"]}
    assert environment == {"AWS_DEFAULT_REGION": REGION, "BATCHNLP_METRICS_JOB": "nightly"}
    args = batchnlp_args(container["command"], definition["parameters"])
    params = parse_run(args)
    assert params["resume"] is True  # a retried or repeated job continues, or exits 0 when committed
    assert params["log_format"] == "json"
    assert (params["spec_file"], params["run_date"]) == ("jobs/nightly-labels.yaml", "today")
    assert (params["input"], params["output"]) == (None, None)  # the spec names both
    # A submission without run_date: each attempt reads the partition before its own UTC date.
    before = datetime.now(timezone.utc).date()
    job = plan_run(args)
    after = datetime.now(timezone.utc).date()
    assert job.mode == "resume"
    assert job.output in {f"s3://acme-lake/labelled/reviews/dt={day - timedelta(days=1)}/" for day in (before, after)}
    # moto's CloudFormation drops Timeout; the template's own value is checked instead.
    assert stack.properties("SingleNodeJobDefinition")["Timeout"] == {"AttemptDurationSeconds": "43200"}


COMMAND = ["run", "--spec", "Ref::spec", "--resume", "--run-date", "Ref::run_date", "--log-format", "json"]


def multi_node_properties(stack: DeployedStack) -> dict[str, Any]:
    """moto's Batch keeps a multi-node definition's nodeProperties but shows them on jobs only."""
    batch = client("batch")
    job = batch.submit_job(
        jobName="multi-node-check",
        jobQueue=stack.physical["MultiNodeJobQueue"],
        jobDefinition=stack.physical["MultiNodeJobDefinition"],
    )
    return batch.describe_jobs(jobs=[job["jobId"]])["jobs"][0]["nodeProperties"]


def test_multi_node_definition_runs_the_same_command_on_every_node(aws: dict[str, Any]) -> None:
    cases = ((aws["stacks"]["nightly"], 2, "1800"), (aws["stacks"]["tickets"], 3, "2700"))
    for stack, nodes, join in cases:
        definition = job_definition(stack, "MultiNodeJobDefinition")
        single = job_definition(stack, "SingleNodeJobDefinition")
        assert definition["type"] == "multinode"
        assert definition["parameters"] == single["parameters"]
        assert definition["retryStrategy"] == single["retryStrategy"]
        assert definition["timeout"] == {"attemptDurationSeconds": 43200}
        properties = multi_node_properties(stack)
        assert (properties["numNodes"], properties["mainNode"]) == (nodes, 0)
        main, rest = properties["nodeRangeProperties"]
        # Node 0 (scheduler + driver + its workers) and every other node (workers), each once.
        assert (main["targetNodes"], rest["targetNodes"]) == ("0:0", "1:")
        for node_range in (main, rest):
            container = node_range["container"]
            assert container["command"] == single["containerProperties"]["command"] == COMMAND
            assert container["image"] == IMAGE
            assert container["jobRoleArn"] == stack.get_att("MultiNodeJobRole", "Arn")
            assert container["logConfiguration"]["options"]["awslogs-stream-prefix"] == "multi-node"
            environment = {item["name"]: item["value"] for item in container["environment"]}
            assert environment["BATCHNLP_METRICS_JOB"] == stack.name
            assert environment["BATCHNLP_NODE_JOIN_TIMEOUT"] == join  # NodeJoinTimeoutSeconds
        # Only the main node keeps memory out of its workers' limits, for the scheduler and driver.
        assert "BATCHNLP_MAIN_NODE_RESERVE_MIB" in {e["name"] for e in main["container"]["environment"]}
        assert "BATCHNLP_MAIN_NODE_RESERVE_MIB" not in {e["name"] for e in rest["container"]["environment"]}
    nightly = multi_node_properties(aws["stacks"]["nightly"])["nodeRangeProperties"]
    assert all("instanceType" not in r["container"] for r in nightly)
    tickets = multi_node_properties(aws["stacks"]["tickets"])["nodeRangeProperties"]
    assert [r["container"]["instanceType"] for r in tickets] == ["g5.12xlarge"] * 2  # one type per job


# The smallest g5/g6 size with that many GPUs: (vCPUs, GiB of memory).
GPU_INSTANCES = {1: (4, 16), 4: (48, 192), 8: (192, 768)}


def node_sizes(stack: DeployedStack) -> list[dict[str, Any]]:
    ranges = multi_node_properties(stack)["nodeRangeProperties"]
    sizes = []
    for node_range in ranges:
        container = node_range["container"]
        size = {r["type"]: int(r["value"]) for r in container["resourceRequirements"]}
        environment = {item["name"]: item["value"] for item in container["environment"]}
        size["reserve"] = int(environment.get("BATCHNLP_MAIN_NODE_RESERVE_MIB", 0))
        sizes.append(size)
    return sizes


def test_multi_node_sizes_follow_gpus_per_node(aws: dict[str, Any], template: dict[str, Any]) -> None:
    # Deployed: 1 GPU per node (the default) and 4 GPUs per node.
    main, worker = node_sizes(aws["stacks"]["nightly"])
    assert main == {"GPU": 1, "VCPU": 4, "MEMORY": 14336, "reserve": 2048}
    assert worker == {"GPU": 1, "VCPU": 4, "MEMORY": 12288, "reserve": 0}
    main, worker = node_sizes(aws["stacks"]["tickets"])
    assert main == {"GPU": 4, "VCPU": 48, "MEMORY": 180224, "reserve": 8192}
    assert worker == {"GPU": 4, "VCPU": 48, "MEMORY": 172032, "reserve": 0}
    # Every value GpusPerNode allows has a size, and each fits its instance with room for the OS.
    allowed = [int(v) for v in template["Parameters"]["GpusPerNode"]["AllowedValues"]]
    assert sorted(template["Mappings"]["MultiNodeSize"]) == sorted(map(str, allowed))
    for gpus in allowed:
        size = {k: int(v) for k, v in template["Mappings"]["MultiNodeSize"][str(gpus)].items()}
        vcpus, gib = GPU_INSTANCES[gpus]
        assert size["Vcpus"] == vcpus
        # Node 0 has its workers' memory plus the reserve, so every worker gets the same share.
        assert size["MainNodeMemoryMiB"] - size["NodeMemoryMiB"] == size["MainNodeReserveMiB"] > 0
        assert size["MainNodeMemoryMiB"] <= 0.95 * gib * 1024  # ECS keeps some memory for the OS and agent
    # The single-node job keeps its own parameters (one GPU).
    single = job_definition(aws["stacks"]["tickets"], "SingleNodeJobDefinition")["containerProperties"]
    assert {r["type"]: str(r["value"]) for r in single["resourceRequirements"]} == {
        "GPU": "1",
        "VCPU": "4",
        "MEMORY": "14336",
    }


def test_log_group_keeps_logs_for_the_retention_parameter(aws: dict[str, Any]) -> None:
    (group,) = client("logs").describe_log_groups(logGroupNamePrefix="/aws/batch/nightly")["logGroups"]
    assert group["retentionInDays"] == 30
