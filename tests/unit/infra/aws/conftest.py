"""The infra tests' fixtures: the template, and both stacks deployed in moto once for the package
(the tests of every file here read the same deployment, as they did in one module)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

from tests.unit.infra.aws.deployment import (
    IMAGE,
    KMS_KEY,
    ON_DEMAND,
    REGION,
    SPOT,
    TICKETS_SPEC,
    TICKETS_SPEC_TEXT,
    DeployedStack,
    load_template,
    register_api_only,
    s3_parts,
)


@pytest.fixture(scope="package")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="package")
def aws(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Both stacks deployed in one moto account; the API-only resources registered from the template."""
    import boto3
    from moto import mock_aws

    fake = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    # Step Functions executions really run (moto's interpreter), against moto's Batch.
    config = {"batch": {"use_docker": False}, "stepfunctions": {"execute_state_machine": True}}
    with mock.patch.dict(os.environ, fake), mock_aws(config=config):
        # The S3 fixtures of other tests point every client at a loopback server: not here.
        for name in [key for key in os.environ if key.startswith("AWS_ENDPOINT_URL")]:
            del os.environ[name]
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
        subnets = []
        for i, zone in enumerate("ab"):
            subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=f"{REGION}{zone}")
            subnets.append(subnet["Subnet"]["SubnetId"])
        # moto's CloudFormation insists on a ServiceRole (AWS does not: it falls back to the
        # service-linked role); pass that role explicitly. moto also leaves a CommaDelimitedList
        # parameter's *default* unsplit, so InstanceTypes is passed as well.
        linked = boto3.client("iam").create_service_linked_role(AWSServiceName="batch.amazonaws.com")
        s3 = boto3.client("s3", region_name=REGION)
        bucket, key = s3_parts(TICKETS_SPEC)
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key=key, Body=TICKETS_SPEC_TEXT.encode())
        common = {
            "ImageUri": IMAGE,
            "VpcId": vpc,
            "SubnetIds": ",".join(subnets),
            "KmsKeyArn": KMS_KEY,
            "InstanceTypes": template["Parameters"]["InstanceTypes"]["Default"],
            "BatchServiceRoleArn": linked["Role"]["Arn"],
        }
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        stacks = {}
        for name, parameters in (("nightly", SPOT), ("tickets", {**ON_DEMAND, "MultiNodeSubnetId": subnets[0]})):
            stack = DeployedStack(name, template, {**common, **parameters})
            stack.create(cloudformation)
            register_api_only(stack)
            stacks[name] = stack
        yield {"stacks": stacks, "subnets": subnets, "vpc": vpc}
