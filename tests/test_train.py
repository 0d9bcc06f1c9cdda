"""The training engine's exact parts: examples, collation, losses, metrics, prediction tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss

from arena_distill.collate import PreferenceCollator
from arena_distill.layout import prediction_table, score_predictions
from arena_distill.losses import cross_entropy
from arena_distill.metrics import (
    accuracy,
    class_prior,
    count_tokens,
    inference_throughput,
    log_loss,
    log_loss_from_logits,
    prior_log_loss,
    probs_from_logits,
    training_throughput,
)
from arena_distill.settings import ConfigError, TrainSettings, build
from arena_distill.train import (
    examples_for,
    make_examples,
    marked_work_dir,
    training_arguments,
)

ENC = {
    ("a", False): [1, 2, 3],
    ("a", True): [1, 3, 2],
    ("b", False): [4, 5],
    ("b", True): [5, 4, 9, 9],
}


def test_examples_for_mirrors_labels_of_swapped_rows():
    assert examples_for(["a", "b"], [0, 2], ENC) == [
        {"input_ids": [1, 2, 3], "labels": 0},
        {"input_ids": [4, 5], "labels": 2},
    ]
    assert examples_for(["a", "b"], [0, 1], ENC, swapped=True) == [
        {"input_ids": [1, 3, 2], "labels": 1},
        {"input_ids": [5, 4, 9, 9], "labels": 0},
    ]
    extra = examples_for(["a"], [1], ENC, swapped=True, fields=lambda i, s: {"tag": f"{i}{s}"})
    assert extra == [{"input_ids": [1, 3, 2], "labels": 0, "tag": "aTrue"}]


def test_swap_modes():
    none = make_examples(["a", "b"], [0, 1], ENC, swap="none")
    random = make_examples(["a", "b"], [0, 1], ENC, swap="random")
    full = make_examples(["a", "b"], [0, 1], ENC, swap="full")
    assert len(none) == 2 and len(random) == 4 and len(full) == 2
    assert [e["labels"] for e in random] == [0, 1, 1, 0]
    assert [[m["labels"] for m in e["pair"]] for e in full] == [[0, 1], [1, 0]]
    # a pair reports its longer member's ids, for length grouping
    assert full[1]["input_ids"] == [5, 4, 9, 9]
    with pytest.raises(ValueError, match="swap must be one of"):
        make_examples(["a"], [0], ENC, swap="sideways")


def test_collator_pads_flattens_pairs_and_counts_padding():
    collate = PreferenceCollator(pad_token_id=0)
    batch = collate(make_examples(["a", "b"], [0, 1], ENC, swap="full"))
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 0],
        [1, 3, 2, 0],
        [4, 5, 0, 0],
        [5, 4, 9, 9],
    ]
    assert batch["attention_mask"].sum(1).tolist() == [3, 3, 2, 4]
    assert batch["labels"].tolist() == [0, 1, 1, 0]
    assert collate.padding_share == pytest.approx(1 - 12 / 16)
    batch = collate([{"input_ids": [1], "labels": 2, "teacher_logits": [0.1, 0.2, 0.3]}])
    assert batch["teacher_logits"].shape == (1, 3)
    assert PreferenceCollator(pad_token_id=0, pad_to_multiple_of=8)(
        [{"input_ids": [1, 2, 3], "labels": 0}]
    )["input_ids"].shape == (1, 8)


def test_throughput_counts_rows_and_non_pad_tokens_of_every_orientation():
    # ENC: a = 3 tokens (both orientations), b = 2 original, 4 swapped
    original = examples_for(["a", "b"], [0, 1], ENC)
    assert count_tokens(original) == (2, 5)
    assert count_tokens(make_examples(["a", "b"], [0, 1], ENC, swap="random")) == (4, 12)
    assert count_tokens(make_examples(["a", "b"], [0, 1], ENC, swap="full")) == (4, 12)
    assert count_tokens([]) == (0, 0)
    # 2 epochs of the random-swap examples in 2.5 s
    assert training_throughput(2 * 4, 2 * 12, 2.5) == {
        "train_examples": 8,
        "train_tokens": 24,
        "train_seconds": 2.5,
        "train_examples_per_s": 3.2,
        "train_tokens_per_s": 9.6,
    }
    # swap-TTA inference: both orientations of both rows in 0.5 s
    assert inference_throughput(4, 12, 0.5) == {
        "rows": 4,
        "tokens": 12,
        "seconds": 0.5,
        "rows_per_s": 8.0,
        "tokens_per_s": 24.0,
    }
    assert inference_throughput(3, 10, 0.0)["rows_per_s"] is None
    assert training_throughput(3, 10, 0.0)["train_tokens_per_s"] is None


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 3))
    labels = rng.integers(0, 3, size=50)
    probs = probs_from_logits(logits)
    assert log_loss(probs, labels) == pytest.approx(sk_log_loss(labels, probs, labels=[0, 1, 2]))
    assert log_loss_from_logits(logits, labels) == pytest.approx(log_loss(probs, labels))
    assert accuracy(probs, labels) == pytest.approx(np.mean(probs.argmax(1) == labels))
    assert class_prior(np.array([0, 0, 1, 2])).tolist() == [0.5, 0.25, 0.25]
    assert prior_log_loss(np.array([0, 1, 2]), np.array([0, 1])) == pytest.approx(np.log(3))
    ce = cross_entropy(torch.tensor(logits), {"labels": torch.tensor(labels)})
    assert float(ce) == pytest.approx(log_loss_from_logits(logits, labels))


def test_prediction_table_mirrors_swapped_logits_and_averages_probabilities():
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    # the model saw B first: its "A" logit belongs to the original B
    swapped = np.array([[0.0, 2.0, 1.0], [1.0, -1.0, 0.0]])
    df = prediction_table(["x", "y"], logits, swapped, label=[0, 1])
    np.testing.assert_allclose(
        df[["swap_logit_a", "swap_logit_b", "swap_logit_tie"]], [[2, 0, 1], [-1, 1, 0]]
    )
    # row x: both orientations agree, so TTA equals either
    np.testing.assert_allclose(
        df.loc[0, ["tta_p_a", "tta_p_b", "tta_p_tie"]], df.loc[0, ["p_a", "p_b", "p_tie"]]
    )
    np.testing.assert_allclose(df[["tta_p_a", "tta_p_b", "tta_p_tie"]].sum(1), 1.0)
    scores = score_predictions(df)
    assert scores["rows"] == 2 and scores["log_loss"] == pytest.approx(
        log_loss_from_logits(logits, [0, 1])
    )
    assert "log_loss_tta" in scores


def test_training_arguments_follow_the_settings(tmp_path):
    s = build(
        TrainSettings,
        {"lr": 5e-5, "global_batch_size": 64, "per_device_batch_size": 4, "betas": [0.9, 0.95]},
    )
    args = training_arguments(s, tmp_path)
    assert args.gradient_accumulation_steps == 16
    assert (args.adam_beta1, args.adam_beta2, args.learning_rate) == (0.9, 0.95, 5e-5)
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 100
    assert args.load_best_model_at_end and args.metric_for_best_model == "log_loss"
    assert not args.greater_is_better
    full = training_arguments(
        TrainSettings(global_batch_size=64, per_device_batch_size=4, swap="full"), tmp_path
    )
    assert full.gradient_accumulation_steps == 8  # a pair is two rows
    with pytest.raises(ConfigError, match="swap"):
        build(TrainSettings, {"swap": "both"})
    with pytest.raises(ConfigError, match="unused: unknown key"):
        build(TrainSettings, {"unused": 1}, "stages.teacher")


def test_distill_loss_is_the_first_place_formula_at_t1():
    from arena_distill.losses import DistillLoss

    torch.manual_seed(0)
    s = torch.randn(6, 3, requires_grad=True)
    t = torch.randn(6, 2, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    batch = {"labels": y, "teacher_logits": t}
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    cos = torch.nn.CosineEmbeddingLoss()
    ones = torch.ones(6)
    expected = torch.nn.functional.cross_entropy(s, y)
    for i in range(2):
        p_t = torch.softmax(t[:, i], -1)
        expected = (
            expected + kl(torch.log_softmax(s, -1), p_t) + cos(p_t, torch.softmax(s, -1), ones)
        )
    expected = expected / 5
    loss = DistillLoss(2)(s, batch)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_distill_loss_temperature_weights_and_errors():
    from arena_distill.losses import DistillLoss

    torch.manual_seed(1)
    s, t = torch.randn(4, 3), torch.randn(4, 1, 3)
    y = torch.tensor([0, 1, 2, 2])
    batch = {"labels": y, "teacher_logits": t}
    # a student equal to its teacher has no KL / cosine loss at any temperature
    same = DistillLoss(1, temperature=3.0).terms(t[:, 0], {"labels": y, "teacher_logits": t})
    assert float(same["kl_0"]) == pytest.approx(0.0, abs=1e-6)
    assert float(same["cos_0"]) == pytest.approx(0.0, abs=1e-6)
    terms = DistillLoss(1, temperature=2.0).terms(s, batch)
    p_t = torch.softmax(t[:, 0] / 2, -1)
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / 2, -1), p_t, reduction="batchmean") * 4
    torch.testing.assert_close(terms["kl_0"], kl)
    # weights kl = cos = 0: plain cross-entropy
    ce_only = DistillLoss(1, kl=0.0, cos=0.0)(s, batch)
    torch.testing.assert_close(ce_only, cross_entropy(s, batch))
    t1 = DistillLoss(1).terms(s, batch)
    unnormalised = DistillLoss(1, normalise=False)(s, batch)
    torch.testing.assert_close(unnormalised, t1["ce"] + t1["kl_0"] + t1["cos_0"])
    with pytest.raises(ValueError, match="teacher_logits has shape"):
        DistillLoss(2)(s, batch)
    with pytest.raises(ValueError, match="temperature"):
        DistillLoss(1, temperature=0)


def test_head_lr_gives_the_head_its_own_rate_under_the_schedule(tmp_path):
    from omegaconf import OmegaConf

    from arena_distill.config import config_dir
    from arena_distill.models.factory import build_model
    from arena_distill.train import PreferenceTrainer, head_parameters

    cfg = OmegaConf.load(config_dir() / "model" / "minilm.yaml")
    model, _ = build_model(cfg)
    settings = TrainSettings(lr=1e-4, head_lr=3e-3, weight_decay=0.01, warmup_steps=2)
    args = training_arguments(settings, tmp_path, has_eval=False)
    trainer = PreferenceTrainer(model=model, args=args, head_lr=settings.head_lr)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    groups = trainer.optimizer.param_groups
    head = {id(p) for p in head_parameters(model)}
    assert head and len(head) == 2  # classifier weight and bias (PEFT's trainable copy)
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable)  # every trainable parameter in exactly one group
    for g in groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= head or not ids & head  # no group mixes head and body
        want = 3e-3 if ids and ids <= head else 1e-4
        assert g["initial_lr"] == pytest.approx(want)  # the rate the schedule scales
    assert {g["weight_decay"] for g in groups if {id(p) for p in g["params"]} <= head} == {
        0.0,
        0.01,
    }  # the Trainer's decay / no-decay split survives (weight decays, bias does not)
    for _ in range(5):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    rates = {bool({id(p) for p in g["params"]} <= head): g["lr"] for g in groups if g["params"]}
    assert rates[True] / rates[False] == pytest.approx(30.0)  # one schedule scales both
    plain = PreferenceTrainer(model=model, args=args)
    plain.create_optimizer()
    assert {g["lr"] for g in plain.optimizer.param_groups} == {1e-4}


def test_resume_takes_the_newest_complete_checkpoint_and_drops_a_cut_one(tmp_path):
    """A kill inside a save leaves ``checkpoint-<n>`` without ``trainer_state.json`` (or with a
    truncated one): resume passes over it, and the main process deletes it."""
    from arena_distill.train import checkpoint_complete, last_complete_checkpoint

    def checkpoint(step: int, state: str | None) -> None:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"w")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)

    assert last_complete_checkpoint(tmp_path) is None
    checkpoint(4, '{"global_step": 4}')
    checkpoint(8, '{"global_step": 8}')
    checkpoint(12, None)  # killed after the weights
    checkpoint(16, '{"global_st')  # killed while writing the state
    assert checkpoint_complete(tmp_path / "checkpoint-8")
    assert not checkpoint_complete(tmp_path / "checkpoint-16")
    assert last_complete_checkpoint(tmp_path, remove_incomplete=False) == str(
        tmp_path / "checkpoint-8"
    )
    assert (tmp_path / "checkpoint-12").exists()  # another rank: nothing removed
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text('{"global_step": 4}')
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")  # not its step


def test_a_causal_decoder_trains_without_the_padding_mask_with_the_same_gradients(tmp_path):
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from arena_distill.train import PreferenceTrainer

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, num_labels=3,
    )  # fmt: skip
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    batch = PreferenceCollator(pad_token_id=0)(
        [{"input_ids": list(range(1, n + 1)), "labels": n % 3} for n in (9, 4, 6, 2)]
    )
    args = training_arguments(TrainSettings(), tmp_path, has_eval=False)
    trainer = PreferenceTrainer(model=model, args=args)
    calls = []
    model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw.get("attention_mask")), with_kwargs=True
    )
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    engine = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    masked = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = cross_entropy(masked, batch)
    reference.backward()
    assert calls[0] is None  # the engine passed no mask
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(engine[n], p.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_a_work_folder_of_other_inputs_is_emptied_before_training(tmp_path):
    """Checkpoints are resumed only by the run of the inputs they were trained from."""
    work = tmp_path / ".out.work"
    assert marked_work_dir(work, "a") == work and (work / "fingerprint_id").read_text() == "a"
    (work / "checkpoint-4").mkdir()
    marked_work_dir(work, "a")  # the same inputs: the checkpoint stays, to resume from
    assert (work / "checkpoint-4").is_dir()
    marked_work_dir(work, "b")  # other inputs: trained afresh
    assert not (work / "checkpoint-4").exists()
    assert (work / "fingerprint_id").read_text() == "b"
    (work / "checkpoint-2").mkdir()
    (work / "fingerprint_id").unlink()  # unmarked (an older run): not resumed either
    marked_work_dir(work, "b")
    assert not (work / "checkpoint-2").exists()
    plain = tmp_path / "plain"  # no inputs id (a direct train_fold call): as it is
    (plain / "checkpoint-1").mkdir(parents=True)
    marked_work_dir(plain, None)
    assert (plain / "checkpoint-1").is_dir() and not (plain / "fingerprint_id").exists()
