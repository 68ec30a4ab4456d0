"""Zero-shot classification: equal to transformers' zero-shot-classification pipeline (labels in its
order, scores within 1e-4) on tiny random NLI-shaped checkpoints, its entailment label found as the
pipeline finds it; all pairs of a unit in one engine run; int8's near ties rescored in fp32; the
spec's labels, hypothesis and multi_label validated; the wrong checkpoint refused by name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from batchnlp.errors import ModelError, SpecError
from batchnlp.inference.engine import Engine
from batchnlp.ledger.stats import column_stats, merge
from batchnlp.spec import JobSpec, TaskSpec
from batchnlp.tasks import TASKS
from batchnlp.tasks.columns import LABEL_ORDER_KEY
from batchnlp.tasks.keys import namespace
from batchnlp.tasks.zero_shot import ZeroShot, entailment_id
from batchnlp.testing import build_nli_classifier
from tests.support import corpus

LABELS = ["sports", "politics", "technology", "cooking"]
# Label orders of NLI checkpoints in the wild: MNLI's (entailment last), and entailment first, whose
# multi-label contradiction logit the pipeline takes from the last index.
ORDERS = {
    "contradiction-neutral-entailment": ("contradiction", "neutral", "entailment"),
    "ENTAILMENT-NEUTRAL-CONTRADICTION": ("ENTAILMENT", "NEUTRAL", "CONTRADICTION"),
    "neutral-Entails-contradiction": ("neutral", "Entails", "contradiction"),
}


@pytest.fixture(scope="module", params=list(ORDERS))
def nli(request, tmp_path_factory) -> Path:
    return build_nli_classifier(tmp_path_factory.mktemp("nli") / request.param, ORDERS[request.param], seed=5)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Short and long texts (past 512 tokens, so truncated), one character, other scripts."""
    return [
        *corpus.texts(40, seed=13, max_sentences=20),
        "a",
        "The match ended in a draw after extra time. " * 120,
        "Ракета стартовала утром; 火箭早上发射了。 🚀",
        "ok",
    ]


def make_task(model: Path, precision: str = "fp32", backend: str = "torch", margin: float | None = None, **settings):
    job = {"input": "in.jsonl", "output": "out/", "tasks": [{"name": "zs", "task": "zero-shot", "model": str(model)}]}
    job["tasks"][0].update({"labels": LABELS, **settings})
    spec = JobSpec.from_settings(job).tasks[0]
    return ZeroShot(spec, model, Engine("cpu", precision, 1024, margin, backend=backend), None)


def pipeline_results(model: Path, texts: list[str], labels: list[str], **kwargs) -> list[dict]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(model)
    classifier = AutoModelForSequenceClassification.from_pretrained(model)
    pipe = pipeline("zero-shot-classification", model=classifier, tokenizer=tokenizer, device="cpu")
    return [pipe(text, candidate_labels=labels, **kwargs) for text in texts]


@pytest.mark.parametrize(
    "settings",
    [{}, {"multi_label": True}, {"hypothesis": "This text is about {}."}],
    ids=["single-label", "multi-label", "custom-hypothesis"],
)
def test_labels_and_scores_equal_the_pipeline(nli, texts, settings):
    task = make_task(nli, **settings)
    column, stats = task.annotate(texts)
    kwargs = {"multi_label": settings.get("multi_label", False)}
    if "hypothesis" in settings:
        kwargs["hypothesis_template"] = settings["hypothesis"]
    expected = pipeline_results(nli, texts, LABELS, **kwargs)

    got = column.to_pylist()
    assert [[c["label"] for c in row["labels"]] for row in got] == [e["labels"] for e in expected]
    np.testing.assert_allclose(
        [[c["score"] for c in row["labels"]] for row in got], [e["scores"] for e in expected], atol=1e-4
    )
    assert [row["label"] for row in got] == [e["labels"][0] for e in expected]
    assert len({tuple(e["labels"]) for e in expected}) > 1, "rows rank the labels differently"
    assert len({e["labels"][0] for e in expected}) > 1, "rows get different best labels"
    assert stats.tokens == sum(len(ids) for ids in task.preprocess(texts).input_ids)
    assert max(task.preprocess(texts).text_tokens()) > 512 * 3, "a long text's pairs are truncated, not dropped"
    if not settings.get("multi_label"):
        np.testing.assert_allclose([sum(c["score"] for c in row["labels"]) for row in got], 1.0, atol=1e-5)


def test_the_entailment_label_is_found_as_the_pipeline_finds_it(nli):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(nli)
    order = [config.id2label[i] for i in range(config.num_labels)]
    assert entailment_id(config) == next(i for i, label in enumerate(order) if label.lower().startswith("entail"))
    task = make_task(nli)
    assert task.contradiction == (-1 if task.entailment == 0 else 0)


def test_one_label_is_scored_multi_label_as_the_pipeline_does(zero_shot_model, texts):
    task = make_task(zero_shot_model, labels=["sports"])
    got = task.annotate(texts)[0].to_pylist()
    expected = pipeline_results(zero_shot_model, texts, ["sports"])
    np.testing.assert_allclose([row["score"] for row in got], [e["scores"][0] for e in expected], atol=1e-4)
    assert len({round(row["score"], 4) for row in got}) > 1, "not a softmax over one label (1.0 throughout)"


def test_every_pair_of_a_unit_goes_through_one_engine_run_sorted_by_length(zero_shot_model, texts, monkeypatch):
    task = make_task(zero_shot_model)
    calls = []
    run = task.engine.run
    monkeypatch.setattr(task.engine, "run", lambda *args, **kwargs: calls.append(len(args[1])) or run(*args, **kwargs))
    _, stats = task.annotate(texts)
    assert calls == [len(texts) * len(LABELS)]
    assert stats.padded_tokens < stats.tokens * 1.1, "pairs of all rows share length-sorted batches"


def test_plan_counts_each_rows_pairs(zero_shot_model):
    """``batchnlp plan`` counts a row's tokens with the task built without an engine: its pairs' sum."""
    job = {"input": "in.jsonl", "output": "out/", "tasks": [{"name": "zs", "task": "zero-shot"}]}
    job["tasks"][0].update(model=str(zero_shot_model), labels=["a", "b", "c"])
    task = ZeroShot(JobSpec.from_settings(job).tasks[0], zero_shot_model, None, None)
    texts = ["a short one", "a somewhat longer text about the economy and its many troubles"]
    inputs = task.preprocess(texts)
    pairs = [
        len(task.tokenizer(text, task.hypotheses[k])["input_ids"]) for text in texts for k in range(3)
    ]  # fmt: skip
    assert len(inputs.input_ids) == 6 and inputs.text_tokens().tolist() == [sum(pairs[:3]), sum(pairs[3:])]


def test_int8_near_ties_are_rerun_in_fp32(zero_shot_model, texts):
    fp32 = make_task(zero_shot_model).annotate(texts)[0].to_pylist()
    column, stats = make_task(zero_shot_model, "int8", margin=0.99).annotate(texts)  # every row is "near"
    assert stats.rescored == len(texts)
    got = column.to_pylist()
    assert [[c["label"] for c in r["labels"]] for r in got] == [[c["label"] for c in r["labels"]] for r in fp32]
    np.testing.assert_allclose(
        [[c["score"] for c in r["labels"]] for r in got], [[c["score"] for c in r["labels"]] for r in fp32], atol=1e-5
    )
    plain, unrescored = make_task(zero_shot_model, "int8", margin=0.0).annotate(texts)
    assert unrescored.rescored == 0
    gaps = [r["labels"][0]["score"] - r["labels"][1]["score"] for r in plain.to_pylist()]
    _, some = make_task(zero_shot_model, "int8", margin=0.05).annotate(texts)
    assert some.rescored == sum(gap < 0.05 for gap in gaps)


def test_onnxruntime_fp32_equals_torch(zero_shot_model, texts):
    torch_rows = make_task(zero_shot_model).annotate(texts)[0].to_pylist()
    task = make_task(zero_shot_model, backend="onnxruntime", multi_label=False)
    assert task.engine.backends[str(zero_shot_model)] == "onnxruntime"
    ort_rows = task.annotate(texts)[0].to_pylist()
    assert [r["label"] for r in ort_rows] == [r["label"] for r in torch_rows]
    np.testing.assert_allclose(
        [[c["score"] for c in r["labels"]] for r in ort_rows],
        [[c["score"] for c in r["labels"]] for r in torch_rows],
        atol=1e-4,
    )


def test_keep_probs_writes_scores_in_the_spec_label_order(zero_shot_model, texts):
    task = make_task(zero_shot_model, keep_probs=True)
    column, _ = task.annotate(texts)
    kind = TASKS["zero-shot"].output_type(task.spec)
    assert column.type == kind and json.loads(kind.field("probs").metadata[LABEL_ORDER_KEY]) == LABELS
    for row in column.to_pylist():
        by_label = {c["label"]: c["score"] for c in row["labels"]}
        assert row["probs"] == pytest.approx([by_label[label] for label in LABELS])


def test_the_report_figures_and_inspect_cell(zero_shot_model, texts):
    task = make_task(zero_shot_model, multi_label=True)
    column, _ = task.annotate(texts)
    rows = column.to_pylist()
    stats = merge([column_stats(column[:10]), column_stats(column[10:])])
    assert stats["labels"] == dict(__import__("collections").Counter(r["label"] for r in rows).most_common())
    assert stats["above_half"] == {
        label: n
        for label in LABELS
        if (n := sum(any(c["label"] == label and c["score"] >= 0.5 for c in r["labels"]) for r in rows))
    }
    figures = TASKS["zero-shot"].summary.figures({"annotated": len(rows), **stats})
    best, count = next(iter(stats["labels"].items()))
    assert figures["best_label_shares"].startswith(f"{best} {count} ({count / len(rows):.1%})")
    assert TASKS["zero-shot"].summary.cell(rows[0]) == f"{rows[0]['label']} ({rows[0]['score']:.2f})"


def test_stranger_texts(zero_shot_model):
    """One character, 100,000 characters (truncated to the window), other scripts, a lone emoji."""
    texts = ["x", "y" * 100_000, "word " * 20_000, "مرحبا بالعالم", "ᚠᛇᚻ᛫ᛒᛦᚦ", "🙂"]
    task = make_task(zero_shot_model, labels=["a, b", 'say "hi"', "c"])
    column, _ = task.annotate(texts)
    assert column.null_count == 0 and len(column) == len(texts)
    assert max(map(len, task.preprocess(texts).input_ids)) <= task.max_length == 512
    expected = pipeline_results(zero_shot_model, texts, ["a, b", 'say "hi"', "c"])
    assert [[c["label"] for c in r["labels"]] for r in column.to_pylist()] == [e["labels"] for e in expected]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, "needs its candidate labels"),
        ({"labels": "a,,b"}, "has an empty label"),
        ({"labels": []}, "has an empty label"),
        ({"labels": ["a", " "]}, "has an empty label"),
        ({"labels": "a,b,a"}, "give 'a' twice"),
        ({"labels": [1, 2]}, "must be a list of strings"),
        ({"labels": "a,b", "hypothesis": "This is about sports."}, "must hold {} where the label goes"),
        ({"labels": "a,b", "hypothesis": "About {label}."}, "does not format with one label"),
        ({"labels": "a,b", "multi_label": "yes"}, "multi_label of task 'zs' must be true or false"),
    ],
)
def test_bad_zero_shot_settings_are_refused_with_what_to_do(settings, message):
    job = {"input": "in.jsonl", "output": "out/", "tasks": [{"name": "zs", "task": "zero-shot", "model": "m/"}]}
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        JobSpec.from_settings({**job, **settings})


def test_labels_from_a_string_or_a_list_and_keys_refused_elsewhere():
    base = {"input": "in.jsonl", "output": "out/", "models": {"zero-shot": "m/"}}
    flags = JobSpec.from_settings({**base, "tasks": ["zero-shot"], "labels": " sports , tech "}).tasks[0]
    assert flags.labels == ("sports", "tech") and flags.hypothesis == "This example is {}." and not flags.multi_label
    listed = {"name": "zs", "task": "zero-shot", "model": "m/", "labels": ["a, b", 'say "hi"'], "multi_label": True}
    spec = JobSpec.from_settings({"input": "in.jsonl", "output": "out/", "tasks": [listed]})
    assert spec.tasks[0].labels == ("a, b", 'say "hi"') and spec.tasks[0].multi_label
    assert JobSpec.from_settings(spec.settings()) == spec, "a sharded run's stored settings give the spec back"
    with pytest.raises(SpecError, match="apply to zero-shot tasks only"):
        JobSpec.from_settings({"input": "in.jsonl", "output": "out/", "tasks": ["sentiment"], "labels": "a,b"})
    with pytest.raises(SpecError, match=r"task 'sentiment' \(sentiment\) does not take hypothesis"):
        JobSpec.from_settings({**base, "tasks": [{"name": "sentiment", "hypothesis": "{}"}]})
    with pytest.raises(SpecError, match="does not take a cascade"):
        JobSpec.from_settings({**base, "tasks": ["zero-shot"], "labels": "a,b", "cascade": {"zero-shot": "s/"}})


def test_settings_change_the_namespace_and_old_fingerprints_stay():
    spec = TaskSpec(name="zs", kind="zero-shot", model="m/", labels=("a", "b"), hypothesis="This example is {}.")
    engine = {"device": "cpu", "precision": "fp32", "backend": "torch", "max_length": 512, "rescore_margin": 0.0}

    def space(**changed):
        return namespace(dataclasses.replace(spec, **changed), "sha256:" + "ab" * 32, engine)[0]

    spaces = [
        space(),
        space(labels=("a", "c")),
        space(labels=("b", "a")),
        space(hypothesis="About {}."),
        space(multi_label=True),
    ]
    assert len(set(spaces)) == len(spaces)
    sentiment = TaskSpec(name="s", kind="sentiment", model="m/")
    assert not {"labels", "hypothesis", "multi_label"} & set(namespace(sentiment, "sha256:00", engine)[1]["settings"])
    # A job spec's fingerprint (--resume) changes with them too; other tasks' stay (tests/unit/spec/test_cascade.py).
    job = {"input": "in.jsonl", "output": "out/", "tasks": [{"name": "zs", "task": "zero-shot", "model": "m/"}]}
    prints = {
        JobSpec.from_settings({**job, **settings}).fingerprint()
        for settings in ({"labels": "a,b"}, {"labels": "b,a"}, {"labels": "a,b", "multi_label": True})
    }
    assert len(prints) == 3


def test_a_classifier_without_an_entailment_label_is_refused_by_name(tiny_model, qa_model, embed_model):
    spec = TaskSpec(name="zs", kind="zero-shot", model=str(tiny_model), labels=("a", "b"))
    for engine in (None, Engine("cpu", "fp32")):  # plan builds the task without an engine; a worker with one
        with pytest.raises(ModelError, match=rf"model {tiny_model} has no entailment label: .*NEGATIVE, POSITIVE"):
            ZeroShot(spec, tiny_model, engine, None)
    for other in (qa_model, embed_model):
        with pytest.raises(ModelError, match=rf"model {other} is not a sequence classifier"):
            ZeroShot(dataclasses.replace(spec, model=str(other)), other, None, None)


def test_a_hypothesis_too_long_for_the_window_is_refused(zero_shot_model):
    with pytest.raises(SpecError, match="leaves no room for the text within max_length 16"):
        job = {"input": "in.jsonl", "output": "out/", "tasks": [{"name": "zs", "task": "zero-shot"}]}
        job["tasks"][0].update(model=str(zero_shot_model), labels=["a very long label " * 3, "b"])
        ZeroShot(JobSpec.from_settings(job).tasks[0], zero_shot_model, None, 16)


def test_no_texts_give_an_empty_column(zero_shot_model):
    task = make_task(zero_shot_model, keep_probs=True)
    column, stats = task.annotate([])
    assert len(column) == 0 and column.type == task.output_type and stats.tokens == 0
    assert isinstance(column, pa.StructArray)


def test_distil_refuses_a_zero_shot_output_and_does_not_pick_it_by_default():
    from batchnlp.distillation import data
    from batchnlp.errors import InputError
    from tests.support.helpers import manifest

    models = {"zs": {"task": "zero-shot", "ref": "m/", "version": None}}
    record = dataclasses.replace(manifest("r1"), models=models)
    with pytest.raises(InputError, match="distil does not take zero-shot labels yet"):
        data._task_column("out/", record, "zs")
    with pytest.raises(InputError, match="pass --task NAME"):
        data._task_name("out/", record, None)


def test_a_yaml_job_spec_gives_labels_with_commas_and_quotes(tmp_path):
    from batchnlp.spec.load import load_spec_file

    path = tmp_path / "topics.yaml"
    path.write_text(
        "input: in.jsonl\noutput: out/\n"
        "tasks:\n"
        "  - name: topic\n    task: zero-shot\n    model: ./nli\n"
        '    labels: [sports, "arts, culture", \'say "hi"\', "it\'s {odd}"]\n'
        '    hypothesis: "This review is about {}."\n'
    )
    spec = JobSpec.from_settings(load_spec_file(path)).tasks[0]
    assert spec.labels == ("sports", "arts, culture", 'say "hi"', "it's {odd}")
    assert spec.hypothesis == "This review is about {}." and spec.kind == "zero-shot" and not spec.multi_label
