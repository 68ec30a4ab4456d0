import os
import subprocess
import sys

import psutil
import pytest

from batchnlp.cluster.local import Layout, local_layout, start_local_cluster, visible_gpus

pytestmark = pytest.mark.cluster  # its tests start Dask clusters or run jobs themselves

GIB = 2**30


def test_cpu_layout_never_oversubscribes_cores_or_memory():
    assert local_layout(None, cores=8, memory=64 * GIB) == Layout(8, 1, 1)
    assert local_layout(None, cores=8, memory=4 * GIB) == Layout(2, 1, 4)
    assert local_layout(None, cores=2, memory=GIB // 2) == Layout(1, 1, 2)
    assert local_layout(3, cores=8, memory=64 * GIB) == Layout(3, 1, 2)


def test_gpu_layout_pins_workers_round_robin_to_gpus():
    assert local_layout(None, "cuda", cores=12, gpus=("0", "1")) == Layout(6, 2, 2, ("0", "1") * 3)
    assert local_layout(None, "auto", cores=16, gpus=("3",)) == Layout(3, 2, 5, ("3",) * 3)
    assert local_layout(1, "auto", cores=16, gpus=("0", "1")).gpus == ("0",), "--workers caps the processes"
    assert local_layout(3, "auto", cores=16, gpus=("0",)).gpus == ("0", "0", "0")
    assert local_layout(None, "cpu", cores=2, memory=64 * GIB, gpus=("0",)) == Layout(2, 1, 1), "--device cpu"
    assert local_layout(None, "auto", cores=2, memory=64 * GIB, gpus=()) == Layout(2, 1, 1), "no GPU: CPU layout"


def test_visible_gpus_reads_cuda_visible_devices_then_device_files(tmp_path):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,0"}) == ("2", "0")
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8f3a,GPU-77c1"}) == ("GPU-8f3a", "GPU-77c1")
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == ()
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ("1",), "CUDA stops at the first invalid entry"
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert visible_gpus({}, dev=tmp_path) == ("0", "1")
    assert visible_gpus({}, dev=tmp_path / "missing") == ()
    container = tmp_path / "container"  # given the host's GPUs 2 and 5: CUDA calls them 0 and 1
    container.mkdir()
    for name in ("nvidia2", "nvidia5", "nvidiactl"):
        (container / name).touch()
    assert visible_gpus({}, dev=container) == ("0", "1")


def test_each_gpu_worker_process_sees_only_its_own_gpu():
    """Pinning is by environment, so it is checked on real worker processes without a GPU."""
    from distributed import Client

    cluster = start_local_cluster(Layout(2, 2, 1, ("1", "0")))
    try:
        with Client(cluster) as client:
            client.wait_for_workers(2)
            seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
            threads = client.nthreads()
    finally:
        cluster.close()
    assert sorted(seen.values()) == ["0", "1"]
    assert set(threads.values()) == {2}


def imported_model_code() -> bool:
    import sys

    return "batchnlp.inference.distilbert" in sys.modules and "torch" in sys.modules


def test_cpu_workers_are_forked_with_their_libraries_imported_and_the_drivers_environment(monkeypatch):
    """Forked from the fork server, a CPU worker starts with torch and the model code imported (a
    spawned one imports them itself, seconds later), and with the driver's environment
    as it is when the cluster starts, not as it was when the fork server did."""
    from distributed import Client

    from batchnlp.cluster.local import start_worker_imports

    start_worker_imports()
    monkeypatch.setenv("BATCHNLP_TEST_SET_LATE", "seen")
    cluster = start_local_cluster(Layout(2, 1, 1))
    try:
        with Client(cluster) as client:
            client.wait_for_workers(2)
            imported = client.run(imported_model_code)
            seen = client.run(lambda: os.environ.get("BATCHNLP_TEST_SET_LATE"))
            parents = client.run(os.getppid)
    finally:
        cluster.close()
    assert set(imported.values()) == {True}
    assert set(seen.values()) == {"seen"}
    assert os.getpid() not in parents.values(), "forked by the fork server, not by the driver"


def test_gpu_workers_are_spawned_importing_nothing_before_they_are_pinned():
    from distributed import Client

    cluster = start_local_cluster(Layout(1, 1, 1, ("0",)))
    try:
        with Client(cluster) as client:
            client.wait_for_workers(1)
            imported = client.run(imported_model_code)
    finally:
        cluster.close()
    assert set(imported.values()) == {False}


def test_a_command_that_exits_before_its_cluster_starts_stops_the_fork_server_with_it():
    """A refused or finished run exits within a second or two; its fork server, still importing torch,
    would outlive it by seconds holding its stdout and stderr, and a caller reading them waits."""
    script = (
        "from multiprocessing import forkserver\n"
        "from batchnlp.cluster.local import start_worker_imports\n"
        "start_worker_imports()\n"
        "print(forkserver._forkserver._forkserver_pid, flush=True)\n"
    )
    command = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    server = int(command.stdout.readline())
    assert command.wait(timeout=120) == 0
    assert not psutil.pid_exists(server), "the fork server outlived the command"
    assert command.stdout.read() == "", "and the command's output closed with it"


def forked_view(name: str) -> tuple[int, bool, str | None]:
    return os.getpid(), "torch" in sys.modules, os.environ.get(name)


def refuse(message: str) -> None:
    from batchnlp.errors import ModelError

    raise ModelError(message)


def test_run_forked_calls_in_a_child_with_the_worker_imports_and_the_callers_environment(monkeypatch):
    """What the driver's estimate runs on: forked, it does not import torch and transformers again."""
    import pytest

    from batchnlp.cluster.local import run_forked, start_worker_imports, worker_imports_started
    from batchnlp.errors import ModelError

    start_worker_imports()
    assert worker_imports_started()
    monkeypatch.setenv("BATCHNLP_TEST_SET_LATE", "seen")
    pid, imported, seen = run_forked(forked_view, "BATCHNLP_TEST_SET_LATE")
    assert pid != os.getpid() and imported and seen == "seen"
    with pytest.raises(ModelError, match="no such model"):
        run_forked(refuse, "no such model")
