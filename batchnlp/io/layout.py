"""The names of the control files batchnlp keeps under a run's directory, in one place.

The commit protocol (:mod:`batchnlp.ledger.commit`) writes them, :mod:`batchnlp.ledger.ownership` reads them to
tell batchnlp's files from anyone else's, and ``inspect``, the shards and the table sinks find a
run by them; none of those needs the others to know a name.
"""

from __future__ import annotations

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
REPORT_JSON = "_report.json"  # the run report (batchnlp.ledger.report), written just before the manifest
REPORT_HTML = "_report.html"
PROGRESS = "_progress"
REJECTED = "_rejected"  # --on-bad-lines quarantine: raw bad lines, one file per unit
JOB_RECORD = "_job.json"
PLAN = f"{PROGRESS}/_plan.json"  # a sharded run's stored plan (batchnlp.execution.shards.plan), its job record inside
