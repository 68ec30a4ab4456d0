"""Storage credentials reach a job's workers through their environment, never through Dask.

Dask pickles every task's arguments and every worker plugin and sends them to the scheduler,
which holds them while the job runs (a plugin, until it is unregistered) and hands them to any
client that asks. Storage options that are credentials (``key``, ``secret``, ``token``,
``password``...: the names :func:`batchnlp.util.redaction.is_secret_name` masks in logs, at any depth
of an option's value) must not travel that way:

- a :class:`~batchnlp.io.storage.Location` or a :class:`~batchnlp.spec.JobSpec` pickles without
  them (:func:`public_options`), and so does the models' worker plugin;
- a run on the embedded cluster puts them in the driver's environment (:data:`SECRETS_VARIABLE`,
  JSON) before its workers start (:func:`handed_to_local_workers`); its worker processes,
  forked or spawned, inherit it, and ``Location.split`` adds them back
  (:func:`with_local_secrets`);
- a cluster on other machines (``--scheduler``, a multi-node AWS Batch job) cannot inherit the
  driver's environment: such a run is refused (:func:`refuse_remote`); its workers use their
  own credential chain.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from batchnlp.errors import SpecError
from batchnlp.util.redaction import is_secret_name

if TYPE_CHECKING:
    from batchnlp.spec import JobSpec

T = TypeVar("T")
SECRETS_VARIABLE = "BATCHNLP_STORAGE_SECRETS"
CREDENTIAL_CHAIN = (
    "environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or AWS_PROFILE), "
    "the shared credentials file (~/.aws/credentials), or the instance or task role"
)


def is_secret_option(name: Any, value: Any) -> bool:
    """Whether storage option ``name`` is a credential, or a mapping holding one (``client_kwargs``)."""
    if is_secret_name(str(name)):
        return True
    return isinstance(value, Mapping) and any(is_secret_option(k, v) for k, v in value.items())


def secret_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``options`` that are credentials."""
    return {name: value for name, value in options.items() if is_secret_option(name, value)}


def public_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` less its credentials: what may be pickled for Dask."""
    return {name: value for name, value in options.items() if not is_secret_option(name, value)}


def with_local_secrets(options: Mapping[str, Any]) -> Mapping[str, Any]:
    """``options`` with the credentials this process was handed through its environment (its own win)."""
    handed = os.environ.get(SECRETS_VARIABLE)
    return {**json.loads(handed), **options} if handed else options


def refuse_remote(options: Mapping[str, Any], cluster: str) -> None:
    """A :class:`SpecError` (exit 2) when ``options`` hold a credential and the job's workers run on ``cluster``."""
    names = sorted(secret_options(options))
    if names:
        raise SpecError(
            f"storage option{'s' if len(names) > 1 else ''} {', '.join(names)} {'are' if len(names) > 1 else 'is a'} "
            f"credential{'s' if len(names) > 1 else ''}, and the job's workers run on {cluster}: Dask would carry "
            "it to them inside every task. Drop it and give the workers credentials of their own through the "
            f"standard chain: {CREDENTIAL_CHAIN}"
        )


@contextmanager
def handed_to_local_workers(spec: JobSpec) -> Iterator[None]:
    """While a run lasts, its credential storage options are in this process's environment, for the
    embedded cluster's workers to inherit; refused (:func:`refuse_remote`) with ``--scheduler``."""
    secrets = secret_options(spec.storage_options)
    if not secrets:
        yield
        return
    if spec.scheduler:
        refuse_remote(spec.storage_options, f"the Dask cluster at {spec.scheduler}")
    before = os.environ.get(SECRETS_VARIABLE)
    os.environ[SECRETS_VARIABLE] = json.dumps(secrets)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SECRETS_VARIABLE, None)
        else:
            os.environ[SECRETS_VARIABLE] = before


def hands_credentials_to_local_workers(run: Callable[..., T]) -> Callable[..., T]:
    """Decorates a function ``run(spec, ...)`` that runs a job: it runs in :func:`handed_to_local_workers`."""

    @functools.wraps(run)
    def wrapped(spec: JobSpec, *args: Any, **kwargs: Any) -> T:
        with handed_to_local_workers(spec):
            return run(spec, *args, **kwargs)

    return wrapped
