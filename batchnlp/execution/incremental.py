"""Incremental runs: label only the input files that no committed run at the destination covers.

The record of what is covered is the commit records themselves: every committed run's
``_manifest.json`` lists the input files it read (path, size, ETag or modification time; for a
Delta or Iceberg input, its data files at the version read). A second ledger could disagree with
the commits after a crash between the two writes; the manifests cannot, since ``_SUCCESS`` (or
the table commit) seals them. Where the runs live is the output's business
(:meth:`batchnlp.ledger.output.Output.covered_runs`): ``OUTPUT/run_id=<ID>/`` for part files, the table's
staging directories for Delta and Iceberg.

A file is new when no committed run read it, replaced when one read it at another size or
ETag: both are labelled now. Replaced files keep their old rows in the earlier run, and files
gone from the input keep theirs too; both are logged as warnings and recorded in the manifest,
never dropped silently. Delta and Iceberg data files are immutable, so for a table input this
is the set of data files added since the versions already read (for appends, what an Iceberg
incremental append scan reads), and a delete or update shows as gone files plus new ones.
Compaction is told apart in a Delta input, whose log marks commits that only move rows
(``dataChange: false``): their files count as labelled when every file they replaced was, as
Delta's streaming source skips them. Iceberg's rewrite (``replace``) snapshots are not followed
yet: their files are labelled again, and the files they replaced reported as gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchnlp.io.storage import InputFile, Location
from batchnlp.ledger.record import Manifest

if TYPE_CHECKING:
    from batchnlp.io.tables.base import Rewrite
    from batchnlp.spec import JobSpec

logger = logging.getLogger(__name__)

MAX_NAMED = 10  # files named in a log line; the manifest lists them all


@dataclass(frozen=True)
class Selection:
    """What an incremental run labels, and what it found already labelled or gone."""

    files: list[InputFile]  # new and replaced: to label now
    new: list[str]
    replaced: dict[str, str]  # display path → the run that labelled its earlier version
    deleted: dict[str, str]  # display path → the run that labelled it, for files no longer in the input
    already: int  # files some committed run labelled as they are now
    covered_by: list[str]  # the committed runs consulted, oldest first
    rewritten: list[dict[str, Any]] = field(default_factory=list)  # Delta files a rewrite made of labelled rows
    compacted: list[str] = field(default_factory=list)  # the labelled files those rewrites replaced

    def record(self) -> dict[str, Any]:
        """As the manifest's ``input.incremental`` keeps it: the next run counts ``rewritten`` (in the form
        of ``input.files``) as labelled, and ``compacted`` as no longer in the input."""
        return {
            "covered_by": self.covered_by,
            "already_labelled": self.already,
            "new": self.new,
            "replaced": self.replaced,
            "deleted": self.deleted,
            "rewritten": self.rewritten,
            "compacted": self.compacted,
        }


def select(
    files: list[InputFile],
    display: Callable[[str], str],
    runs: Iterable[Manifest],
    rewrites: Sequence[Rewrite] = (),
) -> Selection:
    """The files of ``files`` that ``runs`` (committed runs at the destination) did not read as they are.

    ``rewrites``: a Delta input's commits since the last version read that only moved rows between
    files (OPTIMIZE). Their new files hold rows already labelled when every file they replaced was,
    so they count as labelled and are left out, as Delta's streaming source skips them."""
    ordered = sorted(runs, key=lambda run: run.committed_at or "")
    covered: dict[str, tuple[Any, Any, str]] = {}
    for run in ordered:  # the latest run that read a path is the one its rows come from
        followed = run.input.get("incremental", {})
        for read in [*run.input.get("files", []), *followed.get("rewritten", [])]:
            covered[read["path"]] = (read.get("size"), read.get("etag"), run.run_id)
        for path in followed.get("compacted", []):
            covered.pop(path, None)
    runs_read = [run.run_id for run in ordered]
    moved, compacted = _follow(covered, rewrites, display, runs_read)
    todo, new, replaced, rewritten, already = [], [], {}, [], 0
    for file in files:
        shown = display(file.path)
        earlier = covered.pop(shown, None)
        if earlier is None:
            todo.append(file)
            new.append(shown)
        elif earlier[:2] != (file.size, file.etag):
            todo.append(file)
            replaced[shown] = earlier[2]
        else:
            already += 1
            if shown in moved:
                rewritten.append({"path": shown, "size": file.size, "etag": file.etag})
    deleted = {path: run_id for path, (_, _, run_id) in covered.items()}
    selection = Selection(todo, new, replaced, deleted, already, runs_read, rewritten, sorted(compacted))
    _warn(selection)
    return selection


def table_rewrites(spec: JobSpec, read: dict[str, Any], runs: Iterable[Manifest]) -> list[Rewrite]:
    """A Delta input's rewrite commits since the latest version a run here read of it (``read``: the
    version read now, as :class:`batchnlp.io.tables.base.TableFiles` describes it). None for other inputs:
    those whose format's registry entry names no ``rewrites``."""
    from batchnlp.io.tables import TABLES, load

    table = TABLES.get(read.get("format", ""))
    if table is None or table.rewrites is None:
        return []
    versions = [
        run.input["table"]["version"]
        for run in runs
        if run.input.get("table", {}).get("table") == read["table"] and "version" in run.input["table"]
    ]
    if not versions or max(versions) >= read["version"]:
        return []
    found = load(table.rewrites)(Location(spec.input, spec.storage_options), max(versions), read["version"])
    if found is None:
        logger.warning(
            "the log of %s no longer holds every commit since version %d (log cleanup): files compacted since "
            "are labelled again (their earlier files are reported as gone); run incremental jobs more often than "
            "the table's delta.logRetentionDuration",
            read["table"],
            max(versions),
            extra={"event": "incremental_log_gone"},
        )
        return []
    return found


def _follow(
    covered: dict[str, tuple[Any, Any, str]],
    rewrites: Sequence[Rewrite],
    display: Callable[[str], str],
    order: list[str],
) -> tuple[set[str], set[str]]:
    """Apply ``rewrites`` to ``covered`` in commit order: a rewrite of labelled files only hands their
    coverage to the files it added. One that took in a file no run labelled is not followed: its files
    are labelled again, and the ones it replaced are reported as gone, never skipped unlabelled.
    Returns the files that took coverage over, and the labelled files they replaced."""
    moved: set[str] = set()
    compacted: set[str] = set()
    for rewrite in rewrites:
        removed = [display(path) for path in rewrite.removed]
        if not removed or any(path not in covered for path in removed):
            continue
        runs = {covered.pop(path)[2] for path in removed}  # the rewritten rows' runs, named as one
        run_id = ", ".join(sorted(runs, key=lambda run: order.index(run) if run in order else -1))
        for path, size in rewrite.added.items():
            covered[display(path)] = (size, None, run_id)
            moved.add(display(path))
        moved.difference_update(removed)
        compacted.update(removed)
    return moved, compacted


def _warn(selection: Selection) -> None:
    for what, found, advice in (
        (
            "replaced since they were labelled",
            selection.replaced,
            "their new contents are labelled now; the old rows stay in",
        ),
        ("gone from the input", selection.deleted, "their rows stay in"),
    ):
        if not found:
            continue
        named = ", ".join(f"{path} (run {run_id})" for path, run_id in list(found.items())[:MAX_NAMED])
        more = f" and {len(found) - MAX_NAMED} more" if len(found) > MAX_NAMED else ""
        logger.warning(
            "%d input files %s: %s%s; %s the runs named (the manifest lists them all)",
            len(found),
            what,
            named,
            more,
            advice,
            extra={"event": "incremental_" + what.split()[0], "files": len(found)},
        )
