"""A cascade in the job spec: ``--cascade TASK=STUDENT_REF`` (job level: ``cascade: {TASK: REF}``, or a
task's own ``cascade:`` key) and ``--cascade-margin`` (job level or a task's ``cascade_margin:``)."""

from __future__ import annotations

from typing import Any

import pytest

from batchnlp.errors import SpecError
from batchnlp.spec import JobSpec
from batchnlp.tasks import DEFAULT_CASCADE_MARGIN

BASE = {"input": "in/", "output": "out/"}


def spec(**settings: Any) -> JobSpec:
    return JobSpec.from_settings({**BASE, **settings})


def refused(**settings: Any) -> str:
    with pytest.raises(SpecError) as error:
        spec(**settings)
    return str(error.value)


def test_a_cascade_from_the_job_mapping_or_the_tasks_own_key_with_its_margin():
    flagged = spec(tasks=["sentiment"], cascade={"sentiment": "./student"})
    (task,) = flagged.tasks
    assert (task.student, task.cascade_margin) == ("./student", DEFAULT_CASCADE_MARGIN)
    own = spec(
        tasks=[{"name": "topics", "task": "classify", "model": "./t", "cascade": "s3://m/s/", "cascade_margin": 0}]
    )
    assert (own.tasks[0].student, own.tasks[0].cascade_margin) == ("s3://m/s/", 0.0)
    both = spec(
        tasks=["sentiment", {"name": "topics", "task": "classify", "model": "./t", "cascade_margin": 0.3}],
        cascade={"sentiment": "./a", "topics": "./b"},
        cascade_margin=0.12,
    )
    assert [(t.student, t.cascade_margin) for t in both.tasks] == [("./a", 0.12), ("./b", 0.3)]
    over = spec(tasks=[{"name": "sentiment", "cascade": "./own"}], cascade={"sentiment": "./flag"})
    assert over.tasks[0].student == "./flag", "the command line's --cascade over the spec's, as --model"


def test_the_settings_of_a_cascade_make_the_same_spec_again():
    made = spec(
        tasks=["sentiment", "classify"], models={"classify": "./t"}, cascade={"classify": "./s"}, keep_probs=True
    )
    again = JobSpec.from_settings({**made.settings(), **BASE})
    assert again == made
    assert made.settings()["tasks"][1]["cascade"] == "./s"


def test_unset_cascades_keep_the_fingerprints_runs_had_before_them():
    """Values from batchnlp before cascades: earlier runs still resume and repeat."""
    assert spec().fingerprint() == "c2ad76f0792c53d57ce16554a3004d07a2313e2b706fdff5bbf4902749930abc"
    two = spec(tasks=["sentiment", "classify"], models={"classify": "./topics"}, keep_probs=True)
    assert two.fingerprint() == "298c84d97053396d41c50eae3a80a82bb1c85b3bd59baae502026aa5c5f33f7c"
    cascaded = spec(cascade={"sentiment": "./s"})
    assert len({cascaded.fingerprint(), spec(cascade={"sentiment": "./s"}, cascade_margin=0.2).fingerprint(),
                spec().fingerprint()}) == 3  # fmt: skip


def test_a_students_url_is_redacted_like_the_models():
    made = spec(cascade={"sentiment": "https://user:secret@example.com/student/"})
    assert "secret" not in str(made.redacted()) and made.redacted()["tasks"][0]["student"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tasks": ["qa"], "question": "Why?", "cascade": {"qa": "./s"}}, "task 'qa' (qa) does not take a cascade"),
        ({"cascade": {"topics": "./s"}}, "--cascade topics=... names no task of this job (tasks: sentiment)"),
        ({"cascade": "./s"}, "cascade must map task names to student model refs"),
        ({"cascade": {"sentiment": ""}}, "the cascade's student of task 'sentiment' must be a model ref"),
        ({"cascade": {"sentiment": "./s"}, "cascade_margin": 1}, "cascade_margin of task 'sentiment' must be a score"),
        ({"cascade": {"sentiment": "./s"}, "cascade_margin": -0.1}, "must be a score margin from 0"),
        ({"cascade": {"sentiment": "./s"}, "cascade_margin": True}, "must be a score margin from 0"),
        ({"cascade_margin": 0.1}, "cascade_margin applies to tasks with a cascade"),
        ({"tasks": [{"name": "sentiment", "cascade_margin": 0.1}]}, "cascade_margin of task 'sentiment' applies to a"),
    ],
)
def test_cascades_refused(settings: dict[str, Any], message: str):
    assert message in refused(**settings)


def test_the_cli_takes_cascade_and_cascade_margin(tmp_path):
    from click.testing import CliRunner

    from batchnlp.cli import main

    result = CliRunner().invoke(main, ["run", "in.jsonl", str(tmp_path / "o"), "--task", "qa", "--question", "Why?",
                                       "--cascade", "qa=./s", "--cascade-margin", "0.2"])  # fmt: skip
    assert result.exit_code == 2 and "does not take a cascade: only classify and sentiment tasks do" in result.output
    result = CliRunner().invoke(main, ["run", "in.jsonl", str(tmp_path / "o"), "--cascade-margin", "1"])
    assert result.exit_code == 2 and "--cascade-margin" in result.output


def test_cascade_flags_merge_into_a_spec_files_mapping_by_task():
    from batchnlp.spec.merge import merge

    merged = merge({"cascade": {"sentiment": "./a", "topics": "./b"}}, {"cascade": {"topics": "./c"}})
    assert merged["cascade"] == {"sentiment": "./a", "topics": "./c"}
