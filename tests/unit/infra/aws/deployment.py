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

This module holds the deployments' settings and the helpers that read them; conftest.py deploys
the stacks once for the folder, and each test_*.py beside it checks one part of the template.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from unittest import mock

from tests.support import REPO

INFRA = REPO / "infra"  # REPO stands for the image's working directory, which holds jobs/
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
    "LabelCacheBucket": "acme-lake",
    "LabelCachePrefix": "label-cache",  # jobs/nightly-labels.yaml keeps its cache below it
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
    import batchnlp.spec.load
    from batchnlp.cli import main

    real_spec_text = batchnlp.spec.load._spec_text

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
            mock.patch("batchnlp.spec.load._spec_text", spec_text),
            mock.patch("batchnlp.cli.options.configure_logging"),
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
