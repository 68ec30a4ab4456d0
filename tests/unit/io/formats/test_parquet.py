from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchnlp.errors import InputError
from batchnlp.io.formats import ReadOptions, auto_rows_per_unit, parquet, plan_units, read_unit
from batchnlp.io.storage import Location, list_input


def write(path, table, row_group_size):
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def plan(path, rows_per_unit, text_column="text"):
    location = Location(str(path), {})
    return location, plan_units(
        location, list_input(location), "parquet", rows_per_unit, ReadOptions(text_column), workers=1
    ).units


def test_units_are_runs_of_whole_row_groups(tmp_path):
    table = pa.table({"i": list(range(100)), "text": [f"t{i}" for i in range(100)]})
    location, units = plan(write(tmp_path / "a.parquet", table, 10), 25)
    assert [(u.start, u.stop, u.rows) for u in units] == [(0, 3, 30), (3, 6, 30), (6, 9, 30), (9, 10, 10)]
    got = [i for u in units for i in read_unit(location, u, ReadOptions()).table.column("i").to_pylist()]
    assert got == list(range(100))


def test_missing_text_column_lists_the_columns(tmp_path):
    path = write(tmp_path / "a.parquet", pa.table({"body": ["x"], "id": [1]}), 10)
    with pytest.raises(InputError, match=r"a\.parquet has no column 'text'; columns found: body, id"):
        plan(path, 10)


def test_text_column_of_the_wrong_type_is_refused(tmp_path):
    path = write(tmp_path / "a.parquet", pa.table({"text": [1, 2]}), 10)
    with pytest.raises(InputError, match="column 'text' is int64, not a string column"):
        plan(path, 10)


def test_not_a_parquet_file(tmp_path):
    (tmp_path / "a.parquet").write_text("hello")
    with pytest.raises(InputError, match="is not a readable Parquet file"):
        plan(tmp_path / "a.parquet", 10)


def test_units_are_sized_for_the_workers_without_an_explicit_size(tmp_path):
    table = pa.table({"text": [f"t{i}" for i in range(8000)]})
    location = Location(str(write(tmp_path / "a.parquet", table, 100)), {})
    units = plan_units(location, list_input(location), "parquet", None, ReadOptions(), workers=2).units
    assert len(units) == 8 and {u.rows for u in units} == {1000}


def test_automatic_sizing_gives_every_worker_the_same_number_of_units():
    assert auto_rows_per_unit(8000, 2) == 1000  # four a worker
    assert auto_rows_per_unit(1200, 2) == 300, "four a worker would be 150 rows: two a worker instead"
    assert auto_rows_per_unit(120, 2) == 60, "one a worker below the minimum"
    assert auto_rows_per_unit(10_000_000, 4) == 10_000


def test_a_row_group_past_the_unit_budget_is_split_into_row_ranges(tmp_path, monkeypatch):
    """A writer's one huge row group was one unit, read whole; now pieces of at most UNIT_BYTES
    (here shrunk to ~40 KB), each read in record batches, together every row exactly once."""
    monkeypatch.setattr(parquet, "UNIT_BYTES", 40_000)
    texts = [f"review {i} " + "w" * (100 + i % 50) for i in range(1000)]
    table = pa.table({"i": list(range(1000)), "text": texts})
    path = tmp_path / "a.parquet"
    pq.write_table(table, path, row_group_size=600, use_dictionary=False, compression="none")  # groups of 600 and 400
    location, units = plan(path, 10_000)
    sizes = [pq.ParquetFile(path).metadata.row_group(g).total_byte_size for g in range(2)]
    assert all(size > 40_000 for size in sizes)
    assert {u.format for u in units} == {"parquet-rows"} and len(units) > 2
    assert units[0].start == 0 and units[-1].stop == 1000
    assert all(a.stop == b.start for a, b in itertools.pairwise(units))
    got = [i for u in units for i in read_unit(location, u, ReadOptions()).table.column("i").to_pylist()]
    assert got == list(range(1000))
