"""Who can reach a job's cluster, and what it holds: the embedded cluster listens on loopback only,
credentials never travel in Dask's pickles or stay behind in a plugin, and ``--scheduler`` speaks
TLS with the user's certificates. Real clusters, real jobs, moto's S3 over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from batchnlp.cluster.local import Layout, start_local_cluster
from batchnlp.execution.runner import run
from batchnlp.spec import JobSpec
from tests.support.helpers import cpu_job, invoke, one_worker_cluster, write_jsonl

pytestmark = pytest.mark.cluster  # its tests start Dask clusters or run jobs themselves

# Recognisable credentials: moto takes any; none may reach the scheduler.
SECRETS = {
    "key": "AKIAEMBEDDEDCLUSTER01",
    "secret": "sEcReT/embedded+cluster/never-in-a-pickle01",
    "token": "tOkEn-embedded-cluster-never-in-a-plugin",
}


def listening(processes: list[psutil.Process]) -> set[tuple[str, int]]:
    """The (address, port) of every TCP socket these processes listen on."""
    found = set()
    for process in processes:
        try:
            connections = process.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return found


def process_tree() -> list[psutil.Process]:
    """This process and all it started: the embedded cluster's nannies, fork server and workers."""
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def assert_loopback_only(sockets: set[tuple[str, int]]) -> None:
    assert sockets, "the cluster listens somewhere"
    assert {address for address, _ in sockets} == {"127.0.0.1"}, sorted(sockets)


def job_settings(tmp_path: Path, model: Path, rows: int = 40) -> dict:
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": f"review {i} was fine"} for i in range(rows)])
    return cpu_job(source, tmp_path / "out", model, workers=2)


# A second process on the same machine tries the scheduler: plain, then with a certificate of its own.
STRANGER = """
import sys
from distributed import Client, Security
for security in (None, Security.temporary()):
    try:
        Client(sys.argv[1].replace("tls://", "tcp://") if security is None else sys.argv[1], security=security,
               timeout=5).close()
        print("connected")
    except OSError:  # distributed's CommClosedError: the TLS handshake failed
        print("refused")
"""


def test_a_run_on_the_embedded_cluster_listens_on_loopback_only_and_speaks_tls(tmp_path, tiny_model):
    """Scheduler, nannies, forked workers and the HTTP server (health, metrics) of a real run: none on
    0.0.0.0 or ::, where anyone on the network could send the scheduler a function to run; and on
    loopback, another process of this machine (another user's) is refused: the cluster's
    certificates are the run's own."""
    before = listening(process_tree())
    during: set[tuple[str, int]] = set()
    seen: dict = {}

    def on_start(run_id, units, kept, client=None, rows_per_unit=None) -> None:
        seen["address"] = client.scheduler.address

    def on_part(result) -> None:
        if not during:
            during.update(listening(process_tree()) - before)
            command = [sys.executable, "-c", STRANGER, seen["address"]]
            seen["stranger"] = subprocess.run(command, capture_output=True, text=True, timeout=120)

    summary = run(JobSpec.from_settings(job_settings(tmp_path, tiny_model)), on_part=on_part, on_start=on_start)
    assert summary.totals.rows_out == 40
    assert_loopback_only(during)
    assert len(during) >= 6, f"scheduler, HTTP server, two nannies, two workers: {sorted(during)}"
    assert seen["address"].startswith("tls://127.0.0.1:")
    assert seen["stranger"].stdout.split() == ["refused", "refused"], seen["stranger"]


def test_gpu_layout_workers_listen_on_loopback_only():
    """GPU workers are spawned, not forked; they and their nannies bind where the CPU ones do."""
    from distributed import Client

    before = listening(process_tree())
    cluster = start_local_cluster(Layout(2, 2, 1, ("0", "1")))
    try:
        with Client(cluster) as client:
            client.wait_for_workers(2)
            during = listening(process_tree()) - before
    finally:
        cluster.close()
    assert_loopback_only(during)
    assert len(during) >= 6, sorted(during)


def scheduler_holdings(dask_scheduler) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """What the scheduler holds for the job, pickled: every task's spec, every worker plugin."""
    from distributed.protocol.pickle import dumps

    tasks = {str(key): dumps(task.run_spec) for key, task in dask_scheduler.tasks.items()}
    plugins = {name: dumps(plugin) for name, plugin in dask_scheduler.worker_plugins.items()}
    return tasks, plugins


def test_credential_storage_options_never_reach_the_scheduler(s3, bucket, tiny_model, monkeypatch):
    """A run on moto's S3 with key, secret and token as storage options: the tasks and the models'
    plugin the scheduler holds mid-run carry none of them; the workers got them from their
    environment (the run reads and writes S3 with them)."""
    lines = "".join(json.dumps({"id": i, "text": f"review {i} was fine"}) + "\n" for i in range(40))
    s3.put_object(Bucket=bucket, Key="in/data.jsonl", Body=lines.encode())
    options = {**SECRETS, "config_kwargs": {"connect_timeout": 20}}
    settings = cpu_job(f"s3://{bucket}/in/", f"s3://{bucket}/out/", tiny_model, storage_options=options)
    seen: dict = {}

    def on_start(run_id, units, kept, client=None, rows_per_unit=None) -> None:
        seen["client"] = client

    def on_part(result) -> None:
        if "held" not in seen:
            seen["held"] = seen["client"].run_on_scheduler(scheduler_holdings)

    summary = run(JobSpec.from_settings(settings), on_part=on_part, on_start=on_start)
    assert summary.totals.rows_out == 40
    tasks, plugins = seen["held"]
    assert any(key.startswith("batchnlp-") for key in tasks), "the units' tasks were there"
    assert any(name.startswith("batchnlp-models-") for name in plugins), "and the models' plugin"
    for name, held in [*tasks.items(), *plugins.items()]:
        for secret in SECRETS.values():
            assert secret.encode() not in held, f"{secret!r} travels in {name}"
    assert b"connect_timeout" in b"".join(tasks.values()), "options that are no credential still travel"
    assert "BATCHNLP_STORAGE_SECRETS" not in os.environ, "handed to the workers for the run only"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="out/_manifest.json")["Body"].read())
    assert manifest["spec"]["storage_options"] == {
        "key": "***",
        "secret": "***",
        "token": "***",
        "config_kwargs": "***",
    }


def test_credentials_are_told_apart_by_name_at_any_depth(monkeypatch):
    from batchnlp.io.worker_credentials import SECRETS_VARIABLE, public_options, secret_options, with_local_secrets

    options = {"key": "k", "anon": False, "client_kwargs": {"aws_secret_access_key": "s"}, "profile": "etl"}
    assert secret_options(options) == {"key": "k", "client_kwargs": {"aws_secret_access_key": "s"}}
    assert public_options(options) == {"anon": False, "profile": "etl"}
    assert with_local_secrets({"anon": False}) == {"anon": False}
    monkeypatch.setenv(SECRETS_VARIABLE, json.dumps({"key": "k", "anon": True}))
    assert with_local_secrets({"anon": False}) == {"key": "k", "anon": False}, "the location's own options win"


def test_the_models_plugin_is_unregistered_when_the_job_ends(tmp_path, tiny_model):
    """On a shared cluster (--scheduler), nothing of the job stays registered after it."""
    from distributed import Client

    with one_worker_cluster() as cluster, Client(cluster) as client:
        settings = {**job_settings(tmp_path, tiny_model), "scheduler": cluster.scheduler_address, "workers": 1}
        assert run(JobSpec.from_settings(settings)).totals.rows_out == 40
        on_scheduler = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.worker_plugins))
        on_workers = client.run(lambda dask_worker: sorted(dask_worker.plugins))
    assert not [name for name in on_scheduler if name.startswith("batchnlp")], on_scheduler
    for names in on_workers.values():
        assert not [name for name in names if name.startswith("batchnlp-models")], names


def test_a_credential_storage_option_with_a_remote_scheduler_is_refused(tmp_path, tiny_model):
    """Its workers would get it inside every task: refused before anything is read or written."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "fine"}])
    out = tmp_path / "out"
    flags = ["--model", f"sentiment={tiny_model}", "--scheduler", "tcp://127.0.0.1:9"]
    result = invoke(
        source, out, *flags, "--storage-option", f"secret={SECRETS['secret']}", "--storage-option", "anon=0"
    )
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "storage option secret is a credential" in message
    assert "environment variables" in message and "shared credentials file" in message and "role" in message
    assert SECRETS["secret"] not in result.output
    assert not out.exists()


# --- --scheduler tls://... -------------------------------------------------------------------


@pytest.fixture
def tls_cluster(tmp_path):
    """A user's TLS cluster on loopback (Dask's own temporary certificates), and its CA, client
    certificate and key as the PEM files a user would hold."""
    from distributed import LocalCluster, Security

    security = Security.temporary()
    files = {}
    for name in ("ca_file", "client_cert", "client_key"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(getattr(security, f"tls_{name}"))
        files[name].chmod(0o600)
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0", security=security
    )
    try:
        yield cluster.scheduler_address, files
    finally:
        cluster.close()


def test_scheduler_over_tls_with_certificate_flags_or_dasks_own_config(tmp_path, tiny_model, tls_cluster):
    """Flags (or spec keys) name the files; users of a secured cluster who keep them in Dask's config
    already need only the tls:// address; with neither, the error says both ways."""
    import dask

    address, files = tls_cluster
    assert address.startswith("tls://127.0.0.1:")
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": f"row {i}"} for i in range(20)])
    tls = ["--tls-ca-file", files["ca_file"], "--tls-cert", files["client_cert"], "--tls-key", files["client_key"]]
    result = invoke(source, tmp_path / "out", "--model", f"sentiment={tiny_model}", "--scheduler", address, *tls)
    assert result.exit_code == 0, result.output
    assert "wrote 20 rows" in result.output
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["spec"]["tls_key"] == str(files["client_key"]), "the file's name, never its contents"

    bare = invoke(source, tmp_path / "out2", "--model", f"sentiment={tiny_model}", "--scheduler", address)
    assert bare.exit_code == 2, bare.output
    assert "--tls-ca-file" in bare.output and "distributed.comm.tls" in bare.output
    missing = [*tls[:-1], str(tmp_path / "no-such.key")]
    absent = invoke(source, tmp_path / "out5", "--model", f"sentiment={tiny_model}", "--scheduler", address, *missing)
    assert absent.exit_code == 2 and "--tls-key" in absent.output and "no such file" in absent.output, absent.output
    plain = invoke(source, tmp_path / "out3", "--model", f"sentiment={tiny_model}", "--scheduler", "tcp://h:1", *tls)
    assert plain.exit_code == 2 and "tls:// address" in plain.output, plain.output
    tls = "distributed.comm.tls"
    config = {f"{tls}.ca-file": str(files["ca_file"]), f"{tls}.client.cert": str(files["client_cert"])}
    with dask.config.set({**config, f"{tls}.client.key": str(files["client_key"])}):
        result = invoke(source, tmp_path / "out4", "--model", f"sentiment={tiny_model}", "--scheduler", address)
    assert result.exit_code == 0, result.output
    assert "wrote 20 rows" in result.output
