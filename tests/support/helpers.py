"""What many tests share that is not a fixture: input writers, the CLI runner, a one-worker
cluster, and a :class:`PartResult` factory. Fixtures live in ``conftest.py`` and use these."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from batchnlp.io.formats import WorkUnit
from batchnlp.ledger.record import JobRecord, Manifest, PartResult, Totals


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def cpu_job(source: Path | str, out: Path | str, model: Path | str, **settings: Any) -> dict[str, Any]:
    """Job spec settings of a small sentiment job on CPU workers; ``settings`` add to them or replace them."""
    job = {"input": str(source), "output": str(out), "models": {"sentiment": str(model)}, "device": "cpu"}
    return {**job, "workers": 1, "rows_per_partition": 10, **settings}


def upload_dir(s3: Any, local: Path, bucket: str, prefix: str) -> str:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{bucket}/{prefix}/"


def invoke(*args: Any) -> Any:
    """``batchnlp run ARGS`` in this process (click's runner); a traceback in its output fails the test."""
    from click.testing import CliRunner

    from batchnlp.cli import main

    result = CliRunner().invoke(main, ["run", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def cli_job(model: Path | str, scheduler: str) -> Any:
    """``run(source, out, *flags)``: `batchnlp run` in this process with ``model`` on ``scheduler``."""

    def run(source: Path | str, out: Path | str, *flags: Any) -> Any:
        args = [source, out, "--model", f"sentiment={model}", "--scheduler", scheduler]
        return invoke(*args, "--workers", "1", *flags)

    return run


@contextmanager
def one_worker_cluster() -> Iterator[Any]:
    """A real LocalCluster with one single-threaded worker process, as a shared test cluster."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster:
        yield cluster


def worker_processes(driver: Any) -> list[Any]:
    """The Dask worker processes of a ``batchnlp run`` (a ``psutil.Process``): spawned by the driver,
    or, on CPU, forked by its multiprocessing fork server."""
    workers = []
    for child in driver.children():
        if "spawn_main" in " ".join(child.cmdline()):
            workers.append(child)
        elif "forkserver" in " ".join(child.cmdline()):
            workers.extend(child.children())
    return workers


def unit(index: int, rows: int | None = 100) -> WorkUnit:
    """Unit ``index`` of a JSONL file, 1000 bytes each."""
    return WorkUnit(
        index=index,
        path="file:///data/in.jsonl",
        format="jsonl",
        start=index * 1000,
        stop=(index + 1) * 1000,
        rows=rows,
    )


def job_record(run_id: str = "r1", **fields: Any) -> JobRecord:
    """A job record with nothing of note in it but ``run_id`` and ``fields``."""
    values: dict[str, Any] = {
        "spec_fingerprint": "s1",
        "input_fingerprint": "i1",
        "model_versions": {},
        "rows_per_unit": 100,
        "units": 1,
        "batchnlp_version": "0.test",
        "spec": {},
    }
    return JobRecord(run_id=run_id, **{**values, **fields})


def part_result(index: int, rows: int = 100, rejected: int = 1, **fields: Any) -> PartResult:
    """A plausible result of unit ``index``: ``rows`` in and out, ``rejected`` of them null texts."""
    values: dict[str, Any] = {
        "unit": unit(index),
        "part": f"file:///out/part-{index:05d}.parquet",
        "rows_in": rows,
        "rows_out": rows,
        "rejected": rejected,
        "reasons": {"text is null": rejected},
        "rejected_examples": [],
        "tokens": rows * 20,
        "padded_tokens": rows * 25,
        "bytes": 1000,
        "sha256": "0" * 64,
        "seconds": {"read": 0.5, "model:sentiment": 1.5},
        "device": "cpu",
        "precision": "fp32",
        "worker": "host:1",
        "models_loaded_at": 0.0,
    }
    return PartResult(**{**values, **fields})


def manifest(run_id: str, results: list[PartResult] = ()) -> Manifest:
    """A commit record naming ``results``' parts, with nothing else of note in it."""
    totals = sum(results, Totals())
    return Manifest(
        batchnlp_version="0.test", run_id=run_id, committed_at="2026-12-02T00:00:00+00:00", spec={},
        input={"format": "jsonl", "files": []}, output={"format": "parquet"}, schema=None, models={},
        device=["cpu"], precision=["fp32"], parts=[r.manifest_entry() for r in results], totals=totals,
        wall_seconds=1.0, rows_per_second=float(totals.rows_out),
    )  # fmt: skip
