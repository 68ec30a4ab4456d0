"""Helpers with no knowledge of jobs: secret redaction, retries with backoff, ``${VAR}``
templating, and every private internal of a dependency batchnlp relies on (:mod:`.compat`, the
one place an upgrade can break them).

May import: the standard library and third-party packages only (and :mod:`batchnlp.errors`).
"""
