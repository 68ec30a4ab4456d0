"""The Kubernetes CronJob and DaskJob start the same `batchnlp run` as the AWS schedule (checked
through the same real planning, so beside it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.infra.aws.deployment import INFRA, k8s_expand, parse_run, plan_run


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
