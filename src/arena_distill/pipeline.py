"""``arena-distill pipeline [overrides]``: the whole chain in one process.

The pipeline order is written here once (:func:`plan`); ``make demo`` and ``make pipeline``
run it. Each step is one stage module's ``run(cfg)`` on a config composed from the same
overrides plus the step's own (``model=<teacher>``, the holdout paths, ...), so a step writes
exactly what ``arena-distill <stage> <overrides>`` writes: the same outputs and manifests.

Which steps run follows from the config: ``demo_data`` when the data config reads the demo's
files, ``tiny_models`` when a model of the recipe lives in its output folder, ``pretrain`` for
the teachers (the student) when ``stages.teacher.init_from_pretrain``
(``stages.distill.init_from_pretrain``), ``pseudo_label`` (and the student trained on its rows
too) when ``data.unlabelled`` names a pool, the CE-only student when ``pipeline.ablate``,
``predict`` when the data has a test set, the holdout predictions (merged, quantized, every
fold's student) when ``data.holdout_frac > 0``. A teacher named ``baseline/<name>`` (a
classical teacher) has no model and no training: only its logit dump, fitted per fold. With
``pipeline.final: folds`` the test rows are predicted by every fold's student and averaged
(``ensemble``) instead of by the quantized merge (which still runs, for the report); with
``pipeline.final: full`` one more student is trained on every cv and extra row (``full``),
merged alone and quantized (``merge full``, ``quantize full``) and predicts the test and
holdout rows (``predict``, ``holdout full``); the fold merge still runs, for the report.

A step whose output is complete and fresh is skipped: ``<run_dir>/pipeline.json`` records for
every step a key (the sha256 of the config blocks the stage reads and of the manifests of the
steps it reads from) and the sha256 of the manifest its output was left with. A rerun skips a
step when its key is the same and its output still holds that manifest; a changed setting, a
recomputed input or a touched output runs it again, and every step after it that reads it.
``--force`` runs every selected step; ``--only stage[,stage]`` selects steps by stage name
(``holdout`` selects the holdout predictions, ``full`` the full student with its merge and
quantization).

Each step logs one progress line when it starts and ends (elapsed time, an estimate of the
time left from the previous run's step times or, on a first run, from typical shares) and
writes its composed config and log to ``<run_dir>/logs/<stage>/<time>/`` as a Hydra run does
(``.hydra/config.yaml``), which ``scripts/package_kaggle.py`` reads.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from arena_distill import faults, fingerprint
from arena_distill import settings as config
from arena_distill.baselines import BASELINES, baseline_of, dump_overrides
from arena_distill.io import (
    MANIFEST,
    OutputBusyError,
    file_sha256,
    output_lock,
    read_json,
    write_json,
)
from arena_distill.stages import STAGES

log = logging.getLogger("arena_distill.pipeline")

STATE_FILE = "pipeline.json"

# The config blocks each stage reads (besides its own ``stages.<name>`` block): what its key
# hashes, so that a setting it does not read never reruns it.
READS: dict[str, tuple[str, ...]] = {
    "demo_data": (),
    "data": ("data",),
    "tiny_models": ("stages.data",),
    "tokenize": (
        "model",
        "prompt",
        "stages.pretrain",
        "stages.teacher",
        "stages.distill",
        "stages.predict",
    ),
    "pretrain": ("model", "prompt", "logging"),
    "teacher": ("model", "prompt", "logging", "stages.pretrain"),
    "dump_logits": ("model", "prompt", "stages.teacher"),
    "distill": ("model", "prompt", "logging", "pipeline.teachers", "stages.pretrain"),
    # the student on every row trains with the fold students' settings (stages.distill)
    "full": (
        "model",
        "prompt",
        "logging",
        "pipeline.teachers",
        "stages.pretrain",
        "stages.distill",
    ),
    "merge": ("model",),
    "quantize": ("prompt",),
    "predict": ("model", "prompt", "data.sample_submission"),
    "baselines": ("seed",),
    "report": (),
    "pseudo_label": (
        "prompt",
        "data.unlabelled",
        "data.on_bad_row",
        "pipeline.teachers",
        "stages.teacher",
    ),
    "stack": ("seed", "stages.baselines", "stages.predict"),
    "ensemble": ("data.sample_submission", "stages.predict.clip_eps"),
}
# Keys of a READS block a stage does not read: ``data.unlabelled`` is the pseudo_label stage's
# alone, so adding a pool reruns it and the student, not the data stage and every teacher.
# The full student reads stages.distill's training settings, not where the fold students go
# nor which folds a run trains.
NOT_READ: dict[str, dict[str, tuple[str, ...]]] = {
    "data": {"data": ("unlabelled",)},
    "full": {"stages.distill": ("out_dir", "folds")},
}
# Typical share of a stage in the demo's time (from its manifests), for the first run's estimate.
TYPICAL_SECONDS: dict[str, float] = {
    "demo_data": 2,
    "data": 2,
    "tiny_models": 3,
    "tokenize": 3,
    "pretrain": 35,
    "teacher": 65,
    "dump_logits": 18,
    "distill": 120,
    "full": 50,
    "merge": 5,
    "quantize": 25,
    "predict": 8,
    "baselines": 10,
    "report": 10,
    "pseudo_label": 20,
    "stack": 10,
    "ensemble": 2,
}


@dataclass(frozen=True)
class Step:
    """One stage run of the pipeline."""

    label: str  # unique, e.g. "teacher tiny_llama", "holdout fold_0"
    stage: str  # a key of stages.STAGES
    overrides: tuple[str, ...] = ()  # on top of the pipeline's own
    needs: tuple[str, ...] = ()  # labels of the steps whose outputs it reads
    group: str = ""  # what --only selects (default: the stage name)
    reads: tuple[str, ...] | None = None  # the blocks its key hashes (None: READS[stage])

    @property
    def selector(self) -> str:
        return self.group or self.stage


def _under(path: str, folder: str) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


def plan(cfg: DictConfig, model_paths: dict[str, str]) -> list[Step]:
    """The steps of the chain for ``cfg``, in the order they run; ``model_paths`` gives the
    ``name_or_path`` of every model of ``pipeline`` (``model_paths_of``)."""
    pipe = config.pipeline(cfg)
    data = cfg.data
    demo_dir = str(cfg.stages.demo_data.out_dir)
    tiny_dir = str(cfg.stages.tiny_models.out_dir)
    student, teachers = pipe.student, list(pipe.teachers)
    steps: list[Step] = []

    def add(label: str, stage: str, *overrides: str, needs=(), group: str = "", reads=None) -> None:
        have = {s.label for s in steps}
        needs = tuple(n for n in needs if n in have)
        steps.append(Step(label, stage, tuple(overrides), needs, group, reads))

    # a teacher named baseline/<name> is a classical baseline: no model, no training, its
    # per-fold logits dumped by dump_logits (stages.dump_logits.baseline)
    classical = [t for t in teachers if baseline_of(t) is not None]
    unknown = sorted(t for t in classical if baseline_of(t) not in BASELINES)
    if unknown:
        raise config.ConfigError(
            f"pipeline.teachers: {unknown} are not baselines (baseline/<name>, name in {BASELINES})"
        )
    teachers = [t for t in teachers if t not in classical]

    train_paths = config.data(cfg).train.path
    train_paths = [train_paths] if isinstance(train_paths, str) else list(train_paths)
    if any(_under(p, demo_dir) for p in train_paths):
        add("demo_data", "demo_data")
    add("data", "data", needs=["demo_data"])
    if any(_under(model_paths[m], tiny_dir) for m in [*teachers, student]):
        add("tiny_models", "tiny_models", needs=["data"])
    base = ["data", "tiny_models"]
    add("tokenize", "tokenize", f"model={student}", needs=base)
    pretrained = []
    if cfg.stages.teacher.init_from_pretrain:
        pretrained += teachers
    if cfg.stages.distill.init_from_pretrain and student not in pretrained:
        pretrained.append(student)
    for m in pretrained:
        add(f"pretrain {m}", "pretrain", f"model={m}", needs=base)
    for m in teachers:
        add(f"teacher {m}", "teacher", f"model={m}", needs=[*base, f"pretrain {m}"])
    for m in teachers:
        add(f"dump_logits {m}", "dump_logits", f"model={m}", needs=["data", f"teacher {m}"])
    for t in classical:
        add(
            f"dump_logits {t}",
            "dump_logits",
            *dump_overrides(t),
            needs=["data"],
            reads=("seed", "stages.baselines", "stages.distill.logits_dir"),
        )
    dumps = [f"dump_logits {m}" for m in [*teachers, *classical]]
    # the pseudo-labelled pool (data.unlabelled): scored by every teacher, then in the student's
    # training set; the CE-only student stays without it (no teacher terms: no loss on it)
    pseudo = bool(data.get("unlabelled"))
    student_extra: tuple[str, ...] = ()
    if pseudo:
        if classical:
            raise config.ConfigError(
                f"data.unlabelled with classical teachers {classical}: pseudo_label scores the "
                "pool with trained teachers only; drop the pool or the baseline teachers"
            )
        add("pseudo_label", "pseudo_label", needs=["data", *[f"teacher {m}" for m in teachers]])
        student_extra = ("stages.distill.pseudo_dir=${stages.pseudo_label.out_dir}",)
    add(
        "distill",
        "distill",
        f"model={student}",
        *student_extra,
        needs=[*base, f"pretrain {student}", *dumps, "pseudo_label"],
    )
    if pipe.ablate:
        add(
            "distill ce_only",
            "distill",
            f"model={student}",
            "stages.distill.weights.kl=0",
            "stages.distill.weights.cos=0",
            f"stages.distill.out_dir=${{run_dir}}/students/{student}_ce_only",
            *(("stages.distill.pseudo_dir=null",) if pseudo else ()),
            needs=[*base, f"pretrain {student}", *dumps],
        )
    add("merge", "merge", f"model={student}", needs=["distill", "tiny_models"])
    add("quantize", "quantize", f"model={student}", needs=["data", "merge"])
    full = pipe.final == "full"
    if full:
        # one more student on every cv and extra row, merged alone and quantized: the model
        # that predicts the test and holdout rows (the fold merge above stays for the report)
        add(
            "full",
            "full",
            f"model={student}",
            *student_extra,
            needs=[*base, f"pretrain {student}", *dumps, "pseudo_label"],
        )
        add(
            "merge full",
            "merge",
            f"model={student}",
            "stages.merge.source=${stages.full.out_dir}",
            "stages.merge.out_dir=${stages.full.merged_dir}",
            needs=["full", "tiny_models"],
            group="full",
        )
        add(
            "quantize full",
            "quantize",
            f"model={student}",
            "stages.quantize.source=${stages.full.merged_dir}",
            "stages.quantize.out_dir=${stages.full.quantized_dir}",
            needs=["data", "merge full"],
            group="full",
        )
    # the folder the full student predicts from (the quantize stage's default: the merge's)
    full_model = "stages.predict.model_dir=${stages.full.quantized_dir}"
    if data.get("test") is not None and pipe.final == "folds":
        # the final model is the fold students' averaged predictions: every fold's student
        # predicts the test rows, the ensemble stage averages them into predictions/
        for k in range(int(data.folds.n_folds)):
            add(
                f"predict fold_{k}",
                "predict",
                f"model={student}",
                "stages.predict.model_dir=${model.name_or_path}",
                f"stages.predict.adapter_dir=${{stages.distill.out_dir}}/fold_{k}/adapter",
                f"stages.predict.out_dir=${{stages.ensemble.sources_dir}}/fold_{k}",
                needs=["data", "tiny_models", "distill"],
                group="predict",
            )
        folds = [f"predict fold_{k}" for k in range(int(data.folds.n_folds))]
        add("ensemble", "ensemble", needs=["data", *folds])
    elif data.get("test") is not None:
        add(
            "predict",
            "predict",
            f"model={student}",
            *((full_model,) if full else ()),
            needs=["data", "quantize full" if full else "quantize"],
        )
    if float(data.holdout_frac) > 0:
        holdout = [f"model={student}", "stages.predict.split=holdout"]
        for name in ("merged", "quantized"):
            add(
                f"holdout {name}",
                "predict",
                *holdout,
                f"stages.predict.model_dir=${{run_dir}}/{name}",
                f"stages.predict.out_dir=${{run_dir}}/holdout/{name}",
                needs=["data", "merge" if name == "merged" else "quantize"],
                group="holdout",
            )
        for k in range(int(data.folds.n_folds)):
            add(
                f"holdout fold_{k}",
                "predict",
                *holdout,
                "stages.predict.model_dir=${model.name_or_path}",
                f"stages.predict.adapter_dir=${{stages.distill.out_dir}}/fold_{k}/adapter",
                f"stages.predict.out_dir=${{run_dir}}/holdout/fold_{k}",
                needs=["data", "tiny_models", "distill"],
                group="holdout",
            )
        if full:
            # the report's `full` row: the shipped (quantized) full student on the holdout
            add(
                "holdout full",
                "predict",
                *holdout,
                full_model,
                "stages.predict.out_dir=${run_dir}/holdout/full",
                needs=["data", "quantize full"],
                group="holdout",
            )
    if pipe.final == "folds" and float(data.holdout_frac) > 0:
        # the final model on the holdout: the fold students' averaged holdout predictions
        # (the report's folds_mean row), as one folder the stacker reads like a predict output
        add(
            "holdout folds",
            "ensemble",
            "stages.ensemble.sources_dir=${run_dir}/holdout",
            "stages.ensemble.split=holdout",
            "stages.ensemble.out_dir=${run_dir}/holdout_folds",
            needs=["data", *(f"holdout fold_{k}" for k in range(int(data.folds.n_folds)))],
            group="holdout",
        )
    add("baselines", "baselines", needs=["data"])
    # the stacker applied to the final model's logits on the holdout: the full student's, the
    # fold students' mean or the quantized merge's, whichever pipeline.final ships
    final_holdout = {"full": "holdout full", "folds": "holdout folds"}.get(
        pipe.final, "holdout quantized"
    )
    holdout_dir = {"full": "${run_dir}/holdout/full", "folds": "${run_dir}/holdout_folds"}
    add(
        "stack",
        "stack",
        f"model={student}",
        *(
            (f"stages.stack.holdout_dir={holdout_dir[pipe.final]}",)
            if pipe.final in holdout_dir and float(data.holdout_frac) > 0
            else ()
        ),
        needs=["data", "distill", "baselines", final_holdout, "predict", "ensemble"],
    )
    add("report", "report", needs=[s.label for s in steps])
    return steps


def model_paths_of(cfg: DictConfig, overrides: Sequence[str]) -> dict[str, str]:
    """``name_or_path`` of every model of the recipe (each composed as ``model=<name>``)."""
    from arena_distill.config import compose

    pipe = config.pipeline(cfg)
    models = [m for m in [*pipe.teachers, pipe.student] if baseline_of(m) is None]
    return {
        m: str(compose([*overrides, f"model={m}"]).model.name_or_path)
        for m in dict.fromkeys(models)
    }


# ---------------------------------------------------------------------------------------------
# Keys and state
# ---------------------------------------------------------------------------------------------


def _select(cfg: DictConfig, dotted: str):
    value = OmegaConf.select(cfg, dotted, throw_on_missing=False)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def output_dir(step_cfg: DictConfig, step: Step) -> Path:
    return Path(step_cfg.stages[step.stage].out_dir)


def manifest_sha(folder: Path) -> str | None:
    path = folder / MANIFEST
    return file_sha256(path) if path.is_file() else None


def step_key(step: Step, step_cfg: DictConfig, state: dict) -> str:
    """sha256 of what the step reads: its stage block, the blocks of ``READS``, the overrides
    and the manifests its upstream steps left. Paths are written relative to the run folder
    and to site-packages (``fingerprint.relocated``): a copied run folder, or one run from
    another checkout, skips what is fresh."""
    reads = READS[step.stage] if step.reads is None else step.reads
    run_dir = str(step_cfg.run_dir)
    blocks = {
        b: fingerprint.relocated(_select(step_cfg, b), run_dir)
        for b in (f"stages.{step.stage}", *reads)
    }
    for block, keys in NOT_READ.get(step.stage, {}).items():
        if isinstance(blocks.get(block), dict):
            blocks[block] = {k: v for k, v in blocks[block].items() if k not in keys}
    upstream = {n: (state.get(n) or {}).get("manifest_sha256") for n in step.needs}
    payload = {"stage": step.stage, "overrides": step.overrides, "blocks": blocks, "up": upstream}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def read_state(run_dir: Path) -> dict:
    path = run_dir / STATE_FILE
    return read_json(path).get("steps", {}) if path.is_file() else {}


def is_current(step: Step, key: str, out_dir: Path, state: dict) -> bool:
    """The step ran with this key and its output still holds the manifest it left."""
    entry = state.get(step.label)
    if not entry or entry.get("key") != key:
        return False
    sha = manifest_sha(out_dir)
    return sha is not None and sha == entry.get("manifest_sha256")


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def _fmt(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class Progress:
    """Elapsed time and an estimate of the time left, one line per step."""

    steps: list[Step]
    previous: dict  # the last run's state: seconds per step label
    t0: float = field(default_factory=time.perf_counter)
    done: set[str] = field(default_factory=set)

    ran: dict[str, float] = field(default_factory=dict)  # seconds of the steps run so far

    def expected(self, step: Step) -> float:
        seconds = (self.previous.get(step.label) or {}).get("seconds")
        return float(seconds) if seconds else TYPICAL_SECONDS.get(step.stage, 10.0)

    def left(self) -> float:
        """The expected seconds of the steps not done yet, scaled by how this run's steps
        compared with their expectation so far (a slower machine, a bigger config)."""
        rest = sum(self.expected(s) for s in self.steps if s.label not in self.done)
        by_label = {s.label: s for s in self.steps}
        expected = sum(self.expected(by_label[k]) for k in self.ran)
        return rest * (sum(self.ran.values()) / expected if expected > 0 else 1.0)

    def line(self, i: int, step: Step, what: str) -> str:
        elapsed = time.perf_counter() - self.t0
        return (
            f"[pipeline {i}/{len(self.steps)}] {step.label}: {what} "
            f"(elapsed {_fmt(elapsed)}, about {_fmt(self.left())} left)"
        )


def _log_dir(run_dir: Path, stage: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return run_dir / "logs" / stage / stamp


def _free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_step(step: Step, step_cfg: DictConfig, overrides: Sequence[str]) -> float:
    """Run one stage in this process with Hydra's log layout; the seconds it took."""
    run_dir = Path(step_cfg.run_dir)
    logs = _log_dir(run_dir, step.stage)
    (logs / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(step_cfg, logs / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), logs / ".hydra" / "overrides.yaml")
    handler = logging.FileHandler(logs / f"{step.stage}.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    t0 = time.perf_counter()
    try:
        module = importlib.import_module(STAGES[step.stage])
        with output_lock(output_dir(step_cfg, step), f"arena-distill pipeline: {step.label}"):
            module.run(step_cfg)
    finally:
        root.removeHandler(handler)
        handler.close()
        _free_memory()
    return time.perf_counter() - t0


def run_pipeline(
    overrides: Sequence[str] = (),
    *,
    only: Sequence[str] | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> list[dict]:
    """Run the chain for the config of ``overrides``; returns one record per step
    (``label``, ``status`` ran/skipped, ``seconds``)."""
    from arena_distill.config import compose

    overrides = list(overrides)
    cfg = compose(overrides)
    steps = plan(cfg, model_paths_of(cfg, overrides))
    if only:
        unknown = sorted(set(only) - {s.selector for s in steps})
        if unknown:
            choices = sorted({s.selector for s in steps})
            raise config.ConfigError(f"--only {unknown}: not steps of this pipeline ({choices})")
        steps = [s for s in steps if s.selector in set(only)]
    run_dir = Path(cfg.run_dir)
    with output_lock(run_dir, "arena-distill pipeline"):  # one pipeline per run folder at a time
        return _run_steps(steps, overrides, run_dir, force=force, dry_run=dry_run)


def _run_steps(
    steps: list[Step], overrides: list[str], run_dir: Path, *, force: bool, dry_run: bool
) -> list[dict]:
    from arena_distill.config import compose

    state = read_state(run_dir)
    progress = Progress(steps, dict(state))
    records = []
    for i, step in enumerate(steps, start=1):
        step_overrides = [*overrides, *step.overrides]
        step_cfg = compose(step_overrides)
        out_dir = output_dir(step_cfg, step)
        key = step_key(step, step_cfg, state)
        if not force and is_current(step, key, out_dir, state):
            progress.done.add(step.label)
            log.info(progress.line(i, step, f"up to date ({out_dir}), skipped"))
            records.append({"label": step.label, "status": "skipped", "seconds": 0.0})
            continue
        if dry_run:
            progress.done.add(step.label)
            log.info(progress.line(i, step, f"would run ({' '.join(step.overrides)})"))
            records.append({"label": step.label, "status": "would_run", "seconds": 0.0})
            continue
        log.info(progress.line(i, step, "running"))
        seconds = run_step(step, step_cfg, step_overrides)
        faults.point("pipeline.step")  # the step's output is finished, pipeline.json not yet
        progress.done.add(step.label)
        progress.ran[step.label] = seconds
        state[step.label] = {
            "stage": step.stage,
            "key": key,
            "output": str(out_dir),
            "manifest_sha256": manifest_sha(out_dir),
            "seconds": round(seconds, 3),
            "finished": datetime.now(timezone.utc).isoformat(),
        }
        write_json(run_dir / STATE_FILE, {"steps": state})
        log.info(progress.line(i, step, f"done in {_fmt(seconds)}"))
        records.append({"label": step.label, "status": "ran", "seconds": round(seconds, 3)})
    total = time.perf_counter() - progress.t0
    ran = [r for r in records if r["status"] == "ran"]
    counts = {k: sum(r["status"] == k for r in records) for k in ("ran", "skipped", "would_run")}
    log.info(
        "[pipeline] %d steps in %s (%s); per step: %s",
        len(records),
        _fmt(total),
        ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if v),
        ", ".join(f"{r['label']} {_fmt(r['seconds'])}" for r in ran) or "-",
    )
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="arena-distill pipeline",
        description="Run the whole chain in one process; steps whose outputs are complete and "
        "fresh are skipped.",
    )
    parser.add_argument("--only", help="comma-separated stage names (or 'holdout') to run")
    parser.add_argument("--force", action="store_true", help="run the selected steps even if fresh")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=demo")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    try:
        run_pipeline(args.overrides, only=only, force=args.force, dry_run=args.dry_run)
    except config.ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 1
    except OutputBusyError as exc:
        print(f"busy: {exc}", file=sys.stderr)
        return 1
    return 0
