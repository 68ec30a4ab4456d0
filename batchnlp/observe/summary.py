"""What a finished run tells its user: rows, parts, speed and first row; a table commit; bad input
lines; for a shard, what it wrote and the commit still to make. The CLI prints these lines."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchnlp.execution.runner import RunSummary


def summary_lines(summary: RunSummary) -> list[str]:
    """What a finished run tells its user: rows, parts, speed; a table commit; bad input lines."""
    t, table = summary.totals, summary.table
    if summary.shard is not None and not summary.already_complete:
        return [
            f"shard {summary.shard} wrote {t.rows_out} rows ({t.rejected} rejected) in {t.parts} "
            f"part{'s' * (t.parts != 1)} to {summary.output} in {summary.wall_seconds:.1f} s"
            + (f"; {summary.units_kept} parts kept from an earlier attempt" if summary.units_kept else "")
            + f"; nothing committed: when every shard is done, batchnlp commit {summary.output} "
            f"--run-id {summary.run_id}"
        ]
    commit = f"{table.kind} {table.version}" if table else ""  # "version 3" (Delta), "snapshot 5012…" (Iceberg)
    if summary.nothing_new:
        return [f"nothing new to label at {summary.output}: every input file was labelled by a committed run"]
    if summary.already_complete:
        if table:
            return [f"{table.table} already holds run {summary.run_id} ({commit}); nothing to do"]
        return [f"{summary.output} is already complete (run {summary.run_id}, {t.rows_out} rows); nothing to do"]
    first_row = (summary.manifest.startup or {}).get("first_row_s")
    lines = [
        f"wrote {t.rows_out} rows ({t.rejected} rejected) in {t.parts} part{'s' * (t.parts != 1)} "
        f"to {summary.output} "
        f"in {summary.wall_seconds:.1f} s: {summary.rows_per_second:.1f} rows/s, "
        f"{t.tokens} tokens ({t.padded_tokens} with padding); run {summary.run_id}"
        + (f"; first row after {first_row:.1f} s" if first_row else "")
        + (f"; {summary.units_kept} parts kept from the interrupted run" if summary.units_kept else "")
    ]
    if t.labelled_by:
        from batchnlp.ledger.report import cascade_counts

        lines.append(f"cascade, inputs labelled by each model: {cascade_counts(t.labelled_by)}")
    if table:
        done = "committed" if table.new else "found already committed"
        lines.append(f"{done} to {table.table} as {commit} (one commit, run id {summary.run_id})")
    if t.bad_lines:
        where = "under _rejected/" if summary.manifest.spec["on_bad_lines"] == "quarantine" else "skipped"
        first = t.bad_line_examples[0]
        lines.append(
            f"{t.bad_lines} input line{'s' * (t.bad_lines != 1)} that were not JSON objects {where}, "
            f"first {first['source']}:{first['line']} ({first['reason']}); see _manifest.json"
        )
    if saved := t.saved():
        lines.append(f"each distinct input labelled once: {saved}")
    return lines
