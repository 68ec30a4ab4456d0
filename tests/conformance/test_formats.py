"""Every format in the registry, held to one contract (as fsspec's suites hold its backends): an
input format plans and reads back every row of a file, in order, under each compression it
declares; an output format writes the same bytes twice and reads its parts back, under each of its
compressions, for empty, one-row, null, unicode and nested tables. A format inherits the suite by
being registered in ``batchnlp.io.formats.FORMATS``."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma

import pyarrow as pa
import pytest
import zstandard

from batchnlp.io.formats import FORMATS, INPUT_FORMATS, OUTPUT_FORMATS, ReadOptions, plan_units, read_unit
from batchnlp.io.storage import Location, list_input

COMPRESSORS = {
    ".gz": lambda data: gzip.compress(data, mtime=0),
    ".zst": lambda data: zstandard.ZstdCompressor().compress(data),
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
}
LABEL = pa.struct([("label", pa.string()), ("score", pa.float32())])


def sample(rows: int) -> pa.Table:
    """Rows with unicode, nulls, lists and structs, as parts carry them."""
    return pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "text": [None if i % 7 == 3 else f'ligne {i}: ünïcödé 🙂 "quoted"\n' for i in range(rows)],
            "tags": pa.array([[f"t{i}", "x"] if i % 2 else [] for i in range(rows)], pa.list_(pa.string())),
            "label": pa.array([None if i % 5 == 0 else {"label": "POS", "score": 0.5} for i in range(rows)], LABEL),
        }
    )


@pytest.mark.parametrize(
    "fmt, compression",
    [(name, c) for name in INPUT_FORMATS for c in ("", *FORMATS[name].input_compressions)],
)
@pytest.mark.parametrize("rows", [1, 7, 250])
def test_an_input_format_reads_back_every_row_in_order(tmp_path, fmt, compression, rows):
    table = sample(rows).drop_columns(["label"])
    writer = FORMATS[fmt].write or FORMATS["parquet"].write
    data = writer(table, {}, FORMATS[fmt].compressions[-1] if fmt == "parquet" else "none")
    path = tmp_path / f"in{FORMATS[fmt].input_suffixes[0]}{compression}"
    path.write_bytes(COMPRESSORS[compression](data) if compression else data)
    location = Location(str(path), {})
    plan = plan_units(location, list_input(location), fmt, 3, ReadOptions(on_bad_lines="stop"), workers=2)
    reads = [read_unit(location, unit, ReadOptions()) for unit in plan.units]
    assert all(read.table.num_rows for read in reads), "no empty unit"
    got = pa.concat_tables([read.table.select(["id", "text"]) for read in reads], promote_options="permissive")
    assert got.column("id").to_pylist() == list(range(rows))
    assert got.column("text").to_pylist() == table.column("text").to_pylist()


@pytest.mark.parametrize("fmt, compression", [(name, c) for name in OUTPUT_FORMATS for c in FORMATS[name].compressions])
@pytest.mark.parametrize("rows", [0, 1, 250])
def test_an_output_format_writes_deterministic_parts_that_read_back(fmt, compression, rows):
    form = FORMATS[fmt]
    table = sample(rows)
    data = form.write(table, {"version": "test"}, compression)
    assert form.write(table, {"version": "test"}, compression) == data, "same table in, same bytes out"
    if compression == "gzip":
        assert data[:2] == b"\x1f\x8b" and data[4:8] == b"\0\0\0\0", "gzip with mtime 0"
    back = form.head(io.BytesIO(data), rows + 1, compression)
    assert back == table.to_pylist()
    assert form.head(io.BytesIO(data), 1, compression) == table.to_pylist()[:1]


def test_the_registry_derives_the_spec_s_and_the_cli_s_choices():
    from batchnlp.cli.run import run
    from batchnlp.spec import INPUT_FORMATS as SPEC_INPUTS
    from batchnlp.spec import OUTPUT_FORMATS as SPEC_OUTPUTS

    choices = {param.name: tuple(param.type.choices) for param in run.params if hasattr(param.type, "choices")}
    assert set(INPUT_FORMATS) <= set(SPEC_INPUTS) == set(choices["input_format"])
    assert set(OUTPUT_FORMATS) <= set(SPEC_OUTPUTS) == set(choices["output_format"])
    assert {c for name in OUTPUT_FORMATS for c in FORMATS[name].compressions} == set(choices["compression"])
