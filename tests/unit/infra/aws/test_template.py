"""The template itself: cfn-lint finds nothing, its defaults can work, every ARN names the partition."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO
from tests.unit.infra.aws.deployment import INFRA, REGION, TEMPLATE

AWS_TEMPLATES = sorted(p for p in (INFRA / "aws").iterdir() if p.suffix in (".yaml", ".yml", ".json"))


@pytest.mark.parametrize("path", AWS_TEMPLATES, ids=lambda p: p.name)
@pytest.mark.slow
def test_cfn_lint_finds_nothing(path: Path) -> None:
    from cfnlint.api import lint
    from cfnlint.config import ManualArgs

    # Errors, warnings and informational findings alike.
    matches = lint(path.read_text(encoding="utf-8"), config=ManualArgs(regions=[REGION], include_checks=["I"]))
    assert [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches] == []


@pytest.mark.slow
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
