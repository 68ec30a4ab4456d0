"""The conformance suites' shared fixture: one loaded ModelPlugin per task settings."""

from __future__ import annotations

import pytest

from batchnlp.execution.worker import ModelPlugin, ModelSettings
from batchnlp.spec import JobSpec
from batchnlp.tasks import TASKS
from tests.conformance.test_tasks import MODELS, SETTINGS


@pytest.fixture(scope="module")
def plugins(request: pytest.FixtureRequest) -> dict[str, ModelPlugin]:
    """One loaded ModelPlugin per task settings, as a worker holds them."""
    loaded = {}
    for key, settings in SETTINGS.items():
        model = request.getfixturevalue(MODELS[TASKS[settings["task"]].target])
        job = {"input": "in.jsonl", "output": "out/", "tasks": [{**settings, "model": str(model)}]}
        spec = JobSpec.from_settings(job).tasks[0]  # with the defaults a run fills in
        plugin = ModelPlugin(
            ModelSettings(
                tasks=(spec,),
                device="cpu",
                precision="fp32",
                tokens_per_batch=4096,
                max_length=None,
                threads=1,
                storage_options={},
            )
        )
        plugin.load()
        loaded[key] = plugin
    return loaded
