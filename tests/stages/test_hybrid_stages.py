"""``model.head=hybrid`` through the chain on tiny Llama: teacher folds -> logit dump ->
distilled student folds -> merge -> GPTQ -> predict (swap-TTA) -> the Kaggle entry point, on a
run of its own."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from arena_distill import kaggle
from arena_distill.data.swap import mirror_probs
from arena_distill.data.tableio import load_table
from arena_distill.encode import prompt_config
from arena_distill.features import head_marker, orientation_features
from arena_distill.io import read_json
from arena_distill.layout import LOGIT_COLS, SWAP_LOGIT_COLS, TTA_PROB_COLS
from arena_distill.metrics import probs_from_logits
from arena_distill.models.factory import load_for_inference, load_split
from arena_distill.models.hybrid import head_features, hybrid_heads
from arena_distill.quantize_methods import MARKER, folder_method
from arena_distill.submission import read_submission
from arena_distill.tokens import encoding_map, tokenize_both_orientations
from tests.stages.conftest import small_cfg

PREDICT = [
    "stages.predict.max_length=null",
    "stages.predict.progress=false",
    "stages.predict.batch_size=4",
    "stages.predict.devices=cpu",  # the direct forwards below run on the CPU too
    "stages.predict.time_budget_hours=null",
]


HYBRID = [
    "model.head=hybrid",
    "stages.demo_data.n_train=90",
    "stages.teacher.init_from_pretrain=false",
    "stages.teacher.epochs=1",
    "pipeline.teachers=[tiny_llama]",
    "stages.distill.init_from_pretrain=false",
    "stages.distill.epochs=1",
    "stages.quantize.n_calibration=8",
    "stages.predict.model_dir=${stages.quantize.out_dir}",
    "stages.tokenize.cache_dir=${run_dir}/cache",
    *PREDICT,
]


@dataclass
class HybridRun:
    cfg: object
    merged: Path
    quantized: Path
    predicted: Path


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory) -> HybridRun:
    from arena_distill.stages import (
        data,
        demo_data,
        distill,
        dump_logits,
        merge,
        predict,
        quantize,
        teacher,
        tiny_models,
    )

    root = tmp_path_factory.mktemp("hybrid")
    cfg = small_cfg(root, *HYBRID)
    for stage in (demo_data, data, tiny_models, teacher, dump_logits, distill):
        stage.run(cfg)
    merged = merge.run(cfg)
    quantized = quantize.run(cfg)
    return HybridRun(cfg, merged, quantized, predict.run(cfg))


def test_merged_hybrid_head_is_the_mean_of_the_student_fold_heads(hybrid_run):
    cfg, merged = hybrid_run.cfg, hybrid_run.merged
    assert read_json(merged / "config.json")[MARKER] == {"head": head_marker()}
    folds = [
        load_file(
            Path(cfg.stages.distill.out_dir) / f"fold_{k}" / "adapter" / "adapter_model.safetensors"
        )
        for k in range(3)
    ]
    model, tok = load_for_inference({**cfg.model, "name_or_path": str(merged)})
    (head,) = hybrid_heads(model)
    for name in ("weight", "bias", "feature_weight"):
        mean = sum(f[f"base_model.model.score.{name}"] for f in folds) / 3
        torch.testing.assert_close(getattr(head, name), mean, atol=1e-7, rtol=1e-6)
    assert head.feature_weight.abs().sum() > 0  # the folds learnt weights for the features
    # every loader of a full folder rebuilds it: one copy over the devices too
    (split_head,) = hybrid_heads(load_split({**cfg.model, "name_or_path": str(merged)})[0])
    assert torch.equal(split_head.feature_weight, head.feature_weight)
    with pytest.raises(ValueError, match="holds a hybrid head"):
        load_for_inference({**cfg.model, "name_or_path": str(merged), "head": "mlp"})
    # the merged full folder gives the averaged adapter's logits (on the base)
    averaged, _ = load_for_inference(cfg.model, merged / "adapter")
    rows = load_table(Path(cfg.stages.data.out_dir) / "test.parquet")
    enc = encoding_map(
        tokenize_both_orientations(
            rows, tok, prompt_config(cfg), cache_dir=cfg.stages.tokenize.cache_dir
        )
    )
    feats = orientation_features(rows)[False]
    ids = [torch.tensor([enc[(i, False)]]) for i in rows["id"]]
    with torch.no_grad():
        out = [
            torch.cat([_forward(m, x, feats[[k]]) for k, x in enumerate(ids)])
            for m in (model, averaged)
        ]
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=0)


def _forward(model, ids: torch.Tensor, features: np.ndarray) -> torch.Tensor:
    with head_features(model, features):
        return model(input_ids=ids).logits.float()


def test_gptq_keeps_the_hybrid_head(hybrid_run):
    merged, quantized = hybrid_run.merged, hybrid_run.quantized
    m = read_json(quantized / "metrics.json")
    assert m["method"] == "gptq" and m["head"] == "score" and m["head_intact"]
    assert m["finite"] and m["relative_error"] < 0.1 and m["quantized_layers"] > 0
    config = read_json(quantized / "config.json")
    assert config[MARKER] == {"head": head_marker(), "quantize_method": "gptq"}
    assert folder_method(quantized) == "gptq"
    cfg = hybrid_run.cfg
    q, _ = load_for_inference({**cfg.model, "name_or_path": str(quantized)})
    src, _ = load_for_inference({**cfg.model, "name_or_path": str(merged)})
    (qh,), (sh,) = hybrid_heads(q), hybrid_heads(src)
    for name in ("weight", "bias", "feature_weight"):
        assert torch.equal(getattr(qh, name), getattr(sh, name)), name
    assert any(hasattr(mod, "qweight") for mod in q.modules())


@pytest.mark.parametrize("method", ["bnb_int8", "none"])
def test_other_quantize_methods_keep_the_hybrid_head(hybrid_run, method):
    from arena_distill.stages import quantize

    out = Path(hybrid_run.cfg.run_dir) / f"quantized_{method}"
    cfg = small_cfg(
        Path(hybrid_run.cfg.runs_root).parent,
        *HYBRID,
        f"stages.quantize.method={method}",
        f"stages.quantize.out_dir={out}",
    )
    quantize.run(cfg)
    m = read_json(out / "metrics.json")
    assert m["head_intact"] and m["finite"] and m["relative_error"] < 0.1
    assert read_json(out / "config.json")[MARKER] == {
        "head": head_marker(),
        "quantize_method": method,
    }


def test_predicted_swap_mirrors_the_swapped_rows_own_features(hybrid_run):
    """The engine's swap-TTA: the swapped input is predicted with the swapped row's features,
    so the swapped column is the model on the swapped row, mirrored, and TTA their mean."""
    cfg, predicted = hybrid_run.cfg, hybrid_run.predicted
    preds = pd.read_parquet(predicted / "predictions.parquet")
    model, tok = load_for_inference({**cfg.model, "name_or_path": str(hybrid_run.quantized)})
    rows = load_table(Path(cfg.stages.data.out_dir) / "test.parquet")
    enc = encoding_map(
        tokenize_both_orientations(
            rows, tok, prompt_config(cfg), cache_dir=cfg.stages.tokenize.cache_dir
        )
    )
    feats = orientation_features(rows)
    with torch.no_grad():
        direct = {
            s: np.concatenate(
                [
                    _forward(model, torch.tensor([enc[(i, s)]]), feats[s][[k]]).numpy()
                    for k, i in enumerate(rows["id"])
                ]
            )
            for s in (False, True)
        }
        # the swapped input with the ORIGINAL row's features: not what the engine computed
        stale = np.concatenate(
            [
                _forward(model, torch.tensor([enc[(i, True)]]), feats[False][[k]]).numpy()
                for k, i in enumerate(rows["id"])
            ]
        )
    np.testing.assert_allclose(preds[list(LOGIT_COLS)].to_numpy(), direct[False], atol=1e-5)
    np.testing.assert_allclose(
        preds[list(SWAP_LOGIT_COLS)].to_numpy(), mirror_probs(direct[True]), atol=1e-5
    )
    tta = (probs_from_logits(direct[False]) + mirror_probs(probs_from_logits(direct[True]))) / 2
    np.testing.assert_allclose(preds[list(TTA_PROB_COLS)].to_numpy(), tta, atol=1e-5)
    assert np.abs(stale - direct[True]).max() > 1e-4


def test_kaggle_predict_csv_computes_the_features_from_the_raw_rows(
    hybrid_run, tmp_path, monkeypatch
):
    """A hybrid GPTQ folder without a prompt file: the head comes from its config.json, the
    features from the raw test.csv; the same predictions as the predict stage (one device),
    here over two devices, one orientation each (the 2-GPU pattern): each work item of a
    shard carries its own row's features in its own orientation. The two workers run one
    after the other in this process (``mp.spawn`` replaced: the same jobs and results, without
    two interpreters starting; tests/stages/test_predict_stage.py spawns real ones)."""
    import torch.multiprocessing as mp

    def spawn_here(fn, args, nprocs, join=True):
        threads = torch.get_num_threads()
        try:
            for rank in range(nprocs):
                fn(rank, *args)
        finally:
            torch.set_num_threads(threads)

    monkeypatch.setattr(mp, "spawn", spawn_here)
    cfg = hybrid_run.cfg
    demo = Path(cfg.stages.demo_data.out_dir)
    assert kaggle.infer_model_cfg(hybrid_run.quantized)["head"] == "hybrid"
    out_csv = kaggle.predict_csv(
        demo / "test.csv",
        hybrid_run.quantized,
        tmp_path / "submission.csv",
        sample_submission=demo / "sample_submission.csv",
        prompt=prompt_config(cfg),
        settings={
            "tta": True,
            "devices": ["cpu", "cpu"],
            "time_budget_hours": None,
            "max_length": cfg.prompt.max_length,
            "batch_size": 4,
            "progress": False,
        },
        fail_safe=False,
    )
    a = pd.read_parquet(hybrid_run.predicted / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "arena_distill" / "predictions" / "predictions.parquet")
    assert a["id"].tolist() == b["id"].tolist()
    cols = [c for c in a.columns if c.startswith(("logit_", "swap_logit_", "tta_p_", "final_p_"))]
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), atol=1e-6)
    sa, sb = read_submission(hybrid_run.predicted / "submission.csv"), read_submission(out_csv)
    np.testing.assert_allclose(sa.iloc[:, 1:].to_numpy(), sb.iloc[:, 1:].to_numpy(), atol=1e-6)
    assert json.loads((tmp_path / "arena_distill" / "submission.json").read_text())["prior"] == 0
    metrics = kaggle.read_metrics(out_csv)
    assert [s["orientations"] for s in metrics["shards"]] == [["original"], ["swapped"]]
