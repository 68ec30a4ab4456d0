"""Hive-style partitions on input: ``key=value`` directories below the input root become columns.

A source laid out as ``…/date=2026-11-24/lang=en/part-0.parquet`` gives every row of that file
the columns ``date`` and ``lang``, typed as ``pyarrow.dataset.HivePartitioning.discover(
infer_dictionary=False)`` would type them: ``int32`` when every value of a key parses as an
int32 (Arrow's own string → int32 cast decides), else ``string``. Values are URI-decoded;
``__HIVE_DEFAULT_PARTITION__`` is null, as is a key a file's path lacks. Partition columns come
after the files' own columns, in the order the keys first appear in the sorted listing.

On output (``--partition-by``), :func:`directory` writes the same encoding back, so a round
trip is exact: values as Arrow casts them to string, URI-encoded (as pyarrow's default
``segment_encoding="uri"``); null (and the empty string, as Hive and Spark do) is
``__HIVE_DEFAULT_PARTITION__``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

import pyarrow as pa

from batchnlp.errors import InputError

NULL_VALUE = "__HIVE_DEFAULT_PARTITION__"


@dataclass(frozen=True)
class Partitioning:
    """The partition keys of one input: its root (an fsspec path) and each key's type."""

    root: str
    schema: pa.Schema

    def values(self, path: str) -> dict[str, str | None]:
        """The raw ``key=value`` segments of ``path``'s directories below the root."""
        return segments(path, self.root)

    def check(self, schema: pa.Schema, where: str) -> None:
        """A column of the data that a partition key would shadow stops the job, naming both."""
        for name in self.schema.names:
            if name in schema.names:
                raise InputError(
                    f"{where} has a column {name!r}, and the input's paths have {name}=... directories "
                    "(Hive partitions) that would add one too; rename the column or the directories"
                )

    def extend(self, schema: pa.Schema) -> pa.Schema:
        """``schema`` with the partition columns appended."""
        for column in self.schema:
            schema = schema.append(column)
        return schema

    def append(
        self, table: pa.Table, path: str, where: str, values: Mapping[str, str | None] | None = None
    ) -> pa.Table:
        """``table`` (every row from the file at ``path``) with its constant partition columns.

        ``values`` (as text) replace those of the path where the file's location does not carry
        them: a Delta table keeps them in its log.
        """
        self.check(table.schema, where)
        raw = self.values(path) if values is None else values
        for column in self.schema:
            value = pa.array([raw.get(column.name)], pa.string()).cast(column.type)[0]
            table = table.append_column(column, pa.repeat(value, table.num_rows))
        return table


def segments(path: str, root: str) -> dict[str, str | None]:
    """``key=value`` directory segments of ``path`` below ``root`` (the file name is not one)."""
    root = root.rstrip("/")
    if not root or not path.startswith(root + "/"):
        return {}
    return relative_segments(path[len(root) + 1 :])


def relative_segments(path: str) -> dict[str, str | None]:
    """``key=value`` directory segments of a relative ``path`` (``date=2026-11-24/part-00000.parquet``)."""
    found: dict[str, str | None] = {}
    for segment in path.split("/")[:-1]:
        key, equals, value = segment.partition("=")
        if equals and key:
            value = unquote(value)
            found[unquote(key)] = None if value == NULL_VALUE else value
    return found


def discover(root: str | None, paths: Iterable[str]) -> Partitioning | None:
    """The partitioning of files under ``root``, or None when no path has a ``key=value`` directory."""
    if not root:
        return None
    seen: dict[str, list[str]] = {}
    for path in paths:
        for key, value in segments(path, root).items():
            seen.setdefault(key, [])
            if value is not None:
                seen[key].append(value)
    if not seen:
        return None
    return Partitioning(root.rstrip("/"), pa.schema([pa.field(key, _infer(values)) for key, values in seen.items()]))


def _infer(values: list[str]) -> pa.DataType:
    """int32 when Arrow casts every value to int32 (as pyarrow's discovery does), else string.

    A key whose every value is ``__HIVE_DEFAULT_PARTITION__`` is a string column of nulls
    (pyarrow cannot infer a type for it and refuses the dataset).
    """
    if not values:
        return pa.string()
    try:
        pa.array(values, pa.string()).cast(pa.int32())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.string()
    return pa.int32()


def encode(value: str | None) -> str:
    """One partition value as a directory name segment: URI-encoded, or the null marker."""
    return NULL_VALUE if value is None or value == "" else quote(value, safe="")


def directory(keys: Iterable[tuple[str, str | None]]) -> str:
    """``key=value/key=value`` for the (key, value-as-string) pairs, in order."""
    return "/".join(f"{quote(key, safe='')}={encode(value)}" for key, value in keys)
