"""One module per pipeline stage, each a Hydra app with a typed ``run(cfg)`` entry point.

``arena-distill <stage> [overrides]`` (``arena_distill.__main__``) dispatches to them; each is also
runnable as ``python -m arena_distill.stages.<stage> [overrides]``.
"""

# name -> module, in the order the pipeline runs them
STAGES: dict[str, str] = {
    "demo_data": "arena_distill.stages.demo_data",
    "data": "arena_distill.stages.data",
    "tiny_models": "arena_distill.stages.tiny_models",
    "tokenize": "arena_distill.stages.tokenize",
    "pretrain": "arena_distill.stages.pretrain",
    "teacher": "arena_distill.stages.teacher",
    "dump_logits": "arena_distill.stages.dump_logits",
    "pseudo_label": "arena_distill.stages.pseudo_label",
    "distill": "arena_distill.stages.distill",
    # pipeline.final=full: one more student on every cv and extra row (then merged, quantized)
    "full": "arena_distill.stages.full",
    "merge": "arena_distill.stages.merge",
    "quantize": "arena_distill.stages.quantize",
    "predict": "arena_distill.stages.predict",
    "baselines": "arena_distill.stages.baselines",
    "stack": "arena_distill.stages.stack",
    "report": "arena_distill.stages.report",
    # not a pipeline step: the projected prediction time (arena-distill plan / make plan)
    "plan": "arena_distill.stages.plan",
    # pipeline.final=folds: the fold students' averaged predictions (after the per-fold predicts)
    "ensemble": "arena_distill.stages.ensemble",
}
