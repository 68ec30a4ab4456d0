"""infra/k8s/sharded-job.yaml: an Indexed Job whose pods are the shards of one run."""

from __future__ import annotations

import yaml

from batchnlp.cli import main
from tests.support import REPO

JOB = REPO / "infra" / "k8s" / "sharded-job.yaml"


def job_document() -> dict:
    """The Job (the file also holds the NetworkPolicy its pods run under)."""
    (job,) = [d for d in yaml.safe_load_all(JOB.read_text(encoding="utf-8")) if d["kind"] == "Job"]
    return job


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_each_index_is_one_shard_of_one_run_retried_on_its_own():
    job = job_document()
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    args = container["args"]
    assert spec["completionMode"] == "Indexed"  # Kubernetes sets JOB_COMPLETION_INDEX in each pod
    assert int(flag(args, "--shards")) == spec["completions"]
    assert flag(args, "--run-id") == flag(args, "--run-date")  # every index and the commit name one run
    assert spec["backoffLimitPerIndex"] >= 1 and "backoffLimit" not in spec
    (fail,) = [rule for rule in spec["podFailurePolicy"]["rules"] if rule["action"] == "FailIndex"]
    assert fail["onExitCodes"]["values"] == [2, 3] and fail["onExitCodes"]["containerName"] == container["name"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_its_arguments_are_batchnlp_run_flags():
    job = job_document()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command = main.get_command(None, container["args"][0])
    context = command.make_context("batchnlp run", list(container["args"][1:]))
    assert context.params["shards"] == job["spec"]["completions"] and context.params["spec_file"]
