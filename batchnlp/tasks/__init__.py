"""The task registry: a literal table of task kinds, their code (imported lazily) and defaults.

A new task is one module in this package with a ``Task`` subclass, plus one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchnlp.tasks.base import Task


@dataclass(frozen=True)
class TaskInfo:
    """What the spec needs to know without importing torch."""

    target: str
    default_model: str | None
    supports_top_k: bool
    help: str
    takes_question: bool = False  # qa: --question / --question-column and the span settings

    def load(self) -> type[Task]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


TASKS: dict[str, TaskInfo] = {
    "sentiment": TaskInfo(
        target="batchnlp.tasks.classify:Classify",
        default_model="distilbert/distilbert-base-uncased-finetuned-sst-2-english",
        supports_top_k=False,
        help="positive/negative sentiment (SST-2 DistilBERT by default)",
    ),
    "classify": TaskInfo(
        target="batchnlp.tasks.classify:Classify",
        default_model=None,
        supports_top_k=True,
        help="any sequence-classification checkpoint; --top-k N keeps the N best labels",
    ),
    "qa": TaskInfo(
        target="batchnlp.tasks.qa:QuestionAnswering",
        default_model="distilbert/distilbert-base-cased-distilled-squad",
        supports_top_k=False,
        help="extractive question answering: the span of the text that answers --question or --question-column",
        takes_question=True,
    ),
}
