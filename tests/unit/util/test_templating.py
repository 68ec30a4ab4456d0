"""${name} placeholders in job specs: built-in dates, --param, the spec's params, and errors."""

from __future__ import annotations

from datetime import date

import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.errors import SpecError
from batchnlp.util.templating import render

SPEC = {"input": "s3://lake/reviews/dt=${yesterday}/", "output": "s3://lake/labels/dt=${run_date}/", "workers": 2}


def test_dates_default_to_today_and_a_param_fixes_them():
    assert render(SPEC, {}, today=date(2026, 3, 1)) == {
        "input": "s3://lake/reviews/dt=2026-02-28/",
        "output": "s3://lake/labels/dt=2026-03-01/",
        "workers": 2,
    }
    rendered = render(SPEC, {"run_date": "2026-11-25T02:00:00Z"}, today=date(2026, 3, 1))
    assert rendered["input"] == "s3://lake/reviews/dt=2026-11-24/", "EventBridge's scheduled time gives its date"


def test_params_from_the_spec_are_defaults_that_flags_override_in_nested_values():
    spec = {
        "params": {"table": "reviews"},
        "input": "s3://lake/${table}/",
        "tasks": [{"name": "t", "question": "$$5?"}],
    }
    assert render(spec, {}, today=date(2026, 1, 1)) == {
        "input": "s3://lake/reviews/",
        "tasks": [{"name": "t", "question": "$5?"}],
    }
    assert render(spec, {"table": "tickets"})["input"] == "s3://lake/tickets/"


@pytest.mark.parametrize(
    "spec, params, message",
    [
        ({"input": "s3://x/${day}/"}, {}, r"input: unknown parameter \$\{day\}; known: run_date, yesterday"),
        ({"input": "a"}, {"run_date": "tomorrow"}, "run_date must be a date or ISO timestamp"),
        ({"input": "s3://x/$/"}, {}, r"write \$\$ for a literal \$"),
        ({"params": ["a"]}, {}, "params must be a mapping"),
        ({"input": "a"}, {"2bad": "x"}, "parameter name '2bad'"),
    ],
)
def test_template_errors_say_what_to_fix(spec, params, message):
    with pytest.raises(SpecError, match=message):
        render(spec, params)


def test_run_renders_the_spec_before_validating_it(tmp_path):
    spec = tmp_path / "nightly.yaml"
    spec.write_text(f"input: {tmp_path}/in/dt=${{yesterday}}.jsonl\noutput: {tmp_path}/out/\n")
    result = CliRunner().invoke(main, ["run", "--spec", str(spec), "--param", "run_date=2026-11-25"])
    assert result.exit_code == 2
    assert "in/dt=2026-11-24.jsonl does not exist" in result.output


def test_a_spec_can_come_from_an_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("NIGHTLY_SPEC", f"input: {tmp_path}/missing.jsonl\noutput: {tmp_path}/out/\n")
    result = CliRunner().invoke(main, ["run", "--spec", "env:NIGHTLY_SPEC"])
    assert result.exit_code == 2 and "missing.jsonl does not exist" in result.output
    result = CliRunner().invoke(main, ["run", "--spec", "env:NO_SUCH_VARIABLE"])
    assert result.exit_code == 2 and "NO_SUCH_VARIABLE is not set" in result.output
