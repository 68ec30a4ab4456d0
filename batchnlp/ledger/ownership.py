"""What under a run's directory batchnlp wrote: the only files it ever deletes there.

Nothing is judged by its name alone: another tool's ``part-00000-abc.snappy.parquet`` looks much
like ours, and a Delta table written by Spark keeps its ``part-*`` files at the table's root. A
file is batchnlp's own when a record of batchnlp's, found in the directory, names it:

- the job record (``_progress/_job.json``, or the job inside the shards' ``_progress/_plan.json``),
  written before any unit runs. Its unit count and output settings fix every name those units
  write (``part-NNNNN<suffix>``, ``COL=v/…/part-NNNNN<suffix>`` under its ``--partition-by``
  columns, ``_rejected/part-NNNNN.jsonl`` and its ``_reasons``, ``_progress/part-NNNNN.json``),
  so a crashed attempt's unrecorded parts are known too;
- the manifest, which names every part, partitioned file, quarantine file and report it sealed.

Where such a record is, the control files beside it are its own too (``_SUCCESS``, the manifest,
the report, the records); a lock is always batchnlp's, but only :mod:`batchnlp.ledger.lock` removes one;
a temporary file ``NAME.tmp-<hex>`` that a crashed atomic write left is own when NAME is.
Everything else is foreign: a run into a directory that holds any is refused, naming it, and
:func:`clear` never deletes one.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from batchnlp.errors import OutputError
from batchnlp.io.layout import JOB_RECORD, MANIFEST, PLAN, PROGRESS, REJECTED, REPORT_HTML, REPORT_JSON, SUCCESS
from batchnlp.io.storage import Location, stays_inside, storage_errors
from batchnlp.ledger.lock import LOCK
from batchnlp.ledger.record import JobRecord, PartResult
from batchnlp.util.compat import strip_protocol

logger = logging.getLogger(__name__)

SHARD_LOCKS = re.compile(rf"{PROGRESS}/_lock-shard-\d+-of-\d+\.json")  # batchnlp.execution.shards.plan.shard_lock
PROGRESS_RECORD = re.compile(rf"{PROGRESS}/part-\d+\.json")  # batchnlp.ledger.commit.Committer.record's
TEMPORARY = re.compile(r"(?P<name>.+)\.tmp-[0-9a-f]{32}")  # batchnlp.io.storage.write_atomic's, left by a crash
ANCHORS = (f"{PROGRESS}/{JOB_RECORD}", PLAN, MANIFEST)  # the records that name the rest: deleted last
NAMED = 5  # foreign files a refusal names


@dataclass(frozen=True, kw_only=True)
class Stock:
    """A run directory's files (paths relative to it), sorted by whose they are."""

    own: list[str]  # batchnlp's, which a new run deletes
    locks: list[str]  # batchnlp's, left to the lock that holds them
    foreign: list[str]  # not batchnlp's: never deleted


def take_stock(location: Location) -> Stock:
    """Every file under ``location``, sorted into batchnlp's own and the rest by batchnlp's records there."""
    fs, root = location.split()
    root = root.rstrip("/")
    with storage_errors("list", location.display()):
        listed = fs.find(root) if fs.exists(root) else []
        present = sorted(path[len(root) + 1 :] for path in listed if path.startswith(root + "/"))
        named = _named(fs, root, set(present))
    own, locks, foreign = [], [], []
    for name in present:
        base = TEMPORARY.fullmatch(name)
        whose = name if base is None else base["name"]
        if whose == LOCK or SHARD_LOCKS.fullmatch(whose):  # a renewal's temporary file too: the lock's
            locks.append(name)
        elif named(whose) or (base is not None and whose in ANCHORS):  # a record being written (a shard's plan)
            own.append(name)
        else:
            foreign.append(name)
    return Stock(own=own, locks=locks, foreign=foreign)


def refuse_foreign(location: Location, stock: Stock) -> None:
    """Raise OutputError naming up to :data:`NAMED` of the files under ``location`` that batchnlp did not write."""
    if not stock.foreign:
        return
    count = len(stock.foreign)
    shown = ", ".join(stock.foreign[:NAMED]) + (f" and {count - NAMED} more" if count > NAMED else "")
    raise OutputError(
        f"output {location.display()} holds {count} file{'s' * (count > 1)} that batchnlp did not write: {shown}. "
        "batchnlp never deletes or mixes in another tool's files (--overwrite replaces only its own): "
        "move them away, or choose another OUTPUT"
    )


def refuse_foreign_beside_runs(root: Location, prefix: str) -> None:
    """An ``--incremental`` OUTPUT holds one folder per run, ``PREFIX<run id>/``, and nothing else: a file or folder
    beside them is another tool's, which readers of OUTPUT would mix in. (Each run's folder is judged by
    :func:`take_stock` when a run uses it; only the top is listed here, not every earlier run.)"""
    from batchnlp.spec import valid_run_id

    fs, path = root.split()
    with storage_errors("list", root.display()):
        entries = fs.ls(path, detail=True) if fs.exists(path) else []
    names = [(entry["name"].rstrip("/").rsplit("/", 1)[-1], entry.get("type")) for entry in entries]
    foreign = [
        name
        for name, kind in names
        if kind != "directory" or not valid_run_id(name.removeprefix(prefix)) or not name.startswith(prefix)
    ]
    refuse_foreign(root, Stock(own=[], locks=[], foreign=sorted(foreign)))


def clear(location: Location, stock: Stock) -> None:
    """Delete batchnlp's own files of ``stock`` (taken of ``location``) and nothing else: ``_SUCCESS`` first,
    so no reader trusts what follows, and the records last, so a clear that dies half-way leaves every file
    it did not reach still named by a record. Each step is one call (S3: DeleteObjects, 1,000 keys a request).
    Local directories it empties go too."""
    own = stock.own
    fs, root = location.split()
    root = root.rstrip("/")
    steps: dict[int, list[str]] = {}
    for name in own:
        steps.setdefault(_deletion_order(name), []).append(f"{root}/{name}")
    with storage_errors("delete", location.display()):
        for _, paths in sorted(steps.items()):
            fs.rm(paths)
        if location.is_local:
            _remove_emptied(fs, root, own)


def clear_leftovers(location: Location) -> None:
    """Delete the temporary files crashed atomic writes left (``NAME.tmp-<hex>``, only where NAME is
    batchnlp's own), so that a reader of the sealed folder never meets half a part. Local folders
    only: an S3 object appears whole or not at all, and leaves none."""
    if not location.is_local:
        return
    stock = take_stock(location)
    leftovers = [name for name in stock.own if TEMPORARY.fullmatch(name)]
    if leftovers:
        logger.info("removing %d temporary files of crashed writes: %s", len(leftovers), ", ".join(leftovers[:NAMED]))
        clear(location, Stock(own=leftovers, locks=[], foreign=[]))


def _deletion_order(name: str) -> int:
    """``_SUCCESS``, then the files records name, then the progress records, then the records naming the rest."""
    return 0 if name == SUCCESS else 3 if name in ANCHORS else 2 if PROGRESS_RECORD.fullmatch(name) else 1


def _remove_emptied(fs: Any, root: str, deleted: list[str]) -> None:
    """The local directories under ``root`` that held deleted files and are empty now, deepest first."""
    folders = {posixpath.dirname(name) for name in deleted} - {""}
    for name in list(folders):
        while "/" in name:
            name = posixpath.dirname(name)
            folders.add(name)
    for name in sorted(folders, key=lambda name: -name.count("/")):
        path = f"{root}/{name}"
        if fs.isdir(path) and not fs.ls(path):
            fs.rmdir(path)


def _named(fs: Any, root: str, present: set[str]) -> Callable[[str], bool]:
    """``named(name)``: whether one of batchnlp's records under ``root`` names the file ``name``."""
    plan = _read(fs, root, PLAN, present)
    records = [
        _read(fs, root, f"{PROGRESS}/{JOB_RECORD}", present),
        plan.get("job") if isinstance(plan, dict) else None,
    ]
    jobs = [job for job in map(_job_record, records) if job is not None]
    manifest = _read(fs, root, MANIFEST, present)
    exact: set[str] = set()
    if isinstance(manifest, dict) and "run_id" in manifest:
        exact |= _manifest_names(manifest)
    for name in sorted(present):
        if PROGRESS_RECORD.fullmatch(name):
            exact |= _progress_names(fs, root, name, _read(fs, root, name, present))
    if not jobs and not exact:
        return lambda name: False  # no record of batchnlp's here: nothing is its own
    exact |= {SUCCESS, MANIFEST, REPORT_JSON, REPORT_HTML, *ANCHORS}
    units = [_UnitNames(job) for job in jobs]
    return lambda name: name in exact or any(names.match(name) for names in units)


class _UnitNames:
    """The names the units of one job record write, by construction (batchnlp.ledger.output.Output.write)."""

    def __init__(self, job: JobRecord) -> None:
        from batchnlp.io.formats.writers import OutputFormat
        from batchnlp.spec import TABLE_FORMATS

        spec = job.spec if isinstance(job.spec, dict) else {}
        fmt = spec.get("output_format", "parquet")
        self.suffix = OutputFormat("parquet" if fmt in TABLE_FORMATS else fmt, spec.get("compression") or "").suffix
        self.partition_by = [quote(str(column), safe="") + "=" for column in spec.get("partition_by") or ()]
        self.units = job.units if isinstance(job.units, int) else 0

    def match(self, name: str) -> bool:
        *folders, file = name.split("/")
        if folders in ([PROGRESS], [REJECTED], [REJECTED, "_reasons"]):
            extension = ".json" if folders == [PROGRESS] else ".jsonl"
            return file.endswith(extension) and self._unit(file.removesuffix(extension))
        if not file.endswith(self.suffix) or not self._unit(file.removesuffix(self.suffix)):
            return False
        return len(folders) == len(self.partition_by) and all(
            folder.startswith(key) for folder, key in zip(folders, self.partition_by, strict=True)
        )

    def _unit(self, stem: str) -> bool:
        """``stem`` is the id of one of the job's units: ``part-NNNNN`` (batchnlp.io.formats.WorkUnit.id)."""
        digits = stem.removeprefix("part-")
        return digits.isdigit() and f"part-{int(digits):05d}" == stem and int(digits) < self.units


def _manifest_names(manifest: dict[str, Any]) -> set[str]:
    """The files a sealed manifest names under its run directory: parts, partitioned and quarantine files, report."""
    names = set()
    for part in manifest.get("parts") or []:
        if isinstance(part, dict):
            names |= _part_names(part)
    report = manifest.get("report")
    names |= {entry.get("path") for entry in (report or {}).values() if isinstance(entry, dict)}
    return {name for name in names if isinstance(name, str) and stays_inside(name)}


def _part_names(part: dict[str, Any]) -> set[str]:
    """The files of one part, as the manifest or a progress record names them: relative to the run's directory."""
    names = {part.get("path")} | {entry.get("path") for entry in part.get("files") or [] if isinstance(entry, dict)}
    quarantine = part.get("quarantine")
    if isinstance(quarantine, dict) and isinstance(quarantine.get("path"), str):
        names |= {quarantine["path"], quarantine["path"].replace(f"{REJECTED}/", f"{REJECTED}/_reasons/", 1)}
    return {name for name in names if isinstance(name, str) and stays_inside(name)}


def _job_record(record: Any) -> JobRecord | None:
    """``record`` as a job record, when it is one: a JSON object with a run id (its values are not
    trusted: each is checked where it is used)."""
    try:
        return JobRecord.from_record(record)
    except (KeyError, AttributeError):
        return None


def _progress_names(fs: Any, root: str, name: str, record: Any) -> set[str]:
    """A progress record's own name and the files it names, when it is one (batchnlp.ledger.commit.Committer.record)."""
    try:
        result = PartResult.from_record(record)
    except (TypeError, KeyError, AttributeError):
        return set()
    if name != f"{PROGRESS}/{result.unit.id}.json":
        return set()
    part = strip_protocol(fs, result.part) if result.part else ""
    entry = {"path": part[len(root) + 1 :] if part.startswith(root + "/") else None, "files": result.files}
    return {name} | _part_names({**entry, "quarantine": result.quarantine})


def _read(fs: Any, root: str, name: str, present: set[str]) -> Any:
    """The JSON record ``name`` under ``root``; None when it is absent or no JSON (then it is no record)."""
    if name not in present:
        return None
    try:
        return json.loads(fs.cat_file(f"{root}/{name}"))
    except (ValueError, UnicodeDecodeError):
        return None
