"""The configuration contract: every block of the composed Hydra config, typed.

Each block of ``configs/`` has a dataclass here, and the code reads its settings from these
objects, never from raw config keys. A key that no dataclass declares is an error that names
the key's full path and the nearest known key::

    stages.teacher.learning_rate: unknown key; did you mean lr?

Hydra already refuses a command-line typo (``stages.teacher.learning_rate=1e-4`` without a
``+``), but a typo in a YAML file composes silently; :func:`validate` closes that gap. It runs
on every composed config (``config.compose``, every stage's Hydra app, the one-process
pipeline), so a typo anywhere in an experiment file stops the run before any stage starts,
not hours later when the stage that reads the block is reached.

The blocks (``configs/<group>/*.yaml`` → dataclass):

* root keys (``run_name``, ``runs_root``, ``run_dir``, ``seed``, ``overwrite``) and ``pipeline``
  (:class:`PipelineSettings`), ``logging`` (:class:`LoggingSettings`);
* ``data`` (:class:`DataSettings`), ``model`` (:class:`ModelSettings`), ``prompt``
  (``text.PromptConfig``);
* ``stages.<name>`` (:data:`STAGE_SETTINGS`): one dataclass per stage.

Types are checked too (``lr: "1e-4"`` — a string — is refused), and a handful of settings
check their allowed values in ``__post_init__``. :func:`build` turns a config node into its
dataclass (resolving interpolations), :func:`stage` does it for ``stages.<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from arena_distill.strict import (
    ConfigError,
    _container,
    _get_raw,
    _node_keys,
    build,
    check_keys,
    narrow,
    nearest_key,
    to_dict,
    unknown_key,
)
from arena_distill.text import PromptConfig

__all__ = ["ConfigError", "build", "nearest_key", "to_dict", "validate", "stage"]

# ---------------------------------------------------------------------------------------------
# Root blocks
# ---------------------------------------------------------------------------------------------


FINAL_MODELS = ("merge", "folds", "full")


@dataclass(kw_only=True)
class PipelineSettings:
    """Which model configs play which role in the distillation recipe."""

    teachers: list[str]
    student: str
    ablate: bool = False  # also the student without teacher terms (students/<student>_ce_only)
    # the final model: merge (the fold students merged, quantized) | folds (the fold students'
    # averaged predictions, n_folds forward passes per row; stages.ensemble) | full (one more
    # student trained on every cv and extra row, stages.full, then merged and quantized alone)
    final: str = "merge"

    def __post_init__(self) -> None:
        if self.final not in FINAL_MODELS:
            raise ConfigError(f"pipeline.final must be one of {FINAL_MODELS}, got {self.final!r}")


REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")


@dataclass(kw_only=True)
class LoggingSettings:
    """Experiment tracking of the training stages (``logging`` block).

    ``report_to``: ``none``, or one or more of ``tensorboard`` (event files under
    ``tensorboard_dir/<stage>/<model>[/fold_<k>]``, linked from the report), ``wandb``,
    ``mlflow`` (their own environment variables choose project and server)."""

    report_to: str | list[str] = "none"
    tensorboard_dir: str = "runs/default/tensorboard"

    def __post_init__(self) -> None:
        for name in self.integrations:
            if name not in REPORT_TO:
                raise ConfigError(f"logging.report_to: {name!r} is not one of {REPORT_TO}")

    @property
    def integrations(self) -> list[str]:
        """The chosen integrations, ``none`` removed."""
        names = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        return [n for n in names if n != "none"]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class DataSpec:
    """One source of rows: a file (or a list of files in the same format, read as their union),
    its format (``data.readers.READERS`` key), a source name, and reader options."""

    path: str | list[str]
    format: str = "competition"
    source: str | None = None
    options: dict | None = None


@dataclass(kw_only=True)
class FoldSettings:
    n_folds: int = 5
    seed: int = 2025
    group_by_prompt: bool = False
    overwrite: bool = False


@dataclass(kw_only=True)
class DataSettings:
    """The ``data`` group: where the rows come from and how they are split."""

    name: str  # the data config's name (recorded in the data stage's manifest)
    train: DataSpec
    test: DataSpec | None = None
    sample_submission: str | None = None
    test_labels: str | None = None
    extra: list[DataSpec | str] = field(default_factory=list)
    pretrain: list[DataSpec | str] = field(default_factory=list)
    # unlabelled pool for the pseudo_label stage (labels ignored if present); not read by the
    # data stage, so a new pool reruns only pseudo_label and the student
    unlabelled: list[DataSpec | str] = field(default_factory=list)
    on_bad_row: str = "error"
    dedup: bool = True
    holdout_frac: float = 0.0
    holdout_seed: int = 2025
    folds: FoldSettings = field(default_factory=FoldSettings)

    def __post_init__(self) -> None:
        if self.on_bad_row not in ("error", "drop"):
            raise ConfigError(f"data.on_bad_row must be error or drop, got {self.on_bad_row!r}")


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class LoraSettings:
    r: int
    alpha: int
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    layers_to_transform: list[int] | None = None


@dataclass(kw_only=True)
class QuantizationSettings:
    """4-bit NF4 weights (QLoRA teachers)."""

    type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    quant_storage: str | None = None  # bfloat16 under DeepSpeed ZeRO-3 / FSDP


MODEL_HEADS = ("linear", "mlp", "hybrid")  # models.factory.HEADS


@dataclass(kw_only=True)
class ModelSettings:
    """The ``model`` group (``models.factory`` builds the model from it)."""

    name: str
    name_or_path: str
    family: str  # gemma2 | llama | qwen2 | bert
    num_labels: int = 3
    dtype: str = "float32"
    attn_implementation: str = "auto"
    softcapping: bool | None = None
    # linear | mlp (2nd place) | hybrid: a linear head over [pooled representation ; the row's
    # 8 length features] (features.head_features, fixed normalisation; models.hybrid)
    head: str = "linear"
    head_dropout: float = 0.1
    # true | false | auto: from the device's free memory and an estimate of the activations
    # (models.memory.plan_micro_batch, decided when training starts); on CPU: off
    gradient_checkpointing: bool | str = False
    quantization: QuantizationSettings | None = None
    lora: LoraSettings | None = None
    config_overrides: dict | None = None  # config.json keys changed on load
    # batch lengths rounded up to the smallest of these (training collator and inference
    # engine) when the attention kernel compiles per shape (flex_attention, torch_compile);
    # null: never rounded
    length_buckets: list[int] | None = None
    torch_compile: bool | str = False  # true: compile the backbone on CUDA; force: also on CPU
    liger_kernel: bool = False  # Liger's Triton kernels for the backbone (CUDA only; extra gpu)

    def __post_init__(self) -> None:
        if self.head not in MODEL_HEADS:
            raise ConfigError(f"model.head must be one of {MODEL_HEADS}, got {self.head!r}")
        if isinstance(self.gradient_checkpointing, str) and self.gradient_checkpointing != "auto":
            raise ConfigError(
                f"model.gradient_checkpointing must be true, false or auto, "
                f"got {self.gradient_checkpointing!r}"
            )
        if isinstance(self.torch_compile, str) and self.torch_compile != "force":
            raise ConfigError(
                f"model.torch_compile must be true, false or force, got {self.torch_compile!r}"
            )
        if self.length_buckets is not None and (
            not self.length_buckets or any(b < 1 for b in self.length_buckets)
        ):
            raise ConfigError(f"model.length_buckets must be positive, got {self.length_buckets}")


# ---------------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class DemoDataSettings:
    out_dir: str = "data/demo"
    n_train: int = 1500
    n_test: int = 300
    n_pretrain: int = 1000
    seed: int = 1234


@dataclass(kw_only=True)
class DataStageSettings:
    out_dir: str


@dataclass(kw_only=True)
class TinyModelsSettings:
    out_dir: str
    families: list[str]
    vocab_size: int = 2048
    hidden_size: int = 96
    num_layers: int = 2
    num_heads: int = 3
    num_kv_heads: int = 1
    intermediate_size: int = 256
    max_position_embeddings: int = 2048
    seed: int = 0


@dataclass(kw_only=True)
class TokenizeSettings:
    out_dir: str
    cache_dir: str
    splits: list[str] = field(default_factory=lambda: ["train", "test"])


SWAP_MODES = ("random", "full", "none")


@dataclass(kw_only=True)
class TrainSettings:
    """The optimisation knobs every training stage shares (``configs/stage/pretrain.yaml``,
    inherited by ``teacher.yaml`` and ``distill.yaml``); ``train.training_arguments`` turns
    them into ``TrainingArguments``."""

    epochs: float = 1.0
    lr: float = 1e-5
    head_lr: float | None = None  # the classification head's own rate (None: lr)
    global_batch_size: int = 64
    per_device_batch_size: int | str = 1  # auto: the largest that fits (models.memory)
    per_device_eval_batch_size: int = 8
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    warmup_steps: int = 100
    swap: str = "random"  # random | full | none
    seed: int = 1234
    eval_steps: int | None = None  # None: evaluate (and checkpoint) once per epoch
    save_steps: int | None = None  # checkpoint interval when not evaluating by steps
    keep_best: bool = True
    max_steps: int = -1
    logging_steps: int = 10
    group_by_length: bool = True
    bf16: str | bool = "auto"  # auto: on CUDA devices that support it
    save_total_limit: int = 2
    extra: dict = field(default_factory=dict)  # extra TrainingArguments (deepspeed, fsdp, ...)
    # padding-free training: a micro-batch's rows concatenated into one sequence (position ids
    # restarting per row, attention kept within each row), each pooled at its own last token
    packing: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.per_device_batch_size, str) and self.per_device_batch_size != "auto":
            raise ConfigError(
                f"per_device_batch_size must be an integer or auto, got "
                f"{self.per_device_batch_size!r}"
            )
        if self.swap not in SWAP_MODES:
            raise ConfigError(f"swap must be one of {SWAP_MODES}, got {self.swap!r}")
        self.betas = tuple(self.betas)


@dataclass(kw_only=True)
class PretrainSettings(TrainSettings):
    out_dir: str
    max_length: int | None = None  # token budget for training; None: prompt.max_length


@dataclass(kw_only=True)
class TeacherSettings(PretrainSettings):
    folds: int | list[int] | str = "all"  # all | a fold index | a list of them
    init_from_pretrain: bool = True
    overwrite: bool = False


@dataclass(kw_only=True)
class LossWeights:
    ce: float = 1.0
    kl: float = 1.0
    cos: float = 1.0


@dataclass(kw_only=True)
class DistillSettings(TeacherSettings):
    logits_dir: str
    temperature: float = 1.0
    weights: LossWeights = field(default_factory=LossWeights)
    normalise_weights: bool = True
    # the pseudo_label stage's output to train on too (teacher terms only); null: labelled only
    pseudo_dir: str | None = None
    pseudo_weight: float = 1.0  # weight of a pseudo row's teacher terms (a labelled row: 1)
    pseudo_targets: str = "fold"  # fold: fold k's teacher for student k | mean: every fold's

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pseudo_targets not in PSEUDO_TARGETS:
            raise ConfigError(
                f"stages.distill.pseudo_targets must be one of {PSEUDO_TARGETS}, "
                f"got {self.pseudo_targets!r}"
            )
        if self.pseudo_weight < 0:
            raise ConfigError(
                f"stages.distill.pseudo_weight must be >= 0, got {self.pseudo_weight}"
            )


PSEUDO_TARGETS = ("fold", "mean")
PSEUDO_RANK_BY = ("confidence", "agreement")


@dataclass(kw_only=True)
class PseudoLabelSettings:
    """``stages.pseudo_label``: the teachers' soft labels on ``data.unlabelled`` and which rows
    to keep. A row is kept when its confidence >= ``min_confidence`` and its agreement >=
    ``min_agreement``, then only the ``top_fraction`` of those by ``rank_by`` (1.0: all)."""

    out_dir: str
    teachers_dir: str  # <teachers_dir>/<teacher>/fold_<k>/adapter (the teacher stage)
    min_confidence: float = 0.0
    min_agreement: float = 0.0
    top_fraction: float = 1.0
    rank_by: str = "confidence"  # confidence | agreement
    max_rows: int | None = None  # score at most this many pool rows (a seeded sample)
    seed: int = 2025
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.rank_by not in PSEUDO_RANK_BY:
            raise ConfigError(f"stages.pseudo_label.rank_by must be one of {PSEUDO_RANK_BY}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError("stages.pseudo_label.top_fraction must be in (0, 1]")
        if self.max_rows is not None and self.max_rows < 1:
            raise ConfigError("stages.pseudo_label.max_rows must be >= 1 or null")


ORIENTATIONS = {"original": False, "swapped": True}


@dataclass(kw_only=True)
class DumpLogitsSettings:
    out_dir: str
    in_sample: bool = True
    out_of_fold: bool = False
    orientations: list[str] = field(default_factory=lambda: ["original", "swapped"])
    batch_size: int = 8
    # a classical teacher (pipeline.teachers: [baseline/<name>]): the baseline <name> fitted per
    # fold on the fold's training rows (stages.baselines' knobs) instead of the model's adapters
    baseline: str | None = None

    def __post_init__(self) -> None:
        bad = sorted(set(self.orientations) - set(ORIENTATIONS))
        if bad:
            raise ConfigError(f"orientations must be among {sorted(ORIENTATIONS)}, got {bad}")


MERGE_METHODS = ("ab_mean", "delta_mean")


@dataclass(kw_only=True)
class MergeSettings:
    out_dir: str
    source: str
    method: str = "ab_mean"
    weights: list[float] | None = None  # per fold, summing to 1; None: uniform

    def __post_init__(self) -> None:
        if self.method not in MERGE_METHODS:
            raise ConfigError(f"merge method must be one of {MERGE_METHODS}, got {self.method!r}")


# stages.quantize.method: GPTQ (gptqmodel), bitsandbytes LLM.int8, or the fp16 copy
QUANTIZE_METHODS = ("gptq", "bnb_int8", "none")


@dataclass(kw_only=True)
class QuantSettings:
    """The GPTQ run (``quantize.quantize_model``)."""

    bits: int = 8
    group_size: int = 128
    n_calibration: int = 128
    calibration_max_length: int = 2100
    backend: str = "torch"
    damp_percent: float = 0.1
    desc_act: bool = False
    sym: bool = True
    seed: int = 2025
    dtype: str = "auto"


@dataclass(kw_only=True)
class QuantizeSettings(QuantSettings):
    """``stages.quantize``: the method (``quantize_methods``) and, for ``gptq``, its knobs."""

    source: str
    out_dir: str
    method: str = "gptq"  # gptq | bnb_int8 | none (QUANTIZE_METHODS)
    eval_batch_size: int = 16
    eval_max_rows: int | None = None

    def __post_init__(self) -> None:
        if self.method not in QUANTIZE_METHODS:
            raise ConfigError(
                f"stages.quantize.method must be one of {QUANTIZE_METHODS}, got {self.method!r}"
            )

    def gptq(self) -> QuantSettings:
        """The GPTQ knobs alone."""
        return narrow(self, QuantSettings)


EMPTY_A = (0.04, 0.88, 0.08)  # 4th place: P(A, B, tie) when A is empty (mirrored for B)
IDENTICAL = (0.06, 0.06, 0.88)


@dataclass(kw_only=True)
class PostprocessSettings:
    enabled: bool = False
    empty_answer: tuple[float, float, float] = EMPTY_A
    identical_answers: tuple[float, float, float] = IDENTICAL

    def __post_init__(self) -> None:
        self.empty_answer = tuple(float(x) for x in self.empty_answer)
        self.identical_answers = tuple(float(x) for x in self.identical_answers)


@dataclass(kw_only=True)
class PredictSettings:
    """How to predict, whatever the rows and the model (``predict.predict_rows``; the Kaggle
    model folder carries them). ``max_length`` None: the prompt config's. ``devices``:
    ``auto``, a device name or a list. ``time_budget_hours`` None turns the guard off."""

    tta: bool = True
    max_length: int | None = 2000
    batch_size: int = 8
    max_tokens_per_batch: int | None = None
    devices: str | list[str] = "auto"
    device_map: str | None = None  # auto: one model copy over every GPU (too big for one)
    dtype: str = "auto"
    progress: bool = True
    time_budget_hours: float | None = 9.0
    time_budget_safety: float = 0.9
    fallback_max_length: int | None = 1024
    guard_batches: int = 4
    postprocess: PostprocessSettings = field(default_factory=PostprocessSettings)
    clip_eps: float = 1.0e-6

    @classmethod
    def from_config(cls, node: Any, path: str = "predict") -> PredictSettings:
        """From saved settings (a packaged model's ``arena_distill_prompt.json``), also in the
        flat layout written before ``postprocess`` became a block (``postprocess: bool``,
        ``empty_answer``, ``identical_answers`` beside it). Unknown keys are refused."""
        data = _container(node)
        flat = {k: data.pop(k) for k in ("empty_answer", "identical_answers") if k in data}
        pp = data.get("postprocess")
        if flat or isinstance(pp, bool):
            base = dict(pp) if isinstance(pp, Mapping) else {"enabled": bool(pp)}
            data["postprocess"] = {**base, **{k: v for k, v in flat.items() if v is not None}}
        return build(PredictSettings, data, path)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


PREDICT_SPLITS = ("test", "holdout")


@dataclass(kw_only=True)
class PredictStageSettings(PredictSettings):
    out_dir: str
    model_dir: str
    adapter_dir: str | None = None
    tokenizer_dir: str | None = None
    split: str = "test"

    def __post_init__(self) -> None:
        if self.split not in PREDICT_SPLITS:
            raise ConfigError(f"stages.predict.split must be one of {PREDICT_SPLITS}")

    def predict(self) -> PredictSettings:
        """The prediction settings alone (what a packaged model carries)."""
        return narrow(self, PredictSettings)


@dataclass(kw_only=True)
class PlanSettings:
    """The time planner (``arena-distill plan``): the predict stage's settings projected onto a
    device before it runs."""

    out_dir: str
    lengths: str = "test"  # test | holdout (the run's rows, tokenised) | a JSON list of lengths
    rows: int | None = None  # project onto this many rows (None: the rows given)
    device: str = "t4"  # a planner.DEVICES key
    n_devices: int = 2
    architecture: str | None = None  # a model folder or hub id (None: model.name_or_path)
    max_lengths: list[int] | None = None  # None: the predict stage's and its fallback
    fixed_seconds: float = 300.0  # installing, loading the model, tokenising


@dataclass(kw_only=True)
class BaselinesSettings:
    out_dir: str
    names: list[str]
    c: float = 1.0
    max_features: int = 20000
    ngram_max: int = 2
    encoder: str | None = None  # embed_lr's sentence encoder (a Hugging Face folder)
    encoder_max_length: int = 256
    encoder_batch_size: int = 32
    encoder_prompt_words: int = 48
    embed_cache: str | None = None  # the embeddings on disk (one file per encoder)


@dataclass(kw_only=True)
class ReportSettings:
    out_dir: str
    teachers_dir: str | None = None
    students_dir: str | None = None
    holdout_dir: str | None = None
    baselines_dir: str | None = None
    temperature_scaling: bool = False
    n_len_buckets: int = 5
    n_calibration_bins: int = 10
    plots: bool = True
    compare_with: str | None = None
    pseudo_dir: str | None = None  # the pseudo_label stage's output: its counts, if present
    stack_dir: str | None = None


# the CV choosing the stacker's C (stacking.choose_c)
INNER_CV = ("random", "folds", "both")


@dataclass(kw_only=True)
class StackSettings:
    out_dir: str
    student_dir: str | None = None  # the fold students' OOF (null: no student feature)
    baselines_dir: str
    baselines: list[str] = field(default_factory=lambda: ["length_lr", "tfidf_lr"])
    length: bool = True
    cs: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    inner_cv: str = "random"
    flat_fold_ratio: float = 0.1
    inner_splits: int = 5
    passthrough: bool = True
    holdout_dir: str | None = None
    test_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.cs or any(c <= 0 for c in self.cs):
            raise ConfigError(f"stages.stack.cs: positive inverse L2 strengths, got {self.cs}")
        if self.flat_fold_ratio < 0 or self.flat_fold_ratio >= 1:
            raise ConfigError(
                f"stages.stack.flat_fold_ratio: in [0, 1), got {self.flat_fold_ratio}"
            )
        if self.inner_cv not in INNER_CV:
            raise ConfigError(
                f"stages.stack.inner_cv: random, folds or both, got {self.inner_cv!r}"
            )
        if self.inner_splits < 2:
            raise ConfigError(f"stages.stack.inner_splits: at least 2, got {self.inner_splits}")
        if "prior" in self.baselines:
            raise ConfigError("stages.stack.baselines: prior is a constant (the intercept)")


@dataclass(kw_only=True)
class EnsembleSettings:
    """``stages.ensemble``: the fold students' averaged predictions (``pipeline.final: folds``)."""

    out_dir: str
    sources_dir: str  # <sources_dir>/fold_<k>/predictions.parquet
    split: str = "test"

    def __post_init__(self) -> None:
        if self.split not in PREDICT_SPLITS:
            raise ConfigError(f"stages.ensemble.split must be one of {PREDICT_SPLITS}")


@dataclass(kw_only=True)
class FullSettings:
    """``stages.full``: the student trained on every cv and extra row (``pipeline.final:
    full``), with ``stages.distill``'s settings; where it, its merge and its quantized model go
    (the pipeline's ``merge full`` / ``quantize full`` steps write ``merged_dir`` /
    ``quantized_dir``; ``scripts/package_kaggle.py`` ships ``quantized_dir``)."""

    out_dir: str
    merged_dir: str
    quantized_dir: str


# name of the stage -> its block's dataclass (stages.<name>)
STAGE_SETTINGS: dict[str, type] = {
    "demo_data": DemoDataSettings,
    "data": DataStageSettings,
    "tiny_models": TinyModelsSettings,
    "tokenize": TokenizeSettings,
    "pretrain": PretrainSettings,
    "teacher": TeacherSettings,
    "dump_logits": DumpLogitsSettings,
    "distill": DistillSettings,
    "full": FullSettings,
    "merge": MergeSettings,
    "quantize": QuantizeSettings,
    "predict": PredictStageSettings,
    "baselines": BaselinesSettings,
    "report": ReportSettings,
    "plan": PlanSettings,
    "pseudo_label": PseudoLabelSettings,
    "stack": StackSettings,
    "ensemble": EnsembleSettings,
}

ROOT_SCALARS = {
    "run_name": str,
    "runs_root": str,
    "run_dir": str,
    "seed": int,
    "overwrite": bool,  # recompute instead of refusing stale inputs (fingerprint.overwrite)
}
ROOT_BLOCKS: dict[str, type] = {
    "pipeline": PipelineSettings,
    "logging": LoggingSettings,
    "data": DataSettings,
    "model": ModelSettings,
    "prompt": PromptConfig,
}


def validate(cfg: DictConfig) -> DictConfig:
    """Check every key of a composed config against the contract; return ``cfg``.

    Raises :class:`ConfigError` at the first key no settings class declares (its full path and
    the nearest known key) or a known block with an unknown sub-key."""
    blocks = {**{k: None for k in ROOT_SCALARS}, **ROOT_BLOCKS, "stages": None}
    for key in _node_keys(cfg):
        if key not in blocks:
            raise unknown_key("", key, list(blocks))
    for key, tp in ROOT_BLOCKS.items():
        if key in cfg:
            check_keys(_get_raw(cfg, key), tp, key)
    stages = cfg.get("stages") or {}
    for name in _node_keys(stages):
        if name not in STAGE_SETTINGS:
            raise unknown_key("stages", name, list(STAGE_SETTINGS))
        check_keys(_get_raw(stages, name), STAGE_SETTINGS[name], f"stages.{name}")
    return cfg


def stage(cfg: DictConfig, name: str) -> Any:
    """The typed settings of ``stages.<name>``."""
    return build(STAGE_SETTINGS[name], cfg.stages[name], f"stages.{name}")


def model(cfg: DictConfig) -> ModelSettings:
    return build(ModelSettings, cfg.model, "model")


def data(cfg: DictConfig) -> DataSettings:
    return build(DataSettings, cfg.data, "data")


def pipeline(cfg: DictConfig) -> PipelineSettings:
    return build(PipelineSettings, cfg.pipeline, "pipeline")


def logging_settings(cfg: DictConfig) -> LoggingSettings:
    return build(LoggingSettings, cfg.get("logging") or {}, "logging")


def prompt(cfg: DictConfig) -> PromptConfig:
    return build(PromptConfig, cfg.prompt, "prompt")
