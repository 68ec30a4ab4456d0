import json

import pytest

from batchnlp.errors import SpecError
from batchnlp.spec import JobSpec
from batchnlp.spec.load import load_spec_file
from batchnlp.util.templating import render
from tests.support import REPO as ROOT


def test_defaults_and_task_models():
    spec = JobSpec.from_settings({"input": "in/", "output": "out/"})
    assert [(t.name, t.kind) for t in spec.tasks] == [("sentiment", "sentiment")]
    assert spec.tasks[0].model.startswith("distilbert/")
    spec = JobSpec.from_settings(
        {
            "input": "a",
            "output": "b",
            "tasks": ["sentiment", "classify"],
            "models": {"classify": "s3://m/t/"},
            "top_k": 3,
        }
    )
    assert spec.tasks[1].model == "s3://m/t/" and spec.tasks[1].top_k == 3 and spec.tasks[0].top_k is None


def test_every_problem_is_reported_at_once():
    with pytest.raises(SpecError) as info:
        JobSpec.from_settings(
            {
                "output": "",
                "tasks": ["sentiment", "nope", "classify"],
                "precision": "fp8",
                "rows_per_partition": 0,
                "colour": "red",
                "overwrite": True,
                "resume": True,
            }
        )
    message = str(info.value)
    for fragment in (
        "input is required",
        "output is required",
        "unknown task 'nope'",
        "task 'classify' needs a model",
        "precision must be one of",
        "rows_per_partition must be a positive integer",
        "unknown setting 'colour'",
        "--overwrite and --resume exclude each other",
    ):
        assert fragment in message


def test_named_tasks_from_a_spec_and_clashes():
    spec = JobSpec.from_settings(
        {"input": "a", "output": "b", "tasks": [{"name": "topics", "task": "classify", "model": "m", "top_k": 2}]}
    )
    assert spec.tasks[0].name == "topics" and spec.tasks[0].kind == "classify"
    with pytest.raises(SpecError, match="given twice"):
        JobSpec.from_settings({"input": "a", "output": "b", "tasks": ["sentiment", "sentiment"]})
    with pytest.raises(SpecError, match="clashes"):
        JobSpec.from_settings({"input": "a", "output": "b", "tasks": [{"name": "_error", "task": "sentiment"}]})


def test_fingerprint_ignores_where_it_runs_but_not_what_it_computes():
    base = {"input": "a", "output": "b"}
    one = JobSpec.from_settings(base)
    assert one.fingerprint() == JobSpec.from_settings({**base, "workers": 4, "overwrite": True}).fingerprint()
    assert one.fingerprint() != JobSpec.from_settings({**base, "text_column": "body"}).fingerprint()


def test_redacted_spec_hides_storage_option_values():
    spec = JobSpec.from_settings({"input": "s3://k:secret@b/x", "output": "b", "storage_options": {"secret": "abc"}})
    data = spec.redacted()
    assert data["storage_options"] == {"secret": "***"}
    assert "secret@" not in data["input"]


def test_yaml_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("input: a\noutput: [b\n")
    with pytest.raises(SpecError, match=r"bad.yaml:\d+:\d+"):
        load_spec_file(path)


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_job_specs_validate(path):
    JobSpec.from_settings(render(load_spec_file(path), {"run_date": "2026-11-25"}))


def test_precision_that_cannot_run_on_the_device_is_refused_up_front():
    with pytest.raises(SpecError, match="fp16 needs a CUDA device"):
        JobSpec.from_settings({"input": "a", "output": "b", "device": "cpu", "precision": "fp16"})
    with pytest.raises(SpecError, match=r"int8 .* runs on CPU only"):
        JobSpec.from_settings({"input": "a", "output": "b", "device": "cuda", "precision": "int8"})


@pytest.mark.parametrize(
    ("given", "limit"),
    [(100, 100), ("100", 100), ("0.01", 0.01), ("1%", 0.01), ("100%", 1.0), (0, 0), ("0%", 0.0), (1.0, 1)],
)
def test_max_bad_lines_is_a_count_or_a_fraction(given, limit):
    spec = JobSpec.from_settings({"input": "in/", "output": "out/", "max_bad_lines": given})
    assert spec.max_bad_lines == limit and type(spec.max_bad_lines) is type(limit)


@pytest.mark.parametrize("given", [2.5, -1, "x", True, "150%"])
def test_max_bad_lines_refuses_what_is_neither(given):
    with pytest.raises(SpecError, match="max_bad_lines must be a number of lines"):
        JobSpec.from_settings({"input": "in/", "output": "out/", "max_bad_lines": given})


@pytest.mark.parametrize(
    ("given", "size"), [(1024, 1024), ("1024", 1024), ("8MiB", 8 << 20), ("64 GiB", 64 << 30), ("1kib", 1024)]
)
def test_byte_caps_take_bytes_or_binary_units(given, size):
    settings = {"input": "in/", "output": "out/", "max_line_bytes": given, "max_decompressed_bytes": given}
    spec = JobSpec.from_settings(settings)
    assert spec.read_options.max_line_bytes == spec.read_options.max_decompressed_bytes == size
    defaults = JobSpec.from_settings({"input": "in/", "output": "out/"})
    assert (defaults.max_line_bytes, defaults.max_decompressed_bytes) == (8 << 20, 64 << 30)
    explicit = {"input": "in/", "output": "out/", "max_line_bytes": "8MiB", "max_decompressed_bytes": "64GiB"}
    assert JobSpec.from_settings(explicit).fingerprint() == defaults.fingerprint(), "earlier runs resume"


@pytest.mark.parametrize("given", [0, -1, True, "8MB", "x", 1.5])
def test_byte_caps_refuse_what_is_not_a_size(given):
    with pytest.raises(SpecError, match="max_line_bytes must be a positive number of bytes"):
        JobSpec.from_settings({"input": "in/", "output": "out/", "max_line_bytes": given})


def test_supervision_settings_do_not_change_what_a_resume_compares():
    base = {"input": "in/", "output": "out/"}
    supervised = {**base, "max_bad_lines": 5, "grace_seconds": 90, "unit_timeout": 1800, "lock_owner": "airflow:x"}
    assert JobSpec.from_settings(base).fingerprint() == JobSpec.from_settings(supervised).fingerprint()


@pytest.mark.parametrize("name", ["max_length", "tokens_per_batch", "rows_per_partition", "workers"])
def test_a_spec_and_the_cli_share_one_lower_bound_per_setting(name, tmp_path):
    """--max-length/--tokens-per-batch took ≥ 8 on the command line but ≥ 1 in a spec."""
    from click.testing import CliRunner

    from batchnlp.cli import main
    from batchnlp.spec import MINIMUMS

    least = MINIMUMS[name]
    base = {"input": "in.jsonl", "output": "out/"}
    assert getattr(JobSpec.from_settings({**base, name: least}), name) == least
    with pytest.raises(SpecError, match=f"{name} must be"):
        JobSpec.from_settings({**base, name: least - 1})
    flag = "--" + name.replace("_", "-")
    result = CliRunner().invoke(main, ["run", "in.jsonl", "out/", flag, str(least - 1)])
    assert result.exit_code == 2 and f"x>={least}" in result.output


@pytest.mark.parametrize(
    "cache, where",
    [("out/", "output"), ("out/cache/", "output"), ("./", "input"), ("lake/", "input"), ("s3://b/in/cache/", None)],
)
def test_a_label_cache_is_a_place_of_its_own(cache, where):
    settings = {"input": "lake/raw/", "output": "out/", "label_cache": cache}
    if where is None:
        assert JobSpec.from_settings(settings).label_cache == cache
        return
    with pytest.raises(SpecError, match=f"label cache .* and {where} .* overlap"):
        JobSpec.from_settings(settings)


def test_dedup_and_the_label_cache_leave_fingerprints_alone_and_need_each_other():
    base = {"input": "in/", "output": "out/"}
    assert JobSpec.from_settings(base).dedup is True
    assert JobSpec.from_settings(base).fingerprint() == JobSpec.from_settings({**base, "dedup": True}).fingerprint()
    assert (
        JobSpec.from_settings({**base, "label_cache": "cache/"}).fingerprint()
        == JobSpec.from_settings(base).fingerprint()
    )
    assert JobSpec.from_settings({**base, "dedup": False}).fingerprint() != JobSpec.from_settings(base).fingerprint()
    with pytest.raises(SpecError, match="label_cache looks up each distinct input, which --no-dedup turns off"):
        JobSpec.from_settings({**base, "dedup": False, "label_cache": "cache/"})
    secret = JobSpec.from_settings({**base, "label_cache": "s3://user:pass@lake/cache/"})
    assert "pass" not in json.dumps(secret.redacted())
