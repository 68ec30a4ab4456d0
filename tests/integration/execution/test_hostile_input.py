"""A corpus of hostile input, end to end: every row is kept (bad ones with a reason in ``_error``),
or the job stops before ``_SUCCESS`` with a message naming the file, line or row group, and
column; never a traceback.

All jobs share one real LocalCluster (worker processes), so the models load once for the module.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import zstandard
from click.testing import CliRunner

from batchnlp.cli import main

HUGE = "An enormous review that goes on and on. " * 80_000  # 3.2 MB in one line
UNICODE = [
    "Great phone 👍🏽🔥 — would buy again 🇯🇵",
    "これは素晴らしい製品です。中文也可以。한국어도.",
    "المنتج رائع جدا",  # Arabic, right to left
    "המוצר מצוין",  # Hebrew
    "Zalgo: Z̸̡̛a̷̢l̶g̵o̴ and e\u0301 (combining acute)",
    "zero\u200bwidth\u200djoiner\u2060and\ufeffBOM inside",
    "\u200b",  # only a zero-width space: not whitespace to Python, no tokens to BERT
    "\U0001f600" * 2000,  # 2,000 emoji, far past 512 tokens
]
# Lines that cannot become rows, and the reason each is reported with.
BAD_LINES = [
    (b'{"id": "bad-1", "text": "unterminated', "malformed JSON ("),
    (b'{"id": "bad-2", "text": "caf\xe9 latin-1"}', "invalid UTF-8 at byte"),
    (b'["an", "array"]', "the line is an array, not a JSON object"),
    (b'{"id": "bad-4", "text": "lone \\ud800 surrogate"}', "unpaired surrogate escape"),
    (b"{oops}", "malformed JSON (Expecting property name enclosed in double quotes) at column 2"),
]


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


@pytest.fixture
def job(tmp_path, tiny_model, scheduler):
    def run(source: Path | str, *flags: str, out: str = "out"):
        args = [str(source), str(tmp_path / out), "--model", f"sentiment={tiny_model}", "--scheduler", scheduler]
        result = CliRunner().invoke(main, ["run", *args, *map(str, flags)])
        assert "Traceback" not in result.output and "unexpected" not in result.output, result.output
        return result

    return run


def rows(out: Path) -> list[dict]:
    return ds.dataset(out, format="parquet").to_table().to_pylist()


def assert_stopped(result, out: Path, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)
    assert not (out / "_SUCCESS").exists()


def test_every_bad_value_keeps_its_row_with_a_reason(tmp_path, job):
    """Null, empty, whitespace, non-string, nested, missing text; BOM, CRLF, blank lines, huge
    rows, every kind of Unicode, empty files, duplicate and missing ids: all rows out."""
    data = tmp_path / "in"
    data.mkdir()
    values = [None, "", "  \t ", 42, 4.5, True, {"nested": "x"}, ["a", "list"]]
    (data / "a-values.jsonl").write_bytes(
        jsonl([{"id": f"v{i}", "text": value} for i, value in enumerate(values)] + [{"id": "v-missing"}])
    )
    (data / "b-bom-crlf.jsonl").write_bytes(
        b'\xef\xbb\xbf{"id": "crlf-1", "text": "first"}\r\n\r\n  \r\n{"id": "crlf-2", "text": "second"}\r\n'
        b'{"id": "crlf-3", "text": "no final newline"}'
    )
    (data / "c-huge.jsonl").write_bytes(jsonl([{"id": "huge-1", "text": HUGE}, {"id": "huge-2", "text": "short"}]))
    (data / "d-unicode.jsonl").write_bytes(jsonl([{"id": f"u{i}", "text": t} for i, t in enumerate(UNICODE)]))
    (data / "e-empty.jsonl").write_bytes(b"")
    (data / "f-blank.jsonl").write_bytes(b"\n\n   \n")
    (data / "g-ids.jsonl").write_bytes(
        jsonl(
            [{"id": "dup", "text": "one"}, {"id": "dup", "text": "two"}, {"text": "no id"}, {"id": None, "text": "x"}]
        )
    )
    result = job(data, "--id-column", "id")
    assert result.exit_code == 0, result.output
    out = rows(tmp_path / "out")
    assert len(out) == 9 + 3 + 2 + len(UNICODE) + 4, "every row of every file, none added"
    by_id = {}
    for row in out:
        by_id.setdefault(row["id"], []).append(row)
    reasons = [by_id[f"v{i}"][0]["_error"] for i in range(len(values))] + [by_id["v-missing"][0]["_error"]]
    assert reasons == [
        "text is null",
        "text is empty or whitespace",
        "text is empty or whitespace",
        "'text' is a number, not a string",
        "'text' is a number, not a string",
        "'text' is a boolean, not a string",
        "'text' is an object, not a string",
        "'text' is an array, not a string",
        "no 'text' field",
    ]
    assert all(by_id[f"v{i}"][0]["sentiment"] is None for i in range(len(values)))
    assert [by_id[f"crlf-{i}"][0]["text"] for i in (1, 2, 3)] == ["first", "second", "no final newline"]
    assert by_id["huge-1"][0]["text"] == HUGE and by_id["huge-1"][0]["sentiment"] is not None
    assert [by_id[f"u{i}"][0]["text"] for i in range(len(UNICODE))] == UNICODE, "text round-trips exactly"
    assert all(by_id[f"u{i}"][0]["sentiment"] is not None for i in range(len(UNICODE)))
    assert [r["text"] for r in by_id["dup"]] == ["one", "two"] and len(by_id[None]) == 2
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["totals"]["rejected"] == 9 and manifest["totals"]["bad_lines"] == 0
    assert (tmp_path / "out" / "_SUCCESS").exists()


def bad_lines_file(tmp_path: Path) -> tuple[Path, dict[int, bytes]]:
    """300 good lines with the bad ones among the first (caught at plan time) and deep inside."""
    lines: list[bytes] = [json.dumps({"id": i, "text": f"review {i}"}).encode() for i in range(300)]
    positions = {}
    for n, (raw, _) in enumerate(BAD_LINES):
        at = 2 + n * 70  # line 3, 73, 143, 213, 283 (1-based)
        lines.insert(at, raw)
        positions[at + 1] = raw
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return path, positions


def test_bad_lines_stop_the_job_by_default_naming_the_line(tmp_path, job):
    path, _ = bad_lines_file(tmp_path)
    result = job(path)
    assert_stopped(result, tmp_path / "out", "bad.jsonl:3:", "malformed JSON", "--on-bad-lines skip")


def test_skipped_bad_lines_are_counted_and_reported(tmp_path, job):
    path, positions = bad_lines_file(tmp_path)
    result = job(path, "--on-bad-lines", "skip", "--rows-per-partition", "60")
    assert result.exit_code == 0, result.output  # the user chose to skip them: the run is a success
    assert "5 input lines that were not JSON objects skipped, first" in result.output
    assert sorted(r["id"] for r in rows(tmp_path / "out")) == list(range(300))
    totals = json.loads((tmp_path / "out" / "_manifest.json").read_text())["totals"]
    assert totals["bad_lines"] == 5
    reported = [(e["line"], e["reason"]) for e in totals["bad_line_examples"]]
    assert [line for line, _ in reported] == sorted(positions)
    for (_, reason), (_, expected) in zip(reported, BAD_LINES, strict=True):
        assert expected in reason
    assert not (tmp_path / "out" / "_rejected").exists()


def test_quarantined_bad_lines_are_kept_byte_for_byte(tmp_path, job):
    path, positions = bad_lines_file(tmp_path)
    result = job(path, "--on-bad-lines", "quarantine", "--rows-per-partition", "60")
    assert result.exit_code == 0, result.output
    assert "under _rejected/" in result.output
    rejected = tmp_path / "out" / "_rejected"
    raw = b"".join(p.read_bytes() for p in sorted(rejected.glob("part-*.jsonl")))
    assert raw == b"".join(line + b"\r\n" for _, line in sorted(positions.items())), "exact bytes, CR kept"
    reasons = [json.loads(line) for p in sorted((rejected / "_reasons").glob("*.jsonl")) for line in p.open()]
    assert [r["line"] for r in reasons] == sorted(positions)
    assert all(r["source"].endswith("bad.jsonl") for r in reasons)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    quarantined = [p["quarantine"] for p in manifest["parts"] if p["quarantine"]]
    assert sum(q["lines"] for q in quarantined) == 5
    assert sorted(r["id"] for r in rows(tmp_path / "out")) == list(range(300))


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


PAYLOAD = jsonl([{"text": f"review {i} " * 20} for i in range(2000)])


@pytest.mark.parametrize(
    "name, content, fragments",
    [
        ("cut.jsonl.gz", truncated(gzip.compress(PAYLOAD)), ["cut.jsonl.gz is not a readable compressed file"]),
        (
            "cut.jsonl.zst",
            truncated(zstandard.ZstdCompressor().compress(PAYLOAD)),
            ["cut.jsonl.zst is not a readable compressed file"],
        ),
        ("image.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["image.jsonl:1:", "invalid UTF-8"]),
        (
            "drift.jsonl",
            jsonl([{"text": "a", "score": 1}] * 5 + [{"text": "b", "score": "high"}]),
            ["drift.jsonl:6: field 'score' is a string here but a number on line 1"],
        ),
        ("no-text.jsonl", jsonl([{"body": "x"}] * 3), ["no 'text' field in the first 3 records", "--text-column"]),
    ],
)
def test_unreadable_jsonl_stops_naming_file_and_line(tmp_path, job, name, content, fragments):
    (tmp_path / name).write_bytes(content)
    assert_stopped(job(tmp_path / name, "--rows-per-partition", "5000"), tmp_path / "out", *fragments)


def test_a_field_whose_type_drifts_between_units_is_named_with_both_places(tmp_path, job):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(jsonl([{"text": "a", "score": i} for i in range(50)]))
    (tmp_path / "in" / "b.jsonl").write_bytes(jsonl([{"text": "b", "score": "high"}] * 50))
    result = job(tmp_path / "in")
    fragments = ("columns disagree in type between", "a.jsonl bytes 0-", "b.jsonl bytes 0-", "Field score")
    assert_stopped(result, tmp_path / "out", *fragments)


def write_parquet(path: Path, table: pa.Table, **kwargs) -> None:
    pq.write_table(table, path, **kwargs)


def test_parquet_files_with_drifting_schemas_keep_every_row(tmp_path, job):
    data = tmp_path / "pq"
    data.mkdir()
    write_parquet(data / "a.parquet", pa.table({"text": ["one", None], "score": pa.array([1, 2], pa.int64())}))
    write_parquet(
        data / "b.parquet",
        pa.table({"text": pa.array(["three", ""], pa.large_string()), "score": [0.5, 1.5], "extra": [True, False]}),
    )
    dictionary = pa.array(["five", "five", "six"]).dictionary_encode()
    write_parquet(data / "c.parquet", pa.table({"text": dictionary, "score": pa.array([None, 7, 8], pa.int32())}))
    write_parquet(data / "d-empty.parquet", pa.table({"text": pa.array([], pa.string())}))
    result = job(data)
    assert result.exit_code == 0, result.output
    out = rows(tmp_path / "out")
    assert [r["text"] for r in out] == ["one", None, "three", "", "five", "five", "six"]
    assert [r["score"] for r in out] == [1.0, 2.0, 0.5, 1.5, None, 7.0, 8.0], "int and double widen to double"
    assert [r["extra"] for r in out] == [None, None, True, False, None, None, None]
    assert [r["_error"] for r in out] == [None, "text is null", None, "text is empty or whitespace", None, None, None]


@pytest.mark.parametrize(
    "tables, fragments",
    [
        ({"a.parquet": pa.table({"text": [1, 2]})}, ["a.parquet: column 'text' is int64, not a string column"]),
        (
            {"a.parquet": pa.table({"text": [["nested"], ["list"]]})},
            ["a.parquet: column 'text' is list<element: string>, not a string column"],
        ),
        (
            {
                "a.parquet": pa.table({"text": ["x"], "score": [1]}),
                "b.parquet": pa.table({"text": ["y"], "score": ["hi"]}),
            },
            ["the input's columns disagree in type between", "a.parquet", "b.parquet", "score"],
        ),
        ({"a.parquet": pa.table({"body": ["x"]})}, ["a.parquet has no column 'text'; columns found: body"]),
    ],
)
def test_unusable_parquet_stops_naming_file_and_column(tmp_path, job, tables, fragments):
    data = tmp_path / "pq"
    data.mkdir()
    for name, table in tables.items():
        write_parquet(data / name, table)
    assert_stopped(job(data), tmp_path / "out", *fragments)


def test_truncated_and_corrupt_parquet_name_the_file_and_row_groups(tmp_path, job):
    whole = tmp_path / "whole.parquet"
    write_parquet(whole, pa.table({"text": [f"review {i} " * 50 for i in range(4000)]}), row_group_size=1000)
    data = whole.read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "cut.parquet").write_bytes(data[: len(data) // 2])
    assert_stopped(job(tmp_path / "cut"), tmp_path / "out", "cut.parquet is not a readable Parquet file")
    # The footer intact, a data page overwritten: found only when its row group is read.
    meta = pq.ParquetFile(whole).metadata
    column = meta.row_group(2).column(0)
    start = column.data_page_offset
    corrupt = bytearray(data)
    corrupt[start + 40 : start + 4000] = b"\xff" * (4000 - 40)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bad.parquet").write_bytes(bytes(corrupt))
    result = job(tmp_path / "bad", "--rows-per-partition", "1000", out="out2")
    assert_stopped(result, tmp_path / "out2", "bad.parquet row groups 2-2")


def test_nothing_to_read_is_named(tmp_path, job):
    assert_stopped(job(tmp_path / "*.jsonl"), tmp_path / "out", "matches no files; check the pattern")
    (tmp_path / "empty").mkdir()
    assert_stopped(job(tmp_path / "empty"), tmp_path / "out", "input directory", "is empty")


def good_lines(name: str, count: int) -> list[bytes]:
    return [json.dumps({"id": f"{name}-{i}", "text": f"review {i} of {name}"}).encode() for i in range(count)]


def labelled(out: Path) -> dict[str, dict]:
    return {row["id"]: row for row in rows(out)}


def test_every_failure_of_the_json_parser_is_a_bad_line(tmp_path, job):
    """A 5,000-digit number (ValueError past Python's 4,300 digits) and 100,000 nested brackets
    (RecursionError) ended the job as "unexpected ... a bug in batchnlp"; nesting past 64 levels, which
    parses, is refused too. Each is a counted bad line; every row around them is labelled."""
    data = tmp_path / "in"
    data.mkdir()
    hostile = {
        "digits": b'{"id": "x", "text": "a", "n": ' + b"9" * 5000 + b"}",
        "nested": b'{"id": "y", "text": "a", "n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "deep": b'{"id": "z", "text": "a", "n": ' + b"[" * 65 + b"]" * 65 + b"}",
    }
    for name, line in hostile.items():
        lines = good_lines(name, 6)
        (data / f"{name}.jsonl").write_bytes(b"\n".join([*lines[:3], line, *lines[3:]]) + b"\n")
    result = job(data, "--on-bad-lines", "skip", "--max-bad-lines", "3")
    assert result.exit_code == 0, result.output
    out = labelled(tmp_path / "out")
    assert sorted(out) == sorted(f"{name}-{i}" for name in hostile for i in range(6))
    assert all(row["sentiment"] is not None for row in out.values())
    totals = json.loads((tmp_path / "out" / "_manifest.json").read_text())["totals"]
    assert totals["bad_lines"] == 3
    reasons = {e["source"].rsplit("/", 1)[1]: (e["line"], e["reason"]) for e in totals["bad_line_examples"]}
    assert reasons["digits.jsonl"][0] == 4 and "4300 digits" in reasons["digits.jsonl"][1]
    assert reasons["nested.jsonl"] == (4, "JSON nested deeper than 64 levels")
    assert reasons["deep.jsonl"] == (4, "JSON nested deeper than 64 levels")


def test_a_long_line_and_a_gzip_bomb_are_set_aside_and_the_rest_labelled(tmp_path, job):
    """A line past --max-line-bytes is a bad line, quarantined by its first 4 KiB and its length; a
    compressed file past --max-decompressed-bytes is read up to the cap, the rest one bad line
    naming the file. Before: the line became a row, the flag did not exist, the bomb was read whole."""
    data = tmp_path / "in"
    data.mkdir()
    lines = good_lines("long", 6)
    long_line = b'{"id": "long", "text": "' + b"w" * 20_000 + b'"}'
    (data / "long.jsonl").write_bytes(b"\n".join([*lines[:3], long_line, *lines[3:]]) + b"\n")
    bomb = gzip.compress(b"\n".join([*good_lines("bomb", 3), b'{"text": "' + b"a" * 3_000_000 + b'"}', b"{}"]))
    assert len(bomb) < 10_000
    (data / "bomb.jsonl.gz").write_bytes(bomb)
    flags = ("--on-bad-lines", "quarantine", "--max-line-bytes", "1KiB", "--max-decompressed-bytes", "1MiB")
    result = job(data, *flags)
    assert result.exit_code == 0, result.output
    out = labelled(tmp_path / "out")
    assert sorted(out) == sorted([*(f"long-{i}" for i in range(6)), *(f"bomb-{i}" for i in range(3))])
    assert all(row["sentiment"] is not None for row in out.values())
    totals = json.loads((tmp_path / "out" / "_manifest.json").read_text())["totals"]
    assert totals["bad_lines"] == 2
    rejected = tmp_path / "out" / "_rejected"
    reasons = {
        r["source"].rsplit("/", 1)[1]: r
        for p in (rejected / "_reasons").glob("*.jsonl")
        for r in map(json.loads, p.open())
    }
    assert reasons["long.jsonl"]["line"] == 4
    reason = (
        f"the line is {len(long_line):,} bytes, more than --max-line-bytes (1,024): set aside unread, its first 1,024"
    )
    assert reasons["long.jsonl"]["reason"].startswith(reason)
    assert reasons["bomb.jsonl.gz"]["line"] == 4
    assert "bomb.jsonl.gz decompresses to more than 1,048,576 bytes" in reasons["bomb.jsonl.gz"]["reason"]
    kept = b"".join(p.read_bytes() for p in rejected.glob("part-*.jsonl"))
    assert kept.startswith(long_line[:1024] + b"\n") and len(kept) < 1100, "a prefix of the line, not all of it"


def test_a_parquet_cell_past_the_cap_rejects_its_row_with_a_reason(tmp_path, job):
    data = tmp_path / "pq"
    data.mkdir()
    texts = [f"review {i}" for i in range(8)]
    texts[5] = "x" * 5000
    notes = ["n"] * 8
    notes[2] = "y" * 3000  # a pass-through column's cell is bounded as well
    write_parquet(data / "a.parquet", pa.table({"id": [f"p-{i}" for i in range(8)], "text": texts, "note": notes}))
    result = job(data, "--max-line-bytes", "1KiB")
    assert result.exit_code == 0, result.output
    out = labelled(tmp_path / "out")
    assert sorted(out) == [f"p-{i}" for i in range(8)], "every row kept"
    assert out["p-5"]["_error"] == "column 'text' holds 5,000 bytes, more than --max-line-bytes (1,024)"
    assert out["p-2"]["_error"] == "column 'note' holds 3,000 bytes, more than --max-line-bytes (1,024)"
    assert out["p-5"]["text"] is None and out["p-2"]["note"] is None and out["p-5"]["sentiment"] is None
    assert all(out[f"p-{i}"]["sentiment"] is not None and out[f"p-{i}"]["_error"] is None for i in (0, 1, 3, 4, 6, 7))
