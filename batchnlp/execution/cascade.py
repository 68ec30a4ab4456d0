"""A cascade's student on the driver (``--cascade TASK=STUDENT``): its ref checked and versioned beside
the task models', and its entry in the manifest.

The student's version goes into the job record's ``model_versions`` under :func:`student_key`, so
``--resume``, a retried run and a sharded run's steps refuse a student that changed under its ref
as they refuse a changed task model. The labelling itself is the classify task's
(:mod:`batchnlp.tasks.classify`); each worker stages and hashes the student like a task model.
"""

from __future__ import annotations

import json
from typing import Any

from batchnlp.errors import JobFailed
from batchnlp.inference.models.stage import check_ref
from batchnlp.ledger.record import PartResult
from batchnlp.spec import JobSpec, TaskSpec
from batchnlp.util.redaction import redact_url


def student_key(task: str) -> str:
    """The job record's ``model_versions`` key of a task's student."""
    return f"{task} (student)"


def student_versions(spec: JobSpec) -> dict[str, str]:
    """Each cascade's student checked as a task model is (it exists, safetensors weights; a pin
    verified), and its version, by :func:`student_key`."""
    return {student_key(t.name): check_ref(t.student, spec.storage_options) for t in spec.tasks if t.student}


def student_entry(task: TaskSpec, results: list[PartResult], versions: dict[str, str]) -> dict[str, Any]:
    """``models.<task>.student`` of the manifest: ref, version, weights' checksums and the margin."""
    checksums = {json.dumps(r.students.get(task.name), sort_keys=True) for r in results}
    if len(checksums) > 1:
        raise JobFailed(
            f"the student {redact_url(str(task.student))!r} of task {task.name!r} changed during the run (workers "
            "saw different weights); run again"
        )
    return {
        "ref": redact_url(str(task.student)),
        "version": versions.get(student_key(task.name)),
        "weights": results[0].students.get(task.name) if results else None,
        "margin": task.cascade_margin,
    }
