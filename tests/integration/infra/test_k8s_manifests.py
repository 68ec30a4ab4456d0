"""infra/k8s/*.yaml: valid Kubernetes objects, pods locked down, a Dask cluster only its job reaches.

The objects are checked against the Kubernetes OpenAPI schemas that ``kubernetes-validate`` ships
(strict: an unknown or misspelt field fails), for the oldest Kubernetes the manifests say they
need and the newest the package knows. The DaskJob is a custom resource: its pod and service
specs are checked as the Pods and Service the operator makes of them. The worker command of the
DaskJob runs for real against a scheduler on loopback, with its redaction preload.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchnlp.util import redaction
from tests.support import REPO

INFRA = REPO / "infra"
MANIFESTS = sorted((INFRA / "k8s").glob("*.yaml"))
# backoffLimitPerIndex (sharded-job.yaml) is beta from 1.29; the newest schemas the package ships.
VERSIONS = ["1.29", "1.37"]
SCHEDULER_PORT, WORKER_PORTS = 8786, (8800, 8899)


def documents(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(path.read_text(encoding="utf-8")))


def as_pod(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": spec}


def pod_specs(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every pod spec a manifest's object makes, by where it sits."""
    spec = document["spec"]
    if document["kind"] == "CronJob":
        return {"jobTemplate": spec["jobTemplate"]["spec"]["template"]["spec"]}
    if document["kind"] == "Job":
        return {"template": spec["template"]["spec"]}
    if document["kind"] == "DaskJob":
        cluster = spec["cluster"]["spec"]
        return {
            "job": spec["job"]["spec"],
            "worker": cluster["worker"]["spec"],
            "scheduler": cluster["scheduler"]["spec"],
        }
    return {}


def objects_to_validate(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Built-in objects as they are; a DaskJob as the Pods and Service its operator creates."""
    if document["kind"] != "DaskJob":
        yield document
        return
    yield from (as_pod(spec) for spec in pod_specs(document).values())
    service = document["spec"]["cluster"]["spec"]["scheduler"]["service"]
    yield {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "check"}, "spec": service}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    import kubernetes_validate

    for document in documents(path):
        for item in objects_to_validate(document):
            kubernetes_validate.validate(item, version, strict=True)


def test_the_schema_check_catches_a_misspelt_security_field() -> None:
    import kubernetes_validate

    (job,) = [d for d in documents(INFRA / "k8s" / "sharded-job.yaml") if d["kind"] == "Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = container["securityContext"].pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)


def image_user() -> tuple[int, str]:
    """The Dockerfile's numeric USER and the home directory it creates for that user."""
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text(encoding="utf-8")
    (uid,) = re.findall(r"^USER (\d+):\d+$", dockerfile, re.MULTILINE)
    (name,) = re.findall(rf"useradd --create-home --uid {uid} .* (\w+)$", dockerfile, re.MULTILINE)
    return int(uid), f"/home/{name}"


ALL_PODS = [
    (path.name, where, pod) for path in MANIFESTS for d in documents(path) for where, pod in pod_specs(d).items()
]


@pytest.mark.parametrize(("manifest", "where", "pod"), ALL_PODS, ids=[f"{m}:{w}" for m, w, _ in ALL_PODS])
def test_every_pod_runs_unprivileged_on_a_read_only_root(manifest: str, where: str, pod: dict[str, Any]) -> None:
    uid, home = image_user()
    assert pod["automountServiceAccountToken"] is False  # no pod of batchnlp calls the Kubernetes API
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == uid > 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    scratch = {v["name"] for v in pod["volumes"] if v.get("emptyDir") == {}}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context.get("privileged") is not True
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        # What the job writes: Dask's and Python's temporary files, and the model caches in $HOME.
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/tmp"] in scratch and mounts[f"{home}/.cache"] in scratch, mounts


def test_the_model_cache_of_the_image_user_lies_in_the_writable_cache(monkeypatch) -> None:
    from batchnlp.inference.models.stage import default_cache_dir

    _, home = image_user()
    monkeypatch.setenv("HOME", home)
    monkeypatch.delenv("BATCHNLP_CACHE", raising=False)
    assert default_cache_dir().startswith(f"{home}/.cache/")


def daskjob() -> tuple[dict[str, Any], dict[str, Any]]:
    job, policy = documents(INFRA / "k8s" / "daskjob.yaml")
    assert (job["kind"], policy["kind"]) == ("DaskJob", "NetworkPolicy")
    return job, policy


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_only_the_jobs_own_pods_reach_its_scheduler_and_workers() -> None:
    job, policy = daskjob()
    name = job["metadata"]["name"]
    cluster = job["spec"]["cluster"]["spec"]
    own = {"matchLabels": {"dask.org/cluster-name": name}}  # the operator's label on all three kinds of pod
    assert cluster["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == name
    spec = policy["spec"]
    assert spec["podSelector"] == own and spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["from"] == [{"podSelector": own}]  # no namespaceSelector, no ipBlock: this job's pods only
    assert rule["ports"] == [
        {"protocol": "TCP", "port": SCHEDULER_PORT},
        {"protocol": "TCP", "port": WORKER_PORTS[0], "endPort": WORKER_PORTS[1]},
    ]
    (scheduler,) = cluster["scheduler"]["spec"]["containers"]
    assert SCHEDULER_PORT in [p["containerPort"] for p in scheduler["ports"]]
    (worker,) = cluster["worker"]["spec"]["containers"]
    for option in ("--worker-port", "--nanny-port"):  # fixed ranges inside the open one
        first, last = (int(port) for port in flag(worker["args"], option).split(":"))
        assert WORKER_PORTS[0] <= first <= last <= WORKER_PORTS[1], option
    assert "--no-dashboard" in worker["args"]


@pytest.mark.parametrize("manifest", ["cronjob.yaml", "sharded-job.yaml"])
def test_single_pod_jobs_accept_no_connection(manifest: str) -> None:
    workload, policy = documents(INFRA / "k8s" / manifest)
    (labels,) = [pod_labels for pod_labels in find_pod_labels(workload)]
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert "ingress" not in policy["spec"]  # isolated for ingress, nothing allowed


def find_pod_labels(workload: dict[str, Any]) -> Iterator[dict[str, str]]:
    template = workload["spec"].get("jobTemplate", {}).get("spec", workload["spec"])["template"]
    yield template["metadata"]["labels"]


def test_dask_processes_preload_the_log_redaction() -> None:
    job, _ = daskjob()
    cluster = job["spec"]["cluster"]["spec"]
    for role in ("worker", "scheduler"):
        (container,) = cluster[role]["spec"]["containers"]
        assert flag(container["args"], "--preload") == redaction.__name__, role
    assert callable(redaction.dask_setup)


@pytest.mark.cluster
def test_the_manifests_worker_command_joins_a_scheduler_and_redacts_its_logs(tmp_path: Path) -> None:
    """The DaskJob's worker command and arguments, run as the operator runs them (the scheduler's
    address in DASK_SCHEDULER_ADDRESS), against a scheduler on loopback: the worker listens in
    the open port range and a credential in its log lines comes out masked."""
    from distributed import Client

    job, _ = daskjob()
    (worker,) = job["spec"]["cluster"]["spec"]["worker"]["spec"]["containers"]
    # A pod's environment: none of the logging settings a CLI test earlier in the session may have
    # left in this process's (batchnlp.observe.logs sets DASK_LOGGING__DISTRIBUTED).
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DASK_LOGGING")}
    environment |= {"PYTHONPATH": str(INFRA.parent), "DASK_WORKER_NAME": "w-0"}
    bin_dir = Path(sys.executable).parent
    # The address comes from a scheduler file, not from parsing its log.
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen(
        [
            str(bin_dir / "dask"),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        env=environment,
    )
    processes = [scheduler]
    try:
        address = scheduler_address(scheduler_file, scheduler)
        assert address, "the scheduler did not start"
        args = [a.replace("$(DASK_WORKER_NAME)", "w-0") for a in worker["args"]]
        log = (tmp_path / "worker.log").open("w")
        processes.append(
            subprocess.Popen(
                [str(bin_dir / worker["command"][0]), *worker["command"][1:], *args],
                stderr=log,
                env={**environment, "DASK_SCHEDULER_ADDRESS": address},
            )
        )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            (listening,) = client.scheduler_info()["workers"]
            port = int(listening.rsplit(":", 1)[1])
            assert WORKER_PORTS[0] <= port <= WORKER_PORTS[1], listening
            secret = "AKIA" + "Q" * 16
            client.submit(log_a_secret, secret, pure=False).result()
        processes[-1].terminate()  # what the kubelet sends: the worker closes gracefully
        processes[-1].wait(timeout=60)
        text = (tmp_path / "worker.log").read_text()
        assert "logged key AKIA****" in text and secret not in text, text[-2000:]
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


def scheduler_address(scheduler_file: Path, scheduler: subprocess.Popen, seconds: float = 60) -> str:
    """The address a ``dask scheduler --scheduler-file`` wrote once it listens; "" if it never did."""
    deadline = time.monotonic() + seconds
    while scheduler.poll() is None and time.monotonic() < deadline:
        try:
            return json.loads(scheduler_file.read_text())["address"]
        except (FileNotFoundError, ValueError, KeyError):  # not there yet, or half-written
            time.sleep(0.1)
    return ""


def log_a_secret(secret: str) -> None:
    import logging

    logging.getLogger("distributed.worker").warning("logged key %s", secret)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare for a private mount namespace"
)
@pytest.mark.cluster
def test_a_run_needs_no_writable_path_but_the_manifests_volumes_and_output(tmp_path: Path, tiny_model: Path) -> None:
    """The pods' root filesystem is read-only: a real `batchnlp run` in a mount namespace whose root
    is read-only, with only the manifests' emptyDir mounts (temporary files, ~/.cache) and OUTPUT
    writable, commits its output."""
    (job,) = [d for d in documents(INFRA / "k8s" / "sharded-job.yaml") if d["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    _, home = image_user()
    writable = {"/tmp": tmp_path / "scratch", f"{home}/.cache": tmp_path / "home" / ".cache"}
    assert sorted(m["mountPath"] for m in container["volumeMounts"]) == sorted(writable)
    out = tmp_path / "out"
    for place in (*writable.values(), out):
        place.mkdir(parents=True)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"text": "a fine day {i}"}}\n' for i in range(30)))
    # Each writable place stays a mount of its own; then the root (and all else under it) goes read-only.
    binds = " && ".join(f"mount --bind {p} {p}" for p in (*writable.values(), out))
    script = (
        f"mount --make-rprivate / && {binds} && mount --bind / / && mount -o remount,bind,ro / && "
        f"if touch {tmp_path}/probe 2>/dev/null; then echo root-writable; exit 9; fi && "
        f'exec "$@"'
    )
    command = [sys.executable, "-m", "batchnlp", "run", str(source), str(out / "labels")]
    command += ["--model", f"sentiment={tiny_model}", "--workers", "1", "--quiet"]
    environment = {
        **os.environ,
        "PYTHONPATH": str(INFRA.parent),
        "TMPDIR": str(writable["/tmp"]),  # the pod's /tmp: where tempfile, Dask and multiprocessing write
        "HOME": str(tmp_path / "home"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    environment.pop("BATCHNLP_CACHE", None)
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *command],
        capture_output=True,
        text=True,
        env=environment,
        cwd="/",
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert (out / "labels" / "_SUCCESS").exists()
