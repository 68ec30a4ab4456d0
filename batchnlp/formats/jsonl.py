"""JSON Lines: byte ranges cut at line ends, so one large file spreads over every worker.

A plain file is planned from its size alone (plus a small sample for the average line length):
a unit owns every line whose first byte lies in ``[start, stop)``, the rule Hadoop's line
reader uses, so units never overlap or drop a line whatever the cut points. Compressed files
cannot be entered mid-stream; they are planned by line ranges after one counting pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batchnlp.errors import InputError
from batchnlp.formats.base import ReadResult, WorkUnit
from batchnlp.storage import InputFile

COMPRESSED_SUFFIXES = (".gz", ".zst", ".bz2", ".xz")
SAMPLE_BYTES = 1 << 20
SAMPLE_LINES = 200

_JSON_TYPE_NAMES = {dict: "an object", list: "an array", int: "a number", float: "a number", bool: "a boolean"}


def is_compressed(path: str) -> bool:
    return path.endswith(COMPRESSED_SUFFIXES)


@dataclass(frozen=True)
class JsonlLayout:
    """What planning needs to know of one file, measured once."""

    size: int
    average_line: float
    lines: int | None  # counted for compressed files, which are cut by line ranges
    schema = None  # JSON has none: it is inferred from every unit once the cluster runs

    @property
    def rows(self) -> int:
        """Rows in the file: exact when counted, estimated from the sampled line length otherwise."""
        if self.lines is not None:
            return self.lines
        return round(self.size / self.average_line) if self.size else 0

    def cut(self, rows_per_unit: int) -> Iterator[tuple[int, int, int | None]]:
        """``(start, stop, rows)``: line ranges when counted, else byte ranges cut at line ends."""
        if self.lines is not None:
            for start in range(0, self.lines, rows_per_unit):
                yield start, min(start + rows_per_unit, self.lines), None
            return
        step = max(1, int(self.average_line * rows_per_unit))
        for start in range(0, self.size, step):
            yield start, min(start + step, self.size), None


def describe(fs: Any, file: InputFile, text_column: str) -> JsonlLayout:
    """Sample (and, if compressed, count) a file; a bad first line or missing field fails here."""
    where = fs.unstrip_protocol(file.path)
    if file.size == 0:
        return JsonlLayout(0, 1.0, 0 if is_compressed(file.path) else None)
    lines = _count_lines(fs, file.path, where) if is_compressed(file.path) else None
    return JsonlLayout(file.size, _check_sample(fs, file.path, where, text_column), lines)


def read(fs: Any, unit: WorkUnit, text_column: str) -> ReadResult:
    where = fs.unstrip_protocol(unit.path)
    if unit.format == "jsonl-lines":
        with fs.open(unit.path, "rb", compression="infer") as handle:
            lines = _line_range(handle, unit.start, unit.stop)

        def line_number(index: int) -> int:
            return unit.start + index + 1

    else:
        with fs.open(unit.path, "rb") as handle:
            first_offset, lines = _byte_range(handle, unit.start, unit.stop)

        def line_number(index: int) -> int:  # counting newlines costs a read: only for errors
            return _line_number(fs, unit.path, first_offset) + index

    records = list(_parse(lines, where, line_number, at_file_start=unit.start == 0))
    return _to_table(records, text_column, unit.describe())


def _parse(
    lines: list[bytes], where: str, line_number: Callable[[int], int], at_file_start: bool
) -> Iterator[dict[str, Any]]:
    """Decode and parse each line; blank lines are not rows and yield nothing."""
    for index, raw in enumerate(lines):
        try:
            text = raw.decode("utf-8-sig" if at_file_start and index == 0 else "utf-8")
        except UnicodeDecodeError as e:
            raise InputError(
                f"{where}:{line_number(index)}: invalid UTF-8 at byte {e.start} of the line; "
                "re-encode the file as UTF-8"
            ) from e
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{where}:{line_number(index)}:{e.colno}: malformed JSON ({e.msg}); fix or remove the line"
            ) from e
        if not isinstance(record, dict):
            kind = _JSON_TYPE_NAMES.get(type(record), "a string")
            raise InputError(f"{where}:{line_number(index)}: the line is {kind}, not a JSON object")
        yield record


def _to_table(records: list[dict[str, Any]], text_column: str, where: str) -> ReadResult:
    """Columns in order of first appearance; the text column normalised to strings."""
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    errors: list[str | None] = []
    texts: list[str | None] = []
    for record in records:
        value = record.get(text_column)
        if text_column not in record:
            errors.append(f"no {text_column!r} field")
        elif value is not None and not isinstance(value, str):
            errors.append(f"{text_column!r} is {_JSON_TYPE_NAMES.get(type(value), 'not a string')}, not a string")
            value = None
        else:
            errors.append(None)
        texts.append(value)
    columns: dict[str, pa.Array] = {}
    for name in names:
        if name == text_column:
            columns[name] = pa.array(texts, type=pa.string())
            continue
        try:
            columns[name] = pa.array([record.get(name) for record in records])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise InputError(
                f"{where}: field {name!r} mixes value types across lines ({e}); make its type consistent"
            ) from e
    if text_column not in columns:
        columns[text_column] = pa.array(texts, type=pa.string())
    return ReadResult(table=pa.table(columns), errors=errors)


def _byte_range(handle: Any, start: int, stop: int) -> tuple[int, list[bytes]]:
    """Lines whose first byte lies in ``[start, stop)``, and the offset of the first one."""
    if start > 0:
        handle.seek(start - 1)
        handle.readline()
    first = position = handle.tell()
    lines = []
    while position < stop:
        line = handle.readline()
        if not line:
            break
        lines.append(line)
        position += len(line)
    return first, lines


def _line_range(handle: Any, start: int, stop: int) -> list[bytes]:
    lines = []
    for number, line in enumerate(_iter_lines(handle)):
        if number >= stop:
            break
        if number >= start:
            lines.append(line)
    return lines


def _iter_lines(handle: Any) -> Iterator[bytes]:
    """Lines of a stream that may not support ``readline`` (zstd's reader does not)."""
    pending = b""
    while block := handle.read(1 << 20):
        pending += block
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending


def _line_number(fs: Any, path: str, offset: int) -> int:
    """The 1-based line number at byte ``offset``: counts newlines before it, in blocks."""
    count = 0
    with fs.open(path, "rb") as handle:
        remaining = offset
        while remaining > 0:
            block = handle.read(min(remaining, 1 << 22))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    return count + 1


def _count_lines(fs: Any, path: str, where: str) -> int:
    count, last = 0, b"\n"
    try:
        with fs.open(path, "rb", compression="infer") as handle:
            while block := handle.read(1 << 22):
                count += block.count(b"\n")
                last = block[-1:]
    except (EOFError, OSError, ValueError) as e:
        raise InputError(f"{where} is not a readable compressed file (truncated or corrupt?): {e}") from e
    return count + (last != b"\n")


def _check_sample(fs: Any, path: str, where: str, text_column: str) -> float:
    """Parse the first lines of a file: malformed JSON or a missing text field fail at plan time.

    Returns the average line length in bytes, used to size byte-range units.
    """
    with fs.open(path, "rb", compression="infer") as handle:
        sample = handle.read(SAMPLE_BYTES)
    lines = sample.split(b"\n")
    if len(lines) > 1:
        lines = lines[:-1]  # the last piece may be cut mid-line
    lines = lines[:SAMPLE_LINES]
    records = list(_parse(lines, where, lambda index: index + 1, at_file_start=True))
    if records and not any(text_column in record for record in records):
        found = sorted({key for record in records for key in record})
        raise InputError(
            f"{where}: no {text_column!r} field in the first {len(records)} records; "
            f"fields found: {', '.join(found)}. Pass --text-column NAME"
        )
    consumed = sum(len(line) + 1 for line in lines)
    return consumed / max(1, len(lines))
