"""Credentials reach an AWS Batch job as Batch ``secrets``, never in its command or environment.

A SubmitJob request's command and environment belong to the job: whoever may describe the
account's jobs (DescribeJobs, the console, EventBridge events, CloudTrail) reads them, for as long
as Batch keeps the job. So ``batchnlp submit`` refuses a credential in the inline spec, an
``--env`` variable, a ``--param`` or a run argument (what :mod:`batchnlp.util.redaction` masks in logs,
and option keys such as ``secret``), and takes ``--secret NAME=ARN`` instead: a Secrets Manager
secret or SSM parameter that ECS reads with the job definition's execution role and hands the
container as variable NAME. SubmitJob cannot add secrets (container overrides have no
``secrets``), so such a job runs on a revision of its job definition whose containers map them:
an active revision that already does is reused, otherwise one is registered.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

from batchnlp.errors import SpecError
from batchnlp.util.redaction import holds_secret, is_secret_name, redact_text

# Batch's valueFrom: the full ARN of a Secrets Manager secret (optionally :json-key:stage:version)
# or of an SSM parameter.
_VALUE_FROM = re.compile(
    r"^arn:aws[a-z-]*:(?:secretsmanager:[a-z0-9-]+:\d{12}:secret:|ssm:[a-z0-9-]+:\d{12}:parameter/)\S+$"
)
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
OPTION_FLAGS = ("--storage-option", "--catalog-option")


def check_secret_refs(secrets: Mapping[str, str]) -> None:
    """``--secret NAME=ARN``: NAME a variable name, ARN a Secrets Manager secret's or SSM parameter's."""
    for name, arn in secrets.items():
        if not _VARIABLE.match(name):
            raise SpecError(f"--secret {name}=…: NAME is the container's variable, letters, digits and _ only")
        if not _VALUE_FROM.match(arn):
            raise SpecError(
                f"--secret {name}={arn}: give the full ARN of a Secrets Manager secret "
                "(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME) or of an SSM parameter "
                "(arn:aws:ssm:REGION:ACCOUNT:parameter/NAME)"
            )


def refuse_credentials(
    spec: str,
    inline_spec: str | None,
    environment: Mapping[str, str],
    params: Mapping[str, str],
    run_args: Sequence[str],
) -> None:
    """Stop a submission whose job would carry a credential, naming where (never the value)."""
    if inline_spec is not None:
        places = [f"the spec {spec} ({where})" for where in _in_spec(inline_spec)]
    else:
        places = [f"--spec {redact_text(spec)}"] if holds_secret(spec) else []
    for flag, values in (("--env", environment), ("--param", params)):
        places += [f"{flag} {name}" for name, value in values.items() if is_secret_name(name) or holds_secret(value)]
    places += _in_run_args(run_args)
    if places:
        raise SpecError(
            f"batchnlp submit puts no credential into an AWS Batch job, and found one in: {'; '.join(places)}. A "
            "job's command and environment are shown to anyone who may describe it (DescribeJobs, the console, "
            "CloudTrail). Store the secret in AWS Secrets Manager or SSM Parameter Store and pass --secret NAME=ARN "
            "(Batch `secrets`: the container gets it as variable NAME, read with the job definition's execution "
            "role); for S3 and other AWS access, give the job role the grant and pass no keys at all"
        )


def _in_run_args(run_args: Sequence[str]) -> list[str]:
    """Run arguments that carry a credential: a credential-named storage or catalog option, or a
    value redaction would mask (a URL's user info or signature, a key id, a token)."""
    places = []
    options = iter(run_args)
    for arg in options:
        flag, joined, value = arg.partition("=")
        if flag in OPTION_FLAGS:
            value = value if joined else next(options, "")
            key = value.partition("=")[0]
            if is_secret_name(key) or holds_secret(value):
                places.append(f"run argument {flag} {key} (its value)")
        elif holds_secret(arg):
            places.append(f"run argument {redact_text(arg)}")
    return places


def _in_spec(text: str) -> Iterator[str]:
    """Where in a YAML spec a credential sits: a credential-named key with a value, or a value that holds one."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return  # `batchnlp run` reports the spec's syntax, and nothing was recognised in it
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                place = f"{where}.{key}" if where else str(key)
                if is_secret_name(str(key)) and value not in (None, "", {}, []):
                    yield place
                else:
                    stack.append((place, value))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(node))
        elif isinstance(node, str) and holds_secret(node):
            yield where


def definition_with_secrets(batch: Any, definition: str, secrets: Mapping[str, str]) -> str:
    """The ARN of an active revision of ``definition`` whose containers get ``secrets`` (name → ARN):
    ``definition`` itself when it already maps them, else an equal revision, else a new one."""
    current = _described(batch, definition)
    wanted = with_secrets(_registrable(batch, current), secrets, definition)
    revisions = [current, *_active_revisions(batch, current["jobDefinitionName"])]
    for revision in revisions:
        if _registrable(batch, revision) == wanted:
            return revision["jobDefinitionArn"]
    return batch.register_job_definition(**wanted)["jobDefinitionArn"]


def _described(batch: Any, definition: str) -> dict[str, Any]:
    if ":" in definition:  # name:revision or an ARN
        found = batch.describe_job_definitions(jobDefinitions=[definition])["jobDefinitions"]
    else:
        found = _active_revisions(batch, definition)
    if not found:
        raise SpecError(f"AWS Batch has no active job definition {definition!r}; check --job-definition and --region")
    return max(found, key=lambda d: d["revision"])


def _active_revisions(batch: Any, name: str) -> list[dict[str, Any]]:
    pages = batch.get_paginator("describe_job_definitions").paginate(jobDefinitionName=name, status="ACTIVE")
    return [d for page in pages for d in page["jobDefinitions"]]


def _registrable(batch: Any, described: Mapping[str, Any]) -> dict[str, Any]:
    """A described job definition as a RegisterJobDefinition request (its ARN, revision, status dropped)."""
    members = batch.meta.service_model.operation_model("RegisterJobDefinition").input_shape.members
    return {key: copy.deepcopy(value) for key, value in described.items() if key in members}


def with_secrets(request: dict[str, Any], secrets: Mapping[str, str], definition: str) -> dict[str, Any]:
    """``request`` with ``secrets`` in every container's ``secrets`` (a secret of the same name replaced)."""
    if "containerProperties" in request:
        containers = [request["containerProperties"]]
    elif "nodeProperties" in request:
        containers = [node["container"] for node in request["nodeProperties"]["nodeRangeProperties"]]
    else:
        raise SpecError(f"--secret needs a container or multi-node job definition; {definition!r} is neither")
    for container in containers:
        kept = [s for s in container.get("secrets", []) if s["name"] not in secrets]
        container["secrets"] = kept + [{"name": name, "valueFrom": arn} for name, arn in secrets.items()]
    return request
