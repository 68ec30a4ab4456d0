"""Check the qa task against the real transformers 4.57.6 QuestionAnsweringPipeline (the last 4.x release).

transformers 5 removed that pipeline, so the check runs in two interpreters:

    python benchmarks/qa_against_transformers4.py ours /tmp/qa4             # this project's venv
    python -m venv /tmp/venv4 && /tmp/venv4/bin/pip install torch==2.13.0 "transformers==4.57.6"
    /tmp/venv4/bin/python benchmarks/qa_against_transformers4.py theirs /tmp/qa4

``ours`` saves a random-weight DistilBERT QA model and 210 (question, context) pairs (a third of
them need several 384-token windows) with batchnlp's answers; ``theirs`` answers the same pairs
with the 4.x pipeline's defaults and prints how many agree and the largest score difference.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path


def ours(work: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from batchnlp.inference.engine import Engine
    from batchnlp.spec import TaskSpec
    from batchnlp.tasks.qa import QuestionAnswering
    from batchnlp.testing import build_question_answerer
    from tests.support import corpus
    from tests.unit.tasks.test_qa import QUESTIONS

    model = build_question_answerer(work / "model")
    rng = random.Random(5)
    contexts = corpus.texts(150, seed=9) + [" ".join(corpus.texts(40, seed=s, max_sentences=8)) for s in range(60)]
    questions = [rng.choice(QUESTIONS) for _ in contexts]
    spec = TaskSpec(name="qa", kind="qa", model=str(model), question_column="question", max_answer_length=15)
    answers, _ = QuestionAnswering(spec, model, Engine("cpu", "fp32", 4096), None).answer(contexts, questions)
    data = {"questions": questions, "contexts": contexts, "answers": answers.to_pylist()}
    (work / "ours.json").write_text(json.dumps(data))
    print(f"{len(contexts)} pairs answered by batchnlp into {work / 'ours.json'}")


def theirs(work: Path) -> None:
    import transformers
    from transformers import pipeline

    data = json.loads((work / "ours.json").read_text())
    qa = pipeline("question-answering", model=str(work / "model"), device=-1)
    expected = [qa(question=q, context=c) for q, c in zip(data["questions"], data["contexts"], strict=True)]
    same = sum(
        (o["answer"], o["start"], o["end"]) == (e["answer"], e["start"], e["end"])
        for o, e in zip(data["answers"], expected, strict=True)
    )
    worst = max(abs(o["score"] - e["score"]) for o, e in zip(data["answers"], expected, strict=True))
    windows = [
        len(
            qa.tokenizer(q, c, truncation="only_second", max_length=384, stride=128, return_overflowing_tokens=True)[
                "input_ids"
            ]
        )
        for q, c in zip(data["questions"], data["contexts"], strict=True)
    ]
    print(
        f"transformers {transformers.__version__}: {same}/{len(expected)} answers equal (text, start, end); "
        f"max |score difference| {worst:.1e}; {sum(w > 1 for w in windows)} multi-window pairs, {sum(windows)} windows"
    )


if __name__ == "__main__":
    mode, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    {"ours": ours, "theirs": theirs}[mode](work)
