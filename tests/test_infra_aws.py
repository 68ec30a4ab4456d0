"""The deployment templates under infra/: lint, deploy into moto, check the settings that matter.

No network and no Docker engine. ``infra/aws/batch.yaml`` is linted with cfn-lint and created
as a CloudFormation stack in moto, twice (Spot single-node capacity with on-demand fallback, and
on-demand only). moto 5.2.5's CloudFormation cannot create ``Type: multinode`` job definitions
and silently skips ``AWS::Scheduler::Schedule``, ``AWS::SNS::Subscription``,
``AWS::SNS::TopicPolicy`` and ``AWS::CloudWatch::Alarm``, while its Batch, Scheduler, SNS and
CloudWatch APIs accept them; so those resources are taken out of the stack and registered through
the APIs from the template's own properties (intrinsics resolved against the deployed stack), one
source of truth. What neither moto nor its APIs keep (a job queue's ``JobStateTimeLimitActions``)
is read from the template, converted to the API's request shape to catch misspelt members.
The commands the job definitions, the schedule and the Kubernetes manifests start go through
the real ``batchnlp run`` up to the validated job (spec loaded, ``${run_date}`` filled in), and
the S3 locations of that job are checked against the job role's policy.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

INFRA = Path(__file__).resolve().parent.parent / "infra"
REPO = INFRA.parent  # stands for the image's working directory, which holds jobs/
TEMPLATE = INFRA / "aws" / "batch.yaml"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
KMS_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/batchnlp:0.1.0"
SCHEDULED_TIME = "2026-11-24T02:00:00Z"  # what EventBridge Scheduler puts for the placeholder
# Resources moto's CloudFormation cannot create (see the module docstring), and outputs naming them.
API_ONLY = {
    "MultiNodeJobDefinition": "MultiNodeJobDefinitionArn",
    "ShardedNightStateMachine": "ShardedNightStateMachineArn",  # moto's CloudFormation reads DefinitionString only
    "NightlySchedule": "ScheduleName",
    "AlarmEmailSubscription": None,
    "AlarmTopicPolicy": None,
    "ScheduleDeadLetterAlarm": None,
    "NightNotCommittedAlarm": None,
}
ALARM_EMAIL = "oncall@example.com"
NO_VALUE = object()

# The second stack's spec lives in S3, where its job role may read it (under InputPrefix).
TICKETS_SPEC = "s3://acme-lake/raw/tickets/_specs/tickets.yaml"
TICKETS_SPEC_TEXT = """\
input: s3://acme-lake/raw/tickets/dt=${run_date}/
output: s3://acme-labels/tickets/dt=${run_date}/
tasks: [sentiment]
text_column: body
"""

# Two deployments in one account; between them they take both sides of every condition but
# OnDemandFallback=false with Spot (the queue then has the Spot environment alone).
SPOT = {
    "InputBucket": "acme-lake",
    "InputPrefix": "raw/reviews",
    "OutputBucket": "acme-lake",
    "OutputPrefix": "labelled/reviews",  # jobs/nightly-labels.yaml (the JobSpec default) writes below it
    "ModelBucket": "acme-models",
    "ModelPrefix": "models",
    "SingleNodeCapacity": "SPOT",
    "SingleNodeMaxVcpus": "96",
    "ScheduleTimezone": "Europe/Berlin",
    # 03:30 in Berlin is 01:30 or 02:30 UTC: the scheduled time's UTC date is the local date. It
    # is also outside both daylight-saving changes there (02:00-02:59 is skipped in March).
    "ScheduleExpression": "cron(30 3 * * ? *)",
    "AlarmEmail": ALARM_EMAIL,
    "RunnableTimeoutSeconds": "14400",
}
ON_DEMAND = {  # AlarmEmail left empty: no subscription
    "InputBucket": "acme-lake",
    "InputPrefix": "raw/tickets",
    "OutputBucket": "acme-labels",
    "OutputPrefix": "tickets",
    "JobSpec": TICKETS_SPEC,
    "SingleNodeCapacity": "ON_DEMAND",
    "ScheduledJobType": "multi-node",
    "MultiNodeNodes": "3",
    "GpusPerNode": "4",
    "MultiNodeInstanceType": "g5.12xlarge",
    "PlacementGroup": "batchnlp-cluster",  # with MultiNodeSubnetId, the fixture's first subnet
    "NodeJoinTimeoutSeconds": "2700",
    "NotCommittedAlarmHours": "50",
}


# ------------------------------------------------------------------ template helpers


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as plain data, short-form tags (!Ref, !Sub...) in their long form."""
    from cfnlint.decode import decode_str

    template, problems = decode_str(path.read_text(encoding="utf-8"))
    assert not problems, problems
    return json.loads(json.dumps(template))  # cfn-lint's node classes → plain dicts and lists


class DeployedStack:
    """One stack in moto, and a resolver of the template's intrinsics against it."""

    def __init__(self, name: str, template: dict[str, Any], parameters: dict[str, str]) -> None:
        self.name = name
        self.template = template
        self.parameters = {key: str(slot.get("Default", "")) for key, slot in template["Parameters"].items()}
        self.parameters.update(parameters)
        self.physical: dict[str, str] = {}

    # -- deployment
    def create(self, cloudformation: Any) -> None:
        body = copy.deepcopy(self.template)
        for logical, output in API_ONLY.items():
            del body["Resources"][logical]
            if output:
                del body["Outputs"][output]
        cloudformation.create_stack(
            StackName=self.name,
            TemplateBody=json.dumps(body),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in self.parameters.items()],
            Capabilities=["CAPABILITY_IAM"],
        )
        stack = cloudformation.describe_stacks(StackName=self.name)["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
        resources = cloudformation.describe_stack_resources(StackName=self.name)["StackResources"]
        # (moto lists a resource whose Condition is false as a record with no logical id.)
        self.physical = {
            r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in resources if "LogicalResourceId" in r
        }
        # Every resource the template declares was made (those whose Condition holds), except
        # those registered through the APIs.
        wanted = {k for k, r in body["Resources"].items() if "Condition" not in r or self.condition(r["Condition"])}
        assert set(self.physical) == wanted
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}

    def properties(self, logical: str) -> dict[str, Any]:
        return self.resolve(self.template["Resources"][logical]["Properties"])

    # -- intrinsics
    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.resolve(item) for item in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (function, argument) = next(iter(node.items()))
            if function == "Ref":
                return self.ref(argument)
            if function == "Fn::GetAtt":
                logical, attribute = argument.split(".", 1) if isinstance(argument, str) else argument
                return self.get_att(logical, attribute)
            if function == "Fn::If":
                condition, when_true, when_false = argument
                return self.resolve(when_true if self.condition(condition) else when_false)
            if function == "Fn::Sub":
                text, variables = (argument, {}) if isinstance(argument, str) else argument
                values = {key: self.resolve(value) for key, value in variables.items()}
                return re.sub(r"\$\{([^}!]+)\}", lambda m: str(self.variable(m.group(1), values)), text)
            if function == "Fn::FindInMap":
                mapping, top, second = (self.resolve(item) for item in argument)
                return self.template["Mappings"][mapping][str(top)][second]
            assert not function.startswith("Fn::"), f"resolver lacks {function}"
        return {k: v for k, v in ((k, self.resolve(v)) for k, v in node.items()) if v is not NO_VALUE}

    def variable(self, name: str, values: dict[str, Any]) -> Any:
        if name in values:
            return values[name]
        if "." in name:
            return self.get_att(*name.split(".", 1))
        return self.ref(name)

    def ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": self.name,
            "AWS::Partition": "aws",
            "AWS::NoValue": NO_VALUE,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            value = self.parameters[name]
            kind = self.template["Parameters"][name]["Type"]
            return value.split(",") if kind.startswith("List") or kind == "CommaDelimitedList" else value
        return self.physical[name]

    def get_att(self, logical: str, attribute: str) -> str:
        import boto3

        kind = self.template["Resources"][logical]["Type"]
        physical = self.physical[logical]
        if (kind, attribute) == ("AWS::IAM::Role", "Arn"):
            return boto3.client("iam", region_name=REGION).get_role(RoleName=physical)["Role"]["Arn"]
        if (kind, attribute) == ("AWS::SQS::Queue", "Arn"):
            sqs = boto3.client("sqs", region_name=REGION)
            return sqs.get_queue_attributes(QueueUrl=physical, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        if (kind, attribute) == ("AWS::SQS::Queue", "QueueName"):
            return physical.rsplit("/", 1)[1]
        if (kind, attribute) == ("AWS::Events::Rule", "Arn"):
            return boto3.client("events", region_name=REGION).describe_rule(Name=physical)["Arn"]
        raise AssertionError(f"resolver lacks GetAtt {kind}.{attribute}")

    def condition(self, name: str) -> bool:
        return self.evaluate(self.template["Conditions"][name])

    def evaluate(self, node: dict[str, Any]) -> bool:
        ((function, argument),) = node.items()
        if function == "Condition":
            return self.condition(argument)
        if function == "Fn::Equals":
            left, right = (self.resolve(side) for side in argument)
            return str(left) == str(right)
        if function == "Fn::Not":
            return not self.evaluate(argument[0])
        if function == "Fn::And":
            return all(self.evaluate(item) for item in argument)
        if function == "Fn::Or":
            return any(self.evaluate(item) for item in argument)
        raise AssertionError(f"resolver lacks condition function {function}")


def to_api(value: Any, shape: Any) -> Any:
    """CloudFormation properties → the API request ``shape`` (botocore's model) describes.

    CloudFormation spells members in PascalCase, Batch's API in camelCase, Scheduler's in
    PascalCase too: members are matched case-insensitively, and a property with no counterpart
    fails the test instead of being dropped. Map keys (Parameters, log Options, Tags) are kept.
    """
    kind = shape.type_name
    if kind == "structure":
        members = {name.lower(): name for name in shape.members}
        converted = {}
        for key, item in value.items():
            assert key.lower() in members, f"{key} has no counterpart in {shape.name}"
            member = members[key.lower()]
            converted[member] = to_api(item, shape.members[member])
        return converted
    if kind == "list":
        return [to_api(item, shape.member) for item in value]
    if kind == "map":
        return {key: to_api(item, shape.value) for key, item in value.items()}
    if kind in ("integer", "long"):
        return int(value)
    if kind in ("double", "float"):
        return float(value)
    if kind == "boolean":
        return value if isinstance(value, bool) else str(value).lower() == "true"
    if kind == "string":
        return str(value)
    return value


def api_request(client: Any, operation: str, properties: dict[str, Any]) -> dict[str, Any]:
    return to_api(properties, client.meta.service_model.operation_model(operation).input_shape)


def batchnlp_args(command: list[str], parameters: dict[str, str]) -> list[str]:
    """A job definition's command after AWS Batch's Ref::name substitution."""
    return [parameters[word[5:]] if word.startswith("Ref::") else word for word in command]


def parse_run(args: list[str]) -> dict[str, Any]:
    """Parse a ``batchnlp`` command line with the real CLI: a misspelt flag fails here."""
    from batchnlp.cli import main

    assert args[0] == "run", args
    with main.commands["run"].make_context("run", list(args[1:])) as context:
        return context.params


@contextmanager
def in_image_workdir() -> Iterator[None]:
    """The repository root stands for the image's working directory, which holds jobs/."""
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(cwd)


class _Planned(BaseException):
    """Carries the validated job out of `batchnlp run` (past its handler of Exception)."""


def plan_run(args: list[str], env: dict[str, str] | None = None) -> Any:
    """The JobSpec the real ``batchnlp run`` builds from ``args`` in the image's working
    directory: flags parsed, spec loaded, placeholders filled, settings validated. Nothing runs.

    An ``s3://`` spec is read from moto's S3 with boto3 (batchnlp reads it with s3fs, which
    moto's in-process mock does not reach).
    """
    import batchnlp.spec
    from batchnlp.cli import main

    real_spec_text = batchnlp.spec._spec_text

    def spec_text(ref: str) -> str:
        if not ref.startswith("s3://"):
            return real_spec_text(ref)
        bucket, key = ref.removeprefix("s3://").split("/", 1)
        return client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()

    def planned(spec: Any, **callbacks: Any) -> None:
        raise _Planned(spec)

    try:
        with (
            in_image_workdir(),
            mock.patch("batchnlp.execution.runner.run", planned),
            mock.patch("batchnlp.spec._spec_text", spec_text),
            mock.patch("batchnlp.cli.run.configure_logging"),
            mock.patch.dict(os.environ, env or {}),
        ):
            main.main(list(args), prog_name="batchnlp", standalone_mode=False)
    except _Planned as done:
        return done.args[0]
    except SystemExit as e:
        raise AssertionError(f"batchnlp {' '.join(args)} exited {e.code}; its message is in the captured stderr") from e
    raise AssertionError(f"batchnlp {' '.join(args)} returned without running a job")


def s3_parts(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def may(statements: list[dict[str, Any]], action: str, resource: str, prefix: str | None = None) -> bool:
    """IAM's answer to an Allow-only policy: some statement names the action and matches the
    resource (``*`` matches any characters, ``/`` included), and its condition holds. The only
    condition these S3 grants use is ``StringLike`` on ``s3:prefix``, a key absent from requests
    without a prefix (HeadBucket), where the condition fails."""
    for statement in statements:
        if action not in as_list(statement["Action"]):
            continue
        if not any(fnmatchcase(resource, pattern) for pattern in as_list(statement["Resource"])):
            continue
        condition = statement.get("Condition")
        if condition is None:
            return True
        assert list(condition) == ["StringLike"] and list(condition["StringLike"]) == ["s3:prefix"], condition
        patterns = as_list(condition["StringLike"]["s3:prefix"])
        if prefix is not None and any(fnmatchcase(prefix, pattern) for pattern in patterns):
            return True
    return False


def k8s_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of a container's command and args: ``$$`` is a literal ``$``,
    ``$(NAME)`` a defined variable's value, and any other reference stays as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([^)]*)\)", replace, text)


def retry_action(rules: list[dict[str, str]], exit_code: int | None = None, reason: str = "", status: str = "") -> str:
    """AWS Batch's evaluateOnExit: the first rule whose given patterns all match decides; a
    pattern ending in * matches by prefix; an attempt that matches no rule is retried."""

    def matches(pattern: str | None, value: str) -> bool:
        if pattern is None:
            return True
        return value.startswith(pattern[:-1]) if pattern.endswith("*") else value == pattern

    for rule in rules:
        if (
            matches(rule.get("onExitCode"), "" if exit_code is None else str(exit_code))
            and matches(rule.get("onReason"), reason)
            and matches(rule.get("onStatusReason"), status)
        ):
            return rule["action"].upper()
    return "RETRY"


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
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


def register_api_only(stack: DeployedStack) -> None:
    """What moto's CloudFormation cannot make, its APIs register from the same properties."""
    batch, scheduler, sns, cloudwatch = (client(name) for name in ("batch", "scheduler", "sns", "cloudwatch"))
    definition = stack.properties("MultiNodeJobDefinition")
    registered = batch.register_job_definition(**api_request(batch, "RegisterJobDefinition", definition))
    stack.physical["MultiNodeJobDefinition"] = registered["jobDefinitionArn"]
    machine = stack.properties("ShardedNightStateMachine")
    created = client("stepfunctions").create_state_machine(
        name=machine["StateMachineName"],
        definition=state_machine_definition(machine),
        roleArn=machine["RoleArn"],
        type=machine["StateMachineType"],
    )
    stack.physical["ShardedNightStateMachine"] = created["stateMachineArn"]
    schedule = stack.properties("NightlySchedule")
    scheduler.create_schedule(**api_request(scheduler, "CreateSchedule", schedule))
    stack.physical["NightlySchedule"] = schedule["Name"]
    if stack.condition(stack.template["Resources"]["AlarmEmailSubscription"]["Condition"]):
        subscription = stack.properties("AlarmEmailSubscription")
        arn = sns.subscribe(**api_request(sns, "Subscribe", subscription))["SubscriptionArn"]
        stack.physical["AlarmEmailSubscription"] = arn
    policy = stack.properties("AlarmTopicPolicy")
    for topic in policy["Topics"]:
        document = json.dumps(policy["PolicyDocument"])
        sns.set_topic_attributes(TopicArn=topic, AttributeName="Policy", AttributeValue=document)
    stack.physical["AlarmTopicPolicy"] = "policy"
    for logical in ("ScheduleDeadLetterAlarm", "NightNotCommittedAlarm"):
        alarm = stack.properties(logical)
        cloudwatch.put_metric_alarm(**api_request(cloudwatch, "PutMetricAlarm", alarm))
        stack.physical[logical] = alarm["AlarmName"]


def state_machine_definition(properties: dict[str, Any]) -> str:
    """The Amazon States Language text CloudFormation makes of Definition and its DefinitionSubstitutions."""
    text = json.dumps(properties["Definition"])
    for key, value in properties["DefinitionSubstitutions"].items():
        text = text.replace("${" + key + "}", str(value))
    assert "${" not in text, text
    return text


def client(service: str) -> Any:
    import boto3

    return boto3.client(service, region_name=REGION)


def compute_environment(stack: DeployedStack, logical: str) -> dict[str, Any]:
    found = client("batch").describe_compute_environments(computeEnvironments=[stack.physical[logical]])
    return found["computeEnvironments"][0]


def job_definition(stack: DeployedStack, logical: str) -> dict[str, Any]:
    found = client("batch").describe_job_definitions(jobDefinitions=[stack.physical[logical]])
    return found["jobDefinitions"][0]


def role_policies(stack: DeployedStack, logical: str) -> list[dict[str, Any]]:
    iam = client("iam")
    name = stack.physical[logical]
    statements = []
    for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
        if isinstance(document, str):  # moto returns inline policies made by CloudFormation as Python repr text
            document = ast.literal_eval(document)
        statements += document["Statement"]
    return statements


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# ------------------------------------------------------------------ lint


AWS_TEMPLATES = sorted(p for p in (INFRA / "aws").iterdir() if p.suffix in (".yaml", ".yml", ".json"))


@pytest.mark.parametrize("path", AWS_TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_finds_nothing(path: Path) -> None:
    from cfnlint.api import lint
    from cfnlint.config import ManualArgs

    # Errors, warnings and informational findings alike.
    matches = lint(path.read_text(encoding="utf-8"), config=ManualArgs(regions=[REGION], include_checks=["I"]))
    assert [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches] == []


def test_the_lint_sees_the_template_and_catches_a_misspelt_property() -> None:
    from cfnlint.api import lint
    from cfnlint.config import ManualArgs

    assert TEMPLATE in AWS_TEMPLATES
    broken = TEMPLATE.read_text(encoding="utf-8").replace("MinvCpus: 0", "MinVcpus: 0", 1)
    assert [m.rule.id for m in lint(broken, config=ManualArgs(regions=[REGION]))] == ["E3002"]


def test_defaults_name_a_spec_of_the_image_and_offer_no_setting_that_cannot_work(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    assert parameters["JobSpec"]["Default"] == "jobs/nightly-labels.yaml"
    assert (REPO / parameters["JobSpec"]["Default"]).is_file()  # the image copies jobs/ to its working directory
    data = json.dumps(template)  # the template's values, not its comments
    # The CUDA 13 image needs NVIDIA driver >= 580: only the AL2023 GPU AMI has it (AL2: 550).
    assert "ECS_AL2_NVIDIA" not in data and "ImageType" not in parameters
    environments = [r for r in template["Resources"].values() if r["Type"] == "AWS::Batch::ComputeEnvironment"]
    assert [r["Properties"]["ComputeResources"]["Ec2Configuration"] for r in environments] == [
        [{"ImageType": "ECS_AL2023_NVIDIA"}]
    ] * len(environments)
    # batchnlp's HeadBucket check of the output bucket needs s3:ListBucket without a prefix:
    # listing limited to the prefixes failed every run, so it is no longer offered.
    assert "ListBucketScope" not in parameters and "s3:prefix" not in data
    # A zone with daylight saving skips (or repeats) one night a year: the default has none.
    assert parameters["ScheduleTimezone"]["Default"] == "UTC"


def test_every_arn_the_template_builds_names_the_partition(template: dict[str, Any]) -> None:
    """No ``arn:aws:`` written out: the stack deploys in aws-cn and aws-us-gov too."""
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and "arn:" in node:
            found.append(node)

    walk({"Resources": template["Resources"], "Outputs": template["Outputs"]})
    assert found, "the template builds ARNs"
    assert [arn for arn in found if not arn.startswith("arn:${AWS::Partition}:")] == []
    target = template["Resources"]["NightlySchedule"]["Properties"]["Target"]["Arn"]["Fn::If"]
    assert target[2] == {"Fn::Sub": "arn:${AWS::Partition}:scheduler:::aws-sdk:batch:submitJob"}
    substitutions = template["Resources"]["ShardedNightStateMachine"]["Properties"]["DefinitionSubstitutions"]
    assert substitutions["SubmitJobSync"] == {"Fn::Sub": "arn:${AWS::Partition}:states:::batch:submitJob.sync"}


# ------------------------------------------------------------------ compute and queues


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


# ------------------------------------------------------------------ job definitions

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


# ------------------------------------------------------------------ roles


def test_job_role_reaches_the_named_prefixes_and_key_only(aws: dict[str, Any]) -> None:
    stack = aws["stacks"]["nightly"]
    trust = client("iam").get_role(RoleName=stack.physical["JobRole"])["Role"]["AssumeRolePolicyDocument"]
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "ecs-tasks.amazonaws.com"}]
    assert client("iam").list_attached_role_policies(RoleName=stack.physical["JobRole"])["AttachedPolicies"] == []
    statements = {s["Sid"]: s for s in role_policies(stack, "JobRole")}
    assert all(s["Effect"] == "Allow" for s in statements.values())

    def objects(bucket: str, prefix: str) -> list[str]:
        return [f"arn:aws:s3:::{bucket}/{prefix}", f"arn:aws:s3:::{bucket}/{prefix}/*"]

    expected = {
        "ReadInput": {"Action": ["s3:GetObject"], "Resource": objects("acme-lake", "raw/reviews")},
        "WriteOutput": {
            "Action": ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
            "Resource": objects("acme-lake", "labelled/reviews"),
        },
        "ReadModels": {"Action": ["s3:GetObject"], "Resource": objects("acme-models", "models")},
    }
    for sid, want in expected.items():
        assert sorted(as_list(statements[sid]["Action"])) == want["Action"], sid
        assert as_list(statements[sid]["Resource"]) == want["Resource"], sid
        assert "Condition" not in statements[sid]
    # Key names in the whole buckets, never their contents: batchnlp's HeadBucket check of the
    # output bucket is s3:ListBucket without an s3:prefix.
    for sid, bucket in {"ListInput": "acme-lake", "ListOutput": "acme-lake", "ListModels": "acme-models"}.items():
        assert (statements[sid]["Action"], statements[sid]["Resource"]) == ("s3:ListBucket", f"arn:aws:s3:::{bucket}")
        assert "Condition" not in statements[sid], sid
    key = statements["UseKeyThroughS3"]
    assert sorted(as_list(key["Action"])) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert key["Resource"] == KMS_KEY
    assert key["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}}
    assert set(statements) == set(expected) | {"ListInput", "ListOutput", "ListModels", "UseKeyThroughS3"}
    # Nothing else: no wildcard action, no resource outside the three prefixes, the buckets and the key.
    for statement in statements.values():
        assert all(not action.endswith("*") for action in as_list(statement["Action"]))
        assert all(resource != "*" for resource in as_list(statement["Resource"]))


CLUSTER_SECRET_ACTIONS = [
    "secretsmanager:CreateSecret",
    "secretsmanager:DeleteSecret",
    "secretsmanager:DescribeSecret",
    "secretsmanager:GetSecretValue",
    "secretsmanager:PutSecretValue",
    "secretsmanager:TagResource",
]


def test_multi_node_role_may_touch_its_clusters_tls_secrets_and_nothing_more(aws: dict[str, Any]) -> None:
    """The main node stores the job's CA and certificates in batchnlp/cluster/<job id>, the other
    nodes read them, the main node deletes them: six actions on that prefix, no other secret."""
    for stack in aws["stacks"].values():
        single = role_policies(stack, "JobRole")
        multi = {s["Sid"]: s for s in role_policies(stack, "MultiNodeJobRole")}
        # The same data access as single-node jobs, plus the one Secrets Manager statement.
        assert [s for sid, s in multi.items() if sid != "ClusterTlsSecret"] == single
        grant = multi["ClusterTlsSecret"]
        assert grant["Effect"] == "Allow" and "Condition" not in grant
        assert sorted(as_list(grant["Action"])) == CLUSTER_SECRET_ACTIONS
        assert grant["Resource"] == f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:batchnlp/cluster/*"
        # Secrets Manager appends six random characters to a secret's name in its ARN.
        job_secret = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:batchnlp/cluster/4c0ffee1-b2a3-AbCdEf"
        for action in CLUSTER_SECRET_ACTIONS:
            assert may(list(multi.values()), action, job_secret), action
            assert not may(single, action, job_secret), action  # single-node jobs start no cluster off-host
        for elsewhere in (
            f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:prod/db-password-AbCdEf",
            f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:batchnlp/other-AbCdEf",
            f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:batchnlp/cluster/x-AbCdEf",
            f"arn:aws:secretsmanager:{REGION}:999999999999:secret:batchnlp/cluster/x-AbCdEf",
        ):
            assert not any(may(list(multi.values()), action, elsewhere) for action in CLUSTER_SECRET_ACTIONS)
        for action in ("secretsmanager:ListSecrets", "secretsmanager:UpdateSecret", "secretsmanager:PutResourcePolicy"):
            assert not may(list(multi.values()), action, job_secret), action


def test_job_role_without_model_bucket_or_prefix_conditions(aws: dict[str, Any]) -> None:
    statements = {s["Sid"]: s for s in role_policies(aws["stacks"]["tickets"], "JobRole")}
    assert set(statements) == {"ReadInput", "ListInput", "WriteOutput", "ListOutput", "UseKeyThroughS3"}
    # Key names in the whole buckets, never their contents.
    assert (statements["ListInput"]["Resource"], statements["ListOutput"]["Resource"]) == (
        "arn:aws:s3:::acme-lake",
        "arn:aws:s3:::acme-labels",
    )
    assert "Condition" not in statements["ListInput"] and "Condition" not in statements["ListOutput"]
    assert as_list(statements["WriteOutput"]["Resource"]) == [
        "arn:aws:s3:::acme-labels/tickets",
        "arn:aws:s3:::acme-labels/tickets/*",
    ]


def test_execution_and_instance_roles_hold_no_data_access(aws: dict[str, Any]) -> None:
    stack = aws["stacks"]["nightly"]
    statements = {s["Sid"]: s for s in role_policies(stack, "ExecutionRole")}
    assert statements["WriteLogs"]["Resource"] == f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/batch/nightly:*"
    assert all(action.startswith("ecr:") for action in statements["PullImage"]["Action"])
    # The instance role is the ECS agent's managed policy alone (moto ignores ManagedPolicyArns: read
    # from the template).
    assert stack.properties("InstanceRole")["ManagedPolicyArns"] == [
        "arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
    ]
    assert client("iam").list_role_policies(RoleName=stack.physical["InstanceRole"])["PolicyNames"] == []


def test_scheduler_role_may_submit_this_stacks_jobs_only(aws: dict[str, Any]) -> None:
    stack = aws["stacks"]["nightly"]
    trust = client("iam").get_role(RoleName=stack.physical["SchedulerRole"])["Role"]["AssumeRolePolicyDocument"]
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "scheduler.amazonaws.com"}]
    statements = {s["Sid"]: s for s in role_policies(stack, "SchedulerRole")}
    assert statements["SubmitJob"]["Action"] == "batch:SubmitJob"
    prefix = f"arn:aws:batch:{REGION}:{ACCOUNT}"
    assert sorted(statements["SubmitJob"]["Resource"]) == sorted(
        [
            stack.physical["SingleNodeJobQueue"],
            stack.physical["MultiNodeJobQueue"],
            f"{prefix}:job-definition/nightly-gpu:*",
            f"{prefix}:job-definition/nightly-multi-node:*",
        ]
    )
    assert statements["DeadLetters"] == {
        "Sid": "DeadLetters",
        "Effect": "Allow",
        "Action": "sqs:SendMessage",
        "Resource": stack.get_att("ScheduleDeadLetterQueue", "Arn"),
    }


# ------------------------------------------------------------------ alarms


def batch_event(queue: str, status: str, job_id: str = "5b4d6b1c-3f4e-4c1a-9d1e-0d6f7c1e2a3b") -> dict[str, Any]:
    """A "Batch Job State Change" event as AWS Batch sends it to EventBridge (trimmed)."""
    return {
        "version": "0",
        "id": "c8f9c4b5-76e5-d76a-f980-7011e206042b",
        "detail-type": "Batch Job State Change",
        "source": "aws.batch",
        "account": ACCOUNT,
        "time": "2026-11-24T03:11:09Z",
        "region": REGION,
        "resources": [f"arn:aws:batch:{REGION}:{ACCOUNT}:job/{job_id}"],
        "detail": {
            "jobName": "nightly-nightly",
            "jobId": job_id,
            "jobQueue": queue,
            "status": status,
            "statusReason": "Essential container in task exited",
            "attempts": [{"container": {"exitCode": 2}}],
        },
    }


def test_a_failed_job_of_the_stacks_queues_reaches_the_alarm_topic(aws: dict[str, Any]) -> None:
    from moto.events.models import EventPattern, EventPatternParser

    events = client("events")
    for stack in aws["stacks"].values():
        rule = events.describe_rule(Name=stack.physical["FailedJobRule"])
        assert rule["State"] == "ENABLED"
        pattern = json.loads(rule["EventPattern"])
        queues = [stack.physical["SingleNodeJobQueue"], stack.physical["MultiNodeJobQueue"]]
        assert pattern == {
            "source": ["aws.batch"],
            "detail-type": ["Batch Job State Change"],
            "detail": {"status": ["FAILED"], "jobQueue": queues},
        }
        matcher = EventPattern(rule["EventPattern"], EventPatternParser(rule["EventPattern"]).parse())
        for queue in queues:
            assert matcher.matches_event(batch_event(queue, "FAILED"))
            assert not matcher.matches_event(batch_event(queue, "SUCCEEDED"))
            assert not matcher.matches_event(batch_event(queue, "RUNNABLE"))
        other = aws["stacks"]["tickets" if stack.name == "nightly" else "nightly"].physical["SingleNodeJobQueue"]
        assert not matcher.matches_event(batch_event(other, "FAILED")), "another stack's queue"
        (target,) = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
        assert target["Arn"] == stack.physical["AlarmTopic"] == stack.outputs["AlarmTopicArn"]


def test_the_alarm_topic_mails_alarm_email_only_when_given(aws: dict[str, Any]) -> None:
    sns = client("sns")
    nightly, tickets = aws["stacks"]["nightly"], aws["stacks"]["tickets"]
    (subscription,) = sns.list_subscriptions_by_topic(TopicArn=nightly.physical["AlarmTopic"])["Subscriptions"]
    assert (subscription["Protocol"], subscription["Endpoint"]) == ("email", ALARM_EMAIL)
    assert sns.list_subscriptions_by_topic(TopicArn=tickets.physical["AlarmTopic"])["Subscriptions"] == []
    assert "AlarmEmailSubscription" not in tickets.physical
    assert nightly.template["Resources"]["AlarmEmailSubscription"]["Condition"] == "HasAlarmEmail"


def test_only_the_stacks_rule_and_alarms_may_publish_to_its_topic(aws: dict[str, Any]) -> None:
    sns = client("sns")
    stack = aws["stacks"]["nightly"]
    topic = stack.physical["AlarmTopic"]
    policy = json.loads(sns.get_topic_attributes(TopicArn=topic)["Attributes"]["Policy"])
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert set(statements) == {"AccountOwner", "FailedJobRule", "StackAlarms"}
    assert all(s["Resource"] == topic and s["Effect"] == "Allow" for s in statements.values())
    assert statements["AccountOwner"]["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    rule = statements["FailedJobRule"]
    assert (rule["Principal"], rule["Action"]) == ({"Service": "events.amazonaws.com"}, "sns:Publish")
    assert rule["Condition"] == {"ArnEquals": {"aws:SourceArn": stack.get_att("FailedJobRule", "Arn")}}
    alarms = statements["StackAlarms"]
    assert (alarms["Principal"], alarms["Action"]) == ({"Service": "cloudwatch.amazonaws.com"}, "sns:Publish")
    pattern = alarms["Condition"]["ArnLike"]["aws:SourceArn"]
    assert pattern == f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:nightly-*"
    assert alarms["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    for name in (stack.physical["ScheduleDeadLetterAlarm"], stack.physical["NightNotCommittedAlarm"]):
        assert fnmatchcase(f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}", pattern), name


def alarm(stack: DeployedStack, logical: str) -> dict[str, Any]:
    (found,) = client("cloudwatch").describe_alarms(AlarmNames=[stack.physical[logical]])["MetricAlarms"]
    return found


def test_a_schedule_dead_letter_raises_an_alarm(aws: dict[str, Any]) -> None:
    stack = aws["stacks"]["nightly"]
    found = alarm(stack, "ScheduleDeadLetterAlarm")
    queue_name = stack.physical["ScheduleDeadLetterQueue"].rsplit("/", 1)[1]
    assert (found["Namespace"], found["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert found["Dimensions"] == [{"Name": "QueueName", "Value": queue_name}]
    assert (found["ComparisonOperator"], found["Threshold"], found["Statistic"]) == (
        "GreaterThanThreshold",
        0,
        "Maximum",
    )
    assert found["TreatMissingData"] == "notBreaching"
    assert found["AlarmActions"] == [stack.physical["AlarmTopic"]]


def test_a_night_not_committed_raises_an_alarm(aws: dict[str, Any]) -> None:
    """The alarm reads the metric batchnlp's EMF line defines (batchnlp/observe/metrics.py)."""
    from batchnlp.observe.metrics import JOB_VARIABLE, METRICS, NAMESPACE

    for stack, hours in ((aws["stacks"]["nightly"], 30), (aws["stacks"]["tickets"], 50)):
        found = alarm(stack, "NightNotCommittedAlarm")
        assert (found["Namespace"], found["MetricName"]) == (NAMESPACE, "Committed") and "Committed" in METRICS
        # Job = BATCHNLP_METRICS_JOB, which both job definitions set to the stack's name.
        assert found["Dimensions"] == [{"Name": "Job", "Value": stack.name}]
        single = job_definition(stack, "SingleNodeJobDefinition")["containerProperties"]
        assert {"name": JOB_VARIABLE, "value": stack.name} in single["environment"]
        # No commit (an hourly sum of at least 1) in any of the last `hours` hours; an hour
        # without data counts as none. Longer than a day: a night committing later than the
        # night before does not trip it.
        assert (found["Statistic"], found["Period"]) == ("Sum", 3600)
        assert found["EvaluationPeriods"] == found["DatapointsToAlarm"] == hours > 24
        assert (found["ComparisonOperator"], found["Threshold"]) == ("LessThanThreshold", 1)
        assert found["TreatMissingData"] == "breaching"  # no run at all is a failed night too
        assert found["AlarmActions"] == found["OKActions"] == [stack.physical["AlarmTopic"]]
        # CloudWatch allows Period x EvaluationPeriods up to 7 days for periods of an hour or more.
        assert found["Period"] * found["EvaluationPeriods"] <= 7 * 86400
    limits = aws["stacks"]["nightly"].template["Parameters"]["NotCommittedAlarmHours"]
    assert 3600 * limits["MaxValue"] <= 7 * 86400 and limits["MinValue"] > 24


# ------------------------------------------------------------------ schedule


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


# ------------------------------------------------------------------ Kubernetes


def k8s(name: str) -> dict[str, Any]:
    """The manifest's workload (the file's first document; a NetworkPolicy may follow it)."""
    return next(yaml.safe_load_all((INFRA / "k8s" / name).read_text(encoding="utf-8")))


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


def test_cronjob_runs_batchnlp_nightly_on_one_gpu() -> None:
    cronjob = k8s("cronjob.yaml")
    assert (cronjob["apiVersion"], cronjob["kind"]) == ("batch/v1", "CronJob")
    spec = cronjob["spec"]
    assert len(spec["schedule"].split()) == 5 and spec["timeZone"]
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Exit codes 2 (user error) and 3 (too many bad input lines) fail the Job at once; 1 and 143
    # (SIGTERM after draining) are retried up to backoffLimit; a disrupted pod does not count.
    rules = job["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert [r["onExitCodes"] for r in fail] == [
        {"containerName": container["name"], "operator": "In", "values": [2, 3]}
    ]
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert [r["onPodConditions"] for r in ignore] == [[{"type": "DisruptionTarget", "status": "True"}]]
    assert job["backoffLimit"] >= 1
    # The run date comes from the Job's name, which the CronJob derives from the scheduled time.
    variables = env(container)
    assert variables["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['batch.kubernetes.io/job-name']"
    )
    # batchnlp's lock names its owner by the Job's uid and the pod: a later pod of the same Job
    # takes over at once, another Job is refused.
    assert variables["BATCHNLP_K8S_JOB_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['batch.kubernetes.io/controller-uid']"
    )
    assert variables["BATCHNLP_K8S_POD"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # SIGTERM, then --grace-seconds (default 20) to drain and release the lock, before SIGKILL.
    grace = parse_run(container["args"])["grace_seconds"] or 20
    assert pod["terminationGracePeriodSeconds"] >= grace + 15
    # The image's entrypoint is tini (PID 1: forwards SIGTERM, reaps worker processes), then batchnlp.
    assert container["command"][:4] == ["/usr/bin/tini", "--", "/bin/sh", "-c"]
    params = parse_run(container["args"])
    assert (params["spec_file"], params["resume"]) == ("jobs/nightly-labels.yaml", True)


def run_cronjob_container(job_name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The CronJob's container command after tini, expanded as Kubernetes does, run by /bin/sh
    with a stand-in `batchnlp` that prints the arguments it was given, one per line."""
    cronjob = k8s("cronjob.yaml")
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    variables = {"JOB_NAME": job_name, "AWS_DEFAULT_REGION": env(container)["AWS_DEFAULT_REGION"]["value"]}
    argv = [k8s_expand(word, variables) for word in container["command"][2:] + container["args"]]
    stand_in = tmp_path / "bin" / "batchnlp"
    stand_in.parent.mkdir(exist_ok=True)
    stand_in.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    stand_in.chmod(0o755)
    environment = {**os.environ, **variables, "PATH": f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(argv, capture_output=True, text=True, env=environment, timeout=30, check=False)


@pytest.mark.skipif(shutil.which("date") is None or not Path("/bin/sh").exists(), reason="needs /bin/sh and date")
def test_cronjob_passes_the_scheduled_time_of_its_job_as_run_date(tmp_path: Path) -> None:
    name = k8s("cronjob.yaml")["metadata"]["name"]
    scheduled = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)
    # The CronJob controller names each Job <cronjob>-<scheduled time in minutes since the epoch>;
    # every pod of that Job (retries included, hours later) carries the name in its job-name label.
    result = run_cronjob_container(f"{name}-{int(scheduled.timestamp()) // 60}", tmp_path)
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    assert parse_run(args)["run_date"] == "2026-11-24T02:00:00Z"
    job = plan_run(args)
    assert (job.input, job.output, job.mode) == (
        "s3://acme-lake/raw/reviews/dt=2026-11-23/",
        "s3://acme-lake/labelled/reviews/dt=2026-11-23/",
        "resume",
    )
    # A Job created by hand under another name has no night: exit 2, which fails the Job at once.
    result = run_cronjob_container("batchnlp-manual-1", tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert "scheduled time in minutes since the epoch" in result.stderr


def test_daskjob_points_the_driver_at_the_operators_scheduler() -> None:
    daskjob = k8s("daskjob.yaml")
    assert (daskjob["apiVersion"], daskjob["kind"]) == ("kubernetes.dask.org/v1", "DaskJob")
    (driver,) = daskjob["spec"]["job"]["spec"]["containers"]
    cluster = daskjob["spec"]["cluster"]["spec"]
    # The operator sets DASK_SCHEDULER_ADDRESS (tcp://<name>-scheduler.<namespace>.svc.cluster.local:8786)
    # in the job pod; Kubernetes expands $(...) in args.
    params = parse_run(driver["args"])
    assert params["scheduler"] == "$(DASK_SCHEDULER_ADDRESS)"
    assert (params["spec_file"], params["resume"]) == ("jobs/nightly-labels.yaml", True)
    assert date.fromisoformat(params["run_date"])  # a fixed night, never `today`
    name = daskjob["metadata"]["name"]
    address = f"tcp://{name}-scheduler.default.svc.cluster.local:8786"
    job = plan_run([k8s_expand(word, {"DASK_SCHEDULER_ADDRESS": address}) for word in driver["args"]])
    yesterday = date.fromisoformat(params["run_date"]) - timedelta(days=1)
    assert (job.scheduler, job.output) == (address, f"s3://acme-lake/labelled/reviews/dt={yesterday}/")
    assert cluster["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == name
    (worker,) = cluster["worker"]["spec"]["containers"]
    assert cluster["worker"]["replicas"] >= 1
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["command"][:2] == ["dask", "worker"]
    (scheduler,) = cluster["scheduler"]["spec"]["containers"]
    assert scheduler["command"][:2] == ["dask", "scheduler"]
    assert 8786 in [p["containerPort"] for p in scheduler["ports"]]
    assert 8786 in [p["port"] for p in cluster["scheduler"]["service"]["ports"]]
    assert len({c["image"] for c in (driver, worker, scheduler)}) == 1  # one image, same versions everywhere


# ------------------------------------------------------------------ sharded nights (Step Functions)


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
