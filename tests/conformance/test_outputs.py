"""Every output the spec accepts, held to the same contract through :class:`batchnlp.ledger.output.Output`
(as fsspec's conformance suites hold its backends): bound on the driver, pickled to a worker,
units written (an empty one among them) and rewritten byte for byte, one commit, a rerun that
finds the run committed and changes nothing, and a resume that keeps the intact parts.

The suite is parametrised from the spec's own list of output formats and each format's
compressions, so a new output inherits it by being registered. No cluster: the worker's side is
:meth:`Output.write` called on an unpickled copy, as a Dask worker calls it.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from batchnlp.io.formats import COMPRESSIONS, WorkUnit
from batchnlp.ledger.commit import Committer
from batchnlp.ledger.output import Output, open_output
from batchnlp.ledger.record import PartResult, encode_schema
from batchnlp.spec import OUTPUT_FORMATS, TABLE_FORMATS, JobSpec
from tests.support.helpers import job_record, manifest, part_result

CASES = [
    pytest.param(
        fmt, compression, partition_by, id=f"{fmt}-{compression or 'default'}{'-hive' if partition_by else ''}"
    )
    for fmt in OUTPUT_FORMATS
    for compression in (COMPRESSIONS.get(fmt, (None,)))
    for partition_by in ((), ("lang",))
    if not (fmt == "iceberg" and partition_by)  # Iceberg partitioning is the table's own
]
ROWS = 7


def unit_table(index: int, rows: int) -> pa.Table:
    ids = range(index * 100, index * 100 + rows)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "text": [f"row {i}, ünïcode" for i in ids],
            "lang": ["en" if i % 3 else "de" for i in ids],
            "_error": pa.array([None] * rows, pa.string()),
        }
    )


def spec_for(tmp_path: Path, fmt: str, compression: str | None, partition_by: tuple[str, ...]) -> JobSpec:
    settings = {"input": str(tmp_path / "in.jsonl"), "output": str(tmp_path / "out"), "output_format": fmt}
    if fmt == "iceberg":
        warehouse = (tmp_path / "warehouse").as_uri()
        settings["output"] = "lake.labels"
        settings["catalog"] = "lake"
        settings["catalog_options"] = {
            "type": "sql",
            "uri": f"sqlite:///{tmp_path / 'catalog.db'}",
            "warehouse": warehouse,
        }
    if compression and fmt not in TABLE_FORMATS:
        settings["compression"] = compression
    if partition_by:
        settings["partition_by"] = list(partition_by)
    return JobSpec.from_settings({**settings, "run_id": "night-1"})


def write_units(output: Output, sizes: list[int]) -> list[PartResult]:
    """What the workers do: each unit's rows written through a pickled copy of the bound output."""
    worker_copy = pickle.loads(pickle.dumps(output))
    results = []
    for index, rows in enumerate(sizes):
        unit = WorkUnit(
            index=index,
            path="file:///in.jsonl",
            format="jsonl",
            start=index * 1000,
            stop=index * 1000 + 1000,
            rows=rows,
        )
        table = unit_table(index, rows)
        written = worker_copy.write(unit, table, {"version": "test"}, [])
        again = worker_copy.write(unit, table, {"version": "test"}, [])  # a retried unit
        assert again == written, "a rewritten unit must produce the same files and bytes"
        results.append(
            part_result(
                index, rows, 0, unit=unit, part=written.part, bytes=written.bytes, sha256=written.sha256,
                files=written.files, schema=encode_schema(table.schema),
            )
        )  # fmt: skip
    return results


def committed_rows(output: Output, tmp_path: Path) -> list[int]:
    """The ids a reader of the committed output sees."""
    fmt = output.spec.output_format
    if fmt == "delta":
        from deltalake import DeltaTable, QueryBuilder

        table = QueryBuilder().register("t", DeltaTable(output.spec.output)).execute("SELECT id FROM t").read_all()
        return sorted(pa.table(table).column("id").to_pylist())
    if fmt == "iceberg":
        from batchnlp.io.tables.iceberg import load

        catalog = load("lake", dict(output.spec.catalog_options))
        return sorted(catalog.load_table("lake.labels").scan().to_arrow().column("id").to_pylist())
    manifest = Committer(output.location).read_manifest()
    paths = [str(tmp_path / "out" / path) for part in manifest.parts for path in part.paths]
    dataset_format = {"parquet": "parquet", "arrow": "ipc", "jsonl": "json"}[fmt]
    if not paths:
        return []
    if fmt == "jsonl" and paths[0].endswith(".gz"):
        import gzip
        import json

        return sorted(json.loads(line)["id"] for path in paths for line in gzip.open(path, "rt"))
    return sorted(ds.dataset(paths, format=dataset_format).to_table().column("id").to_pylist())


def commit_run(output: Output, sizes: list[int]) -> list[PartResult]:
    committer = Committer(output.location, restart=output.restart)
    job = job_record(output.run_id, spec_fingerprint=output.spec.fingerprint())
    committer.prepare(output.mode(committer), job)
    results = write_units(output, sizes)
    for result in results:
        committer.record(result)
    record = manifest(output.run_id, results)
    record.schema = {"columns": {}, "arrow": results[0].schema}
    output.commit(committer, record)
    return results


@pytest.mark.parametrize("fmt, compression, partition_by", CASES)
def test_an_output_commits_once_and_a_rerun_changes_nothing(tmp_path, fmt, compression, partition_by):
    spec = spec_for(tmp_path, fmt, compression, partition_by)
    output = open_output(spec).prepare()
    assert output.run_id == "night-1" and output.location is not None
    assert output.committed() is None and output.sealed(Committer(output.location)) is None
    sizes = [ROWS, 0, 1]  # an empty unit writes nothing and must not break the commit
    results = commit_run(output, sizes)
    expected = sorted(i for index, rows in enumerate(sizes) for i in range(index * 100, index * 100 + rows))
    assert committed_rows(output, tmp_path) == expected
    assert not results[1].part and not results[1].files, "an empty unit names no file"

    rerun = open_output(spec).prepare()
    job = job_record("night-1", spec_fingerprint=spec.fingerprint())
    done = rerun.committed() or rerun.completed(Committer(rerun.location), job, [])
    assert done is not None, "a rerun of the committed run id must find it done"
    assert committed_rows(output, tmp_path) == expected


@pytest.mark.parametrize("fmt, compression, partition_by", CASES)
def test_a_resumed_run_keeps_the_intact_parts_of_an_interrupted_one(tmp_path, fmt, compression, partition_by):
    spec = spec_for(tmp_path, fmt, compression, partition_by)
    output = open_output(spec).prepare()
    committer = Committer(output.location, restart=output.restart)
    job = job_record("night-1", spec_fingerprint=spec.fingerprint())
    committer.prepare("new", job)
    for result in write_units(output, [ROWS, 3]):  # the driver dies before the commit
        committer.record(result)

    resumed = open_output(dataclasses.replace(spec, mode="resume")).prepare()
    assert resumed.committed() is None, "nothing was committed"
    committer = Committer(resumed.location, restart=resumed.restart)
    kept = committer.prepare(resumed.mode(committer), job)
    assert sorted(kept) == ["part-00000", "part-00001"]
