"""What a run would cost, before it runs: rows, tokens, padding, wall time and GPU-hours.

``batchnlp plan`` prints it; the runner records it in the manifest, so the report can show the
estimate beside what happened. Nothing here writes anywhere.

How each figure is found:

- **Units** are the ones :func:`batchnlp.execution.plan.plan` cuts, exactly as ``batchnlp run`` would.
- **Rows and tokens** come from a random sample of a few hundred rows. Plain JSONL is sampled by
  byte: the line holding each of n evenly spread random offsets, drawn with probability ∝ its
  length, so rows = bytes × mean(1 / line length) over the sample (and tokens likewise), unbiased
  whatever the order of the lines. Parquet and compressed JSONL, whose row counts are exact
  (footers, counted lines), are sampled by row from a few whole units read as a worker reads
  them. Each total is a Horvitz–Thompson estimate with a 95% interval from the sample's variance
  (Cochran, *Sampling Techniques*, 9A).
- **Tokens** are counted by each task's own ``preprocess`` step on its real tokenizer (classification
  truncation, QA windows with their question and stride), on a task built without an engine:
  only the tokenizer and config are loaded, never the weights.
- **Padding** runs the sampled lengths, resampled to the size of a unit, through the engine's
  batching (:func:`batchnlp.inference.batching.token_budget_batches`, pad multiple 8 on CUDA, 1 on CPU).
- **Time** divides tokens by a measured throughput (:mod:`batchnlp.execution.performance`), and adds
  each shard's start-up (the measured first-row latency).
"""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pyarrow as pa

from batchnlp.errors import ModelError, SpecError
from batchnlp.execution.plan import Plan
from batchnlp.inference.backends import resolve_backend, task_backend
from batchnlp.inference.batching import PAD_MULTIPLE, token_budget_batches
from batchnlp.inference.engine import choose, default_tokens_per_batch
from batchnlp.io.formats import WorkUnit, jsonl, read_unit
from batchnlp.io.formats.base import WHOLE_STREAM
from batchnlp.io.formats.lines import Line, blocks_of, bounded_lines, overlong, size_of
from batchnlp.io.storage import Location
from batchnlp.spec import JobSpec, TaskSpec
from batchnlp.tasks import TASKS
from batchnlp.tasks.base import Task, value_problem
from batchnlp.util.compat import strip_protocol

SAMPLE_ROWS = 400  # rows tokenised per plan: about a second of tokenising, a 95% interval of a few percent
MAX_UNITS_READ = 4  # Parquet / compressed JSONL: whole units read (as a worker reads them) to draw rows from
COMPRESSED_HEAD_LINES = 2000  # of a compressed file's unit, read in place of all of it
COMPRESSED_HEAD_BYTES = 64 << 20  # ...and no more than this decompressed (a line of gigabytes is no sample)
PADDING_TRIALS = 3  # simulated units per task whose padding is averaged
LINE_WINDOW = 1 << 16  # bytes read on each side of a sampled offset; a longer line is read on to its ends
Z95 = 1.96
SEED = 0  # same input and settings, same estimate

# DistilBERT-base's non-embedding parameters (6 layers × (4·768² + 2·768·3072)): the figures' model.
BASE_PARAMETERS = 6 * (4 * 768**2 + 2 * 768 * 3072)


@dataclass(frozen=True)
class Interval:
    """An estimated total and its 95% interval; ``low == high == value`` when counted exactly."""

    value: float
    low: float
    high: float

    @classmethod
    def around(cls, value: float, half_width: float) -> Interval:
        return cls(value, max(0.0, value - half_width), value + half_width)

    def scaled(self, factor: float) -> Interval:
        return Interval(self.value * factor, self.low * factor, self.high * factor)

    def to_record(self) -> dict[str, int]:
        return {"estimate": round(self.value), "low": math.floor(self.low), "high": math.ceil(self.high)}


@dataclass
class Stratum:
    """Sampled items of one kind of unit: each has a size ``x`` (bytes of a line, or 1 for a row),
    and the population's total size ``total``; ``rows`` holds the item's row, or None (blank or bad line)."""

    total: float
    by_row: bool  # items are rows (or lines) of a known count, drawn without replacement; else lines by byte
    sizes: list[float]
    rows: list[dict[str, Any] | None]

    def estimate(self, values: Sequence[float], population: float | None = None) -> Interval:
        """The population total of ``values`` (one per item), with its 95% interval.

        Item i was drawn with probability ∝ its size x_i (a line, by a random byte inside it; a row,
        x = 1), so total = (total size) × mean(y_i / x_i), unbiased whatever the order of the input
        (Horvitz–Thompson). ``population``: the count of items drawn without replacement (rows), for
        the finite-population correction.
        """
        n = len(values)
        if n == 0:
            return Interval(0.0, 0.0, 0.0)
        ratios = [y / x for y, x in zip(values, self.sizes, strict=True)]
        mean = sum(ratios) / n
        total = self.total * mean
        if n < 2:
            return Interval.around(total, total)
        variance = sum((r - mean) ** 2 for r in ratios) / (n - 1)
        fpc = max(0.0, 1 - n / population) if population else 1.0
        return Interval.around(total, Z95 * self.total * math.sqrt(variance * fpc / n))


@dataclass(frozen=True)
class Sample:
    """The input's sampled rows, by stratum (plain JSONL lines; rows of exactly counted units)."""

    strata: list[Stratum]

    @property
    def size(self) -> int:
        return sum(len(s.sizes) for s in self.strata)

    def total(self, values_of: Any) -> Interval:
        """Sum over strata of each one's estimate of ``values_of(stratum)``; intervals add in quadrature."""
        parts = []
        for stratum in self.strata:
            population = stratum.total if stratum.by_row else None
            parts.append(stratum.estimate(values_of(stratum), population))
        value = sum(p.value for p in parts)
        half = math.sqrt(sum(((p.high - p.low) / 2) ** 2 for p in parts))
        return Interval.around(value, half) if half else Interval(value, value, value)


# ------------------------------------------------------------------ sampling


def sample_input(spec: JobSpec, job_plan: Plan, size: int = SAMPLE_ROWS) -> Sample:
    """About ``size`` rows drawn at random over the whole input, split between strata by their rows."""
    rng = random.Random(SEED)
    plain = [u for u in job_plan.units if u.format == "jsonl"]
    counted = [u for u in job_plan.units if u.format != "jsonl"]
    rows_of = {id(u): u.rows or 0 for u in job_plan.units}
    all_rows = sum(rows_of.values()) or 1
    strata = []
    if plain:
        share = max(2, round(size * sum(rows_of[id(u)] for u in plain) / all_rows))
        strata.append(_sample_lines(spec, job_plan.source, plain, share, rng))
    if counted:
        share = max(2, round(size * sum(rows_of[id(u)] for u in counted) / all_rows))
        strata.append(_sample_rows(spec, job_plan.source, counted, share, rng))
    return Sample(strata)


def _sample_lines(spec: JobSpec, source: Location, units: list[WorkUnit], size: int, rng: random.Random) -> Stratum:
    """Plain JSONL: the line holding each of ``size`` stratified random byte offsets.

    A line is drawn with probability ∝ its length, which :meth:`Stratum.estimate` divides back out.
    (The line *after* an offset is drawn ∝ the length of the line before it: biased wherever
    neighbouring lines are alike, as in sorted or generated input.)
    """
    total = sum(u.stop - u.start for u in units)
    offsets = sorted(int((k + rng.random()) * total / size) for k in range(size))
    by_file: dict[str, list[int]] = {}
    ends: dict[str, int] = {}
    passed, remaining = 0, iter(offsets)
    offset = next(remaining, None)
    for unit in units:
        length = unit.stop - unit.start
        while offset is not None and offset < passed + length:
            by_file.setdefault(unit.path, []).append(unit.start + offset - passed)
            offset = next(remaining, None)
        passed += length
        ends[unit.path] = max(ends.get(unit.path, 0), unit.stop)
    stratum = Stratum(float(total), False, [], [])
    fs = source.fs
    for url, positions in by_file.items():
        path = strip_protocol(fs, url)
        parsed: dict[int, dict[str, Any] | None] = {}  # a long line holds many offsets: parse (and count) it once
        for start, raw in _lines_around(fs, path, ends[url], positions, spec.max_line_bytes):
            if start not in parsed:
                parsed[start] = _parsed_row(spec, fs, path, start, raw)
            stratum.sizes.append(float(size_of(raw)))
            stratum.rows.append(parsed[start])
    return stratum


def _lines_around(fs: Any, path: str, size: int, offsets: list[int], limit: int) -> list[tuple[int, Line]]:
    """(start, the whole line with its newline) holding each offset: one concurrent ranged read of a
    window around each, more reads for a line longer than the window (at most ``limit`` each way)."""
    windows = [(max(0, o - LINE_WINDOW), min(size, o + LINE_WINDOW)) for o in offsets]
    chunks = fs.cat_ranges([path] * len(offsets), [lo for lo, _ in windows], [hi for _, hi in windows])
    lines = []
    for offset, (lo, hi), chunk in zip(offsets, windows, chunks, strict=True):
        before, after = chunk.rfind(b"\n", 0, offset - lo), chunk.find(b"\n", offset - lo)
        if (before < 0 and lo > 0) or (after < 0 and hi < size):
            lines.append(_line_around(fs, path, offset, limit))
        else:
            end = after + 1 if after >= 0 else len(chunk)
            lines.append((lo + before + 1, chunk[before + 1 : end]))
    return lines


def _line_around(fs: Any, path: str, offset: int, limit: int) -> tuple[int, Line]:
    """The line holding ``offset`` when it is longer than the read window: back to its start, then on,
    reading at most ``limit`` bytes each way. A line past that is drawn as what the reader makes
    of it, a bad line (its start unknown: keyed by ``offset``, its size at least ``limit``)."""
    start = offset
    with fs.open(path, "rb") as handle:
        while start > 0:
            if offset - start > limit:
                return offset, overlong(b"", limit + 1, 0, limit)
            low = max(0, start - LINE_WINDOW)
            handle.seek(low)
            newline = handle.read(start - low).rfind(b"\n")
            if newline >= 0:
                start = low + newline + 1
                break
            start = low
        handle.seek(start)
        return start, next(bounded_lines(blocks_of(handle, limit + 2), limit), b"")


def _parsed_row(spec: JobSpec, fs: Any, path: str, start: int, raw: Line) -> dict[str, Any] | None:
    """One sampled line as the reader makes it a row (None for a blank or skipped line); a bad line
    under ``--on-bad-lines stop`` stops the plan as it would stop the run, naming its line."""
    where = fs.unstrip_protocol(path)

    def first_line() -> int:  # counting lines reads the file up to ``start``: only to name a line that stops the plan
        return jsonl.line_number(fs, path, start) if spec.on_bad_lines == "stop" else 0

    parsed = jsonl.parse_lines([raw], where, first_line, start == 0, spec.on_bad_lines)
    result = jsonl.lines_table(parsed, spec.text_column, where, first_line)
    rows = _rows(result.table, result.errors, spec)
    return rows[0] if rows else None


def _sample_rows(spec: JobSpec, source: Location, units: list[WorkUnit], size: int, rng: random.Random) -> Stratum:
    """Rows of exactly counted units: up to MAX_UNITS_READ whole units (drawn by rows), rows drawn among them.

    A compressed file's unit counts lines: the ones that are not rows (blank, skipped) are drawn as
    None, so rows are estimated rather than taken as the line count.
    """
    chosen = _weighted_choice(units, [u.rows or 0 for u in units], MAX_UNITS_READ, rng)
    items: list[dict[str, Any] | None] = []
    options = replace(spec.read_options, partitioning=None)
    for unit in chosen:
        head = options
        if unit.stop == WHOLE_STREAM:  # a compressed file: its first lines, never all of it
            unit = replace(unit, stop=COMPRESSED_HEAD_LINES, rows=min(unit.rows or 0, COMPRESSED_HEAD_LINES))
            # What lies past the head's bytes is the workers' to read and judge, not the sample's.
            cap = min(options.max_decompressed_bytes, COMPRESSED_HEAD_BYTES)
            head = replace(options, max_decompressed_bytes=cap, on_bad_lines="skip")
        result = read_unit(source, unit, head)
        rows = _rows(result.table, result.errors, spec)
        items.extend(rows + [None] * max(0, (unit.rows or 0) - len(rows)))
    picked = rng.sample(items, min(size, len(items)))
    return Stratum(float(sum(u.rows or 0 for u in units)), True, [1.0] * len(picked), picked)


def _weighted_choice(units: list[WorkUnit], weights: list[int], count: int, rng: random.Random) -> list[WorkUnit]:
    """Up to ``count`` distinct units, each drawn with probability ∝ its rows (all of them when few)."""
    if len(units) <= count:
        return list(units)
    keyed = sorted(zip(units, weights, strict=True), key=lambda uw: rng.random() ** (1 / max(uw[1], 1)), reverse=True)
    return sorted((u for u, _ in keyed[:count]), key=lambda u: u.index)


def _rows(table: pa.Table, errors: list[str | None], spec: JobSpec) -> list[dict[str, Any]]:
    """A table's rows restricted to the columns tasks read, each with its reader's error (``_error``)."""
    columns = [spec.text_column, *(t.question_column for t in spec.tasks if t.question_column)]
    present = [c for c in dict.fromkeys(columns) if c in table.column_names]
    rows = table.select(present).to_pylist()
    return [{**row, "_error": error} for row, error in zip(rows, errors, strict=True)]


# ------------------------------------------------------------------ tokenising


@dataclass(frozen=True)
class Batching:
    """How the run's engine would batch: its token budget and pad multiple, without loading it."""

    tokens_per_batch: int
    pad_multiple: int

    @classmethod
    def planned(cls, device: str, precision: str, tokens_per_batch: int | None, backend: str = "torch") -> Batching:
        return cls(
            tokens_per_batch or default_tokens_per_batch(device, precision, backend),
            PAD_MULTIPLE if device == "cuda" else 1,  # as Engine pads
        )


def sequence_lengths(task: Task, row: dict[str, Any], text_column: str) -> list[int]:
    """Token counts of the sequences ``task`` would run for one row (QA: one per window); [] for a row
    it would not annotate (bad text, a missing or too long question), as the worker leaves it out."""
    text = row.get(text_column)
    if row["_error"] or value_problem(text, "text"):
        return []
    table = None
    if task.input_columns:
        table = pa.table({c: _one_value(row.get(c)) for c in task.input_columns})
        if task.row_problems(table)[0] is not None:
            return []
    return [len(ids) for ids in task.preprocess([text], table).input_ids]


def _one_value(value: Any) -> pa.Array:
    """A one-row column of ``value``: a null as a null string, as it sits in a string column."""
    return pa.array([value], pa.string()) if value is None or isinstance(value, str) else pa.array([value])


def padded_share(lengths_per_row: list[list[int]], unit_rows: int, batching: Batching) -> float:
    """Padded tokens per real token, for units of ``unit_rows`` rows drawn from the sampled rows,
    batched as the engine batches them."""
    if not any(lengths_per_row):
        return 1.0
    rng = random.Random(SEED)
    padded = tokens = 0
    for _ in range(PADDING_TRIALS):
        lengths = [n for row in rng.choices(lengths_per_row, k=max(1, unit_rows)) for n in row]
        multiple = batching.pad_multiple
        for batch in token_budget_batches(lengths, batching.tokens_per_batch, multiple):
            width = -(-max(lengths[i] for i in batch) // multiple) * multiple
            padded += width * len(batch)
        tokens += sum(lengths)
    return padded / tokens if tokens else 1.0


# ------------------------------------------------------------------ models


def tokenizer_directory(ref: str, storage_options: Any, scratch: Path) -> Path:
    """A local directory holding ``ref``'s config and tokenizer files, without its weights where it can.

    A local directory is used as it is; a pinned ref is staged and checked as workers stage it
    (its pin covers the weights); an unpinned remote prefix or Hub id gives only its small files.
    """
    from batchnlp.inference.models.refs import parse_ref
    from batchnlp.inference.models.stage import stage

    parsed = parse_ref(ref)
    if parsed.kind == "local" or parsed.digest:
        return stage(ref, storage_options)
    if parsed.kind == "hub":
        return _hub_tokenizer(parsed)
    return _remote_tokenizer(parsed, storage_options, scratch)


TOKENIZER_PATTERNS = ("*.json", "*.txt", "*.model")  # models.STAGED_PATTERNS without the weights


def _remote_tokenizer(parsed: Any, storage_options: Any, scratch: Path) -> Path:
    from batchnlp.inference.models.stage import remote_listing
    from batchnlp.io.storage import storage_errors

    fs, path = Location(parsed.location, storage_options).split()
    target = scratch / str(abs(hash(parsed.location)))
    target.mkdir(parents=True, exist_ok=True)
    for name, _ in remote_listing(parsed, storage_options):
        if any(fnmatchcase(name, pattern) for pattern in TOKENIZER_PATTERNS):
            source = f"{path.rstrip('/')}/{name}"
            with storage_errors("read", fs.unstrip_protocol(source), ModelError, what="model"):
                fs.get_file(source, str(target / name))
    return target


def _hub_tokenizer(parsed: Any) -> Path:
    from huggingface_hub import snapshot_download

    from batchnlp.inference.models.stage import hub_error

    try:
        return Path(snapshot_download(parsed.location, revision=parsed.revision, allow_patterns=TOKENIZER_PATTERNS))
    except Exception as e:  # network, auth, missing repo: as the run reports them
        raise hub_error(parsed, e) from e


def model_parameters(config: Any) -> int:
    """Non-embedding parameters of an encoder from its config (attention 4·d², feed-forward 2·d·ffn per layer):
    the work per token, which is what makes one model slower than another."""
    dim = getattr(config, "hidden_size", None) or getattr(config, "dim", 768)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", 6)
    ffn = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None) or 4 * dim
    return layers * (4 * dim * dim + 2 * dim * ffn)


# ------------------------------------------------------------------ throughput and cost


def planned_device(spec: JobSpec) -> tuple[str, str]:
    """The device and precision the run would pick: ``auto`` as on this machine; ``cuda`` even where this
    machine has none (a plan for a GPU run is often made on a laptop)."""
    cuda = spec.device == "cuda"
    if spec.device == "auto":
        import torch

        cuda = torch.cuda.is_available()
    return choose(spec.device, spec.precision, cuda=cuda, cuda_bf16=True)


def default_throughput(
    device: str, precision: str, workers: int, parameters: int, backend: str = "torch"
) -> tuple[float, float, str]:
    """(tokens/s of one shard, its start-up seconds, where the figure comes from), from the measured
    figures (:mod:`batchnlp.execution.performance`).

    CPU figures are per worker process, times the run's workers. A model with more non-embedding
    parameters than DistilBERT-base is assumed slower in proportion; a smaller one no faster
    (tokenising and kernel launches bound small models: docs/performance.md's GPU notes).
    """
    from batchnlp.execution.performance import measured

    figure = measured(device, precision, backend=backend)
    if figure is None:
        raise SpecError(
            f"no measured throughput for {device} {precision}; pass --tokens-per-second N (tokens/s of one shard)"
        )
    rate, source = figure.rate, f"{figure.source} ({figure.machine}, {figure.backend})"
    scale = min(1.0, BASE_PARAMETERS / parameters) if parameters else 1.0
    if figure.per == "worker":
        rate, source = rate * workers, f"{source}; {figure.rate:,.0f} a worker × {workers} workers"
    if scale < 1:
        source += f"; × {scale:.3f} for a model of {parameters / 1e6:.0f} M non-embedding parameters (DistilBERT 42 M)"
    return rate * scale, figure.first_row_s, source


def shard_counts(shards: int) -> list[int]:
    """The shard counts to show: 1..N when N is small, else 1, 2, 4, ... and N."""
    if shards <= 8:
        return list(range(1, shards + 1))
    counts = [2**k for k in range(shards.bit_length()) if 2**k < shards]
    return [*counts, shards]


def shard_costs(
    tokens: Interval, units: int, tokens_per_second: float, startup: float, shards: int, price: float | None
) -> dict[str, Any]:
    """Wall time and machine-hours of a run split into ``shards`` shards of whole units, each starting up once.

    The longest shard holds ⌈units/shards⌉ units; every shard holds its machine for its whole time.
    """
    share = math.ceil(units / shards) / units if units else 0.0
    walls = [startup + tokens_at * share / tokens_per_second for tokens_at in (tokens.value, tokens.low, tokens.high)]
    hours = shards * walls[0] / 3600
    return {
        "shards": shards,
        "wall_seconds": round(walls[0], 1),
        "wall_seconds_low": round(walls[1], 1),
        "wall_seconds_high": round(walls[2], 1),
        "machine_hours": round(hours, 4),
        "cost_usd": round(hours * price, 2) if price is not None else None,
    }


# ------------------------------------------------------------------ the estimate


@contextmanager
def _tasks(spec: JobSpec) -> Iterator[list[tuple[TaskSpec, Task]]]:
    """Each task of ``spec`` built without an engine, on its tokenizer and config alone (refs checked as
    the run checks them): its ``preprocess`` runs, no weights are read."""
    from batchnlp.inference.models.stage import check_ref

    with tempfile.TemporaryDirectory(prefix="batchnlp-plan-") as scratch:
        built = []
        for task_spec in spec.tasks:
            check_ref(task_spec.model, spec.storage_options)
            if task_spec.student:  # a cascade's: the plan counts the teacher's tokens, as if it labelled every row
                check_ref(task_spec.student, spec.storage_options)
            directory = tokenizer_directory(task_spec.model, spec.storage_options, Path(scratch))
            built.append((task_spec, TASKS[task_spec.kind].load()(task_spec, directory, None, spec.max_length)))
        yield built


def estimate_from_plan(
    spec: JobSpec,
    job_plan: Plan,
    sample_rows: int = SAMPLE_ROWS,
    tokens_per_second: float | None = None,
) -> dict[str, Any]:
    """The run's estimate, for the manifest and ``batchnlp plan``: rows, tokens and padding per task, and
    the wall time of one shard. Cheap: reads a few hundred lines (or a few units) and tokenises them."""
    device, precision = planned_device(spec)
    sample = sample_input(spec, job_plan, sample_rows)
    rows = sample.total(lambda s: [0.0 if row is None else 1.0 for row in s.rows])
    unit_rows = max(1, round(rows.value / max(1, len(job_plan.units))))
    tasks: dict[str, Any] = {}
    total_tokens = Interval(0.0, 0.0, 0.0)
    total_padded = Interval(0.0, 0.0, 0.0)
    parameters = 0
    with _tasks(spec) as built:
        # The throughput of the backend the models run on: onnxruntime only where it exports one of them.
        resolved = resolve_backend(spec.backend, device, precision)
        backends = {task_backend(resolved, getattr(t.config, "model_type", None), t.loader.__name__) for _, t in built}
        backend = resolved if resolved in backends else "torch"
        batching = Batching.planned(device, precision, spec.tokens_per_batch, backend)
        for task_spec, task in built:
            counted: dict[int, list[int]] = {}  # by row object: a line drawn many times is tokenised once
            per_item = {id(s): [_counted(counted, task, row, spec) for row in s.rows] for s in sample.strata}
            tokens = sample.total(lambda s, per_item=per_item: [float(sum(n)) for n in per_item[id(s)]])
            kept = [n for lengths in per_item.values() for n in lengths if n]
            padded = tokens.scaled(padded_share(kept, unit_rows, batching))
            tasks[task_spec.name] = _task_record(task_spec, task, tokens, padded)
            total_tokens = _add(total_tokens, tokens)
            total_padded = _add(total_padded, padded)
            parameters = max(parameters, model_parameters(task.config))
    rate, startup, source = default_throughput(device, precision, _workers(spec, device), parameters, backend)
    rate = tokens_per_second or rate
    one = shard_costs(total_tokens, len(job_plan.units), rate, startup, 1, None)
    # A compressed file's rows are counted only where the plan's sample held all of it.
    exact = rows.low == rows.high and not any(unit.stop == WHOLE_STREAM for unit in job_plan.units)
    return {
        "rows": {**rows.to_record(), "exact": exact, "sampled": sample.size},
        "units": len(job_plan.units),
        "rows_per_unit": job_plan.rows_per_unit,
        "tasks": tasks,
        "tokens": total_tokens.to_record(),
        "padded_tokens": total_padded.to_record(),
        "padding_share": round(1 - total_tokens.value / total_padded.value, 4) if total_padded.value else 0.0,
        "device": device,
        "precision": precision,
        "backend": backend,
        "pad_multiple": batching.pad_multiple,
        "tokens_per_second": rate,
        "throughput_source": "--tokens-per-second" if tokens_per_second else source,
        "startup_seconds": startup,
        "wall_seconds": one["wall_seconds"],
    }


def _workers(spec: JobSpec, device: str) -> int:
    """Worker processes of the run, as the planner sizes units for them (CPU throughput is per worker)."""
    from batchnlp.cluster.local import local_layout
    from batchnlp.execution.plan import EXTERNAL_WORKERS_GUESS

    if spec.scheduler:
        return spec.workers or EXTERNAL_WORKERS_GUESS
    return local_layout(spec.workers, device).workers


def _counted(counted: dict[int, list[int]], task: Task, row: dict[str, Any] | None, spec: JobSpec) -> list[int]:
    if id(row) not in counted:
        counted[id(row)] = _lengths(task, row, spec)
    return counted[id(row)]


def _lengths(task: Task, row: dict[str, Any] | None, spec: JobSpec) -> list[int]:
    return [] if row is None else sequence_lengths(task, row, spec.text_column)


def _add(a: Interval, b: Interval) -> Interval:
    """Two tasks' totals: their errors come from the same rows, so the intervals add (not in quadrature)."""
    return Interval(a.value + b.value, a.low + b.low, a.high + b.high)


def _task_record(task_spec: TaskSpec, task: Task, tokens: Interval, padded: Interval) -> dict[str, Any]:
    record: dict[str, Any] = {"task": task_spec.kind, "model": task_spec.model, "max_length": task.max_length}
    if getattr(task, "doc_stride", None) is not None:  # a task that cuts long texts into windows
        record["doc_stride"] = task.doc_stride
    record["tokens"] = tokens.to_record()
    record["padded_tokens"] = padded.to_record()
    record["padding_share"] = round(1 - tokens.value / padded.value, 4) if padded.value else 0.0
    return record


def plan_run(
    spec: JobSpec,
    job_plan: Plan,
    shards: int = 1,
    tokens_per_second: float | None = None,
    gpu_hour_price: float | None = None,
    sample_rows: int = SAMPLE_ROWS,
) -> dict[str, Any]:
    """``batchnlp plan --json``: the input, the estimate, and wall time, machine-hours and cost by shard count."""
    estimate = estimate_from_plan(spec, job_plan, sample_rows, tokens_per_second)
    tokens = Interval(*(estimate["tokens"][k] for k in ("estimate", "low", "high")))
    rate, startup = estimate["tokens_per_second"], estimate["startup_seconds"]
    units = len(job_plan.units)
    return {
        "input": {
            "location": job_plan.source.display(),
            "format": job_plan.format,
            "files": len(job_plan.files),
            "bytes": sum(f.size for f in job_plan.files),
        },
        **estimate,
        "gpu_hour_price": gpu_hour_price,
        "by_shards": [shard_costs(tokens, units, rate, startup, n, gpu_hour_price) for n in shard_counts(shards)],
    }


# ------------------------------------------------------------------ text


def render_plan(figures: dict[str, Any]) -> str:
    """``batchnlp plan``'s text: the figures of :func:`plan_run`, each estimate with its 95% interval."""
    source, rows = figures["input"], figures["rows"]
    files = f"{source['files']} {source['format']} file{'s' * (source['files'] != 1)}"
    how = "exact" if rows["exact"] else f"95%: {_range(rows)}; {rows['sampled']} rows sampled"
    lines = [
        f"input       {source['location']}: {files}, {source['bytes']:,} bytes",
        f"units       {figures['units']:,}, about {figures['rows_per_unit']:,} rows each",
        f"rows        {rows['estimate']:,} ({how})",
        f"device      {figures['device']} {figures['precision']} on {figures['backend']}: batches padded to a "
        f"multiple of {figures['pad_multiple']}",
    ]
    for name, task in figures["tasks"].items():
        lines.append(
            f"task        {name} ({task['task']}, {task['model']}): {task['tokens']['estimate']:,} tokens "
            f"({_range(task['tokens'])}), {task['padded_tokens']['estimate']:,} padded "
            f"({task['padding_share']:.1%} padding)"
        )
    lines += [
        f"tokens      {figures['tokens']['estimate']:,} (95%: {_range(figures['tokens'])}), "
        f"{figures['padded_tokens']['estimate']:,} with padding ({figures['padding_share']:.1%})",
        f"throughput  {figures['tokens_per_second']:,.0f} tokens/s per shard ({figures['throughput_source']}); "
        f"start-up {figures['startup_seconds']:.1f} s per shard",
        "",
        f"{'shards':>6}  {'wall time':>10}  {'95% interval':>21}  {'machine-hours':>13}  {'cost (USD)':>10}",
    ]
    for row in figures["by_shards"]:
        interval = f"{_duration(row['wall_seconds_low'])} – {_duration(row['wall_seconds_high'])}"
        cost = f"{row['cost_usd']:,.2f}" if row["cost_usd"] is not None else "–"
        lines.append(
            f"{row['shards']:>6}  {_duration(row['wall_seconds']):>10}  {interval:>21}  "
            f"{row['machine_hours']:>13.4f}  {cost:>10}"
        )
    if figures["gpu_hour_price"] is None:
        lines.append("(pass --gpu-hour-price USD for the cost)")
    return "\n".join(lines)


def _range(figure: dict[str, int]) -> str:
    return f"{figure['low']:,} – {figure['high']:,}"


def _duration(seconds: float) -> str:
    """``42.0 s``, ``12 min 5 s``, ``3 h 20 min``: as precise as a plan is."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
