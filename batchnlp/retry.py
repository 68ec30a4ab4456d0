"""How batchnlp rides out transient storage faults: one retry policy for every S3 client it makes.

:meth:`batchnlp.storage.Location.split` puts :func:`storage_options_for` under the user's
storage options, so the driver, every Dask worker (which rebuilds its filesystems from the
picklable ``Location``) and everything else that goes through ``Location`` get the same policy.

Two loops retry an S3 request (s3fs 2026.9 on aiobotocore/botocore 1.43):

- botocore's, per HTTP request. Left alone, this botocore uses its *legacy* mode (5 attempts).
  We ask for **standard** mode: it retries HTTP 500/502/503/504, throttling codes (S3's
  ``503 SlowDown``), ``RequestTimeout``, dropped connections and read timeouts, with jittered
  exponential backoff (``rand() * min(2**n, 20)`` seconds) and a retry quota per client that
  stops a retry storm when the store is down rather than slow. *Adaptive* mode adds client-side
  rate limiting, but AWS still marks it experimental and it only limits one process among many
  workers.
- s3fs's ``_error_wrapper``, around botocore: 5 tries (its ``retries`` class attribute, not a
  constructor option) for ``SlowDown`` and connection-level errors, including a body cut off
  mid-read, which happens after botocore has returned and only this loop covers. It does not
  retry ``500 InternalError``. We keep its default.

The numbers:

- ``TOTAL_MAX_ATTEMPTS = 8``: seven retries wait up to 1+2+4+8+16+20+20 = 71 s (about 35 s on
  average): enough to ride out a burst of 500s or an S3 prefix scaling up under ``SlowDown``,
  which both last seconds to a minute. A request that still fails fails its unit; the job exits 1
  (transient) and a rerun with ``--resume`` keeps every finished part. SlowDown and broken
  connections get up to 5 x 8 attempts through s3fs's loop.
- ``CONNECT_TIMEOUT = 10`` s: a connection to S3 opens in milliseconds; 10 s leaves room for a
  congested NAT gateway or DNS, and anything slower is better retried on a fresh connection than
  waited for (botocore waits 60 s, s3fs 5 s).
- ``READ_TIMEOUT = 30`` s: the longest a socket may stay silent while an answer is awaited. S3
  sends the first byte of a GET, or answers the PutObject of a part (a few MB), within a second
  or two even under load, and closes its own side of a connection idle for about 20 s. A 30 s
  silence is a stuck connection, better retried than waited for (botocore waits 60 s); s3fs's
  15 s leaves less room for a slow but healthy answer, and a write retried after its answer
  timed out is sent twice (harmless for our idempotent parts, handled for create-only writes).

Every key the user sets wins: ``storage_options={"config_kwargs": {"read_timeout": 120,
"retries": {"max_attempts": 3}}}`` replaces just those values. ``AWS_RETRY_MODE`` and
``AWS_MAX_ATTEMPTS`` in the environment also win (the retry settings botocore documents), so an
operator can tune a deployment without a spec change. Chained URLs (``simplecache::s3://``) get
no policy: their options are nested per protocol.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

S3_PROTOCOLS = ("s3", "s3a")
RETRY_MODE = "standard"
TOTAL_MAX_ATTEMPTS = 8
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 30


def s3_config() -> dict[str, Any]:
    """botocore ``Config`` keywords of the policy, less what the environment already decides."""
    retries: dict[str, Any] = {}
    if "AWS_RETRY_MODE" not in os.environ:
        retries["mode"] = RETRY_MODE
    if "AWS_MAX_ATTEMPTS" not in os.environ:
        retries["total_max_attempts"] = TOTAL_MAX_ATTEMPTS
    return {"connect_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT, "retries": retries}


def storage_options_for(url: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` for ``url`` with the retry policy under them; any key the user gave wins."""
    protocol = url.split("://", 1)[0].lower() if "://" in url else ""
    user_config = options.get("config_kwargs")
    if protocol not in S3_PROTOCOLS or "::" in url:
        return dict(options)
    if user_config is None:
        user_config = {}
    elif not isinstance(user_config, Mapping):
        return dict(options)  # malformed: s3fs reports it as the user wrote it
    config = {**s3_config(), **user_config}
    user_retries = user_config.get("retries")
    if isinstance(user_retries, Mapping):
        retries = {**s3_config()["retries"], **user_retries}
        if "max_attempts" in user_retries and "total_max_attempts" not in user_retries:
            retries.pop("total_max_attempts", None)  # botocore prefers total_max_attempts: the user's must count
        config["retries"] = retries
    return {**options, "config_kwargs": config}
