"""Compute environments, job queues and the network: scale to zero on GPU families, Spot or on-demand,
fallback order, a stuck job cancelled, nodes reachable inside the security group only, encrypted
volumes and IMDSv2."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.infra.aws.deployment import DeployedStack, api_request, client, compute_environment

COMPUTE_ENVIRONMENTS = {  # by stack: the Spot stack has the on-demand fallback, the other does not
    "nightly": ["SingleNodeComputeEnvironment", "OnDemandComputeEnvironment", "MultiNodeComputeEnvironment"],
    "tickets": ["SingleNodeComputeEnvironment", "MultiNodeComputeEnvironment"],
}


def test_compute_environments_scale_to_zero_on_gpu_families(aws: dict[str, Any]) -> None:
    for name, stack in aws["stacks"].items():
        made = [k for k, r in stack.template["Resources"].items() if r["Type"] == "AWS::Batch::ComputeEnvironment"]
        assert sorted(set(made) & set(stack.physical)) == sorted(COMPUTE_ENVIRONMENTS[name])
        for logical in COMPUTE_ENVIRONMENTS[name]:
            environment = compute_environment(stack, logical)
            resources = environment["computeResources"]
            assert environment["type"] == "MANAGED" and environment["state"] == "ENABLED"
            assert resources["minvCpus"] == 0 and resources.get("desiredvCpus", 0) == 0
            assert resources["instanceTypes"] == ["g5", "g6"]
            # The image is CUDA 13: only the AL2023 GPU AMI's driver (580) runs it.
            assert resources["ec2Configuration"] == [{"imageType": "ECS_AL2023_NVIDIA"}]
            group = "MultiNodeSecurityGroup" if logical == "MultiNodeComputeEnvironment" else "BatchSecurityGroup"
            assert resources["securityGroupIds"] == [stack.physical[group]]
            assert resources["instanceRole"].endswith(f"instance-profile/{stack.physical['InstanceProfile']}")
            assert resources["launchTemplate"]["launchTemplateId"] == stack.physical["InstanceLaunchTemplate"]
    spot, tickets = aws["stacks"]["nightly"], aws["stacks"]["tickets"]
    assert compute_environment(spot, "SingleNodeComputeEnvironment")["computeResources"]["maxvCpus"] == 96
    # The Spot queue's on-demand fallback spans every subnet, as the Spot environment does.
    for logical in ("SingleNodeComputeEnvironment", "OnDemandComputeEnvironment"):
        resources = compute_environment(spot, logical)["computeResources"]
        assert sorted(resources["subnets"]) == sorted(aws["subnets"]) and "placementGroup" not in resources
    assert compute_environment(spot, "OnDemandComputeEnvironment")["computeResources"]["maxvCpus"] == 96
    # Multi-node: without a placement group, every subnet; with one, MultiNodeSubnetId alone,
    # because a cluster placement group lives in one Availability Zone.
    free = compute_environment(spot, "MultiNodeComputeEnvironment")["computeResources"]
    assert sorted(free["subnets"]) == sorted(aws["subnets"]) and "placementGroup" not in free
    placed = compute_environment(tickets, "MultiNodeComputeEnvironment")["computeResources"]
    assert placed["placementGroup"] == "batchnlp-cluster" and placed["subnets"] == [aws["subnets"][0]]
    assert placed["maxvCpus"] == 64


def test_a_placement_group_requires_one_subnet(template: dict[str, Any]) -> None:
    """The template's Rule, evaluated as CloudFormation does before it creates anything."""
    (rule,) = template["Rules"].values()

    def accepted(parameters: dict[str, str]) -> bool:
        stack = DeployedStack("check", template, parameters)
        if not stack.evaluate(rule["RuleCondition"]):
            return True
        return all(stack.evaluate(assertion["Assert"]) for assertion in rule["Assertions"])

    assert accepted({})  # neither
    assert accepted({"MultiNodeSubnetId": "subnet-0abc"})  # one zone, no placement group
    assert accepted({"PlacementGroup": "batchnlp-cluster", "MultiNodeSubnetId": "subnet-0abc"})
    assert not accepted({"PlacementGroup": "batchnlp-cluster"})  # would span every subnet's zone
    assert "Availability Zone" in rule["Assertions"][0]["AssertDescription"]


def test_single_node_capacity_is_spot_or_on_demand_by_parameter(aws: dict[str, Any]) -> None:
    spot = compute_environment(aws["stacks"]["nightly"], "SingleNodeComputeEnvironment")["computeResources"]
    assert (spot["type"], spot["allocationStrategy"]) == ("SPOT", "SPOT_PRICE_CAPACITY_OPTIMIZED")
    on_demand = compute_environment(aws["stacks"]["tickets"], "SingleNodeComputeEnvironment")["computeResources"]
    assert (on_demand["type"], on_demand["allocationStrategy"]) == ("EC2", "BEST_FIT_PROGRESSIVE")
    for stack in aws["stacks"].values():  # multi-node jobs never run on Spot
        assert compute_environment(stack, "MultiNodeComputeEnvironment")["computeResources"]["type"] == "EC2"
    fallback = compute_environment(aws["stacks"]["nightly"], "OnDemandComputeEnvironment")["computeResources"]
    assert (fallback["type"], fallback["allocationStrategy"]) == ("EC2", "BEST_FIT_PROGRESSIVE")


def test_queue_order_falls_back_to_on_demand_and_multi_node_stays_on_demand(aws: dict[str, Any]) -> None:
    batch = client("batch")

    def order(stack: DeployedStack, logical: str) -> list[str]:
        queue = batch.describe_job_queues(jobQueues=[stack.physical[logical]])["jobQueues"][0]
        assert queue["state"] == "ENABLED"
        by_arn = {arn: name for name, arn in stack.physical.items()}
        return [
            by_arn[e["computeEnvironment"]] for e in sorted(queue["computeEnvironmentOrder"], key=lambda e: e["order"])
        ]

    spot, on_demand = aws["stacks"]["nightly"], aws["stacks"]["tickets"]
    assert order(spot, "SingleNodeJobQueue") == ["SingleNodeComputeEnvironment", "OnDemandComputeEnvironment"]
    assert order(on_demand, "SingleNodeJobQueue") == ["SingleNodeComputeEnvironment"]
    for stack in (spot, on_demand):
        assert order(stack, "MultiNodeJobQueue") == ["MultiNodeComputeEnvironment"]
    assert spot.outputs["SingleNodeJobQueueArn"].endswith(":job-queue/nightly-gpu")


@pytest.mark.parametrize("logical", ["SingleNodeJobQueue", "MultiNodeJobQueue"])
def test_queues_cancel_a_job_stuck_runnable(aws: dict[str, Any], logical: str) -> None:
    """moto keeps no JobStateTimeLimitActions: the template's own, as a CreateJobQueue request."""
    batch = client("batch")
    for stack, capacity_wait in ((aws["stacks"]["nightly"], 14400), (aws["stacks"]["tickets"], 7200)):
        request = api_request(batch, "CreateJobQueue", stack.properties(logical))
        actions = {a["reason"]: a for a in request["jobStateTimeLimitActions"]}
        assert {(a["state"], a["action"]) for a in actions.values()} == {("RUNNABLE", "CANCEL")}
        # The reasons AWS Batch documents for jobStateTimeLimitActions ("Jobs stuck in RUNNABLE").
        assert set(actions) == {
            "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY",
            "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE",
            "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT",
        }
        assert actions["CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"]["maxTimeSeconds"] == capacity_wait
        for reason in (
            "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE",
            "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT",
        ):
            assert actions[reason]["maxTimeSeconds"] == 600  # never clears by waiting; AWS's minimum
    limits = aws["stacks"]["nightly"].template["Parameters"]["RunnableTimeoutSeconds"]
    assert (limits["MinValue"], limits["MaxValue"]) == (600, 86400)  # AWS Batch's range


def test_nodes_reach_each_other_only_inside_the_security_group(aws: dict[str, Any]) -> None:
    """Single-node instances accept nothing; the nodes of a multi-node job reach each other's Dask
    scheduler (8786) and workers and nannies (8800-8899) only, from the same group only."""
    from batchnlp.cluster.multinode import SCHEDULER_PORT

    ec2 = client("ec2")
    for stack in aws["stacks"].values():
        single, multi = (stack.physical[name] for name in ("BatchSecurityGroup", "MultiNodeSecurityGroup"))
        groups = {g["GroupId"]: g for g in ec2.describe_security_groups(GroupIds=[single, multi])["SecurityGroups"]}
        assert {g["VpcId"] for g in groups.values()} == {aws["vpc"]}
        assert groups[single]["IpPermissions"] == []
        rules = groups[multi]["IpPermissions"]
        assert sorted((r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in rules) == [
            ("tcp", SCHEDULER_PORT, SCHEDULER_PORT),
            ("tcp", 8800, 8899),
        ]
        for rule in rules:
            assert [pair["GroupId"] for pair in rule["UserIdGroupPairs"]] == [multi]
            assert rule["IpRanges"] == [] and rule["Ipv6Ranges"] == [] and rule.get("PrefixListIds", []) == []


def test_instances_get_an_encrypted_root_volume_and_imdsv2(aws: dict[str, Any]) -> None:
    stack = aws["stacks"]["nightly"]
    versions = client("ec2").describe_launch_template_versions(
        LaunchTemplateId=stack.physical["InstanceLaunchTemplate"]
    )
    data = versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    (volume,) = data["BlockDeviceMappings"]
    assert volume["Ebs"]["Encrypted"] is True and volume["Ebs"]["VolumeSize"] == 100
    assert data["MetadataOptions"]["HttpTokens"] == "required"
