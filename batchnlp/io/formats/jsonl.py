"""JSON Lines, read and written: byte ranges cut at line ends, so one large file spreads over every worker.

A plain file is planned from its size alone (plus a small sample for the average line length):
a unit owns every line whose first byte lies in ``[start, stop)``, the rule Hadoop's line
reader uses, so units never overlap or drop a line whatever the cut points. Compressed files
cannot be entered mid-stream; each is one unit, decompressed as a stream on its worker only (the
driver reads a sample of it, never the whole: a gzip bomb costs the plan nothing).

Every line is read through :func:`~batchnlp.io.formats.lines.bounded_lines`: one longer than
``--max-line-bytes`` is a bad line set aside without being held whole, as is the rest of a
compressed file past its decompression cap (:mod:`batchnlp.io.formats.decompress`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import functools
import gzip
import io
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import pyarrow as pa

from batchnlp.errors import InputError
from batchnlp.io.formats.base import WHOLE_STREAM, BadLine, BadLinePolicy, Format, ReadOptions, ReadResult, WorkUnit
from batchnlp.io.formats.decompress import DECODERS, Decompressed, DecompressionCapPassed, decompression_cap
from batchnlp.io.formats.lines import Line, Unreadable, blocks_of, bounded_lines, end_of_line, size_of
from batchnlp.io.storage import InputFile

COMPRESSED_SUFFIXES = tuple(DECODERS)
SAMPLE_BYTES = 1 << 20
SAMPLE_LINES = 200
# Deeper JSON is a bad line: Arrow stores a record's nesting as nested types, and Python's parser
# gives up (RecursionError) near its recursion limit. Only lines with this many brackets are walked.
MAX_DEPTH = 64

# A \uD800-\uDFFF escape: valid JSON syntax, but alone it is no character and Arrow cannot store it.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_JSON_TYPE_NAMES = {dict: "an object", list: "an array", int: "a number", float: "a number", bool: "a boolean"}


def is_compressed(path: str) -> bool:
    return path.endswith(COMPRESSED_SUFFIXES)


@dataclass(frozen=True)
class JsonlLayout:
    """What planning needs to know of one file, measured once."""

    size: int
    average_line: float
    lines: int | None  # estimated for compressed files, which are one unit each
    # Where a byte range really starts: the first line start at or after each position (a plain file's).
    line_starts: Callable[[list[int]], list[int]] = field(default=lambda positions: positions, compare=False)
    schema = None  # JSON has none: it is inferred from every unit once the cluster runs

    @property
    def unit_format(self) -> str:
        """What its units' start and stop count: lines of a compressed file, else bytes."""
        return "jsonl-lines" if self.lines is not None else "jsonl"

    @property
    def rows(self) -> int:
        """Rows in the file: estimated from the sample (exact where it held a whole compressed file)."""
        if self.lines is not None:
            return self.lines
        return round(self.size / self.average_line) if self.size else 0

    def cut(self, rows_per_unit: int) -> Iterator[tuple[str, int, int, int | None]]:
        """``(format, start, stop, rows)``: a compressed file whole, a plain one in byte ranges cut at line ends.

        A compressed stream cannot be entered mid-way: a unit starting at line N would decompress
        the N lines before it, so splitting a file into U units decompresses it about U/2 times.
        It is one unit, as Spark and Hadoop treat non-splittable codecs: every line of it (stop
        :data:`WHOLE_STREAM`), however many the worker finds. A plain file is cut into
        as many equal byte ranges as its estimated rows need units, each cut moved on to the next
        line start (one small read per cut), so every unit starts a line: no unit is empty (a sliver
        of one long line, or the last byte of a file), and each carries its row estimate.
        """
        if self.lines is not None:
            if self.size:
                yield self.unit_format, 0, WHOLE_STREAM, self.lines
            return
        units = min(self.size, max(1, -(-self.rows // rows_per_unit)))
        cuts = self.line_starts([self.size * i // units for i in range(1, units)])
        bounds = sorted({0, self.size, *(cut for cut in cuts if 0 < cut < self.size)})
        for start, stop in itertools.pairwise(bounds):
            yield self.unit_format, start, stop, max(1, round((stop - start) / self.average_line))


def describe(fs: Any, file: InputFile, options: ReadOptions) -> JsonlLayout:
    """Sample a file (the first lines of a compressed one: never all of it); a bad first line or a
    missing field fails here."""
    where = fs.unstrip_protocol(file.path)
    if file.size == 0:
        return JsonlLayout(0, 1.0, 0 if is_compressed(file.path) else None)
    sample = _check_sample(fs, file, where, options)
    if is_compressed(file.path):
        return JsonlLayout(file.size, sample.average_line, sample.compressed_rows(file.size))
    partial = functools.partial(_next_line_starts, fs, file.path, file.size)
    return JsonlLayout(file.size, sample.average_line, None, partial)


def _next_line_starts(fs: Any, path: str, size: int, positions: list[int]) -> list[int]:
    """For each position, the first byte at or after it that starts a line (``size`` if none).

    One ranged read of a small window before each position, concurrent where the filesystem
    can (s3fs's ``cat_ranges``); a line longer than the window is scanned on to its end in blocks.
    """
    window = 1 << 16
    ends = [min(size, position + window) for position in positions]
    chunks = fs.cat_ranges([path] * len(positions), [p - 1 for p in positions], ends) if positions else []
    starts = []
    for position, chunk in zip(positions, chunks, strict=True):
        newline = chunk.find(b"\n")
        if newline < 0 and position - 1 + len(chunk) < size:  # a line longer than the window
            with fs.open(path, "rb") as handle:
                handle.seek(position - 1 + len(chunk))
                starts.append(end_of_line(handle))
        else:
            starts.append(position + newline if newline >= 0 else size)
    return starts


def read(fs: Any, unit: WorkUnit, options: ReadOptions) -> ReadResult:
    """One unit's lines parsed as they are read: a unit holds its rows, never a whole long line."""
    where = fs.unstrip_protocol(unit.path)
    if unit.format == "jsonl-lines":

        def first_line() -> int:
            return unit.start + 1

        size = fs.size(unit.path)
        with fs.open(unit.path, "rb") as handle:
            lines = _decompressed_lines(handle, unit.path, where, size, options)
            stop = None if unit.stop == WHOLE_STREAM else unit.stop
            parsed = parse_lines(
                itertools.islice(lines, unit.start, stop), where, first_line, unit.start == 0, options.on_bad_lines
            )
    else:
        with fs.open(unit.path, "rb") as handle:
            lines, first_offset = _byte_range(handle, unit.start, unit.stop, options.max_line_bytes)

            @functools.cache
            def first_line() -> int:  # counting newlines costs a read: only for errors, once per unit
                return line_number(fs, unit.path, first_offset())

            parsed = parse_lines(lines, where, first_line, unit.start == 0, options.on_bad_lines)
    result = lines_table(parsed, options.text_column, where, first_line)
    result.bad_lines = parsed.bad_lines
    return result


def _decompressed_lines(handle: Any, path: str, where: str, size: int, options: ReadOptions) -> Iterator[Line]:
    """The lines of a compressed file, decompressed in bounded blocks; past its cap, one last
    :class:`Unreadable` stands for the rest of the file."""
    cap = decompression_cap(size, options.max_decompressed_bytes)
    stream = Decompressed(handle, _suffix(path), cap, where)
    try:
        yield from bounded_lines(stream, options.max_line_bytes)
    except DecompressionCapPassed as e:
        yield Unreadable(str(e), b"", 0)


def _suffix(path: str) -> str:
    return next(suffix for suffix in COMPRESSED_SUFFIXES if path.endswith(suffix))


@dataclass
class _Parsed:
    """The JSON objects of a run of lines, where each came from, and the lines set aside."""

    records: list[dict[str, Any]]
    indexes: list[int]  # records[i] is line first_line() + indexes[i]
    bad_lines: list[BadLine]


def parse_lines(
    lines: Iterable[Line], where: str, first_line: Callable[[], int], at_file_start: bool, policy: BadLinePolicy
) -> _Parsed:
    """Decode and parse each line as it comes; blank lines are not rows and yield nothing.

    A line that is not a JSON object, or was set aside unread, stops the job naming it, or under
    ``skip``/``quarantine`` is set aside as a :class:`BadLine`, so every line is either a row or
    accounted for.
    """
    parsed = _Parsed([], [], [])
    for index, raw in enumerate(lines):
        if isinstance(raw, Unreadable):
            record, column, reason = None, None, raw.reason
        else:
            record, column, reason = _record(raw, bom_allowed=at_file_start and index == 0)
        if reason is None:
            if record is not None:
                parsed.records.append(record)
                parsed.indexes.append(index)
            continue
        line = first_line() + index
        if policy == "stop":
            raise InputError(
                f"{where}:{line}{f':{column}' if column else ''}: {reason}; fix or remove the line, "
                "or pass --on-bad-lines skip (or quarantine) to set such lines aside"
            )
        kept = raw.kept if isinstance(raw, Unreadable) else raw.removesuffix(b"\n")
        parsed.bad_lines.append(BadLine(line, reason if column is None else f"{reason} at column {column}", kept))
    return parsed


def _record(raw: bytes, bom_allowed: bool) -> tuple[dict[str, Any] | None, int | None, str | None]:
    """``(record, column, problem)`` of one line: a blank line is ``(None, None, None)``.

    Every failure of the parser is the line's problem, not the job's: malformed JSON, a number past
    Python's 4,300 digits (ValueError), nesting past its recursion limit (RecursionError).
    """
    try:
        text = raw.decode("utf-8-sig" if bom_allowed else "utf-8")
    except UnicodeDecodeError as e:
        return None, None, f"invalid UTF-8 at byte {e.start} of the line (re-encode the file as UTF-8)"
    if not text.strip():
        return None, None, None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return None, e.colno, f"malformed JSON ({e.msg})"
    except RecursionError:
        return None, None, f"JSON nested deeper than {MAX_DEPTH} levels"
    except ValueError as e:  # a number of more digits than Python converts
        return None, None, f"a JSON value that cannot be read ({str(e).split(';')[0]})"
    if not isinstance(record, dict):
        return None, None, f"the line is {_JSON_TYPE_NAMES.get(type(record), 'a string')}, not a JSON object"
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(record) > MAX_DEPTH:
        return None, None, f"JSON nested deeper than {MAX_DEPTH} levels"
    if _SURROGATE_ESCAPE.search(text):  # rare: only such lines pay for the check
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, None, "a string holds an unpaired surrogate escape (\\udXXX): not valid Unicode"
    return record, None, None


def _depth(value: Any) -> int:
    """How deep objects and arrays nest in ``value`` (an object of scalars is 1), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def lines_table(parsed: _Parsed, text_column: str, where: str, first_line: Callable[[], int]) -> ReadResult:
    """Columns in order of first appearance; the text column normalised to strings."""
    records = parsed.records
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
        values = [record.get(name) for record in records]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
            raise InputError(_type_drift(values, name, where, lambda i: first_line() + parsed.indexes[i], e)) from e
    if text_column not in columns:
        columns[text_column] = pa.array(texts, type=pa.string())
    return ReadResult(table=pa.table(columns), errors=errors)


def _type_drift(values: list[Any], name: str, where: str, line_of: Callable[[int], int], error: Exception) -> str:
    """Name the first line whose ``name`` field has another JSON type than the lines before it."""
    kinds = [(i, _JSON_TYPE_NAMES.get(type(v), "a string")) for i, v in enumerate(values) if v is not None]
    first = kinds[0] if kinds else None
    drift = next(((i, kind) for i, kind in kinds if first and kind != first[1]), None)
    if first is None or drift is None:
        return f"{where}: field {name!r} cannot be stored as one column ({error}); make its values consistent"
    return (
        f"{where}:{line_of(drift[0])}: field {name!r} is {drift[1]} here but {first[1]} on line "
        f"{line_of(first[0])}; make the field's type consistent"
    )


def _byte_range(handle: Any, start: int, stop: int, limit: int) -> tuple[Iterator[Line], Callable[[], int]]:
    """Lines whose first byte lies in ``[start, stop)``, as they are read, and the offset of the
    first one (known once the lines are read)."""
    first = [start]

    def lines() -> Iterator[Line]:
        position = start - 1 if start > 0 else 0
        handle.seek(position)
        items = bounded_lines(blocks_of(handle), limit)
        if start > 0:  # the end of the line before: its unit's
            position += size_of(next(items, b""))
        first[0] = position
        for line in items:
            if position >= stop:
                break
            yield line
            position += size_of(line)

    return lines(), lambda: first[0]


def line_number(fs: Any, path: str, offset: int) -> int:
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


@dataclass(frozen=True)
class _Sample:
    """The first lines of a file, as planning measures them."""

    average_line: float  # bytes
    lines: int  # complete lines sampled
    whole: bool  # the sample is the whole (decompressed) file
    decompressed: int = 0  # bytes of a compressed file's sample...
    compressed: int = 0  # ...and the compressed bytes they took

    def compressed_rows(self, size: int) -> int:
        """Lines of a compressed file of ``size`` bytes: counted if the sample held it all, else
        estimated from the sample's compression ratio, never by decompressing the whole file."""
        if self.whole:
            return self.lines
        ratio = self.decompressed / max(1, self.compressed)
        return max(1, round(size * ratio / self.average_line))


def _check_sample(fs: Any, file: InputFile, where: str, options: ReadOptions) -> _Sample:
    """Parse the first lines of a file: malformed JSON or a missing text field fail at plan time.

    Reads about SAMPLE_BYTES, on to the end of a longer first line but never past
    ``--max-line-bytes`` (such a line is a bad line), and for a compressed file through the same
    bounded, capped decompression as its worker.
    """
    limit = options.max_line_bytes
    with fs.open(file.path, "rb") as handle:
        stream: Iterable[bytes] = blocks_of(handle)
        decompressed = None
        if is_compressed(file.path):
            decompressed = Decompressed(
                handle, _suffix(file.path), decompression_cap(file.size, options.max_decompressed_bytes), where
            )
            stream = decompressed
        head = _Head(stream, SAMPLE_BYTES, limit)
        try:
            lines = list(bounded_lines(head, limit))
        except DecompressionCapPassed:  # the worker reports it as a bad line
            lines, head.ended = [], False
    if lines and not head.ended and not isinstance(lines[-1], Unreadable):
        lines.pop()  # cut by the sample's end
    counted = len(lines)
    lines = lines[:SAMPLE_LINES]
    parsed = parse_lines(lines, where, lambda: 1, True, options.on_bad_lines)
    records, text_column = parsed.records, options.text_column
    if records and not any(text_column in record for record in records):
        found = sorted({key for record in records for key in record})
        raise InputError(
            f"{where}: no {text_column!r} field in the first {len(records)} records; "
            f"fields found: {', '.join(found)}. Pass --text-column NAME"
        )
    consumed = sum(size_of(line) for line in lines) or head.read
    average = consumed / max(1, len(lines))
    if decompressed is None:
        return _Sample(average, counted, head.ended)
    return _Sample(average, counted, head.ended, decompressed.decompressed, decompressed.compressed)


class _Head:
    """The first blocks of a stream: about ``size`` bytes, more until a line ends, never past ``limit`` + 2."""

    def __init__(self, blocks: Iterable[bytes], size: int, limit: int) -> None:
        self.blocks, self.size, self.limit = blocks, size, limit
        self.read = 0
        self.ended = False  # the whole stream was read

    def __iter__(self) -> Iterator[bytes]:
        newline = False
        for block in self.blocks:
            yield block
            self.read += len(block)
            newline = newline or b"\n" in block
            if (self.read >= self.size and newline) or self.read > self.limit + 1:
                return
        self.ended = True


def write(table: pa.Table, metadata: Mapping[str, Any] | None = None, compression: str = "none") -> bytes:
    """One compact JSON object per row, ``\\n``-terminated, gzip (mtime 0) if asked: no metadata, as
    JSON has no place for it (the manifest has it). Structs are objects, lists arrays, maps arrays of
    ``[key, value]`` pairs, nulls null; NaN and ±infinity are null (JSON has none); dates, times and
    timestamps ISO 8601 strings; durations seconds; decimals strings (exact); binary base64."""
    out = io.StringIO()
    for batch in table.to_batches(max_chunksize=8192):
        for row in batch.to_pylist():
            try:
                line = json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_value)
            except ValueError:  # a NaN or infinity somewhere in the row: the slow path
                line = json.dumps(_finite(row), ensure_ascii=False, separators=(",", ":"), default=_json_value)
            out.write(line)
            out.write("\n")
    data = out.getvalue().encode()
    return gzip.compress(data, compresslevel=6, mtime=0) if compression == "gzip" else data


def _json_value(value: Any) -> Any:
    """What ``json.dumps`` cannot write itself."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def _finite(value: Any) -> Any:
    """``value`` with every NaN and infinity replaced by None, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def head(part: IO[bytes], n: int, compression: str) -> list[dict[str, Any]]:
    """The first ``n`` rows of a part, decompressing only as far as they go."""
    with gzip.open(part) if compression == "gzip" else contextlib.nullcontext(part) as lines:
        return [json.loads(line) for line in itertools.islice(lines, n)]


FORMAT = Format(
    name="jsonl",
    suffix=".jsonl",
    input_suffixes=(".jsonl", ".ndjson", ".json"),
    input_compressions=COMPRESSED_SUFFIXES,
    compressions=("none", "gzip"),
    describe=describe,
    read=read,
    write=write,
    head=head,
)
