"""Every registered task, labelled once per distinct input (``batchnlp.execution.distinct``), gives the
parts labelling every row gives: the same labels and answers, scores within 1e-5, the same
``_error`` column; and the model runs each distinct input once across the units.

The three passes run in this process on the worker's own functions, as a Dask run chains them
(``tests/integration/execution/test_dedup.py`` runs them on a cluster).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchnlp.execution.distinct import Labels, label_bucket, unit_pieces
from batchnlp.execution.worker import ModelPlugin, UnitJob, annotate_unit
from batchnlp.io.formats import ReadOptions, WorkUnit
from batchnlp.io.storage import Location
from batchnlp.ledger.output import open_output
from batchnlp.ledger.record import PartResult
from batchnlp.spec import JobSpec
from tests.conformance.test_tasks import HUGE, SCHEMA, SETTINGS, whole_file_unit, write_input

TOLERANCE = 1e-5  # measured: 0.0 on these models (the same batches' arithmetic); bound for other batch mates

# Three units of one corpus: repeats inside a unit and across units, nulls, blanks, a text far
# over any window (twice), and texts that differ only in case or a trailing space (different inputs).
CORPUS = [
    ["thanks", "N/A", "thanks", None, "Thanks", "the seller delivers the goods", "  ", HUGE],
    ["N/A", "thanks ", "the seller delivers the goods", "thanks", None, "a new text here"],
    [HUGE, "a new text here", "", "thanks", "one more distinct text about who pays"],
]
ALL_ONE = [["the same text"] * 7, ["the same text"] * 5]
NO_REPEATS = [[f"distinct text {i}" for i in range(6)], [f"distinct text {i}" for i in range(6, 9)]]


def prepared(directory: Path, texts: list[str | None], plugin: ModelPlugin) -> tuple[WorkUnit, UnitJob]:
    directory.mkdir(parents=True)
    source = write_input(directory, texts, "jsonl")
    spec = JobSpec.from_settings({"input": str(source), "output": str(directory / "out"), "run_id": "dedup"})
    job = UnitJob(
        Location(str(source), {}), ReadOptions(), "id", SCHEMA, plugin.settings.plugin_name, open_output(spec).prepare()
    )
    return whole_file_unit(source, "jsonl", len(texts)), job


def deduplicated(
    directory: Path, corpus: list[list[str | None]], plugin: ModelPlugin, buckets: int, wave: int = 2
) -> list[PartResult]:
    """The run's three passes over ``corpus``'s units, ``wave`` units a wave: keys, a label pass per
    bucket (given the same bucket's labels of the waves before), parts."""
    units = [prepared(directory / f"unit-{i}", texts, plugin) for i, texts in enumerate(corpus)]
    earlier: list = [None] * buckets
    results = []
    for start in range(0, len(units), wave):
        members = units[start : start + wave]
        pieces = [unit_pieces(unit, job, plugin, buckets) for unit, job in members]
        shares = []
        for b in range(buckets):
            share, earlier[b] = label_bucket(plugin, None, [piece[b] for piece in pieces], earlier[b])
            shares.append(share)
        results += [
            annotate_unit(unit, job, plugin, Labels([share[i] for share in shares]))
            for i, (unit, job) in enumerate(members)
        ]
    return results


def every_row(directory: Path, corpus: list[list[str | None]], plugin: ModelPlugin) -> list[PartResult]:
    return [annotate_unit(*prepared(directory / f"unit-{i}", texts, plugin), plugin) for i, texts in enumerate(corpus)]


def part(result: PartResult) -> pa.Table:
    return pq.read_table(result.part.removeprefix("file://"))


def assert_same_part(name: str, once: pa.Table, each: pa.Table) -> None:
    assert once.column("_error").to_pylist() == each.column("_error").to_pylist()
    for a, b in zip(once.column(name).to_pylist(), each.column(name).to_pylist(), strict=True):
        assert_same_value(a, b)


def assert_same_value(a: object, b: object) -> None:
    """Labels, answers, offsets and list lengths equal; every score and embedding value to batching's rounding."""
    if isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= TOLERANCE, (a, b)
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_value(x, y)
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_value(a[key], b[key])
    else:
        assert a == b


@pytest.mark.parametrize("settings_key", list(SETTINGS))
@pytest.mark.parametrize("buckets, wave", [(1, 3), (3, 1), (2, 2)], ids=["one-bucket", "wave-per-unit", "two-waves"])
def test_each_distinct_input_once_gives_the_parts_of_every_row(tmp_path, plugins, settings_key, buckets, wave):
    plugin = plugins[settings_key]
    name = plugin.settings.tasks[0].name
    once = deduplicated(tmp_path / "once", CORPUS, plugin, buckets, wave)
    each = every_row(tmp_path / "each", CORPUS, plugin)

    for a, b in zip(once, each, strict=True):
        assert_same_part(name, part(a), part(b))
        assert (a.rows_in, a.rows_out, a.rejected, a.reasons) == (b.rows_in, b.rows_out, b.rejected, b.reasons)

    valid = [t for texts in CORPUS for t in texts if t is not None and t.strip()]
    figures = [r.dedup[name] for r in once]
    assert sum(f["rows"] for f in figures) == len(valid)
    assert sum(f["distinct"] for f in figures) == sum(f["run"] for f in figures) == len(set(valid)), "each one once"
    assert sum(f["cached"] for f in figures) == 0
    # The model ran the tokens of the distinct inputs once, and every row's tokens are run or saved.
    distinct = every_row(tmp_path / "distinct", [sorted(set(valid), key=valid.index)], plugin)[0]
    assert sum(r.tokens for r in once) == sum(f["tokens_run"] for f in figures) == distinct.tokens
    assert sum(f["tokens_run"] + f["tokens_saved"] for f in figures) == sum(r.tokens for r in each)


@pytest.mark.parametrize("corpus", [ALL_ONE, NO_REPEATS], ids=["all-one-text", "no-repeats"])
def test_a_corpus_of_one_text_and_one_without_repeats(tmp_path, plugins, corpus):
    plugin = plugins["sentiment"]
    once = deduplicated(tmp_path / "once", corpus, plugin, 2)
    each = every_row(tmp_path / "each", corpus, plugin)
    for a, b in zip(once, each, strict=True):
        assert_same_part("sentiment", part(a), part(b))
    run = sum(r.dedup["sentiment"]["run"] for r in once)
    assert run == len({t for texts in corpus for t in texts})
    assert once[0].dedup["sentiment"]["distinct"] == len(set(corpus[0])), "the first unit owns its own"
