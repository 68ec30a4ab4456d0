"""Each distinct input labelled once per run, across units and workers, and the answers fanned back out.

Rows repeat: support text ("thanks", "N/A"), boilerplate, a nightly snapshot of a table whose rows
mostly did not change. A row's input key (:mod:`batchnlp.tasks.keys`: the exact text, qa's
question, the task's settings and model) says when two rows must get the same answer, so a run
labels each key once:

1. **keys**, per unit (:func:`unit_pieces`): read the unit, key every annotatable row, keep each
   key's first row in the unit with its count, and cut them by key range into the run's buckets.
2. **labels**, per bucket (:func:`label_bucket`): the bucket's pieces from every unit, in unit order;
   each key's first unit owns it. Keys the label cache holds are looked up; the model runs once over
   the rest (one length-sorted batch stream over the whole bucket), and those are written to the cache.
3. **parts**, per unit (:func:`unit_labels` then :func:`batchnlp.execution.worker.annotate_unit`):
   the unit is read again, and each row's answer is taken from its key's bucket.

On Dask (:func:`submit`) the pieces travel between workers as task results, never through the
driver, and a lost worker's pieces are computed again like any task's. A bucket holds about
:data:`UNITS_PER_BUCKET` units' distinct inputs, so no task holds more than a few units' worth of
rows whatever the corpus's size.

The units go in waves (:func:`wave_size`: at most :data:`MAX_WAVES`): a wave's parts are written,
and recorded for ``--resume``, as soon as its buckets are labelled, so a run killed mid-way loses
at most a wave's labelling, and a drain lets the waves in flight finish (:class:`Feeding`). Each
bucket hands its labels so far (keys and values, not texts) to the same bucket of the next wave,
so an input is run once per run however far apart its rows are.

The model's work is attributed to the unit that owns each key: a unit's part record counts the
tokens of the keys it owns (so the run's totals are what the model ran), its share of the bucket's
padding and seconds in proportion, and what its rows did not cost (``tokens_saved``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchnlp.errors import JobFailed
from batchnlp.execution.worker import (
    ModelPlugin,
    Refused,
    UnitJob,
    annotate_unit,
    guarded,
    plugin_of,
    read_rows,
    refusal,
    task_rows,
)
from batchnlp.inference.engine import BatchStats
from batchnlp.inference.heartbeat import beat
from batchnlp.io.formats import WorkUnit
from batchnlp.ledger.record import PartResult
from batchnlp.tasks.keys import KEY_TYPE, bucket_of, key_matrix

# A bucket holds the distinct inputs of about this many units (fewer after deduplication): its task's memory.
UNITS_PER_BUCKET = 4
# Buckets per worker thread at least, so the model's work spreads over every worker.
BUCKETS_PER_THREAD = 2
# A wave has at least this many units per worker thread, and a run at most MAX_WAVES waves.
UNITS_PER_THREAD_IN_A_WAVE = 4
MAX_WAVES = 8

INPUT_PREFIX = "input:"  # a task's input columns (qa's question column) in a piece, apart from key, count and text


@dataclass(frozen=True)
class Bucket:
    """A bucket's labelling task, as the stall watch and error messages name it."""

    index: int
    count: int
    wave: int = 0

    @property
    def id(self) -> str:
        return f"wave-{self.wave:03d}-bucket-{self.index:05d}"

    def describe(self) -> str:
        return f"distinct inputs of bucket {self.index + 1} of {self.count}, wave {self.wave + 1}"


@dataclass
class Feeding:
    """The tasks a deduplicated run's parts depend on, as the runner's collection loop
    (:func:`batchnlp.execution.collect.results`) watches them."""

    watched: dict[Any, WorkUnit | Bucket] = field(default_factory=dict)  # keys and labels tasks: stall-watched
    waves: dict[str, int] = field(default_factory=dict)  # each part task's key → its wave

    def in_flight(self, started: set[str]) -> set[str]:
        """The part tasks a drain lets finish: those of every wave whose labelling has begun."""
        going = {
            item.wave
            for future, item in self.watched.items()
            if isinstance(item, Bucket) and (future.key in started or future.done())
        }
        return {key for key, wave in self.waves.items() if wave in going}


@dataclass
class Share:
    """One unit's share of one bucket: the answers to its keys there, and its part of the bucket's work."""

    answers: dict[str, pa.Table] = field(default_factory=dict)  # task → key, value
    stats: dict[str, BatchStats] = field(default_factory=dict)
    figures: dict[str, dict[str, float]] = field(default_factory=dict)  # task → rows, distinct, run, cached, tokens...
    seconds: dict[str, float] = field(default_factory=dict)  # task → model seconds attributed
    cache_files: list[dict[str, Any]] = field(default_factory=list)


def bucket_count(units: int, threads: int) -> int:
    """How many buckets a run of ``units`` units on ``threads`` worker threads cuts its keys into."""
    return max(BUCKETS_PER_THREAD * max(threads, 1), math.ceil(units / UNITS_PER_BUCKET))


def first_occurrences(keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The index of each distinct key's first row, in row order, and how many rows hold it."""
    if not len(keys):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.ascontiguousarray(key_matrix(keys)).view("V16").ravel()
    _, first, counts = np.unique(rows, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    return first[order], counts[order]


def unit_pieces(unit: WorkUnit, job: UnitJob, plugin: ModelPlugin, buckets: int) -> list[dict[str, pa.Table]]:
    """The keys pass of one unit: per bucket, per task, the unit's distinct inputs there (key, count,
    text and the task's input columns), each at its first row in the unit."""
    read = read_rows(unit, job)
    pieces: list[dict[str, pa.Table]] = [{} for _ in range(buckets)]
    for name, task in plugin.tasks.items():
        inputs = task_rows(task, read)
        keys = plugin.keys(name, inputs)
        columns = {"key": keys, "text": pa.array(inputs.texts, pa.string())}
        if inputs.rows is not None:
            columns |= {INPUT_PREFIX + column: inputs.rows.column(column) for column in inputs.rows.column_names}
        first, counts = first_occurrences(keys)
        distinct = pa.table(columns).take(pa.array(first, pa.int64()))
        distinct = distinct.append_column("count", pa.array(counts, pa.int64()))
        which = bucket_of(distinct.column("key").combine_chunks(), buckets)
        for index in range(buckets):
            pieces[index][name] = distinct.filter(pa.array(which == index))
    beat()
    return pieces


@dataclass
class Known:
    """The distinct inputs of a bucket the model need not run: labelled in an earlier wave of the run,
    or found in the label cache. Per distinct input: ``hit`` (known), ``earlier`` (from an earlier wave),
    ``cached`` (from the cache); for the hits, in order, their ``values`` and ``tokens``."""

    hit: np.ndarray
    earlier: np.ndarray
    cached: np.ndarray
    values: pa.Array
    tokens: np.ndarray
    cost: dict[str, float]


def known_labels(keys: pa.Array, earlier: pa.Table | None, lookup: Any, space: str, value_type: pa.DataType) -> Known:
    """What ``earlier`` (this run's labels of the bucket so far: key, value, tokens) and the label cache
    (``lookup``, or None) already hold of ``keys``; the cache is asked only for the rest."""
    tables, cost = [], {}
    seen = np.zeros(len(keys), bool)
    if earlier is not None and earlier.num_rows:
        seen = pc.is_in(keys, value_set=earlier.column("key").combine_chunks()).to_numpy(zero_copy_only=False)
        tables.append(earlier.append_column("cached", pa.array(np.zeros(earlier.num_rows, bool))))
    if lookup is not None and (~seen).any():
        hits, cost = lookup.find(space, keys.filter(pa.array(~seen)), value_type)
        tables.append(hits.append_column("cached", pa.array(np.ones(hits.num_rows, bool))))
    if not tables:
        none = np.zeros(len(keys), bool)
        return Known(none, none, none, pa.array([], value_type), np.zeros(0, np.int64), cost)
    known = pa.concat_tables([table.cast(_entry_schema(value_type, cached=True)) for table in tables])
    index = pc.index_in(keys, value_set=known.column("key").combine_chunks())
    hit = index.is_valid().to_numpy(zero_copy_only=False)
    taken = known.take(index.filter(index.is_valid()))
    cached = np.zeros(len(keys), bool)
    cached[hit] = taken.column("cached").to_numpy()
    values = taken.column("value").combine_chunks()
    return Known(hit, seen, cached, values, taken.column("tokens").to_numpy(), cost)


def _entry_schema(value_type: pa.DataType, cached: bool = False) -> pa.Schema:
    """A bucket's labels, as the next wave and the label cache take them."""
    fields = [("key", KEY_TYPE), ("value", value_type), ("tokens", pa.int64())]
    return pa.schema(fields + [("cached", pa.bool_())] * cached)


def label_bucket(
    plugin: ModelPlugin, lookup: Any, pieces: Sequence[dict[str, pa.Table]], earlier: dict[str, pa.Table] | None = None
) -> tuple[list[Share], dict[str, pa.Table]]:
    """The labels pass of one bucket: every distinct input of the bucket's ``pieces`` (one per unit, in
    unit order) labelled once, by this run's earlier waves (``earlier``: per task, key, value, tokens),
    the label cache (``lookup``, or None) or the model. One :class:`Share` per unit, and the bucket's
    labels so far for the next wave."""
    shares = [Share() for _ in pieces]
    labelled: dict[str, pa.Table] = {}
    for name, task in plugin.tasks.items():
        clock = time.perf_counter()
        tables = [
            piece[name].append_column("unit", pa.array(np.full(piece[name].num_rows, i, np.int64)))
            for i, piece in enumerate(pieces)
        ]
        combined = pa.concat_tables(tables)
        first, _ = first_occurrences(combined.column("key"))
        distinct = combined.take(pa.array(first, pa.int64()))
        keys = distinct.column("key").combine_chunks()
        before = (earlier or {}).get(name)
        known = known_labels(keys, before, lookup, plugin.namespaces[name][0], task.output_type)
        values, tokens, stats = _label(task, distinct, known)
        entries = pa.table([keys, values, pa.array(tokens)], schema=_entry_schema(task.output_type))
        ran = ~known.hit
        if lookup is not None and ran.any():
            shares[0].cache_files.append(lookup.write(plugin.namespaces[name], entries.filter(pa.array(ran))))
        new = entries.filter(pa.array(~known.earlier))
        labelled[name] = pa.concat_tables([before, new]) if before is not None else new
        seconds = time.perf_counter() - clock
        # Each row of every piece's place among the distinct inputs: one hash of the keys for the whole bucket.
        places = pc.index_in(combined.column("key"), value_set=keys).to_numpy(zero_copy_only=False)
        _share_out(name, shares, tables, places, distinct, values, tokens, known, stats, seconds)
    return shares, labelled


def _label(task: Any, distinct: pa.Table, known: Known) -> tuple[pa.Array, np.ndarray, BatchStats]:
    """Each distinct input's value and tokens, in order (the model's for the inputs not ``known``),
    and the model's batch statistics."""
    todo = distinct.filter(pa.array(~known.hit))
    rows = None
    inputs = [column for column in todo.column_names if column.startswith(INPUT_PREFIX)]
    if inputs:
        rows = todo.select(inputs).rename_columns([column.removeprefix(INPUT_PREFIX) for column in inputs])
    prepared = task.preprocess(todo.column("text").to_pylist(), rows)
    column, stats = task.complete(prepared)
    tokens = np.zeros(distinct.num_rows, np.int64)
    tokens[~known.hit] = prepared.text_tokens()
    tokens[known.hit] = known.tokens
    # Values in distinct order: the model's for the rest, the known ones' for the hits.
    source = np.empty(distinct.num_rows, np.int64)
    source[~known.hit] = np.arange(todo.num_rows)
    source[known.hit] = todo.num_rows + np.arange(int(known.hit.sum()))
    values = pa.concat_arrays([column.cast(task.output_type), known.values.cast(task.output_type)])
    return values.take(pa.array(source)), tokens, stats


def _share_out(
    name: str,
    shares: list[Share],
    tables: list[pa.Table],
    places: np.ndarray,
    distinct: pa.Table,
    values: pa.Array,
    tokens: np.ndarray,
    known: Known,
    stats: BatchStats,
    seconds: float,
) -> None:
    """Each unit's answers from the bucket, and its part of the bucket's work: the tokens of the keys
    it owns, and in proportion to them the padding and seconds; the batch counts go to the first owner."""
    owner = distinct.column("unit").to_numpy()
    ran = ~known.hit
    run_tokens = np.bincount(owner[ran], weights=tokens[ran], minlength=len(shares)).astype(np.int64)
    total = int(run_tokens.sum())
    padded = np.floor(run_tokens / total * stats.padded_tokens).astype(np.int64) if total else run_tokens * 0
    first = int(np.flatnonzero(run_tokens)[0]) if total else None
    if first is not None:
        padded[first] += stats.padded_tokens - int(padded.sum())
    ends = np.cumsum([table.num_rows for table in tables])
    for i, (share, table) in enumerate(zip(shares, tables, strict=True)):
        own = (owner == i) & ~known.earlier  # an earlier wave's unit owns what that wave labelled
        index = places[ends[i] - table.num_rows : ends[i]]
        share.answers[name] = pa.table({"key": table.column("key"), "value": values.take(pa.array(index))})
        counts = table.column("count").to_numpy()
        part = run_tokens[i] / total if total else 0.0
        share.stats[name] = BatchStats(
            tokens=int(run_tokens[i]),
            padded_tokens=int(padded[i]),
            batches=stats.batches if i == first else 0,
            oom_splits=stats.oom_splits if i == first else 0,
            rescored=stats.rescored if i == first else 0,
            labelled_by=dict(stats.labelled_by) if i == first else {},
            input_wait_s=stats.input_wait_s * part,
            engine_s=stats.engine_s * part,
            first_output_at=stats.first_output_at if run_tokens[i] else None,
        )
        share.seconds[name] = seconds * part if total else (seconds if i == 0 else 0.0)
        share.figures[name] = {
            "rows": int(counts.sum()),
            "distinct": int(own.sum()),
            "run": int((own & ran).sum()),
            "cached": int((own & known.cached).sum()),
            "tokens_run": int(run_tokens[i]),
            "tokens_saved": int((counts * tokens[index]).sum()) - int(run_tokens[i]),
            **(known.cost if i == 0 else {}),
        }


class Labels:
    """One unit's answers from every bucket, looked up by the unit's keys (:func:`annotate_unit`'s ``labels``)."""

    def __init__(self, shares: Sequence[Share]) -> None:
        self.shares = shares
        self.cache_files = [file for share in shares for file in share.cache_files]

    def answer(
        self, name: str, keys: pa.Array, output_type: pa.DataType
    ) -> tuple[pa.Array, BatchStats, dict[str, float], float]:
        """The value of each key, the unit's part of the model's work, its dedup figures and model seconds."""
        answers = pa.concat_tables([share.answers[name] for share in self.shares])
        index = pc.index_in(keys, value_set=answers.column("key").combine_chunks())
        if index.null_count:  # every key was in the unit's pieces: a missing one is a bug, never a silent null
            raise JobFailed(f"task {name!r}: {index.null_count} rows have no label from their bucket; run again")
        values = answers.column("value").combine_chunks().take(index)
        stats, figures = BatchStats(), {}
        for share in self.shares:
            stats.add(share.stats[name])
            figures = _added(figures, share.figures[name])
        return values.cast(output_type), stats, figures, sum(share.seconds[name] for share in self.shares)


def submit(
    client: Any, units: Sequence[WorkUnit], job: UnitJob, run_id: str, threads: int, lookup: Any = None
) -> tuple[dict[Any, WorkUnit], Feeding]:
    """The three passes' tasks for ``units``, wave after wave (:func:`wave_size`): the parts' futures
    (each unit's, as the runner collects them) and the keys' and buckets' tasks that feed them
    (watched for stalls as units are). A wave's buckets take the same buckets' labels of the wave
    before, so each distinct input runs once per run."""
    size = wave_size(len(units), threads)
    count = bucket_count(size, threads)
    prefix = f"batchnlp-{run_id}"
    earlier: list[Any] = [None] * count
    parts: dict[Any, WorkUnit] = {}
    feeding = Feeding()
    for wave, start in enumerate(range(0, len(units), size)):
        members = units[start : start + size]
        first = -wave  # Dask runs higher priorities first: wave after wave
        keys = [
            client.submit(guarded, _keys, unit, job, count, key=f"{prefix}-keys-{unit.id}", pure=False, priority=first)
            for unit in members
        ]
        feeding.watched.update(zip(keys, members, strict=True))  # a keys task stalls as its unit's read would
        labelled = []
        for index in range(count):
            bucket = Bucket(index, count, wave)
            pieces = [
                client.submit(_element, future, index, key=f"{prefix}-piece-{unit.id}-{index}", priority=first)
                for future, unit in zip(keys, members, strict=True)
            ]
            future = client.submit(
                guarded,
                _labels,
                job,
                lookup,
                earlier[index],
                *pieces,
                key=f"{prefix}-{bucket.id}",
                pure=False,
                priority=first,
            )
            feeding.watched[future] = bucket
            labelled.append(future)
            earlier[index] = client.submit(_so_far, future, key=f"{prefix}-{bucket.id}-labels", priority=first)
        for position, unit in enumerate(members):
            shares = [
                client.submit(_share, future, position, key=f"{prefix}-share-{unit.id}-{index}", priority=first)
                for index, future in enumerate(labelled)
            ]
            part = client.submit(
                guarded, _part, unit, job, *shares, key=f"{prefix}-{unit.id}", pure=False, priority=first
            )
            parts[part] = unit
            feeding.waves[part.key] = wave
    return parts, feeding


def wave_size(units: int, threads: int) -> int:
    """Units per wave: a wave's parts are written (and recorded for ``--resume``) as soon as its buckets
    are labelled, so a run killed mid-way loses at most a wave's labelling; fewer waves, fewer tasks."""
    return max(UNITS_PER_THREAD_IN_A_WAVE * max(threads, 1), math.ceil(units / MAX_WAVES))


def _keys(unit: WorkUnit, job: UnitJob, buckets: int) -> list[dict[str, pa.Table]]:
    """The keys pass as a Dask task, with the worker's models."""
    return unit_pieces(unit, job, plugin_of(job), buckets)


def _labels(job: UnitJob, lookup: Any, earlier: Any, *pieces: Any) -> tuple[list[Share], dict[str, pa.Table]] | Refused:
    """The labels pass as a Dask task; a unit's refusal (its read failed) passes on."""
    if (refused := refusal([earlier, *pieces])) is not None:
        return refused
    return label_bucket(plugin_of(job), lookup, pieces, earlier)


def _part(unit: WorkUnit, job: UnitJob, *shares: Any) -> PartResult | Refused:
    """The parts pass as a Dask task: :func:`annotate_unit` with the unit's answers from every bucket."""
    if (refused := refusal(shares)) is not None:
        return refused
    return annotate_unit(unit, job, plugin_of(job), Labels(shares))


def _element(result: Any, index: int) -> Any:
    """One bucket's piece of a keys task's list; a refusal passes on whole (the next task returns it)."""
    return result if isinstance(result, Refused) else result[index]


def _share(result: Any, position: int) -> Any:
    """One unit's :class:`Share` of a labels task's result; a refusal passes on whole."""
    return result if isinstance(result, Refused) else result[0][position]


def _so_far(result: Any) -> Any:
    """A labels task's labels of its bucket so far, for the next wave's; a refusal passes on whole."""
    return result if isinstance(result, Refused) else result[1]


def _added(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {key: a.get(key, 0) + b.get(key, 0) for key in {**a, **b}}
