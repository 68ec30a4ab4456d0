"""Shared fixtures: random DistilBERT checkpoints, a moto S3 server behind a recording proxy,
and helpers to write inputs. Everything runs on 127.0.0.1 with no network and no GPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchnlp.testing import (
    build_classifier,
    build_encoder,
    build_nli_classifier,
    build_question_answerer,
    build_token_classifier,
)
from tests.support.helpers import cli_job, one_worker_cluster
from tests.support.s3proxy import S3Proxy

# Marks each test cluster/s3 by the fixtures it uses, and fails one that starts either unmarked.
pytest_plugins = ["tests.support.markers"]

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No Hub calls that could hang, and a model cache private to the test session."""
    saved = dict(os.environ)
    os.environ["BATCHNLP_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"  # deterministic: the Hub is never asked, network or not
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_classifier(tmp_path_factory.mktemp("models") / "sentiment")


@pytest.fixture(scope="session")
def topics_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    labels = ["world", "sports", "business", "science", "arts"]
    return build_classifier(tmp_path_factory.mktemp("models") / "topics", labels, seed=1)


@pytest.fixture(scope="session")
def multilabel_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    labels = ["price", "quality", "service", "delivery"]
    return build_classifier(tmp_path_factory.mktemp("models") / "aspects", labels, multi_label=True, seed=2)


@pytest.fixture(scope="session")
def qa_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_question_answerer(tmp_path_factory.mktemp("models") / "qa")


@pytest.fixture(scope="session")
def embed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_encoder(tmp_path_factory.mktemp("models") / "encoder")


@pytest.fixture(scope="session")
def ner_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_token_classifier(tmp_path_factory.mktemp("models") / "ner")


@pytest.fixture(scope="session")
def zero_shot_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An NLI-shaped classifier (contradiction, neutral, entailment) for --task zero-shot."""
    return build_nli_classifier(tmp_path_factory.mktemp("models") / "nli")


@pytest.fixture(scope="session")
def s3_proxy() -> Iterator[S3Proxy]:
    """moto's real server on a free loopback port, reached through a recording proxy.

    The AWS variables are set for the whole session, so Dask worker processes started by
    the tests inherit them and talk to the same server.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    proxy = S3Proxy(server.get_host_and_port()[1]).start()
    os.environ.update(S3_ENV)
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy.port}"
    yield proxy
    proxy.stop()
    server.stop()


@pytest.fixture
def s3(s3_proxy: S3Proxy):
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


@pytest.fixture
def bucket(s3, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test, named after the test."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def scheduler(s3_proxy: S3Proxy) -> Iterator[str]:
    """One real LocalCluster (worker processes) for a module's jobs, so models load once per module.

    Started after the S3 fixtures set the AWS variables, so its workers reach moto too.
    """
    with one_worker_cluster() as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def job(tiny_model: Path, scheduler: str):
    """``job(source, out, *flags)``: `batchnlp run` with the tiny model on the module's cluster."""
    return cli_job(tiny_model, scheduler)
