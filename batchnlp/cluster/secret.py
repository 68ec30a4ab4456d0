"""How the nodes of a multi-node AWS Batch job share its TLS certificates: one Secrets Manager secret.

The main node makes the job's certificates (:func:`batchnlp.cluster.tls.issue`) and stores them, with the
job's attempt number, as the secret ``batchnlp/cluster/<job id>`` (the job id without its
``#<node>`` suffix: the same on every node) before its scheduler starts; child nodes poll for that
secret, then join over TLS. The main node deletes it when the job ends, failed or not. Only the
job's role may read it (the template allows ``secretsmanager:GetSecretValue`` and the rest on
``secret:batchnlp/cluster/*`` only); the certificates are never written to S3 or a log.

A retried job keeps its id, and an attempt killed outright (SIGKILL, a lost instance) leaves its
secret behind: the next attempt's main node overwrites it, and a child node waits for the secret
of its own attempt (``AWS_BATCH_JOB_ATTEMPT``), never joining with another attempt's certificates.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from batchnlp.cluster.tls import JobCertificates
from batchnlp.errors import JobFailed, SpecError

logger = logging.getLogger(__name__)

JOB_ID = "AWS_BATCH_JOB_ID"
ATTEMPT = "AWS_BATCH_JOB_ATTEMPT"
SECRET_PREFIX = "batchnlp/cluster/"
ACTIONS = "secretsmanager:CreateSecret, GetSecretValue, PutSecretValue, DeleteSecret, DescribeSecret, TagResource"
POLL_SECONDS = 2.0
# A secret deleted "without recovery" frees its name a few seconds later; the next attempt's
# main node may come sooner.
RECREATE_SECONDS = 60.0


def job_id(environ: Mapping[str, str]) -> str:
    """The job's id, alike on every node: ``AWS_BATCH_JOB_ID`` without its ``#<node>`` suffix."""
    job = environ.get(JOB_ID, "").strip().split("#", 1)[0]
    if not job:
        raise SpecError(f"{JOB_ID} is not set: AWS Batch sets it on every node of a multi-node parallel job")
    return job


def secret_name(environ: Mapping[str, str]) -> str:
    """``batchnlp/cluster/<job id>``: the job's secret."""
    return SECRET_PREFIX + job_id(environ)


@contextmanager
def published(certificates: JobCertificates, environ: Mapping[str, str]) -> Iterator[str]:
    """The main node's side: the job's secret holds ``certificates`` while the block runs; yields its name."""
    name = secret_name(environ)
    client = _client()
    body = json.dumps({"attempt": environ.get(ATTEMPT, ""), **certificates.to_dict()})
    _store(client, name, body)
    logger.info("the job's TLS certificates are in the Secrets Manager secret %s for its child nodes", name)
    try:
        yield name
    finally:
        try:
            client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
        except Exception as e:  # the job's own outcome matters more; the certificates expire anyway
            logger.warning("could not delete the Secrets Manager secret %s: %s; delete it by hand", name, _reason(e))


def fetch(environ: Mapping[str, str], deadline: float) -> JobCertificates:
    """A child node's side: the certificates of its job's attempt, once the main node has stored them.

    Polls until ``deadline`` (``time.monotonic()``), then raises :class:`JobFailed` (exit 1,
    retried); a refusal (the role may not read the secret) is a :class:`SpecError` (exit 2).
    """
    name, attempt = secret_name(environ), environ.get(ATTEMPT, "")
    client, started, reported = _client(), time.monotonic(), time.monotonic()
    seen = "no such secret yet"
    while True:
        try:
            stored = json.loads(client.get_secret_value(SecretId=name)["SecretString"])
        except Exception as e:
            if _code(e) not in ("ResourceNotFoundException", "InvalidRequestException"):  # not yet, or being deleted
                raise _failure(e, "read", name) from e
            seen = "no such secret yet"
        else:
            if stored.get("attempt", "") == attempt:
                return JobCertificates.from_dict(stored)
            seen = f"it holds attempt {stored.get('attempt')!r}'s certificates, this is attempt {attempt!r}"
        now = time.monotonic()
        if now >= deadline:
            raise JobFailed(
                f"the main node's TLS certificates did not appear in the Secrets Manager secret {name} within "
                f"{now - started:.0f} s ({seen}); check the main node's log, and that the job's role allows "
                f"secretsmanager:GetSecretValue on secret:{SECRET_PREFIX}*"
            )
        if now - reported >= 30:
            logger.info("waiting for the job's TLS certificates in %s (%.0f s so far)", name, now - started)
            reported = now
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - now)))


def _store(client: Any, name: str, body: str) -> None:
    """Create the secret, or overwrite one an earlier attempt left; wait while its old name is freed."""
    deadline = time.monotonic() + RECREATE_SECONDS
    while True:
        try:
            client.create_secret(Name=name, SecretString=body, Tags=[{"Key": "batchnlp", "Value": "cluster"}])
            return
        except Exception as e:
            code = _code(e)
            if code == "ResourceExistsException":
                try:
                    client.put_secret_value(SecretId=name, SecretString=body)
                    return
                except Exception as again:
                    raise _failure(again, "write", name) from again
            if code != "InvalidRequestException" or time.monotonic() >= deadline:  # not a deletion in progress
                raise _failure(e, "create", name) from e
        time.sleep(POLL_SECONDS)


def _client() -> Any:
    import boto3

    return boto3.client("secretsmanager")


def _code(e: BaseException) -> str | None:
    response = getattr(e, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, Mapping) else None


def _reason(e: BaseException) -> str:
    return f"{_code(e) or type(e).__name__}: {e}"


def _failure(e: BaseException, operation: str, name: str) -> Exception:
    """A refusal is the template's to fix (exit 2); anything else may pass on a retry (exit 1)."""
    if _code(e) in ("AccessDeniedException", "AccessDenied", "UnrecognizedClientException"):
        return SpecError(
            f"Secrets Manager refused to {operation} the secret {name} ({_reason(e)}): the job's role needs "
            f"{ACTIONS} on secret:{SECRET_PREFIX}*"
        )
    return JobFailed(f"could not {operation} the Secrets Manager secret {name} ({_reason(e)}); run the job again")
