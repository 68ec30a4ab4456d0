"""Drain before the SIGTERM: EC2's two-minute Spot interruption notice.

EC2 announces a Spot reclaim two minutes ahead in the instance metadata
(``/latest/meta-data/spot/instance-action``: 404 until then, then ``{"action": "terminate",
"time": "…Z"}``). The SIGTERM that ECS sends comes later and leaves 30 s. Watching the notice
turns most of those two minutes into a drain: no unit starts that could not finish, and the
running ones are recorded before the host goes.

The watch runs on AWS Batch (``AWS_BATCH_JOB_ID`` set) or when ``BATCHNLP_WATCH_SPOT=1``; a host
without instance metadata (an on-demand queue's behaves the same: no notice ever comes) answers
nothing or 404, and after ``GIVE_UP_AFTER`` unanswered polls the watch stops asking. It speaks
IMDSv2 (a session token first), which every instance accepts. ``AWS_EC2_METADATA_SERVICE_ENDPOINT``,
botocore's own variable, points it elsewhere (the tests' fake metadata service on loopback).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone

from batchnlp.execution.shutdown import GracefulStop

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://169.254.169.254"
POLL_SECONDS = 5.0  # AWS suggests polling every 5 s
TIMEOUT = 2.0  # instance metadata answers in milliseconds; silence means there is none
GIVE_UP_AFTER = 3  # unanswered polls in a row: not on EC2, or metadata blocked (hop limit) for this container
# Of the two minutes: ECS's SIGTERM and its 30 s stop timeout fall at the end, so finish before them.
MARGIN_SECONDS = 35.0
NOTICE_SECONDS = 120.0


def should_watch(environ: Mapping[str, str]) -> bool:
    flag = environ.get("BATCHNLP_WATCH_SPOT", "")
    return flag == "1" or (flag != "0" and bool(environ.get("AWS_BATCH_JOB_ID")))


@contextmanager
def watching(stop: GracefulStop, environ: Mapping[str, str] = os.environ) -> Iterator[None]:
    """Watch for the notice while the block runs (when :func:`should_watch`)."""
    if not should_watch(environ):
        yield
        return
    endpoint = environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_ENDPOINT
    done = threading.Event()
    thread = threading.Thread(target=_watch, args=(stop, endpoint.rstrip("/"), done), name="batchnlp-spot", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def _watch(stop: GracefulStop, endpoint: str, done: threading.Event) -> None:
    unanswered = 0
    while not done.wait(POLL_SECONDS) and not stop.requested.is_set():
        try:
            notice = instance_action(endpoint)
        except (OSError, ValueError) as e:
            unanswered += 1
            if unanswered >= GIVE_UP_AFTER:
                logger.info("no instance metadata at %s (%s): not watching for Spot interruption notices", endpoint, e)
                return
            continue
        unanswered = 0
        if notice is not None:
            left = _seconds_left(notice.get("time"))
            stop.request(
                f"Spot interruption notice received ({notice.get('action')} at {notice.get('time')})",
                max(1.0, left - MARGIN_SECONDS),
            )
            return


def instance_action(endpoint: str) -> dict | None:
    """The pending Spot action, or None when there is none (HTTP 404)."""
    token_request = urllib.request.Request(
        f"{endpoint}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    )
    with urllib.request.urlopen(token_request, timeout=TIMEOUT) as answer:
        token = answer.read().decode()
    request = urllib.request.Request(
        f"{endpoint}/latest/meta-data/spot/instance-action", headers={"X-aws-ec2-metadata-token": token}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def _seconds_left(when: str | None) -> float:
    try:
        moment = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    except ValueError:
        return NOTICE_SECONDS
    return (moment - datetime.now(timezone.utc)).total_seconds()
