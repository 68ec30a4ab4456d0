"""``batchnlp distill``: a smaller student trained on a committed run's labels, measured against its teacher."""

from __future__ import annotations

from typing import Any

import click

from batchnlp.cli.options import LogChoice, catalog_option, log_options, storage_option
from batchnlp.cli.outcome import say, user_errors
from batchnlp.spec import TABLE_FORMATS


@click.command("distill")
@click.argument("teacher_output")
@click.argument("student_dir")
@click.option("--task", metavar="NAME", help="The task column to learn. Default: the output's one classifier.")
@click.option("--output-format", type=click.Choice(TABLE_FORMATS), help="TEACHER_OUTPUT is a table.")
@click.option("--catalog", default="default", metavar="NAME", help="Iceberg: the catalog holding TEACHER_OUTPUT.")
@catalog_option()
@storage_option("TEACHER_OUTPUT and the models")
@click.option("--teacher-model", metavar="REF", help="The teacher checkpoint. Default: the one the output names.")
@click.option("--student-init", metavar="REF", help="Start from this checkpoint instead of the teacher's layers.")
@click.option("--layers", type=click.IntRange(min=1), help="Student layers. Default: half the teacher's.")
@click.option("--hidden", type=click.IntRange(min=8), help="Student width; other than the teacher's: random start.")
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Softens both distributions in the KL term (scaled by T²).",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of the soft (KL) loss; 1 - alpha weighs cross-entropy on the teacher's labels.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True, help="Passes over the rows.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Rows per step.")
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=5e-5, show_default=True, help="AdamW peak rate."
)
@click.option("--max-length", type=click.IntRange(min=8), help="Truncate training texts. Default: the model's.")
@click.option(
    "--eval-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.1,
    show_default=True,
    help="Rows held out to measure the student, picked by a hash of the id column (else the row position).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, rows and device: same weights.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default="auto",
    show_default=True,
    help="Training: bf16 autocast (auto on a GPU with bf16) or fp32. Measuring: as batchnlp run's.",
)
@click.option("--resume", is_flag=True, help="Continue after the last epoch checkpointed in STUDENT_DIR.")
@click.option("--overwrite", is_flag=True, help="Replace the student in STUDENT_DIR.")
@log_options
def distill_command(
    teacher_output: str,
    student_dir: str,
    log: LogChoice,
    **flags: Any,
) -> None:
    """Train a smaller student on the labels of a committed run (written with --keep-probs), then
    measure it against its teacher on held-out rows: _distill_report.json/.html and a model card.
    Ends with the cascade (batchnlp run --cascade) the held-out rows recommend: the smallest margin
    whose labels keep 99.5% of the teacher's, and the share of rows the teacher would label.

    Exit codes: 0 done; 2 an output that is not committed, has no probabilities or no such task,
    or bad flags; 1 anything else.

    \b
    Examples:
      batchnlp run reviews/ labelled/ --task classify --model classify=./topics --keep-probs
      batchnlp distill labelled/ ./topics-student --task classify --epochs 3
      batchnlp run reviews/ cheap/ --task classify --model classify=./topics-student
      batchnlp run reviews/ both/ --task classify --model classify=./topics \\
          --cascade classify=./topics-student --cascade-margin 0.12
    """
    log.configure()
    import batchnlp
    from batchnlp.distillation.job import TrainingProgress
    from batchnlp.observe.progress import choose_mode

    catalog_options, storage_options = dict(flags.pop("catalog_option")), dict(flags.pop("storage_option"))
    settings = {**flags, "catalog_options": catalog_options, "storage_options": storage_options}
    with user_errors(log.verbose, log.json), TrainingProgress(choose_mode(log.quiet, log.format)) as progress:
        result = batchnlp.distill(teacher_output, student_dir, on_step=progress, **settings)
    if not log.quiet:
        say(result.summary(), log.json, "distill_done")
        say(result.cascade_line(), log.json, "distill_cascade", cascade=result.report["cascade"]["flags"])
