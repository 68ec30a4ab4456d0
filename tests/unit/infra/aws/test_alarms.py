"""Alarms: a failed job, a schedule's dead letter and a night not committed reach the alarm topic, and
only the stack may publish to it."""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from typing import Any

from tests.unit.infra.aws.deployment import ACCOUNT, ALARM_EMAIL, REGION, DeployedStack, client, job_definition


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
