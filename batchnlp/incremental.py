"""Incremental runs: label only the input files that no committed run at the destination covers.

The record of what is covered is the commit records themselves: every committed run's
``_manifest.json`` lists the input files it read (path, size, ETag or modification time; for a
Delta or Iceberg input, its data files at the version read). A second ledger could disagree with
the commits after a crash between the two writes; the manifests cannot, since ``_SUCCESS`` (or
the table commit) seals them. Where the runs live is the output's business
(:meth:`batchnlp.output.Output.covered_runs`): ``OUTPUT/run_id=<ID>/`` for part files, the table's
staging directories for Delta and Iceberg.

A file is new when no committed run read it, replaced when one read it at another size or
ETag: both are labelled now. Replaced files keep their old rows in the earlier run, and files
gone from the input keep theirs too; both are logged as warnings and recorded in the manifest,
never dropped silently. Delta and Iceberg data files are immutable, so for a table input this
is the set of data files added since the versions already read, and a rewrite (compaction, a
delete) shows as deleted files plus new ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from batchnlp.record import Manifest
from batchnlp.storage import InputFile

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

    def record(self) -> dict[str, Any]:
        """As the manifest's ``input.incremental`` keeps it."""
        return {
            "covered_by": self.covered_by,
            "already_labelled": self.already,
            "new": self.new,
            "replaced": self.replaced,
            "deleted": self.deleted,
        }


def select(files: list[InputFile], display: Callable[[str], str], runs: Iterable[Manifest]) -> Selection:
    """The files of ``files`` that ``runs`` (committed runs at the destination) did not read as they are."""
    covered: dict[str, tuple[Any, Any, str]] = {}
    ordered = sorted(runs, key=lambda run: run.committed_at or "")
    for run in ordered:  # the latest run that read a path is the one its rows come from
        for read in run.input.get("files", []):
            covered[read["path"]] = (read.get("size"), read.get("etag"), run.run_id)
    todo, new, replaced, already = [], [], {}, 0
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
    deleted = {path: run_id for path, (_, _, run_id) in covered.items()}
    selection = Selection(todo, new, replaced, deleted, already, [run.run_id for run in ordered])
    _warn(selection)
    return selection


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
