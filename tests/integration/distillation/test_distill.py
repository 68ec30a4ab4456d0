"""`batchnlp distill` and `--keep-probs`: a 6-layer tiny teacher whose head splits the corpus labels
it through `batchnlp run`, a student learns from those labels on CPU, and is run the same way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from batchnlp.cli import main
from batchnlp.testing import build_separating_classifier
from tests.support.corpus import texts as corpus_texts
from tests.support.helpers import invoke, write_jsonl

LABELS = ["NEGATIVE", "POSITIVE"]
ROWS = 2000
TRAINING = ["--epochs", "2", "--lr", "1e-3", "--batch-size", "32", "--max-length", "48", "--device", "cpu"]


def distill(*args: Any) -> Any:
    """``batchnlp distill ARGS`` in this process; a traceback in its output fails the test."""
    result = CliRunner().invoke(main, ["distill", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = corpus_texts(ROWS, seed=3, max_sentences=3)
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "reviews.jsonl", [
        {"id": f"r{i:05d}", "text": text} for i, text in enumerate(texts)
    ])  # fmt: skip


@pytest.fixture(scope="module")
def teacher(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    return build_separating_classifier(tmp_path_factory.mktemp("models") / "teacher", texts, LABELS, layers=6)


@pytest.fixture(scope="module")
def label(teacher: Path, scheduler: str):
    """``label(source, out, *flags)``: the teacher labels ``source`` through `batchnlp run`."""

    def run(source: Path, out: Path | str, *flags: Any) -> Any:
        args = [source, out, "--task", "classify", "--model", f"classify={teacher}", "--id-column", "id"]
        result = invoke(*args, "--scheduler", scheduler, "--workers", "1", "--quiet", *flags)
        assert result.exit_code == 0, result.output
        return result

    return run


@pytest.fixture(scope="module")
def labelled(corpus: Path, label, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("labelled") / "out"
    label(corpus, out, "--keep-probs")
    return out


@pytest.fixture(scope="module")
def student(labelled: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("students") / "student"
    result = distill(labelled, directory, "--task", "classify", "--layers", "2", *TRAINING)
    assert result.exit_code == 0, result.output
    assert "of the teacher's labels on the held-out rows" in result.output.splitlines()[-1], "the cascade comes last"
    return directory


def rows(out: Path) -> list[dict[str, Any]]:
    return ds.dataset(sorted(out.glob("part-*.parquet")), format="parquet").to_table().to_pylist()


def test_keep_probs_writes_every_label_probability_in_the_order_the_schema_names(labelled: Path, teacher: Path):
    from batchnlp.tasks.columns import label_order

    column = ds.dataset(sorted(labelled.glob("part-*.parquet")), format="parquet").schema.field("classify").type
    assert label_order(column) == LABELS
    found = rows(labelled)
    assert len(found) == ROWS
    for row in found[:200]:
        value = row["classify"]
        assert sum(value["probs"]) == pytest.approx(1.0, abs=1e-5)
        assert value["score"] == max(value["probs"])
        assert value["label"] == LABELS[value["probs"].index(max(value["probs"]))]
    shares = [sum(row["classify"]["label"] == label for row in found) / ROWS for label in LABELS]
    assert min(shares) > 0.25, f"the teacher's head must split the corpus, got {shares}"


def test_keep_probs_is_off_by_default_and_refused_for_qa():
    import pyarrow as pa

    from batchnlp.spec import JobSpec
    from batchnlp.tasks import output_schema
    from batchnlp.tasks.columns import LABEL_SCORE

    spec = JobSpec.from_settings({"input": "in", "output": "out", "tasks": ["sentiment"]})
    assert output_schema(pa.schema([("text", pa.string())]), spec.tasks).field("sentiment").type == LABEL_SCORE
    kept = JobSpec.from_settings({"input": "in", "output": "out", "tasks": ["sentiment"], "keep_probs": True})
    assert kept.fingerprint() != spec.fingerprint()
    result = invoke("in.jsonl", "out", "--task", "qa", "--question", "Why?", "--keep-probs")
    assert result.exit_code == 2
    assert "keep_probs applies to classify, sentiment and zero-shot tasks only" in result.output


def test_the_student_agrees_with_its_teacher_well_beyond_the_majority_label(student: Path, labelled: Path):
    report = json.loads((student / "_distill_report.json").read_text())
    held = report["eval"]
    assert held["rows"] > 100
    assert held["agreement"] >= held["majority_baseline"] + 0.15, held
    assert held["macro_f1"] > 0.6
    assert report["student"]["init"] == {"from": "teacher", "layers": 2, "teacher_layers": [0, 3]}
    assert report["speed"]["teacher_tokens_per_second"] > 0 and report["speed"]["student_tokens_per_second"] > 0
    assert report["student"]["size"]["parameters"] < report["teacher"]["size"]["parameters"]
    manifest = json.loads((labelled / "_manifest.json").read_text())
    card = (student / "README.md").read_text()
    assert manifest["run_id"] in card and str(labelled) in card
    assert "agreement" in (student / "_distill_report.html").read_text()


def test_student_layers_start_as_every_other_teacher_layer(teacher: Path):
    from safetensors.torch import load_file

    from batchnlp.distillation.train import layer_map, student_from_teacher

    assert layer_map(6, 3) == [0, 2, 4]
    assert layer_map(12, 6) == [0, 2, 4, 6, 8, 10]
    assert layer_map(6, 2) == [0, 3]
    made = student_from_teacher(teacher, LABELS, layers=3, hidden=None)
    weights = {
        key.removeprefix("distilbert."): value for key, value in load_file(teacher / "model.safetensors").items()
    }
    state = {key.removeprefix("distilbert."): value for key, value in made.model.state_dict().items()}
    assert made.model.config.num_hidden_layers == 3
    copied = 0
    for key, tensor in state.items():
        parts = key.split(".")
        if key.startswith("transformer.layer."):
            parts[2] = str([0, 2, 4][int(parts[2])])
        source = ".".join(parts)
        assert tensor.equal(weights[source]), key
        copied += "transformer.layer." in key
    assert copied > 0
    assert not any(key.startswith("transformer.layer.3.") for key in state)


def test_a_narrower_student_starts_from_random_weights(teacher: Path):
    from batchnlp.distillation.train import student_from_teacher

    made = student_from_teacher(teacher, LABELS, layers=2, hidden=16)
    assert made.model.config.dim == 16 and made.model.config.hidden_dim == 64
    assert made.init == {"from": "random", "layers": 2, "hidden": 16}


def test_batchnlp_run_labels_with_the_student_at_once(student: Path, corpus: Path, scheduler: str, tmp_path: Path):
    out = tmp_path / "cheap"
    args = [corpus, out, "--task", "classify", "--model", f"classify={student}", "--scheduler", scheduler]
    result = invoke(*args, "--workers", "1", "--quiet", "--keep-probs")
    assert result.exit_code == 0, result.output
    labels = {row["classify"]["label"] for row in rows(out)}
    assert labels == set(LABELS)
    assert json.loads((student / "config.json").read_text())["id2label"] == {"0": "NEGATIVE", "1": "POSITIVE"}


def test_an_interrupted_student_resumes_to_the_weights_of_an_uninterrupted_one(
    labelled: Path, student: Path, tmp_path: Path
):
    from batchnlp.distillation.data import TeacherSource
    from batchnlp.distillation.job import DistillSpec
    from batchnlp.distillation.job import distill as distil
    from batchnlp.distillation.train import TrainSettings

    class Stop(Exception):
        pass

    def stop_in_second_epoch(done: int, total: int, loss: float) -> None:
        if done > total // 2:
            raise Stop

    settings = TrainSettings(epochs=2, lr=1e-3, batch_size=32, max_length=48)
    spec = DistillSpec(TeacherSource(str(labelled)), str(tmp_path / "again"), "classify", layers=2, train=settings,
                       device="cpu")  # fmt: skip
    with pytest.raises(Stop):
        distil(spec, stop_in_second_epoch)
    assert [p.name for p in (tmp_path / "again" / "_checkpoints").iterdir()] == ["epoch-0001"]
    result = distill(labelled, tmp_path / "again", "--layers", "2", *TRAINING)
    assert result.exit_code == 2 and "--resume" in result.output
    result = distill(labelled, tmp_path / "again", "--layers", "2", *TRAINING, "--resume")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (student / "model.safetensors").read_bytes()
    changed = distill(labelled, tmp_path / "again", "--layers", "2", *TRAINING, "--seed", "1", "--resume")
    assert changed.exit_code == 2 and "changed since" in changed.output


def test_distill_refuses_outputs_it_cannot_learn_from(labelled: Path, corpus: Path, label, tmp_path: Path):
    missing = distill(labelled, tmp_path / "s", "--task", "topics")
    assert missing.exit_code == 2
    assert "has no task 'topics'; its tasks: classify (classify)" in missing.output

    uncommitted = tmp_path / "uncommitted"
    shutil.copytree(labelled, uncommitted)
    (uncommitted / "_SUCCESS").unlink()
    refused = distill(uncommitted, tmp_path / "s")
    assert refused.exit_code == 2 and "no _SUCCESS" in refused.output

    few = write_jsonl(tmp_path / "few.jsonl", [{"id": f"x{i}", "text": f"row {i} was fine"} for i in range(20)])
    label(few, tmp_path / "no-probs")
    plain = distill(tmp_path / "no-probs", tmp_path / "s")
    assert plain.exit_code == 2 and "--keep-probs" in plain.output
    assert not (tmp_path / "s" / "model.safetensors").exists()


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_distill_learns_from_a_table(corpus: Path, label, tmp_path: Path, fmt: str):
    """Every run the table holds: two nights' appends, read through the table's own commits."""
    pytest.importorskip("deltalake" if fmt == "delta" else "pyiceberg")
    from tests.integration.io.test_tables import catalog_flags

    lines = corpus.read_text().splitlines()[:300]
    nights = [write_jsonl(tmp_path / f"night-{n}.jsonl", [json.loads(line) for line in lines[n::2]]) for n in (0, 1)]
    if fmt == "delta":
        table, flags = tmp_path / "table", ["--output-format", "delta"]
    else:
        table, flags = "lake.labels", ["--output-format", "iceberg", *catalog_flags(str(tmp_path), tmp_path)]
    for n, night in enumerate(nights):
        label(night, table, "--keep-probs", *flags, "--run-id", f"night-{n + 1}")
    result = distill(table, tmp_path / "s", *flags, "--layers", "1", "--epochs", "1", "--max-length", "32",
                     "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "s" / "_distill_report.json").read_text())
    assert report["data"]["runs"] == ["night-1", "night-2"] and report["data"]["rows"] == 300


def test_distill_from_s3_and_stage_the_student_there(corpus: Path, label, s3, bucket: str, tmp_path: Path):
    """The teacher's labels written to (moto's) S3, the student trained from them, pushed with
    `batchnlp models pull`, and a run labelling with the student straight from S3."""
    lines = corpus.read_text().splitlines()[:200]
    small = write_jsonl(tmp_path / "small.jsonl", [json.loads(line) for line in lines])
    labelled = f"s3://{bucket}/labelled/"
    label(small, labelled, "--keep-probs")
    student = tmp_path / "student"
    result = distill(labelled, student, "--layers", "1", "--epochs", "1", "--max-length", "32", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads((student / "_distill_report.json").read_text())
    assert report["data"]["source"] == labelled.rstrip("/") and report["data"]["rows"] == 200

    staged = f"s3://{bucket}/models/student/"
    pushed = CliRunner().invoke(main, ["models", "pull", str(student), staged])
    assert pushed.exit_code == 0, pushed.output
    out = tmp_path / "cheap"
    label_with = invoke(small, out, "--task", "classify", "--model", f"classify={staged}", "--workers", "1", "-q")
    assert label_with.exit_code == 0, label_with.output
    assert len(rows(out)) == 200


@pytest.mark.parametrize("family", ["bert", "deberta-v2", "distilbert", "electra", "modernbert", "roberta"])
def test_every_encoder_family_starts_its_student_from_every_other_teacher_layer(tmp_path: Path, family: str):
    """Each family names its blocks its own way (``distilbert.transformer.layer.N``,
    ``bert.encoder.layer.N``, ModernBERT's ``model.layers.N``): the student's block ``i`` must be
    the teacher's ``2i`` in each, not its ``i``."""
    import re

    from transformers import AutoModelForSequenceClassification

    from batchnlp.distillation.train import student_from_teacher
    from tests.unit.inference.test_encoder_families import build

    teacher_dir = build(tmp_path / family, family, "classify", layers=4)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).state_dict()
    made = student_from_teacher(teacher_dir, ["NEG", "POS"], layers=2, hidden=None)
    assert made.model.config.num_hidden_layers == 2
    remapped = 0
    for key, tensor in made.model.state_dict().items():
        source = re.sub(r"(\.layers?\.)(\d+)\.", lambda m: f"{m[1]}{[0, 2][int(m[2])]}.", key, count=1)
        assert tensor.equal(teacher[source]), f"{family}: {key} is not the teacher's {source}"
        remapped += source != key
    assert remapped > 0


def test_resume_and_overwrite_together_are_refused_before_anything_is_read(tmp_path):
    args = ["distill", str(tmp_path / "no-such-output"), str(tmp_path / "student"), "--resume", "--overwrite"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--resume and --overwrite exclude each other" in result.output, result.output
    assert not (tmp_path / "student").exists()


def test_a_cascade_run_labels_as_distills_calibration_counts(
    student: Path, labelled: Path, corpus: Path, teacher: Path, scheduler: str, tmp_path: Path
):
    """On the held-out rows, a cascade run hands the teacher the rows distill's calibration counts for a
    margin and agrees with the teacher's output as often: both compare the same student margins.

    The student distilled here is sure of nearly every row (its teacher's head is steep), so a random
    student, unsure of many, stands in for the run; the report's own table is checked on its own.
    """
    from batchnlp.distillation.cascade import calibrate
    from batchnlp.distillation.data import TeacherSource, held_out, load_teacher
    from batchnlp.distillation.report import measure
    from batchnlp.testing import build_classifier

    report = json.loads((student / "_distill_report.json").read_text())
    cascade = report["cascade"]
    assert cascade["rows"] == report["eval"]["rows"] > 100 and cascade["precision"] == "fp32"
    assert [row["margin"] for row in cascade["margins"]][:3] == [0.0, 0.05, 0.1]
    assert cascade["margins"][0]["agreement"] == report["eval"]["agreement"], "margin 0 is the student alone"
    if cascade["margin"] is not None:
        assert cascade["flags"] == f"--cascade classify={student} --cascade-margin {cascade['margin']:g}"
        assert cascade["agreement"] >= 0.995 and cascade["command"].startswith("batchnlp run INPUT OUTPUT --task")
    else:
        assert cascade["flags"] is None and "No cascade margin below 1" in (student / "README.md").read_text()

    unsure = build_classifier(tmp_path / "unsure", LABELS, seed=7)
    records = [json.loads(line) for line in corpus.read_text().splitlines()]
    kept = [r for r, k in zip(records, held_out([r["id"] for r in records], 0.1), strict=True) if k]
    teacher_labels = {row["id"]: row["classify"]["label"] for row in rows(labelled)}
    pupil = measure(("classify", "classify"), unsure, str(unsure), [r["text"] for r in kept], "cpu", "fp32")
    table = calibrate(pupil.labels, pupil.gaps, [teacher_labels[r["id"]] for r in kept])["margins"]
    row = next(row for row in table if 0.3 * len(kept) < row["teacher_rows"] < 0.7 * len(kept))

    out = tmp_path / "cascade"
    # Every row through the models, as the calibration counts rows (deduplication would count distinct texts).
    flags = ["--keep-probs", "--id-column", "id", "--scheduler", scheduler, "--workers", "1", "--quiet", "--no-dedup"]
    cascading = ["--cascade", f"classify={unsure}", "--cascade-margin", str(row["margin"])]
    result = invoke(write_jsonl(tmp_path / "held.jsonl", kept), out, "--task", "classify", "--model",
                    f"classify={teacher}", *cascading, *flags)  # fmt: skip
    assert result.exit_code == 0, result.output
    got = rows(out)
    counted = json.loads((out / "_manifest.json").read_text())["totals"]["labelled_by"]["classify"]
    assert counted == {"student": len(kept) - row["teacher_rows"], "teacher": row["teacher_rows"]}
    agreement = np.mean([r["classify"]["label"] == teacher_labels[r["id"]] for r in got])
    assert agreement == pytest.approx(row["agreement"])

    again = load_teacher(TeacherSource(str(out)), None)  # a cascade's output, with its model field, still reads
    assert again.student_rows == counted["student"] and len(again.texts) == len(got)
