"""One schema for every part: unification across units and files, and conforming a unit to it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchnlp.errors import InputError
from batchnlp.io.formats import ReadOptions, plan_units, read_unit
from batchnlp.io.formats.base import conform, unify
from batchnlp.io.storage import Location, list_input


def test_types_widen_and_fields_merge():
    first = pa.schema([("a", pa.null()), ("n", pa.int64()), ("s", pa.struct([("x", pa.int64())]))])
    second = pa.schema(
        [("a", pa.string()), ("n", pa.float64()), ("s", pa.struct([("y", pa.string())])), ("z", pa.bool_())]
    )
    schema = unify([("one", first), ("two", second)])
    assert schema.names == ["a", "n", "s", "z"]
    assert schema.field("n").type == pa.float64() and schema.field("s").type.names == ["x", "y"]
    table = conform(pa.table({"n": [1], "a": pa.nulls(1), "s": [{"x": 1}]}), schema, "u")
    assert table.schema == schema
    assert table.to_pylist() == [{"a": None, "n": 1.0, "s": {"x": 1, "y": None}, "z": None}]


def test_a_real_type_conflict_names_both_places():
    with pytest.raises(InputError, match=r"between one and two.*Field v has incompatible types"):
        unify([("one", pa.schema([("v", pa.string())])), ("two", pa.schema([("v", pa.int64())]))])


def test_parquet_files_with_different_schemas_share_one(tmp_path):
    pq.write_table(pa.table({"id": pa.array([1], pa.int32()), "text": ["a"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": ["b"], "id": pa.array([2], pa.int64()), "lang": ["en"]}), tmp_path / "b.parquet")
    location = Location(str(tmp_path), {})
    plan = plan_units(location, list_input(location), "parquet", 10, ReadOptions(), workers=1)
    assert plan.schema.names == ["id", "text", "lang"] and plan.schema.field("id").type == pa.int64()
    tables = [read_unit(location, unit, ReadOptions(), plan.schema).table for unit in plan.units]
    assert pa.concat_tables(tables).to_pylist() == [
        {"id": 1, "text": "a", "lang": None},
        {"id": 2, "text": "b", "lang": "en"},
    ]


def test_jsonl_has_no_schema_at_plan_time(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n')
    location = Location(str(tmp_path), {})
    assert plan_units(location, list_input(location), "jsonl", 10, ReadOptions(), workers=1).schema is None
