"""JSONL planning and reading: units cover every line exactly once, errors name file and line."""

from __future__ import annotations

import gzip
import json

import pytest
import zstandard

from batchnlp.errors import InputError
from batchnlp.io.formats import ReadOptions, jsonl, plan_units, read_unit
from batchnlp.io.formats.base import WHOLE_STREAM
from batchnlp.io.formats.lines import Unreadable, bounded_lines
from batchnlp.io.storage import Location, list_input
from tests.conformance.test_formats import COMPRESSORS


def plan_and_read(path, rows_per_unit, text_column="text"):
    location = Location(str(path), {})
    units = plan_units(
        location, list_input(location), "jsonl", rows_per_unit, ReadOptions(text_column), workers=1
    ).units
    return units, [read_unit(location, unit, ReadOptions(text_column)) for unit in units]


@pytest.mark.parametrize("rows_per_unit", [1, 2, 3, 7, 50, 1000])
def test_byte_ranges_cover_every_line_once(tmp_path, rows_per_unit):
    path = tmp_path / "in.jsonl"
    records = [{"i": i, "text": "x" * (i % 37)} for i in range(200)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    units, reads = plan_and_read(path, rows_per_unit)
    got = [i for read in reads if read.table.num_rows for i in read.table.column("i").to_pylist()]
    assert got == list(range(200))
    assert [u.id for u in units] == [f"part-{n:05d}" for n in range(len(units))]
    assert units == plan_and_read(path, rows_per_unit)[0], "same input, same units"


def test_crlf_bom_blank_lines_and_no_final_newline(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n\r\n{"text": "b"}\n   \n{"text": "c"}')
    _, reads = plan_and_read(path, 1)
    assert [t for r in reads for t in r.table.column("text").to_pylist()] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "line, fragment",
    [
        (b'{"text": "ok"', "malformed JSON"),
        (b'["a list"]', "is an array, not a JSON object"),
        (b'{"text": "\xff\xfe"}', "invalid UTF-8"),
    ],
)
def test_bad_lines_name_file_and_line_number(tmp_path, line, fragment):
    path = tmp_path / "bad.jsonl"
    good = b"".join(json.dumps({"text": f"row {i}"}).encode() + b"\n" for i in range(300))
    path.write_bytes(good + line + b"\n" + good)
    location = Location(str(path), {})
    units = plan_units(location, list_input(location), "jsonl", 40, ReadOptions(), workers=1).units
    with pytest.raises(InputError, match=rf"bad\.jsonl:301\b.*{fragment}"):
        for unit in units:
            read_unit(location, unit, ReadOptions())


def test_bad_line_in_the_first_lines_fails_at_plan_time(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{oops}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2:2: malformed JSON"):
        plan_and_read(path, 10)


def test_text_values_that_are_not_strings_become_reasons(tmp_path):
    path = tmp_path / "in.jsonl"
    rows = [{"text": "fine"}, {"text": 5}, {"text": {"nested": 1}}, {"other": 1}, {"text": None}, {"text": ["a"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, (read,) = plan_and_read(path, 100)
    assert read.table.column("text").to_pylist() == ["fine", None, None, None, None, None]
    assert read.errors == [
        None,
        "'text' is a number, not a string",
        "'text' is an object, not a string",
        "no 'text' field",
        None,
        "'text' is an array, not a string",
    ]
    assert read.table.column_names == ["text", "other"]


def test_missing_text_field_lists_the_fields_found(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"body": "a", "id": 1}\n')
    with pytest.raises(InputError, match=r"no 'text' field.*fields found: body, id.*--text-column"):
        plan_and_read(path, 10)


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_a_compressed_file_is_one_unit_decompressed_once_to_read_it(tmp_path, suffix, monkeypatch):
    """A unit of a compressed file cannot start mid-stream: cut into ten line ranges, a file was
    decompressed 5.5 times over (each unit from the start to its last line)."""
    data = "".join(json.dumps({"i": i, "text": f"t{i}"}) + "\n" for i in range(95)).encode()
    path = tmp_path / f"in{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith("gz") else zstandard.ZstdCompressor().compress(data))
    location = Location(str(path), {})
    units = plan_units(location, list_input(location), "jsonl", 10, ReadOptions(), workers=4).units
    assert [(u.format, u.start, u.stop, u.rows) for u in units] == [("jsonl-lines", 0, WHOLE_STREAM, 95)]
    decompressed = []
    bounded_lines = jsonl.bounded_lines
    monkeypatch.setattr(
        jsonl,
        "bounded_lines",
        lambda blocks, limit: (decompressed.append(line) or line for line in bounded_lines(blocks, limit)),
    )
    read = read_unit(location, units[0], ReadOptions())
    assert read.table.column("i").to_pylist() == list(range(95))
    assert len(decompressed) == 95, "every line decompressed once"


@pytest.mark.parametrize("trailing_newline", [True, False])
@pytest.mark.parametrize("line_bytes", [20, 300, 890, 5000])
@pytest.mark.parametrize("rows", [1, 2, 3, 59, 60, 61, 97])
def test_no_unit_is_empty_and_estimates_add_up(tmp_path, rows, line_bytes, trailing_newline):
    """The reported case: 60 lines of ~890 bytes on two workers were cut into 30-row units of
    ``int(average * 30)`` bytes, which left a third unit of 1 byte and no rows, and an estimate of 90 rows."""
    lines = [json.dumps({"i": i, "text": "w" * (line_bytes - 25 + i % 7)}) for i in range(rows)]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""))
    location = Location(str(path), {})
    for workers in (1, 2, 3, 8):
        plan = plan_units(location, list_input(location), "jsonl", None, ReadOptions(), workers)
        reads = [read_unit(location, unit, ReadOptions()) for unit in plan.units]
        assert all(read.table.num_rows for read in reads), [u.describe() for u in plan.units]
        assert [i for r in reads for i in r.table.column("i").to_pylist()] == list(range(rows))
        assert plan.units[0].start == 0 and plan.units[-1].stop == path.stat().st_size
        assert all(a.stop == b.start for a, b in zip(plan.units, plan.units[1:], strict=False))
        assert abs(sum(u.rows for u in plan.units) - rows) <= max(1, rows // 20)


def test_truncated_compressed_file_is_an_input_error(tmp_path):
    data = gzip.compress(b"".join(json.dumps({"text": "x" * 50}).encode() + b"\n" for _ in range(2000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.jsonl\.gz is not a readable compressed file"):
        plan_and_read(path, 100)


def test_empty_file_plans_no_units(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    units, _ = plan_and_read(tmp_path / "empty.jsonl", 10)
    assert units == []


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_concatenated_members_frames_and_streams_are_all_read(tmp_path, suffix):
    """``cat a.gz b.gz`` is one valid gzip file (zstd frames, bz2 and xz streams alike): every line of both."""
    halves = [b"".join(json.dumps({"i": i, "text": "t"}).encode() + b"\n" for i in range(k, k + 50)) for k in (0, 50)]
    path = tmp_path / f"in.jsonl{suffix}"
    path.write_bytes(b"".join(COMPRESSORS[suffix](half) for half in halves))
    _, reads = plan_and_read(path, 10)
    assert [i for read in reads for i in read.table.column("i").to_pylist()] == list(range(100))


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_a_compressed_file_past_its_cap_is_read_to_the_cap_and_the_rest_is_one_bad_line(tmp_path, suffix):
    lines = b"".join(json.dumps({"i": i, "text": "x" * 100}).encode() + b"\n" for i in range(20_000))
    path = tmp_path / f"in.jsonl{suffix}"
    path.write_bytes(COMPRESSORS[suffix](lines))
    options = ReadOptions(on_bad_lines="skip", max_decompressed_bytes=1 << 20)
    location = Location(str(path), {})
    (unit,) = plan_units(location, list_input(location), "jsonl", None, options, workers=1).units
    read = read_unit(location, unit, options)
    got = read.table.column("i").to_pylist()
    assert got == list(range(len(got))) and 0 < len(got) * 118 <= 1 << 20
    (bad,) = read.bad_lines
    assert bad.line == len(got) + 1 and "decompresses to more than 1,048,576 bytes" in bad.reason


def test_a_line_past_the_cap_is_measured_across_blocks_and_never_held():
    """Blocks of 7 bytes: a 100-byte line past a 10-byte cap keeps 10 bytes and counts all 101."""
    data = b"short\n" + b"L" * 100 + b"\nok\n" + b"M" * 30
    blocks = [data[i : i + 7] for i in range(0, len(data), 7)]
    items = list(bounded_lines(blocks, 10))
    assert items[0] == b"short\n" and items[2] == b"ok\n"
    assert isinstance(items[1], Unreadable) and items[1].kept == b"L" * 10 and items[1].size == 101
    assert isinstance(items[3], Unreadable) and items[3].size == 30, "the last line, without a newline"
    assert "the line is 100 bytes, more than --max-line-bytes (10)" in items[1].reason
