"""A model worker keeps its freed tensor memory (batchnlp.inference.allocator): under Dask's nanny setting
(``MALLOC_TRIM_THRESHOLD_=65536``) every activation was a fresh mmap the kernel had to fault in,
which halved int8's speed. Page faults are counted, not seconds: a count does not depend on how
busy the machine is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")

# Minor page faults taken by allocating and freeing a 16 MiB block (a batch's activations, larger
# than any hole a model load leaves in the heap) 50 times.
FAULTS = """
import resource
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        block = bytearray(2**24)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""


def run(script: str) -> list[int]:
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}  # what Dask's nanny gives every worker
    done = subprocess.run([sys.executable, "-c", FAULTS + script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [int(n) for n in done.stdout.split()]


def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    script = (
        "from batchnlp.inference.allocator import keep_freed_memory\n"
        "print(faults()); keep_freed_memory(); print(faults())"
    )
    trimmed, kept = run(script)
    assert trimmed > 50 * 4000, trimmed  # each block's 4,096 pages faulted in anew
    assert kept < trimmed / 20, (trimmed, kept)


@pytest.mark.slow
def test_a_worker_keeps_freed_memory_once_its_models_are_loaded(tiny_model: Path) -> None:
    script = (
        "from batchnlp.spec import TaskSpec\nfrom batchnlp.execution.worker import ModelPlugin, ModelSettings\n"
        f"spec = TaskSpec(name='sentiment', kind='sentiment', model={str(tiny_model)!r})\n"
        "plugin = ModelPlugin(ModelSettings((spec,), 'cpu', 'fp32', 4096, None, None, {}))\n"
        "print(faults()); plugin.load(); print(faults())"
    )
    trimmed, kept = run(script)
    assert kept < trimmed / 20, (trimmed, kept)
