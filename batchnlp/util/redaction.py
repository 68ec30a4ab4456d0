"""Keep credentials out of everything batchnlp prints or writes.

URLs lose user info and query strings (presigned signatures); free text loses anything shaped
like an AWS access key id, a 40-character secret, a session token, a Hugging Face token, a
URL's user info or a credential-named value. Every log record of the driver is redacted when it
is made (a log record factory), and so is everything our handler prints, tracebacks included.
The embedded cluster's worker processes do the same from start-up (they import this module as
a Dask preload), since their own log lines (a failed task's exception, say) reach the same
stderr. botocore's DEBUG output (which prints Authorization headers) is capped at INFO.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_AWS_KEY_ID = re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}")
_SECRET_40 = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")
# STS session tokens and similar bearer blobs: long runs of base64 (hashes are shorter: 64 hex).
_LONG_TOKEN = re.compile(r"(?<![A-Za-z0-9/+=%])[A-Za-z0-9/+=%]{100,}")
_QUERY_SECRET = re.compile(
    r"(?i)\b(x-amz-security-token|x-amz-signature|x-amz-credential|awsaccesskeyid|signature|token|sig)=([^&\s:'\"]+)"
)
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}")
# scheme://user:password@host or scheme://token@host: everything between :// and @ goes.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
# Option keys and argument names whose value is a credential (fsspec's key/secret/token, boto's
# aws_secret_access_key, adlfs's account_key and sas_token, a catalog's password...).
SECRET_NAMES = (
    "access_key_id",
    "secret_access_key",
    "session_token",
    "key",
    "secret",
    "token",
    "password",
    "passwd",
    "credentials",
    "credential",
    "account_key",
    "sas_token",
    "client_secret",
)
# The same in environment variable names, as words between underscores: AWS_SECRET_ACCESS_KEY,
# HF_TOKEN, DB_PASSWORD (a bare KEY word is left out: KMS_KEY_ARN names no secret).
_SECRET_NAME_WORDS = re.compile(
    r"(?:^|_)(?:secret|token|password|passwd|credentials?|(?:access|secret|api|private|account)_?key)(?:_|$)"
)
# 'secret': 'value', "token": "value", secret='value' (reprs of dicts, kwargs, JSON).
_NAMED_VALUE = re.compile(
    r"""(?ix)
    (['"]?\b(?:aws_)?(?:"""
    + "|".join(SECRET_NAMES)
    + r""")['"]?\s*[:=]\s*)
    (['"])(?:(?!\2).)+\2
    """
)
NOISY_LOGGERS = ("botocore", "aiobotocore", "s3fs", "boto3", "urllib3", "fsspec")
CHATTY_LOGGERS = ("distributed", "transformers", "huggingface_hub")
PRELOAD = "distributed.worker.preload"


def redact_url(url: str) -> str:
    """Remove user info and query strings from a URL; local paths pass unchanged."""
    parts = urlsplit(url)
    if not parts.scheme or parts.scheme == "file" or len(parts.scheme) == 1:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def unredact_url(path: str, url: str) -> str:
    """``path``, as :func:`redact_url` wrote it down under ``url``, with ``url``'s credentials back.

    What a run stores (a sharded run's plan) keeps redacted paths; the run that reads it again
    gets the credentials from its own command line: the URL itself whole (a presigned URL's
    query), a path below it with its user info. A path elsewhere comes back as stored.
    """
    if path == redact_url(url):
        return url
    parts = urlsplit(url)
    below = redact_url(url).rstrip("/") + "/"
    if not path.startswith(below):
        return path
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")).rstrip("/")
    return f"{base}/{path[len(below) :]}"


def redact_text(text: str) -> str:
    """Mask credential-shaped substrings in free text (messages, log lines)."""
    text = _USERINFO.sub(r"\1***@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}=****", text)
    text = _NAMED_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}***{m.group(2)}", text)
    text = _AWS_KEY_ID.sub("AKIA****", text)
    text = _HF_TOKEN.sub("hf_****", text)
    text = _LONG_TOKEN.sub(lambda m: "****" if _looks_random(m.group(0)) else m.group(0), text)
    return _SECRET_40.sub(lambda m: "****" if _looks_random(m.group(0)) else m.group(0), text)


def is_secret_name(name: str) -> bool:
    """Whether an option key or a variable named ``name`` holds a credential (see :data:`SECRET_NAMES`)."""
    words = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return words.removeprefix("aws_") in SECRET_NAMES or _SECRET_NAME_WORDS.search(words) is not None


def holds_secret(text: str) -> bool:
    """Whether ``text`` holds something :func:`redact_text` masks: a key id, a token, a presigned
    URL's signature or credential, a URL's user info, a credential-named value."""
    return redact_text(text) != text


def _looks_random(word: str) -> bool:
    """A secret key mixes upper case, lower case and digits; paths and words rarely do."""
    return any(c.isupper() for c in word) and any(c.islower() for c in word) and any(c.isdigit() for c in word)


class RedactingFormatter(logging.Formatter):
    """Wraps a handler's formatter and redacts all it produces, tracebacks and stack included."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(self.inner.format(record))


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: logging reports it itself when it formats the record
        return
    record.msg, record.args = redact_text(message), ()


def _install_record_factory() -> None:
    """Redact every record of this process as it is made, whichever handler prints it."""
    make = logging.getLogRecordFactory()
    if getattr(make, "batchnlp_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        _redact_record(record)
        return record

    factory.batchnlp_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def protect_process() -> None:
    """Redact every log record of this process and every line its existing handlers write."""
    _install_record_factory()
    named = (v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger))
    for logger in (logging.getLogger(), *named):
        for handler in logger.handlers:
            if not isinstance(handler.formatter, RedactingFormatter):
                handler.setFormatter(RedactingFormatter(handler.formatter))


def dask_setup(worker: Any = None) -> None:
    """Dask preload hook: worker processes of the embedded cluster redact their logs from start-up."""
    protect_process()


def protect_logging() -> None:
    """Redact every log record made from now on, here and in the workers this process's nannies start."""
    _install_record_factory()
    _preload_in_workers()


def _preload_in_workers() -> None:
    """Workers that this process's nannies start import this module first (see :func:`dask_setup`).

    Their log lines (a failed task's exception text, which names the unit's URL) go to the same
    stderr as ours, unfiltered otherwise. Nannies read the preload list from this process's
    Dask config; workers started elsewhere (``--scheduler``) need ``--preload batchnlp.util.redaction``.
    """
    import dask.config

    preload = dask.config.get(PRELOAD, None) or []
    preload = [preload] if isinstance(preload, str) else list(preload)
    if __name__ not in preload:
        dask.config.set({PRELOAD: [*preload, __name__]})
