"""``batchnlp submit`` and ``batchnlp status``: hand a job spec to AWS Batch and follow the job.

The container runs ``batchnlp run`` on the spec. A local spec file travels inline, in the
``BATCHNLP_SPEC`` environment variable (the container reads ``--spec env:BATCHNLP_SPEC``); an
``s3://`` spec is passed by reference. Every submission runs with ``--resume`` and a fixed
``run_date``, so a retried attempt keeps the parts already written and reads the same dated
partition, and a duplicate submission finds the committed output and exits 0. No credential
travels in a job's command or environment: it goes as a Batch secret (:mod:`batchnlp.deploy.secrets`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from batchnlp.deploy.secrets import check_secret_refs, definition_with_secrets, refuse_credentials
from batchnlp.errors import JobFailed, SpecError

SPEC_VARIABLE = "BATCHNLP_SPEC"
# SubmitJob allows 30 KiB of container overrides; a spec is a few hundred bytes of YAML.
MAX_INLINE_SPEC = 20_000
TERMINAL = ("SUCCEEDED", "FAILED")
MIN_SHARDS, MAX_SHARDS = 2, 10_000  # an array job's size
MAX_DEPENDENCIES = 20  # jobs one AWS Batch job may depend on


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
    run_id: str | None = None  # passed on as --run-id; shards and backfilled dates always have one
    secrets: Mapping[str, str] = field(default_factory=dict)  # --secret NAME=ARN: Batch secrets of the containers

    def __post_init__(self) -> None:
        check_secret_refs(self.secrets)

    def request(self, today: str | None = None) -> dict[str, Any]:
        """The SubmitJob request: the command every node runs, and the spec when it travels inline."""
        run_date = self.date(today)
        request = self.job(self.name or job_name(self.spec, run_date), self.run_command(run_date))
        if self.nodes is not None:
            # Every node runs the same command: the container tells main from child by itself.
            request["nodeOverrides"] = {
                "numNodes": self.nodes,
                "nodePropertyOverrides": [
                    {"targetNodes": "0:", "containerOverrides": request.pop("containerOverrides")}
                ],
            }
        return request

    def date(self, today: str | None = None) -> str:
        """The run date the command passes: the one given, else today (UTC), fixed at submission."""
        return self.run_date or today or datetime.now(timezone.utc).date().isoformat()

    def run_command(self, run_date: str, *more: str) -> list[str]:
        """``batchnlp run`` on the spec for ``run_date``, resuming, with JSON logs; ``more`` flags last."""
        # JSON logs: CloudWatch Logs Insights reads them and the last line is the night's metrics
        # (batchnlp.observe.metrics).
        command = ["run", "--spec", self.spec_ref(), "--resume", "--run-date", run_date, "--log-format", "json"]
        command += self.param_args() + (["--run-id", self.run_id] if self.run_id else [])
        return command + list(self.run_args) + list(more)

    def param_args(self) -> list[str]:
        return [arg for key, value in self.params.items() for arg in ("--param", f"{key}={value}")]

    def spec_ref(self) -> str:
        """What the container's ``--spec`` reads: the URL, or the variable the spec travels in."""
        return self.spec if "://" in self.spec or self.spec.startswith("env:") else f"env:{SPEC_VARIABLE}"

    def job(self, name: str, command: list[str], queue: str | None = None, definition: str | None = None) -> dict:
        """A single-container SubmitJob request running ``command``, the spec inline when it is a local file."""
        environment = dict(self.environment)
        inline = _inline(self.spec) if self.spec_ref() != self.spec else None
        refuse_credentials(self.spec, inline, self.environment, self.params, self.run_args)
        if inline is not None:
            environment[SPEC_VARIABLE] = inline
        overrides = {
            "command": command,
            "environment": [{"name": key, "value": value} for key, value in sorted(environment.items())],
        }
        return {
            "jobName": name,
            "jobQueue": queue or self.queue,
            "jobDefinition": definition or self.job_definition,
            "containerOverrides": overrides,
        }


@dataclass(frozen=True)
class ShardedSubmission:
    """A night as AWS Batch runs it on Spot: an array job of ``shards`` children, each ``batchnlp run
    --shards N`` (its index from ``AWS_BATCH_JOB_ARRAY_INDEX``), then one finalize job, ``batchnlp
    commit``, that depends on the array. A dependency with no type waits for the whole array: the
    array job succeeds once every child has, and fails when any child fails for good (after its own
    retries), and a job whose dependency fails goes from PENDING to FAILED without running. So the
    finalize runs only when every shard succeeded; when one did not, ``only`` reruns those shards
    (one job each, ``--shard I/N``) under the same run id, with a new finalize depending on them.
    """

    submission: Submission  # spec, queue, job definition, params, run arguments, run date, run id
    shards: int
    finalize_queue: str | None = None  # default: the shards' queue (a CPU queue is cheaper: commit needs no GPU)
    finalize_job_definition: str | None = None
    only: tuple[int, ...] = ()  # rerun just these shards

    def __post_init__(self) -> None:
        if not MIN_SHARDS <= self.shards <= MAX_SHARDS:
            raise SpecError(
                f"--shards {self.shards}: an AWS Batch array job has {MIN_SHARDS} to {MAX_SHARDS:,} children"
            )
        if self.submission.nodes is not None:
            raise SpecError(
                "--shards and --nodes exclude each other: shards are array children on Spot, and multi-node "
                "parallel jobs never run on Spot; choose one"
            )
        wrong = sorted({i for i in self.only if not 0 <= i < self.shards})
        if wrong:
            raise SpecError(f"--only-shards {wrong}: shards of --shards {self.shards} run from 0 to {self.shards - 1}")
        if len(self.only) > MAX_DEPENDENCIES:
            raise SpecError(
                f"--only-shards names {len(self.only)} shards, and an AWS Batch job waits for at most "
                f"{MAX_DEPENDENCIES} jobs; submit the whole array again with the same --run-id instead "
                "(finished shards keep their parts and end quickly)"
            )

    def run_id(self, today: str | None = None) -> str:
        """The given run id, else the run's date: a duplicate submission of one night is the same run."""
        return self.submission.run_id or run_day(self.submission.date(today))

    def requests(self, today: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The shard jobs' requests (one array job, or one job per rerun shard), and the finalize's,
        whose ``dependsOn`` :func:`submit_sharded` fills with the shard jobs' ids."""
        s = dataclasses.replace(self.submission, run_id=self.run_id(today))
        run_date = s.date(today)
        stem = s.name or job_name(s.spec, run_date)
        if self.only:
            shards = [
                s.job(f"{stem}-shard-{i}-of-{self.shards}", s.run_command(run_date, "--shard", f"{i}/{self.shards}"))
                for i in self.only
            ]
        else:
            array = s.job(f"{stem}-shards", s.run_command(run_date, "--shards", str(self.shards)))
            shards = [{**array, "arrayProperties": {"size": self.shards}}]
        commit = ["commit", "--spec", s.spec_ref(), "--run-date", run_date, *s.param_args()]
        commit += ["--run-id", s.run_id, "--log-format", "json"]
        finalize = s.job(f"{stem}-commit", commit, self.finalize_queue, self.finalize_job_definition)
        finalize["dependsOn"] = [{"jobId": f"<job id of {shard['jobName']}>"} for shard in shards]
        return shards, finalize


def job_name(spec: str, run_date: str) -> str:
    """``batchnlp-<spec name>-<run date>``, within Batch's name rules (128 of ``[A-Za-z0-9_-]``)."""
    stem = Path(spec.rstrip("/").rsplit("/", 1)[-1]).stem
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"batchnlp-{stem}-{run_date}")[:128]


def run_day(run_date: str) -> str:
    """The date ``run_date`` names (a date, an ISO timestamp or 'today'), as ``${run_date}`` renders it."""
    from batchnlp.util.templating import render

    return render({"day": "${run_date}"}, {"run_date": run_date})["day"]


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


def submit_sharded(
    sharded: ShardedSubmission, region: str | None = None, today: str | None = None
) -> list[dict[str, str]]:
    """Submit the shard jobs, then the finalize depending on them; returns what :func:`submit` returned for
    each, the finalize last."""
    shards, finalize = sharded.requests(today)
    submitted = [submit(request, region) for request in shards]
    finalize["dependsOn"] = [{"jobId": job["jobId"]} for job in submitted]
    return [*submitted, submit(finalize, region)]


def send(base: Submission | ShardedSubmission, dry_run: bool, region: str | None = None) -> list[str]:
    """What ``batchnlp submit`` prints: the request(s) with ``dry_run``, else what it submitted."""
    secrets = _single(base).secrets
    if secrets and dry_run:  # SubmitJob has no secrets: they come with a job definition revision (secret_note)
        return send(_without_secrets(base), True, region)
    if secrets:
        base = _on_secret_definitions(base, region)
    if isinstance(base, Submission):
        if dry_run:
            return [json.dumps(base.request(), indent=2)]
        return announce([submit(base.request(), region)])
    # The date fixed once: the shards, the finalize and the printed advice name the same run.
    base = dataclasses.replace(base, submission=dataclasses.replace(base.submission, run_date=base.submission.date()))
    if dry_run:
        shards, finalize = base.requests()
        return [json.dumps({"shards": shards, "finalize": finalize}, indent=2)]
    return announce(submit_sharded(base, region), base)


def secret_note(base: Submission | ShardedSubmission) -> str | None:
    """What a dry run's request cannot show: the ``--secret`` variables, which submitting maps in a
    job definition revision (SubmitJob has no ``secrets``). None without any."""
    secrets = _single(base).secrets
    if not secrets:
        return None
    mapped = ", ".join(f"{name} from {arn}" for name, arn in secrets.items())
    return f"--secret: the job definition's containers get {mapped} (a revision with them, made when submitting)"


def _single(base: Submission | ShardedSubmission) -> Submission:
    """The one job's submission: ``base`` itself, or what each of its shards runs."""
    return base if isinstance(base, Submission) else base.submission


def _without_secrets(base: Submission | ShardedSubmission) -> Submission | ShardedSubmission:
    single = dataclasses.replace(_single(base), secrets={})
    return single if isinstance(base, Submission) else dataclasses.replace(base, submission=single)


def _on_secret_definitions(base: Submission | ShardedSubmission, region: str | None) -> Any:
    """``base`` pointed at job definition revisions whose containers get its ``--secret`` variables."""
    s = _single(base)
    with _aws_errors(f"give job definition {s.job_definition!r} the --secret variables"):
        batch = _batch(region)
        s = dataclasses.replace(s, job_definition=definition_with_secrets(batch, s.job_definition, s.secrets))
        if isinstance(base, Submission):
            return s
        finalize = base.finalize_job_definition
        if finalize:
            finalize = definition_with_secrets(batch, finalize, s.secrets)
        return dataclasses.replace(base, submission=s, finalize_job_definition=finalize)


def announce(jobs: list[dict[str, str]], sharded: ShardedSubmission | None = None) -> list[str]:
    """One line per submitted job with its console link, then how to follow it (and, for shards, what
    to do when some fail)."""
    lines = []
    for job in jobs:
        lines += [f"submitted {job['jobName']}: job id {job['jobId']}", f"  {job['link']}"]
    lines.append(f"follow it with: batchnlp status {jobs[-1]['jobId']} --follow")
    if sharded is not None:
        run_id, count = sharded.run_id(), sharded.shards
        lines.append(
            f"the commit job ({jobs[-1]['jobId']}) waits for every shard; when one fails for good it fails without "
            "running. Rerun just the failed shards (their indexes: "
            + (
                f"aws batch list-jobs --array-job-id {jobs[0]['jobId']} --job-status FAILED "
                "--query 'jobSummaryList[].arrayProperties.index'"
                if not sharded.only
                else "the failed jobs' names"
            )
            + f") with the same options plus: --shards {count} --run-id {run_id} --only-shards I,J"
        )
    return lines


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
