"""``batchnlp cache``: what a label cache holds (``inspect``), and its compaction (``compact``)."""

from __future__ import annotations

import json
from typing import Any

import click

from batchnlp.cli.options import storage_option
from batchnlp.cli.outcome import user_errors

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")


@click.group()
def cache() -> None:
    """Inspect and compact a label cache (labels reused across runs by a key of their settings and text)."""


@cache.command("inspect")
@click.argument("uri")
@JSON_OPTION
@storage_option("URI")
def cache_inspect(uri: str, as_json: bool, storage_option: Any) -> None:
    """Summarise the label cache at URI: version, entries, bytes, and per namespace its task, model,
    entries and entry ages; files removed by a compaction awaiting deletion; unreferenced files.

    \b
    Examples:
      batchnlp cache inspect s3://lake/label-cache/
      batchnlp cache inspect ./cache --json
    """
    with user_errors(False, interactive=True):
        from batchnlp.ledger.label_cache import LabelCache

        info = LabelCache(uri, dict(storage_option)).inspect()
    click.echo(json.dumps(info, indent=2, sort_keys=True) if as_json else "\n".join(inspect_lines(info)))


@cache.command("compact")
@click.argument("uri")
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    metavar="DAYS",
    help="Drop entries added more than DAYS days ago. Example: --older-than 90",
)
@click.option(
    "--model",
    metavar="REF",
    help="Drop every namespace whose model ref or digest is REF. Example: --model s3://models/sst2-v1",
)
@click.option(
    "--retain-hours",
    type=click.FloatRange(min=0),
    default=24.0,
    show_default=True,
    metavar="H",
    help="Delete a removed file only once it has been out of the cache this long: longer than any run "
    "that reads the cache lasts.",
)
@JSON_OPTION
@storage_option("URI")
def cache_compact(
    uri: str, older_than: float | None, model: str | None, retain_hours: float, as_json: bool, storage_option: Any
) -> None:
    """Rewrite the label cache at URI into fewer, larger files, dropping old entries and a model's
    namespaces, and delete the files earlier compactions removed more than --retain-hours ago.

    \b
    Examples:
      batchnlp cache compact s3://lake/label-cache/ --older-than 90
      batchnlp cache compact ./cache --model s3://models/sst2-v1 --retain-hours 48
    """
    with user_errors(False):
        from batchnlp.ledger.label_cache import LabelCache

        summary = LabelCache(uri, dict(storage_option)).compact(older_than, model, retain_hours)
    click.echo(json.dumps(summary, indent=2, sort_keys=True) if as_json else "\n".join(compact_lines(summary, model)))


def inspect_lines(info: dict[str, Any]) -> list[str]:
    """``cache inspect``'s text: the totals, a table of namespaces, then the files outside the live list."""
    lines = [
        f"label cache {info['url']}: version {info['version']}"
        + (f", committed by {info['run_id']}" if info["run_id"] else " (nothing committed yet)"),
        f"{info['entries']:,} entries in {info['files']} files, {size(info['bytes'])}",
    ]
    if info["namespaces"]:
        rows = [("namespace", "task", "model", "entries", "bytes", "oldest", "newest")]
        for name, figures in info["namespaces"].items():
            described = figures["description"]
            rows.append(
                (
                    name[:12],
                    str(described.get("task", "-")),
                    str(described.get("model", "-")),
                    f"{figures['entries']:,}",
                    size(figures["bytes"]),
                    age(figures["oldest_age_s"]),
                    age(figures["newest_age_s"]),
                )
            )
        lines += ["", *table(rows)]
    waiting, unreferenced = info["awaiting_deletion"], info["unreferenced"]
    if waiting["files"]:
        lines.append(
            f"awaiting deletion: {waiting['files']} files, {size(waiting['bytes'])} "
            "(removed by a compaction; a later compaction deletes them after --retain-hours)"
        )
    if unreferenced["files"]:
        lines.append(
            f"unreferenced: {unreferenced['files']} files, {size(unreferenced['bytes'])} under data/ "
            f"(written by runs that never committed, e.g. {unreferenced['paths'][0]}; batchnlp never deletes them)"
        )
    return lines


def compact_lines(summary: dict[str, Any], model: str | None) -> list[str]:
    """``cache compact``'s text: what changed, and what was deleted."""
    if not summary["committed"]:
        head = f"label cache {summary['url']}: nothing to compact (version {summary['version']})"
    else:
        head = (
            f"label cache {summary['url']}: version {summary['version_before']} -> {summary['version']}, "
            f"{summary['files_before']} -> {summary['files']} files, "
            f"{summary['entries_before']:,} -> {summary['entries']:,} entries"
        )
    lines = [head]
    if summary["expired_entries"] or summary["duplicate_entries"]:
        lines.append(
            f"dropped {summary['expired_entries']:,} expired and {summary['duplicate_entries']:,} duplicate entries"
        )
    if summary["dropped_namespaces"]:
        dropped = ", ".join(summary["dropped_namespaces"])
        lines.append(f"dropped namespaces {dropped} ({summary['dropped_entries']:,} entries) of model {model}")
    elif model is not None:
        lines.append(f"no namespace uses model {model}: nothing dropped for it")
    lines.append(f"deleted {summary['deleted_files']} removed files ({size(summary['deleted_bytes'])})")
    return lines


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """``rows`` as left-aligned columns (figures right-aligned)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {3, 4, 5, 6}
    return [
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f}d"
    return f"{seconds / 3_600:.1f}h"
