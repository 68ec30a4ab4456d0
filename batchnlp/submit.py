"""``batchnlp submit`` and ``batchnlp status``: hand a job spec to AWS Batch and follow the job.

The container runs ``batchnlp run`` on the spec. A local spec file travels inline, in the
``BATCHNLP_SPEC`` environment variable (the container reads ``--spec env:BATCHNLP_SPEC``); an
``s3://`` spec is passed by reference. Every submission runs with ``--resume`` and a fixed
``run_date``, so a retried attempt keeps the parts already written and reads the same dated
partition, and a duplicate submission finds the committed output and exits 0.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from batchnlp.errors import JobFailed, SpecError

SPEC_VARIABLE = "BATCHNLP_SPEC"
# SubmitJob allows 30 KiB of container overrides; a spec is a few hundred bytes of YAML.
MAX_INLINE_SPEC = 20_000
TERMINAL = ("SUCCEEDED", "FAILED")


@dataclass(frozen=True)
class Submission:
    """What to run where: one AWS Batch SubmitJob request, built by :meth:`request`."""

    spec: str  # a local path (sent inline) or a URL the container can read
    queue: str
    job_definition: str
    params: Mapping[str, str] = field(default_factory=dict)
    run_args: Sequence[str] = ()  # more `batchnlp run` flags, e.g. ("--workers", "4")
    environment: Mapping[str, str] = field(default_factory=dict)
    nodes: int | None = None  # a multi-node parallel job of this many nodes
    name: str | None = None
    run_date: str | None = None  # default: today (UTC) at submission

    def request(self, today: str | None = None) -> dict[str, Any]:
        """The SubmitJob request: the command every node runs, and the spec when it travels inline."""
        run_date = self.run_date or today or datetime.now(timezone.utc).date().isoformat()
        environment = dict(self.environment)
        if "://" in self.spec or self.spec.startswith("env:"):
            spec_ref = self.spec
        else:
            environment[SPEC_VARIABLE] = _inline(self.spec)
            spec_ref = f"env:{SPEC_VARIABLE}"
        # JSON logs: CloudWatch Logs Insights reads them and the last line is the night's metrics (batchnlp.metrics).
        command = ["run", "--spec", spec_ref, "--resume", "--run-date", run_date, "--log-format", "json"]
        for key, value in self.params.items():
            command += ["--param", f"{key}={value}"]
        command += list(self.run_args)
        overrides = {
            "command": command,
            "environment": [{"name": key, "value": value} for key, value in sorted(environment.items())],
        }
        request: dict[str, Any] = {
            "jobName": self.name or job_name(self.spec, run_date),
            "jobQueue": self.queue,
            "jobDefinition": self.job_definition,
        }
        if self.nodes is None:
            request["containerOverrides"] = overrides
        else:
            # Every node runs the same command: the container tells main from child by itself.
            request["nodeOverrides"] = {
                "numNodes": self.nodes,
                "nodePropertyOverrides": [{"targetNodes": "0:", "containerOverrides": overrides}],
            }
        return request


def job_name(spec: str, run_date: str) -> str:
    """``batchnlp-<spec name>-<run date>``, within Batch's name rules (128 of ``[A-Za-z0-9_-]``)."""
    stem = Path(spec.rstrip("/").rsplit("/", 1)[-1]).stem
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"batchnlp-{stem}-{run_date}")[:128]


def _inline(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"cannot read job spec {path}: {e.strerror or e}") from e
    if len(text.encode()) > MAX_INLINE_SPEC:
        raise SpecError(
            f"job spec {path} is {len(text.encode())} bytes, too large to send inline (at most {MAX_INLINE_SPEC}); "
            "upload it and pass --spec s3://bucket/specs/NAME.yaml"
        )
    return text


def submit(request: Mapping[str, Any], region: str | None = None) -> dict[str, str]:
    """Submit; returns the job id, name and a console link."""
    with _aws_errors("submit the job to queue " + repr(request["jobQueue"])):
        response = _batch(region).submit_job(**request)
    return {"jobId": response["jobId"], "jobName": response["jobName"], "link": console_link(response["jobId"], region)}


def console_link(job_id: str, region: str | None = None) -> str:
    region = region or _region()
    return f"https://{region}.console.aws.amazon.com/batch/home?region={region}#jobs/detail/{job_id}"


def describe(job_id: str, region: str | None = None) -> dict[str, Any]:
    with _aws_errors(f"describe job {job_id!r}"):
        jobs = _batch(region).describe_jobs(jobs=[job_id])["jobs"]
    if not jobs:
        raise SpecError(f"AWS Batch knows no job {job_id!r} in {region or _region()}; check the id and --region")
    return jobs[0]


def follow(job_id: str, region: str | None = None, interval: float = 15.0) -> Iterator[dict[str, Any]]:
    """The job each time its status changes, until it succeeds or fails."""
    last = None
    while True:
        job = describe(job_id, region)
        if job["status"] != last:
            last = job["status"]
            yield job
        if job["status"] in TERMINAL:
            return
        time.sleep(interval)


def summary(job: Mapping[str, Any]) -> str:
    """One line per fact a person checks: status and why, timings, attempts, where the logs are."""
    lines = [f"{job['jobName']} ({job['jobId']}): {job['status']}"]
    if job.get("statusReason"):
        lines.append(f"  reason: {job['statusReason']}")
    for key in ("createdAt", "startedAt", "stoppedAt"):
        if job.get(key):
            moment = datetime.fromtimestamp(job[key] / 1000, timezone.utc).isoformat(timespec="seconds")
            lines.append(f"  {key.removesuffix('At')}: {moment}")
    for number, attempt in enumerate(job.get("attempts", []), start=1):
        container = attempt.get("container", {})
        outcome = container.get("exitCode", "-")
        reason = attempt.get("statusReason") or container.get("reason") or ""
        lines.append(f"  attempt {number}: exit {outcome} {reason}".rstrip())
    stream = job.get("container", {}).get("logStreamName")
    if stream:
        lines.append(f"  logs: CloudWatch log stream {stream}")
    return "\n".join(lines)


@contextmanager
def _aws_errors(action: str) -> Iterator[None]:
    """AWS's refusals (unknown queue, access denied, no credentials or region) as one-line errors."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        yield
    except (NoRegionError, NoCredentialsError) as e:
        raise SpecError(f"cannot {action}: {e}; set AWS_REGION (or pass --region) and AWS credentials") from e
    except ClientError as e:
        error = e.response.get("Error", {})
        raise SpecError(f"AWS Batch refused to {action}: {error.get('Code')}: {error.get('Message')}") from e
    except BotoCoreError as e:
        raise JobFailed(f"cannot {action}: {e}") from e


def _batch(region: str | None) -> Any:
    import boto3

    return boto3.client("batch", region_name=region)


def _region() -> str:
    import boto3

    return boto3.session.Session().region_name or "us-east-1"
