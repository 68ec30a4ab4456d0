"""Keep credentials out of everything batchnlp prints or writes.

URLs lose user info and query strings (presigned signatures); free text loses anything shaped
like an AWS access key id, a 40-character secret or a session token. The logging filter applies
the same rules to every record, and botocore's DEBUG output (which prints Authorization
headers) is capped at INFO.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import urlsplit, urlunsplit

_SECRET_PATTERNS = (
    re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}"),
    re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"),
    re.compile(r"(?i)(x-amz-security-token|x-amz-signature|x-amz-credential|signature|token)=([^&\s]+)"),
)
NOISY_LOGGERS = ("botocore", "aiobotocore", "s3fs", "boto3", "urllib3", "fsspec")
CHATTY_LOGGERS = ("distributed", "transformers", "huggingface_hub")


def redact_url(url: str) -> str:
    """Remove user info and query strings from a URL; local paths pass unchanged."""
    parts = urlsplit(url)
    if not parts.scheme or parts.scheme == "file" or len(parts.scheme) == 1:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def redact_text(text: str) -> str:
    """Mask credential-shaped substrings in free text (messages, log lines)."""
    text = _SECRET_PATTERNS[0].sub("AKIA****", text)
    text = _SECRET_PATTERNS[1].sub(lambda m: "****" if _looks_random(m.group(0)) else m.group(0), text)
    return _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}=****", text)


def _looks_random(word: str) -> bool:
    """A secret key mixes upper case, lower case and digits; paths and words rarely do."""
    return any(c.isupper() for c in word) and any(c.islower() for c in word) and any(c.isdigit() for c in word)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with :func:`redact_text`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage())
        record.args = ()
        return True


def configure_logging(level: int) -> None:
    """One stderr handler with redaction; AWS client libraries never below INFO."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("batchnlp").setLevel(level)
    for name in NOISY_LOGGERS:  # INFO at most: their DEBUG output carries request headers
        logging.getLogger(name).setLevel(logging.INFO if level <= logging.DEBUG else logging.WARNING)
    # Never DEBUG: distributed's debug lines dump pickled task payloads (with storage options).
    chatty = "info" if level <= logging.DEBUG else "warning"
    # dask configures the "distributed" logger when it is imported, in this process and in
    # worker processes: its config variable covers both, setLevel covers an earlier import.
    os.environ["DASK_LOGGING__DISTRIBUTED"] = chatty
    for name in CHATTY_LOGGERS:  # cluster start-up chatter only with --verbose
        logging.getLogger(name).setLevel(chatty.upper())
