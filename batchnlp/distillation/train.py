"""The student's side of ``batchnlp distill``: how it starts, what it minimises, and its checkpoints.

**Start.** By default the student is the teacher's architecture with fewer layers, initialised
from the teacher as DistilBERT was from BERT: embeddings and the classification head copied, and
student layer ``i`` a copy of teacher layer ``⌊i·L/N⌋`` (``L`` teacher layers, ``N`` student
layers), which is one layer out of two when ``N = L/2``: 0, 2, 4 of 6. A different width
(``--hidden``) has nothing to copy and starts from random weights; ``--student-init`` starts from
any safetensors checkpoint instead (its own tokenizer; a new head for the teacher's labels).

**Loss.** ``alpha · T² · KL(teacher_T ‖ softmax(z/T)) + (1 - alpha) · CE(z, teacher's label)``,
Hinton et al.'s, as DistilBERT used. The output holds the teacher's probabilities at T = 1, and
``softmax(z/T) ∝ p^(1/T)``, so ``teacher_T`` is ``p^(1/T)`` renormalised: exactly what the
teacher's logits at temperature T would have given.

**Checkpoints.** After each epoch, ``STUDENT_DIR/_checkpoints/epoch-NNNN/`` gets the weights, the
optimiser's moments and the random generator's state (safetensors: nothing is unpickled on
resume) and a ``state.json``, written last. ``--resume`` continues after the latest complete one,
so an interrupted run ends with the weights an uninterrupted one would have had.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batchnlp.errors import ModelError, OutputError, SpecError
from batchnlp.inference.engine import pad_batch, token_mask

logger = logging.getLogger(__name__)

CHECKPOINTS = "_checkpoints"
STATE = "state.json"
WARMUP = 0.05  # share of the steps over which the learning rate rises to --lr, before it decays linearly to 0
# An encoder block's index in a weight's name: distilbert.transformer.layer.3.…, bert.encoder.layer.3.…,
# ModernBERT's model.layers.3.…
LAYER_INDEX = re.compile(r"(?:(?<=\.layer\.)|(?<=\.layers\.))\d+(?=\.)")


@dataclass(frozen=True)
class TrainSettings:
    """What the weights depend on; a resumed run must have the same (its fingerprint)."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    temperature: float = 2.0
    alpha: float = 0.5
    seed: int = 0
    max_length: int | None = None  # None: the student tokenizer's maximum (512 for DistilBERT)
    weight_decay: float = 0.01
    data: str = ""  # a digest of the training rows and their probabilities

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Student:
    """A student ready to train: model and tokenizer, and how it was initialised (for the report)."""

    model: Any
    tokenizer: Any
    init: dict[str, Any] = field(default_factory=dict)


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layer each student layer starts from: ``⌊i·L/N⌋``, every other one for half as many."""
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def student_from_teacher(teacher_dir: Path, labels: Sequence[str], layers: int | None, hidden: int | None) -> Student:
    """A shallower (or narrower) copy of the teacher's architecture; see the module's docstring."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(teacher_dir, trust_remote_code=False)
    depth = config.num_hidden_layers
    count = layers or max(1, depth // 2)
    if count > depth:
        raise SpecError(f"--layers {count} is more than the teacher's {depth}: a student is meant to be cheaper")
    student_config = copy.deepcopy(config)
    student_config.num_hidden_layers = count
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir, trust_remote_code=False)
    if hidden and hidden != config.hidden_size:
        _narrow(student_config, hidden)
        model = AutoModelForSequenceClassification.from_config(student_config)
        return Student(model, tokenizer, {"from": "random", "layers": count, "hidden": hidden})
    teacher = AutoModelForSequenceClassification.from_pretrained(
        teacher_dir, use_safetensors=True, trust_remote_code=False
    )
    teacher_labels = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    if teacher_labels != list(labels):
        raise ModelError(
            f"the teacher model at {teacher_dir} has the labels {teacher_labels}, but the output's are {list(labels)}: "
            "pass --teacher-model the checkpoint that labelled the output"
        )
    model = AutoModelForSequenceClassification.from_config(student_config)
    mapping = layer_map(depth, count)
    source = teacher.state_dict()
    state = {
        key: source[LAYER_INDEX.sub(lambda m: str(mapping[int(m.group())]), key, count=1)] for key in model.state_dict()
    }
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    return Student(model, tokenizer, {"from": "teacher", "layers": count, "teacher_layers": mapping})


def student_from_checkpoint(directory: Path, ref: str, labels: Sequence[str]) -> Student:
    """``--student-init``: any safetensors checkpoint, with a new head for the teacher's labels."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            directory,
            use_safetensors=True,
            trust_remote_code=False,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot start a student from {ref!r}: {e}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"--student-init {ref!r} has no fast tokenizer (tokenizer.json); batchnlp needs one")
    layers = getattr(model.config, "num_hidden_layers", None)
    return Student(model, tokenizer, {"from": ref, "layers": layers})


def _narrow(config: Any, hidden: int) -> None:
    """A config ``hidden`` wide, its feed-forward four times that, as BERT and DistilBERT are."""
    heads = config.num_attention_heads
    if hidden % heads:
        raise SpecError(f"--hidden {hidden} must be a multiple of the teacher's {heads} attention heads")
    config.hidden_size = hidden
    for name in ("intermediate_size", "hidden_dim"):  # BERT's name, DistilBERT's
        if hasattr(config, name):
            setattr(config, name, 4 * hidden)


def distillation_loss(logits: Any, teacher_probs: Any, temperature: float, alpha: float) -> Any:
    """``alpha · T² · KL(teacher_T ‖ student_T) + (1 - alpha) · CE(student, teacher's label)``, batch mean."""
    import torch.nn.functional as F

    student = F.log_softmax(logits / temperature, dim=-1)
    target = F.softmax(teacher_probs.clamp_min(1e-12).log() / temperature, dim=-1)
    soft = F.kl_div(student, target, reduction="batchmean") * temperature**2
    hard = F.cross_entropy(logits, teacher_probs.argmax(dim=-1))
    return alpha * soft + (1 - alpha) * hard


@dataclass
class Trainer:
    """Trains a student on (texts, teacher probabilities) with checkpoints under ``directory``."""

    student: Student
    settings: TrainSettings
    directory: Path  # STUDENT_DIR
    device: str = "cpu"
    precision: str = "fp32"  # or bf16 (autocast)
    on_step: Callable[[int, int, float], None] | None = None  # (steps done, steps in all, loss)
    losses: list[dict[str, Any]] = field(default_factory=list)  # per epoch: epoch, mean loss, seconds

    def fit(self, texts: Sequence[str], probs: np.ndarray, resume: bool) -> None:
        import time

        import torch

        s = self.settings
        torch.manual_seed(s.seed)
        model = self.student.model.to(self.device)
        limit = s.max_length or self.student.tokenizer.model_max_length
        ids = self.student.tokenizer(list(texts), truncation=True, max_length=limit, return_attention_mask=False)[
            "input_ids"
        ]
        steps_per_epoch = -(-len(ids) // s.batch_size)
        total = steps_per_epoch * s.epochs
        optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        warmup = max(1, int(WARMUP * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
        )
        start = self._restore(model, optimizer, schedule) if resume else 0
        targets = torch.from_numpy(np.asarray(probs, dtype=np.float32))
        pad = self.student.tokenizer.pad_token_id
        for epoch in range(start, s.epochs):
            model.train()
            clock, summed = time.perf_counter(), 0.0
            order = np.random.default_rng([s.seed, epoch]).permutation(len(ids))
            for step in range(steps_per_epoch):
                batch = order[step * s.batch_size : (step + 1) * s.batch_size]
                loss = self._step(model, [ids[i] for i in batch], pad, targets[batch], optimizer)
                schedule.step()
                summed += loss
                if self.on_step:
                    self.on_step(epoch * steps_per_epoch + step + 1, total, loss)
            record = {"epoch": epoch + 1, "loss": round(summed / steps_per_epoch, 6)}
            self.losses.append({**record, "seconds": round(time.perf_counter() - clock, 3)})
            logger.info(
                "epoch %d of %d: mean loss %.4f",
                epoch + 1,
                s.epochs,
                record["loss"],
                extra={"event": "distill_epoch", **record},
            )
            self._save(model, optimizer, schedule, epoch + 1)
        model.eval().to("cpu")

    def _step(self, model: Any, rows: list[list[int]], pad: int, targets: Any, optimizer: Any) -> float:
        """One optimiser step on one padded batch; returns its loss."""
        import torch

        lengths = [len(row) for row in rows]
        mask = token_mask(lengths, max(lengths))
        inputs = {
            "input_ids": torch.from_numpy(pad_batch(rows, mask, pad)).to(self.device),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)).to(self.device),
        }
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = model(**inputs).logits
        loss = distillation_loss(
            logits.float(), targets.to(self.device), self.settings.temperature, self.settings.alpha
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    # Checkpoints: safetensors and JSON only.

    def _save(self, model: Any, optimizer: Any, schedule: Any, epoch: int) -> None:
        """``_checkpoints/epoch-NNNN/``, written beside and renamed into place; older ones then removed."""
        import torch
        from safetensors.torch import save_file

        root = self.directory / CHECKPOINTS
        final = root / f"epoch-{epoch:04d}"
        partial = root / f".epoch-{epoch:04d}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, partial / "model.safetensors"
        )
        moments, groups = _flatten_optimizer(optimizer.state_dict())
        moments["rng.cpu"] = torch.get_rng_state()
        if self.device == "cuda":
            moments["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(moments, partial / "optimizer.safetensors")
        state = {
            "epoch": epoch,
            "fingerprint": self.settings.fingerprint(),
            "param_groups": groups,
            "schedule": schedule.state_dict(),
            "losses": self.losses,
        }
        (partial / STATE).write_text(json.dumps(state, indent=2, sort_keys=True))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in root.glob("epoch-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    def _restore(self, model: Any, optimizer: Any, schedule: Any) -> int:
        """Load the latest complete checkpoint; the epochs it finished (0 when there is none)."""
        import torch
        from safetensors.torch import load_file

        found = latest_checkpoint(self.directory)
        if found is None:
            logger.info("no checkpoint under %s to resume from: training from the start", self.directory / CHECKPOINTS)
            return 0
        state = json.loads((found / STATE).read_text())
        if state["fingerprint"] != self.settings.fingerprint():
            raise OutputError(
                f"cannot resume from {found}: the teacher's rows or the training settings (epochs, batch size, lr, "
                "temperature, alpha, seed, max length) changed since it was written; pass --overwrite to start again"
            )
        model.load_state_dict({k: v.to(self.device) for k, v in load_file(found / "model.safetensors").items()})
        moments = load_file(found / "optimizer.safetensors")
        torch.set_rng_state(moments.pop("rng.cpu"))
        cuda_state = moments.pop("rng.cuda", None)
        if cuda_state is not None and self.device == "cuda":
            torch.cuda.set_rng_state(cuda_state)
        optimizer.load_state_dict(_unflatten_optimizer(moments, state["param_groups"]))
        schedule.load_state_dict(state["schedule"])
        self.losses = list(state["losses"])
        logger.info("resuming after epoch %d from %s", state["epoch"], found)
        return int(state["epoch"])


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint (its state.json written) under ``directory/_checkpoints``."""
    done = sorted(path for path in (directory / CHECKPOINTS).glob("epoch-*") if (path / STATE).is_file())
    return done[-1] if done else None


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """AdamW's per-parameter tensors as ``state.<index>.<name>``, and its parameter groups (JSON)."""
    import torch

    tensors = {
        f"state.{index}.{name}": (value if torch.is_tensor(value) else torch.tensor(value)).detach().cpu().contiguous()
        for index, values in state["state"].items()
        for name, value in values.items()
    }
    return tensors, json.loads(json.dumps(state["param_groups"]))


def _unflatten_optimizer(tensors: dict[str, Any], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}
