"""IAM roles: the job role reaches its prefixes and key only, the multi-node role its cluster's TLS
secrets, the others no data."""

from __future__ import annotations

from typing import Any

from tests.unit.infra.aws.deployment import ACCOUNT, KMS_KEY, REGION, as_list, client, may, role_policies


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
        "ReadWriteLabelCache": {
            "Action": ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
            "Resource": objects("acme-lake", "label-cache"),
        },
    }
    for sid, want in expected.items():
        assert sorted(as_list(statements[sid]["Action"])) == want["Action"], sid
        assert as_list(statements[sid]["Resource"]) == want["Resource"], sid
        assert "Condition" not in statements[sid]
    # Key names in the whole buckets, never their contents: batchnlp's HeadBucket check of the
    # output bucket is s3:ListBucket without an s3:prefix.
    lists = {
        "ListInput": "acme-lake",
        "ListOutput": "acme-lake",
        "ListModels": "acme-models",
        "ListLabelCache": "acme-lake",
    }
    for sid, bucket in lists.items():
        assert (statements[sid]["Action"], statements[sid]["Resource"]) == ("s3:ListBucket", f"arn:aws:s3:::{bucket}")
        assert "Condition" not in statements[sid], sid
    key = statements["UseKeyThroughS3"]
    assert sorted(as_list(key["Action"])) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert key["Resource"] == KMS_KEY
    assert key["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}}
    assert set(statements) == set(expected) | set(lists) | {"UseKeyThroughS3"}
    # Nothing else: no wildcard action, no resource outside the four prefixes, the buckets and the key.
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
