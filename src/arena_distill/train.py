"""The training engine every training stage shares: examples, a Trainer, OOF predictions.

Built on ``transformers.Trainer`` (AdamW, cosine schedule with warmup, gradient accumulation,
checkpointing, resume, DDP / DeepSpeed / FSDP through accelerate). What this module adds:

- examples from token ids with the swap augmentation of the recipe (``random``: every training
  row also added A/B-swapped, 1st place; ``full``: original and swapped row in the same
  optimiser step, 2nd place; ``none``);
- a pluggable loss (``arena_distill.losses``), so distillation adds teacher terms without
  touching the loop;
- length-grouped batches and the padding share they cost;
- evaluation on the fold's validation rows (original orientation) with the competition metric,
  the best checkpoint kept;
- predictions restored to input order, in both orientations (for swap-TTA).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from arena_distill import faults
from arena_distill.collate import (
    PreferenceCollator,
    batch_buckets,
    bucket_length,
    padding_mask_needed,
)
from arena_distill.distributed import barrier, is_main_process
from arena_distill.io import atomic_dir, remove_dir, write_json, write_manifest
from arena_distill.losses import IGNORE_LABEL, LossFn, cross_entropy
from arena_distill.metrics import classification_metrics, log_loss_from_logits, training_throughput
from arena_distill.models.hybrid import head_features
from arena_distill.settings import SWAP_MODES, TrainSettings, to_dict

log = logging.getLogger(__name__)

# label after an A/B swap (a pseudo-labelled row has none: IGNORE_LABEL)
SWAP_LABEL = {0: 1, 1: 0, 2: 2, IGNORE_LABEL: IGNORE_LABEL}
# the example / batch field of a row's features (models.hybrid: the hybrid head's input)
FEATURES = "features"


def example_features(examples: Sequence[dict]) -> np.ndarray | None:
    """The ``features`` of ``examples`` as one (n, n_features) float32 array, in their order
    (what the inference engine takes); None when they carry none."""
    if not examples or FEATURES not in examples[0]:
        return None
    return np.asarray([e[FEATURES] for e in examples], dtype=np.float32)


def examples_for(
    ids: Sequence[str],
    labels: Sequence[int],
    encodings: Mapping[tuple[str, bool], list[int]],
    *,
    swapped: bool = False,
    fields: Callable[[str, bool], dict] | None = None,
    features: Mapping[tuple[str, bool], Sequence[float]] | None = None,
) -> list[dict]:
    """One example per row in one orientation (label mirrored for the swapped one).

    ``encodings[(id, swapped)]`` holds the token ids; ``fields(id, swapped)`` adds per-example
    extras, e.g. the teacher logits of distillation; ``features[(id, swapped)]`` the row's
    features in that orientation (``features.feature_map``), for a hybrid head: the example's
    ``features`` field, which the collator stacks and the trainer hands to the head.
    """
    out = []
    for rid, label in zip(ids, labels, strict=True):
        ex = {
            "input_ids": encodings[(rid, swapped)],
            "labels": SWAP_LABEL[label] if swapped else label,
        }
        if features is not None:
            ex[FEATURES] = features[(rid, swapped)]
        if fields is not None:
            ex.update(fields(rid, swapped))
        out.append(ex)
    return out


def make_examples(
    ids: Sequence[str],
    labels: Sequence[int],
    encodings: Mapping[tuple[str, bool], list[int]],
    *,
    swap: str,
    fields: Callable[[str, bool], dict] | None = None,
    features: Mapping[tuple[str, bool], Sequence[float]] | None = None,
) -> list[dict]:
    """Training examples with the swap augmentation ``swap`` (``random`` / ``full`` / ``none``);
    a swapped example carries the swapped row's ``features`` (see :func:`examples_for`)."""
    if swap not in SWAP_MODES:
        raise ValueError(f"swap must be one of {SWAP_MODES}, got {swap!r}")
    kw = {"fields": fields, "features": features}
    original = examples_for(ids, labels, encodings, swapped=False, **kw)
    if swap == "none":
        return original
    swapped = examples_for(ids, labels, encodings, swapped=True, **kw)
    if swap == "random":
        return original + swapped  # the sampler shuffles
    # full: both orientations in one example, so they land in the same optimiser step;
    # "input_ids" is the longer member's, so length grouping sees the real cost
    return [
        {"pair": [o, w], "input_ids": max(o["input_ids"], w["input_ids"], key=len)}
        for o, w in zip(original, swapped, strict=True)
    ]


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from ``seed + epoch`` rather than the global RNG.

    transformers' ``LengthGroupedSampler`` draws its permutation from the global torch RNG
    when the epoch starts; a run resumed from a checkpoint reaches that point in another RNG
    state and would see other batches than the run it continues. Seeding per epoch makes the
    order a function of (seed, epoch) alone, so a resumed run is the uninterrupted run.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + epoch)


class PreferenceTrainer(Trainer):
    """``Trainer`` with a pluggable loss and the project's inference engine for validation.

    Training batches go through ``loss_fn``; evaluation reports the competition metric and
    plain cross-entropy on the hard labels (``evaluate``).
    """

    def __init__(
        self, *args, loss_fn: LossFn = cross_entropy, head_lr: float | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.head_lr = head_lr
        # our loss is a mean over the micro-batch: let the Trainer divide by accumulation steps
        self.model_accepts_loss_kwargs = False
        # what this process trained on (rows and non-pad tokens of every micro-batch), for
        # the stages' throughput; batches skipped on resume are not counted
        self.trained_rows = 0
        self.trained_tokens = 0

    def create_optimizer(self, model=None):
        """The Trainer's optimizer; with ``head_lr``, the head's parameters move into groups of
        their own (same options, that rate), so the cosine schedule scales both rates alike."""
        if self.head_lr is None or self.optimizer is not None:  # none asked, or already built
            return super().create_optimizer(model)
        optimizer = super().create_optimizer(model)
        head = {id(p) for p in head_parameters(self.model if model is None else model)}
        if not head:
            raise ValueError("head_lr is set but the model has no trainable head parameters")
        for group in list(optimizer.param_groups):
            moved = [p for p in group["params"] if id(p) in head]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in head]
                options = {k: v for k, v in group.items() if k != "params"}
                optimizer.add_param_group({**options, "params": moved, "lr": self.head_lr})
        return optimizer

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        # the checkpoint's weights are written, its optimizer and trainer state not yet: a
        # process killed here leaves a checkpoint that ``last_complete_checkpoint`` passes over
        faults.point("train.save")
        super()._save_optimizer_and_scheduler(output_dir)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.trained_rows += int(inputs["labels"].shape[0])
        if "last_index" in inputs:  # packed: the real tokens end at the last row's last token
            self.trained_tokens += int(inputs["last_index"][-1]) + 1
        else:
            self.trained_tokens += int(inputs["attention_mask"].sum())
        return super().training_step(model, inputs, num_items_in_batch)

    def trained_counts(self) -> tuple[int, int]:
        """``(rows, tokens)`` trained on, summed over the processes of a distributed run
        (call it on every rank)."""
        counts = (self.trained_rows, self.trained_tokens)
        if self.args.world_size <= 1:
            return counts
        t = torch.tensor(counts, dtype=torch.long, device=self.accelerator.device)
        total = self.accelerator.reduce(t, reduction="sum")
        return int(total[0]), int(total[1])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # a hybrid head's per-row features (one row per sequence, packed or padded)
        with head_features(model, inputs.get(FEATURES)):
            if "last_index" in inputs:  # packing: one concatenated row (collate.pack_rows)
                from arena_distill.models.packing import packed_logits

                logits = packed_logits(
                    model, inputs["input_ids"], inputs["position_ids"], inputs["last_index"]
                )
                outputs = SequenceClassifierOutput(logits=logits)
            else:
                # a causal decoder's right padding is invisible to its real tokens: no mask,
                # the same loss and gradients, sdpa's fast causal kernel
                # (collate.padding_mask_needed)
                mask = inputs["attention_mask"] if padding_mask_needed(model) else None
                outputs = model(input_ids=inputs["input_ids"], attention_mask=mask)
        loss_fn = self.loss_fn if model.training else cross_entropy
        loss = loss_fn(outputs.logits, inputs)
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return EpochSeededLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            [len(e["input_ids"]) for e in dataset],
            seed,
        )

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Validation through the project's one inference path (``inference.predict_logits``:
        length-sorted batches, the collator's padding), not the Trainer's loop: log loss,
        accuracy and the cross-entropy ``loss`` of the hard labels, as ``<prefix>_<name>``.

        Every process scores every row (under DDP / ZeRO the forward runs in lockstep), so
        the best-checkpoint choice is the same on every rank."""
        import time

        from arena_distill.inference import predict_logits

        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        start = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        run = predict_logits(
            self.model,
            [e["input_ids"] for e in dataset],
            pad_token_id=int(self.data_collator.pad_token_id),
            batch_size=self.args.per_device_eval_batch_size,
            progress=False,
            features=example_features(dataset),
        )
        self.model.train(was_training)
        labels = [e["labels"] for e in dataset]
        scores = classification_metrics(run.logits, labels)
        scores["loss"] = log_loss_from_logits(run.logits, labels)
        seconds = time.perf_counter() - start
        scores.update(runtime=round(seconds, 4), samples_per_second=round(len(labels) / seconds, 3))
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in scores.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics
        )
        return metrics


def head_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable parameters of the classification head (``score`` or ``classifier``; under
    PEFT, its ``modules_to_save`` copy)."""
    # imported here: the factory pulls in peft, and light modules (report) import train
    from arena_distill.models.factory import head_name, is_head_key

    name = head_name(model)
    return [p for n, p in model.named_parameters() if p.requires_grad and is_head_key(n, name)]


class FaultPoints(TrainerCallback):
    """``faults.point("train.step")`` at the end of every optimiser step (kill tests only)."""

    def on_step_end(self, args, state, control, **kwargs):
        faults.point("train.step")
        return control


TRAINER_STATE = "trainer_state.json"


def checkpoint_complete(folder: Path) -> bool:
    """The Trainer writes a checkpoint's ``trainer_state.json`` after its weights, optimizer,
    scheduler and RNG states: a checkpoint is complete when that file is there, parses, and
    names the checkpoint's own step. A process killed during a save leaves one without it."""
    try:
        state = json.loads((folder / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return False
    step = folder.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
    return isinstance(state, dict) and str(state.get("global_step")) == step


def last_complete_checkpoint(work_dir: Path, *, remove_incomplete: bool = True) -> str | None:
    """The newest complete checkpoint in ``work_dir`` (``checkpoint-<step>``), or None.

    transformers' ``get_last_checkpoint`` takes the newest folder, complete or not: after a kill
    inside a save the resume would fail on every rerun (no ``trainer_state.json``). Incomplete
    checkpoints are skipped and, with ``remove_incomplete`` (the main process), deleted."""
    found = []
    for folder in work_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = folder.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if folder.is_dir() and step.isdigit():
            found.append((int(step), folder))
    best = None
    for _, folder in sorted(found, reverse=True):
        if checkpoint_complete(folder):
            best = best or folder
        elif best is None:  # newer than every complete one: a save that never finished
            log.warning("%s is incomplete (killed during a save?): not resumed from", folder)
            if remove_incomplete:
                shutil.rmtree(folder, ignore_errors=True)
    return str(best) if best is not None else None


class SimulatedKill(RuntimeError):
    """Raised by ``KillAfterSave``: the process "dies" right after a checkpoint was written."""


class KillAfterSave(TrainerCallback):
    """Dies at the first checkpoint written at or after ``step`` (tests of resume: what a
    SIGKILL after a save leaves behind, with nothing run after it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise SimulatedKill(f"killed after the checkpoint of step {state.global_step}")
        return control


def ddp_backend() -> str | None:
    """gloo for multi-process CPU runs (torchrun / accelerate launch); None otherwise.

    accelerate treats an explicit backend as "distributed" and asks for the world size of a
    process group that a single process never created, so single runs must pass None.
    """
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return "gloo" if multi and not torch.cuda.is_available() else None


def training_arguments(
    settings: TrainSettings,
    work_dir: Path,
    *,
    world_size: int = 1,
    has_eval: bool = True,
    report_to: Sequence[str] = (),
) -> TrainingArguments:
    if settings.per_device_batch_size == "auto":
        raise ValueError("per_device_batch_size=auto is resolved by fit (models.memory) first")
    per_step = settings.per_device_batch_size * max(1, world_size)
    if settings.swap == "full":  # a pair is two rows
        per_step *= 2
    accumulation = max(1, round(settings.global_batch_size / per_step))
    if settings.global_batch_size % per_step:
        log.warning(
            "global batch %d is not a multiple of %d rows per step; using %d accumulation steps",
            settings.global_batch_size,
            per_step,
            accumulation,
        )
    cuda = torch.cuda.is_available()
    bf16 = settings.bf16 is True or (
        settings.bf16 == "auto" and cuda and torch.cuda.is_bf16_supported()
    )
    by_steps = settings.eval_steps is not None
    strategy = "steps" if by_steps else "epoch"
    if not has_eval:
        eval_strategy = "no"
        save_strategy = "steps" if settings.save_steps else "epoch"
    else:
        eval_strategy = save_strategy = strategy
    return TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.lr,
        per_device_train_batch_size=settings.per_device_batch_size,
        per_device_eval_batch_size=settings.per_device_eval_batch_size,
        gradient_accumulation_steps=accumulation,
        adam_beta1=settings.betas[0],
        adam_beta2=settings.betas[1],
        weight_decay=settings.weight_decay,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=settings.warmup_steps,
        seed=settings.seed,
        data_seed=settings.seed,
        eval_strategy=eval_strategy,
        eval_steps=settings.eval_steps,
        save_strategy=save_strategy,
        save_steps=settings.eval_steps if by_steps else settings.save_steps,
        save_total_limit=settings.save_total_limit,
        load_best_model_at_end=has_eval and settings.keep_best,
        metric_for_best_model="log_loss" if has_eval else None,
        greater_is_better=False,
        logging_strategy="steps",
        logging_steps=settings.logging_steps,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        bf16=bf16,
        use_cpu=not cuda,
        ddp_backend=ddp_backend(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to=list(report_to) or "none",
        disable_tqdm=False,
        **settings.extra,
    )


@dataclass
class TrainResult:
    trainer: PreferenceTrainer
    collator: PreferenceCollator
    resumed_from: str | None
    log_history: list[dict]
    # rows (sequences; a full-swap pair is two) and non-pad tokens trained on in this call,
    # all processes together; with a resume, only what ran after the checkpoint
    trained_rows: int = 0
    trained_tokens: int = 0
    # models.memory.MicroBatchPlan.to_dict() when checkpointing or the micro-batch was auto
    memory_plan: dict | None = None

    @property
    def padding_share(self) -> float:
        return self.collator.padding_share


def fit(
    model,
    tokenizer,
    train_examples: list[dict],
    eval_examples: list[dict] | None,
    settings: TrainSettings,
    work_dir: str | Path,
    *,
    loss_fn: LossFn = cross_entropy,
    callbacks: Sequence[TrainerCallback] = (),
    report_to: Sequence[str] = (),
    gradient_checkpointing: bool | str = False,
) -> TrainResult:
    """Train ``model`` (a LoRA model from ``models.factory.build_model``), resuming from the
    newest checkpoint in ``work_dir`` when there is one (a killed run restarted with the same
    command continues where it stopped). ``report_to``: transformers' logging integrations
    (wandb, mlflow); TensorBoard comes as a callback (``tracking_callbacks``).

    ``gradient_checkpointing``: the model setting; ``auto`` (or ``per_device_batch_size:
    auto``) is decided here, on the longest training row and the device's memory
    (:func:`plan_memory`); ``true`` / ``false`` were applied by ``build_model``. Batches are
    padded to the model's length buckets (``collate.batch_buckets``), or packed into one row
    with ``settings.packing``."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    plan = None
    if gradient_checkpointing == "auto" or settings.per_device_batch_size == "auto":
        settings, plan = plan_memory(model, train_examples, settings, gradient_checkpointing)
    collator = PreferenceCollator(
        pad_token_id=tokenizer.pad_token_id,
        buckets=batch_buckets(model),
        packing=settings.packing,
    )
    args = training_arguments(settings, work_dir, has_eval=bool(eval_examples), report_to=report_to)
    callbacks = [*callbacks, FaultPoints()] if faults.active() else list(callbacks)
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=train_examples,
        eval_dataset=eval_examples or None,
        data_collator=collator,
        loss_fn=loss_fn,
        head_lr=settings.head_lr,
        callbacks=callbacks or None,
    )
    last = last_complete_checkpoint(work_dir, remove_incomplete=args.should_save)
    if last:
        log.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    log.info("padding share of training batches: %.3f", collator.padding_share)
    rows, tokens = trainer.trained_counts()
    history = list(trainer.state.log_history)
    memory = plan.to_dict() if plan is not None else None
    return TrainResult(trainer, collator, last, history, rows, tokens, memory)


def plan_memory(
    model, train_examples: Sequence[dict], settings: TrainSettings, checkpointing: bool | str
):
    """``(settings, plan)``: the micro-batch and checkpointing chosen by
    ``models.memory.plan_micro_batch`` for the longest training row (rounded up to the model's
    length buckets) on the model's device; checkpointing switched on in the model when chosen,
    ``per_device_batch_size`` replaced by the chosen micro-batch when it was ``auto``. A
    micro-batch divides the rows of one optimiser step on this process, so the optimisation is
    the same whichever is chosen."""
    import dataclasses

    from arena_distill.models import memory
    from arena_distill.models.factory import GC_KWARGS

    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    per_example = 2 if settings.swap == "full" else 1  # a full-swap pair is two rows
    longest = bucket_length(max(len(e["input_ids"]) for e in train_examples), batch_buckets(model))
    device = next(model.parameters()).device
    plan = memory.plan_micro_batch(
        memory.model_memory_facts(model),
        seq_len=longest,
        rows_per_step=max(1, settings.global_batch_size // (world * per_example)),
        rows_per_example=per_example,
        device=device,
        checkpointing=checkpointing,
        micro_batch=settings.per_device_batch_size,
        packed=settings.packing,
    )
    log.info(memory.describe(plan))
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if plan.checkpointing and not inner.is_gradient_checkpointing:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=GC_KWARGS)
    if settings.per_device_batch_size == "auto":
        settings = dataclasses.replace(settings, per_device_batch_size=plan.micro_batch)
    return settings, plan


@dataclass
class Tracking:
    """Experiment tracking for one training run: transformers' ``report_to`` integrations and
    extra callbacks (TensorBoard, writing into the run folder)."""

    report_to: list[str] = field(default_factory=list)
    callbacks: list[TrainerCallback] = field(default_factory=list)
    tensorboard_dir: Path | None = None


def tracking_callbacks(cfg, stage: str, *parts: str) -> Tracking:
    """The ``logging`` block of ``cfg`` for a training run of ``stage`` on ``cfg.model``.

    ``tensorboard``: event files in ``logging.tensorboard_dir/<stage>/<model>/<parts...>``
    (only the main process writes); ``wandb`` / ``mlflow``: passed to the Trainer's
    ``report_to`` (their own environment variables choose project and server). A chosen
    integration whose package is missing is an error before training starts."""
    import importlib.util

    from arena_distill.settings import logging_settings

    settings = logging_settings(cfg)
    tracking = Tracking()
    for name in settings.integrations:
        if name == "tensorboard":
            if not any(importlib.util.find_spec(m) for m in ("tensorboardX", "tensorboard")):
                raise RuntimeError(
                    "logging.report_to=tensorboard needs tensorboardX or tensorboard"
                )
            log_dir = Path(settings.tensorboard_dir, stage, str(cfg.model.name), *parts)
            tracking.tensorboard_dir = log_dir
            if is_main_process():
                tracking.callbacks.append(tensorboard_callback(log_dir))
            continue
        if importlib.util.find_spec(name) is None:
            raise RuntimeError(
                f"logging.report_to={name} needs the {name} package (pip install {name})"
            )
        tracking.report_to.append(name)
    return tracking


def tensorboard_callback(log_dir: Path) -> TrainerCallback:
    """transformers' ``TensorBoardCallback`` writing into ``log_dir``."""
    from transformers.integrations import TensorBoardCallback

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the tensorboard package; tensorboardX is lighter
        from tensorboardX import SummaryWriter
    log_dir.mkdir(parents=True, exist_ok=True)
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))


# ---------------------------------------------------------------------------------------------
# One adapter trained on every given row (the pretrain and full stages)
# ---------------------------------------------------------------------------------------------

WORK_MARK = "fingerprint_id"  # in a work folder: the id of the inputs its checkpoints come from


def marked_work_dir(work: Path, ident: str | None) -> Path:
    """``work``, the checkpoint folder of one training run, for the inputs ``ident`` names (a
    fingerprint id): checkpoints trained from other inputs are removed first, so a restart only
    resumes the run it belongs to (a setting changed after a kill trains afresh). ``ident``
    None: no mark, the folder as it is."""
    work = Path(work)
    if ident is None:
        work.mkdir(parents=True, exist_ok=True)
        return work
    mark = work / WORK_MARK
    if is_main_process():
        if work.exists() and (not mark.is_file() or mark.read_text().strip() != ident):
            log.warning("%s holds checkpoints of other inputs: removed, training afresh", work)
            remove_dir(work)
        work.mkdir(parents=True, exist_ok=True)
        mark.write_text(ident)
    barrier()
    return work


def training_config(cfg, settings: TrainSettings, **extra) -> dict:
    """The ``config`` block of a trained output's manifest: model, prompt, the stage's settings."""
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "prompt": OmegaConf.to_container(cfg.prompt, resolve=True),
        "stage": to_dict(settings),
        **extra,
    }


def train_and_write_adapter(
    cfg,
    model,
    tokenizer,
    examples: list[dict],
    settings: TrainSettings,
    out_dir: Path,
    *,
    stage: str,
    stamp: Mapping,
    timer,
    loss_fn: LossFn = cross_entropy,
    metrics: Mapping | None = None,
    write_files: Callable[[Path], None] | None = None,
    manifest_config: Mapping | None = None,
    inputs: Sequence[Path] = (),
) -> dict:
    """Train ``model`` on ``examples`` (no validation: the last step's adapter is kept) and write
    ``out_dir``: ``adapter/`` (LoRA + head), ``metrics.json`` (``metrics`` + the training
    figures), what ``write_files(tmp)`` adds, and ``manifest.json`` (``stamp``: the output's
    fingerprint keys). Checkpoints live in ``.<name>.work/`` beside ``out_dir`` while it trains
    (:func:`marked_work_dir`: a restart with the same inputs resumes) and are removed after.
    Returns the metrics."""
    from arena_distill.models.factory import count_parameters

    out_dir = Path(out_dir)
    trainable, total = count_parameters(model)
    work = marked_work_dir(out_dir.parent / f".{out_dir.name}.work", stamp.get("id"))
    tracking = tracking_callbacks(cfg, stage)
    result = fit(
        model,
        tokenizer,
        examples,
        None,
        settings,
        work,
        loss_fn=loss_fn,
        callbacks=tracking.callbacks,
        report_to=tracking.report_to,
        gradient_checkpointing=cfg.model.get("gradient_checkpointing", False),
    )
    timer.lap("train")
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    out = {"examples": len(examples), **(metrics or {})}  # a caller's own count wins
    out |= {
        "steps": result.trainer.state.global_step,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "padding_share": round(result.padding_share, 4),
        "resumed_from": result.resumed_from,
        "trainable_params": trainable,
        "total_params": total,
        "throughput": training_throughput(
            result.trained_rows, result.trained_tokens, timer.phases["train"]
        ),
        "memory_plan": result.memory_plan,
        "history": result.log_history,
    }
    final_adapter = work / "final_adapter"
    result.trainer.save_model(str(final_adapter))  # every rank (ZeRO-3 gathers); main writes
    if is_main_process():
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(final_adapter, tmp / "adapter")
            if write_files is not None:
                write_files(tmp)
            write_json(tmp / "metrics.json", out)
            write_manifest(
                tmp,
                stage=stage,
                config=training_config(cfg, settings, **(manifest_config or {})),
                inputs=list(inputs),
                outputs={
                    k: out.get(k) for k in ("rows", "steps", "last_logged_loss", "throughput")
                },
                timer=timer,
                extra=dict(stamp),
            )
        remove_dir(work)
    barrier()
    log.info(
        "%s adapter written to %s (%s steps, loss %s -> %s)",
        stage,
        out_dir / "adapter",
        out["steps"],
        out["first_logged_loss"],
        out["last_logged_loss"],
    )
    return out
