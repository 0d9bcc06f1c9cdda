"""The inference engine's pure parts and its executor, on a deterministic fake classifier."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from arena_distill.data.swap import mirror_probs
from arena_distill.inference import (
    ModelSpec,
    make_batches,
    padded_tokens,
    predict_logits,
    resolve_devices,
    run_inference,
    shard_work,
)
from arena_distill.predict import (
    Plan,
    guard_decision,
    identical_answers,
    plan_tokens,
    postprocess,
    tta_probs,
)
from arena_distill.settings import EMPTY_A, IDENTICAL

PAD = 0


class FakeClassifier(nn.Module):
    """Deterministic, padding-invariant, order-sensitive: a masked, position-weighted mean of
    3-dim token embeddings."""

    def __init__(self, vocab: int = 64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(vocab, 3, generator=g, dtype=torch.float64))
        self.config = SimpleNamespace(pad_token_id=PAD)
        self.calls: list[tuple[int, int]] = []

    def forward(self, input_ids, attention_mask):
        self.calls.append(tuple(input_ids.shape))
        m = attention_mask[..., None].to(torch.float64)
        pos = torch.arange(1, input_ids.shape[1] + 1, dtype=torch.float64)[None, :, None]
        logits = (self.emb[input_ids] * m * pos.sqrt()).sum(1) / m.sum(1)
        return SimpleNamespace(logits=logits)


def random_sequences(n: int, seed: int = 0, lo: int = 1, hi: int = 40) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 64, size=rng.integers(lo, hi)).tolist() for _ in range(n)]


def one_by_one(model: FakeClassifier, seqs) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate(
            [
                model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)).logits.numpy()
                for s in seqs
            ]
        )


# ---------------------------------------------------------------------------------------------
# batching


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("batch_size", "max_tokens"), [(1, 50), (8, 100), (8, 40), (32, 10_000)])
def test_batches_cover_every_row_once_under_the_token_budget(seed, batch_size, max_tokens):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, size=int(rng.integers(0, 200)))
    batches = make_batches(lengths, batch_size, max_tokens)
    flat = np.concatenate(batches) if batches else np.array([], dtype=int)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= batch_size
        longest = int(lengths[b].max())
        assert len(b) * longest <= max_tokens or (len(b) == 1 and longest > max_tokens)
    # longest first
    firsts = [int(lengths[b].max()) for b in batches]
    assert firsts == sorted(firsts, reverse=True)
    assert padded_tokens(lengths, batches) >= int(lengths.sum())


def test_a_row_longer_than_the_budget_gets_a_batch_of_its_own():
    batches = make_batches([5, 500, 5], batch_size=8, max_tokens=100)
    assert [b.tolist() for b in batches] == [[1], [0, 2]]


def test_predictions_come_back_in_input_order_and_match_one_by_one():
    model = FakeClassifier()
    seqs = random_sequences(57)
    run = predict_logits(
        model, seqs, pad_token_id=PAD, batch_size=8, max_tokens=120, progress=False
    )
    assert all(b * length <= 120 for b, length in model.calls)
    assert run.batches == len(model.calls)
    assert run.tokens == sum(map(len, seqs))
    assert run.padded == sum(b * length for b, length in model.calls) >= run.tokens
    np.testing.assert_allclose(run.logits, one_by_one(model, seqs), atol=1e-6)


def test_max_batches_stops_early_and_leaves_the_rest_nan():
    seqs = random_sequences(20)
    run = predict_logits(
        FakeClassifier(), seqs, pad_token_id=PAD, batch_size=4, max_batches=2, progress=False
    )
    assert run.batches == 2
    first_two = make_batches([len(s) for s in seqs], 4, 4 * max(map(len, seqs)))[:2]
    assert np.isfinite(run.logits).all(axis=1).sum() == sum(len(b) for b in first_two)


def test_empty_input():
    run = predict_logits(FakeClassifier(), [], pad_token_id=PAD, progress=False)
    assert run.logits.shape == (0, 3)


# ---------------------------------------------------------------------------------------------
# swap-TTA


def _tta(model, orig, swap):
    res = run_inference(
        ModelSpec({}),
        {False: orig, True: swap},
        devices=["cpu"],
        tta=True,
        batch_size=4,
        max_tokens=None,
        progress=False,
        model=model,
    )
    return tta_probs(res.logits[False], res.logits[True]), res


def test_swap_tta_of_the_swapped_input_is_the_mirror_of_the_original():
    model = FakeClassifier()
    orig, swap = random_sequences(23, seed=1), random_sequences(23, seed=2)
    p, res = _tta(model, orig, swap)
    p_swapped_input, _ = _tta(model, swap, orig)
    np.testing.assert_allclose(p_swapped_input, mirror_probs(p), atol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    # and the pieces are the model's own predictions in input order
    np.testing.assert_allclose(res.logits[False], one_by_one(model, orig), atol=1e-6)
    np.testing.assert_allclose(res.logits[True], one_by_one(model, swap), atol=1e-6)


def test_without_tta_only_the_original_orientation_is_predicted():
    model = FakeClassifier()
    orig = random_sequences(9)
    res = run_inference(
        ModelSpec({}),
        {False: orig, True: random_sequences(9, seed=5)},
        devices=["cpu"],
        tta=False,
        batch_size=4,
        max_tokens=None,
        progress=False,
        model=model,
    )
    assert set(res.logits) == {False}
    assert sum(b for b, _ in model.calls) == 9
    np.testing.assert_allclose(tta_probs(res.logits[False], None).sum(axis=1), 1.0)


# ---------------------------------------------------------------------------------------------
# sharding


def _lengths(n: int, seed: int = 0) -> dict[bool, list[int]]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 100, size=n)
    return {False: a.tolist(), True: (a + rng.integers(-2, 3, size=n)).clip(1).tolist()}


@pytest.mark.parametrize("n_devices", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("tta", [True, False])
def test_sharding_covers_every_item_once(n_devices, tta):
    lengths = _lengths(41)
    shards = shard_work(lengths, n_devices, tta)
    assert len(shards) == n_devices
    items = [it for s in shards for it in s]
    want = [(r, o) for o in ((False, True) if tta else (False,)) for r in range(41)]
    assert sorted(items) == sorted(want)
    assert len(items) == len(set(items))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_two_devices_with_tta_is_the_kaggle_pattern():
    gpu0, gpu1 = shard_work(_lengths(30), 2, tta=True)
    assert {o for _, o in gpu0} == {False} and sorted(r for r, _ in gpu0) == list(range(30))
    assert {o for _, o in gpu1} == {True} and sorted(r for r, _ in gpu1) == list(range(30))


def test_four_devices_with_tta_split_each_orientation_in_two():
    shards = shard_work(_lengths(30), 4, tta=True)
    assert [{o for _, o in s} for s in shards] == [{False}, {False}, {True}, {True}]


def test_without_tta_rows_are_split_with_balanced_tokens():
    lengths = _lengths(200, seed=3)
    shards = shard_work(lengths, 2, tta=False)
    tokens = [sum(lengths[o][r] for r, o in s) for s in shards]
    assert abs(tokens[0] - tokens[1]) <= max(lengths[False])
    assert all(o is False for s in shards for _, o in s)


def test_resolve_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_devices("auto") == ["cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_devices("auto") == ["cuda:0", "cuda:1"]
    assert resolve_devices("cpu") == ["cpu"]
    assert resolve_devices(["cpu", "cpu"]) == ["cpu", "cpu"]
    with pytest.raises(ValueError):
        resolve_devices([])


# ---------------------------------------------------------------------------------------------
# time-budget guard

REQ = Plan(2000, True)
SHORT = Plan(1024, True)
SHORT_NO_TTA = Plan(1024, False)
TOKENS = {REQ: 4000.0, SHORT: 2000.0, SHORT_NO_TTA: 1000.0, Plan(2000, False): 2000.0}


def decide(budget_s, **kw):
    args = dict(requested=REQ, work=TOKENS, work_per_s=100.0, fallback_max_length=1024)
    return guard_decision(budget_s=budget_s, **{**args, **kw})


def test_guard_keeps_a_plan_that_fits():
    d = decide(40.0)
    assert (d.plan, d.action) == (REQ, "none")
    assert d.estimated_s == pytest.approx(40.0)


def test_guard_falls_back_to_the_shorter_length_first():
    d = decide(39.0)
    assert (d.plan, d.action) == (SHORT, "shorter_max_length")
    assert [c["seconds"] for c in d.candidates] == [40.0, 20.0, 10.0]


def test_guard_then_turns_tta_off():
    d = decide(15.0)
    assert (d.plan, d.action) == (SHORT_NO_TTA, "shorter_max_length+tta_off")


def test_guard_takes_the_cheapest_plan_when_nothing_fits():
    d = decide(1.0)
    assert (d.plan, d.action) == (SHORT_NO_TTA, "over_budget")
    assert d.to_dict()["plan"] == {"max_length": 1024, "tta": False}


def test_guard_without_a_fallback_length_turns_tta_off():
    d = decide(25.0, fallback_max_length=None)
    assert (d.plan, d.action) == (Plan(2000, False), "tta_off")
    d = decide(25.0, fallback_max_length=4096)  # not shorter: ignored
    assert d.plan == Plan(2000, False)


def test_guard_counts_elapsed_time_and_parallel_devices():
    assert decide(40.0, elapsed_s=5.0).plan == SHORT
    assert decide(20.0, n_devices=2).plan == REQ
    with pytest.raises(ValueError):
        decide(1.0, work_per_s=0.0)


def test_plan_tokens_caps_lengths_at_the_plan_budget():
    lengths = {False: [10, 30, 50], True: [10, 30, 50]}
    assert plan_tokens(lengths, Plan(100, False), batch_size=1, max_tokens=None) == 90
    assert plan_tokens(lengths, Plan(100, True), batch_size=1, max_tokens=None) == 180
    assert plan_tokens(lengths, Plan(20, False), batch_size=1, max_tokens=None) == 50
    # one batch of 3 rows padded to the longest
    dense = {False: [40, 45, 50], True: [40, 45, 50]}
    assert plan_tokens(dense, Plan(100, False), batch_size=8, max_tokens=None) == 150
    # 10 and 30 are cheaper apart from 50: [50], [30, 10]
    assert plan_tokens(lengths, Plan(100, False), batch_size=8, max_tokens=None) == 110


# ---------------------------------------------------------------------------------------------
# post-processing


def test_postprocess_rules_and_counts():
    probs = np.full((5, 3), 1 / 3)
    empty_a = [True, False, False, True, False]
    empty_b = [False, True, False, True, False]
    identical = [False, False, True, True, False]
    out, rule, counts = postprocess(probs, empty_a=empty_a, empty_b=empty_b, identical=identical)
    np.testing.assert_allclose(out[0], EMPTY_A)
    np.testing.assert_allclose(out[1], [0.88, 0.04, 0.08])
    np.testing.assert_allclose(out[2], IDENTICAL)
    np.testing.assert_allclose(out[3], IDENTICAL)  # both empty: identical
    np.testing.assert_allclose(out[4], probs[4])
    assert rule.tolist() == ["empty_a", "empty_b", "identical", "identical", ""]
    assert counts == {"identical": 2, "empty_a": 1, "empty_b": 1}
    np.testing.assert_allclose(probs, 1 / 3)  # input untouched


def test_postprocess_with_custom_values():
    out, _, _ = postprocess(
        np.full((1, 3), 1 / 3),
        empty_a=[False],
        empty_b=[True],
        identical=[False],
        empty_answer=[0.1, 0.7, 0.2],
    )
    np.testing.assert_allclose(out[0], [0.7, 0.1, 0.2])


def test_identical_answers_compare_normalised_text():
    df = pd.DataFrame(
        {
            "response_a": [["Hello  world"], ["a", "b"], ["x"], [""]],
            "response_b": [["hello world "], ["a", "c"], ["y"], [" "]],
        }
    )
    assert identical_answers(df).tolist() == [True, False, False, True]


# ---------------------------------------------------------------------------------------------
# out of memory and fallbacks


class OomClassifier(FakeClassifier):
    """Runs out of "memory" on batches above ``limit`` padded positions (CUDA's own error)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, input_ids, attention_mask):
        if input_ids.numel() > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return super().forward(input_ids, attention_mask)


def test_an_out_of_memory_batch_is_split_and_retried():
    model = OomClassifier(limit=60)
    seqs = random_sequences(20, seed=3, lo=5, hi=30)
    run = predict_logits(model, seqs, pad_token_id=PAD, batch_size=8, progress=False)
    np.testing.assert_allclose(run.logits, one_by_one(FakeClassifier(), seqs), atol=1e-6)
    assert run.oom_splits > 0 and run.failed_rows == 0
    assert max(r * n for r, n in model.calls) <= 60  # only what fit ran to the end


def test_a_row_too_long_alone_keeps_nan_logits_and_is_counted():
    seqs = [[1] * 50, [2] * 5, [3] * 6]
    run = predict_logits(
        OomClassifier(limit=40), seqs, pad_token_id=PAD, batch_size=4, progress=False
    )
    assert run.failed_rows == 1 and np.isnan(run.logits[0]).all()
    assert np.isfinite(run.logits[1:]).all()


def test_other_errors_are_not_swallowed():
    class Broken(FakeClassifier):
        def forward(self, input_ids, attention_mask):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        predict_logits(Broken(), [[1, 2]], pad_token_id=PAD, progress=False)


def test_rows_without_a_finite_prediction_fall_back_to_one_orientation_or_the_prior():
    from arena_distill.layout import prediction_table
    from arena_distill.predict import with_fallback

    logits = np.array([[1.0, 0.0, 0.0], [np.nan] * 3, [np.nan] * 3, [0.0, 2.0, 0.0]])
    swapped = np.array([[0.0, 1.0, 0.0], [0.0, 3.0, 0.0], [np.nan] * 3, [np.inf, 0.0, 0.0]])
    table = prediction_table(list("abcd"), logits, swapped)
    prior = [0.5, 0.3, 0.2]
    probs, fallback = with_fallback(table, tta=True, prior=prior)
    assert fallback.tolist() == ["", "one_orientation", "prior", "one_orientation"]
    np.testing.assert_allclose(probs[0], table.loc[0, ["tta_p_a", "tta_p_b", "tta_p_tie"]])
    np.testing.assert_allclose(probs[1], tta_probs(swapped[1:2], None)[0][[1, 0, 2]])
    np.testing.assert_allclose(probs[2], prior)
    np.testing.assert_allclose(probs[3], table.loc[3, ["p_a", "p_b", "p_tie"]])
    plain, fb = with_fallback(table, tta=False, prior=None)
    assert fb.tolist() == ["", "prior", "prior", ""]
    np.testing.assert_allclose(plain[1], [1 / 3] * 3)


def test_batches_cut_a_sparse_tail_instead_of_padding_short_rows_to_it():
    # greedy fill by 4: [100, 20, 20, 20] pads three rows by 80 each; the cut costs one batch
    lengths = [100, 20, 20, 20, 20, 20, 20, 20]
    batches = make_batches(lengths, batch_size=4, max_tokens=1000)
    assert len(batches) == 3 and batches[0].tolist() == [0]
    assert padded_tokens(lengths, batches) == 240  # no padding at all; greedy: 480
    # a high cost per batch gives back the fewest batches (the greedy fill)
    fewest = make_batches(lengths, batch_size=4, max_tokens=1000, batch_cost=1e9)
    assert [len(b) for b in fewest] == [4, 4]


@pytest.mark.parametrize("seed", range(3))
def test_batch_cuts_never_pad_more_than_the_greedy_fill(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 2000, size=300)
    batches = make_batches(lengths, batch_size=8, max_tokens=16000)
    ordered = np.sort(lengths)[::-1]
    greedy = sum(len(c) * int(c.max()) for c in np.array_split(ordered, range(8, 300, 8)))
    assert padded_tokens(lengths, batches) <= greedy
    # with the default cost (one mean row per batch) padded + cost is no worse than greedy's
    cost = lengths.mean()
    assert padded_tokens(lengths, batches) + cost * len(batches) <= greedy + cost * 38


def _tiny_decoder(family: str):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    kw = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        pad_token_id=PAD,
        num_labels=3,
    )
    attn = "eager" if family == "gemma2" else "sdpa"
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, **kw)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=attn).eval()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_causal_decoders_predict_without_the_padding_mask_and_get_the_same_logits(family):
    from arena_distill.collate import pad_right, padding_mask_needed

    model = _tiny_decoder(family)
    assert not padding_mask_needed(model)
    seqs = random_sequences(12, seed=3, lo=2, hi=30)
    run = predict_logits(model, seqs, pad_token_id=PAD, batch_size=4, progress=False)
    ids, mask = pad_right(seqs, PAD)  # one batch, masked: the reference
    with torch.no_grad():
        masked = model(input_ids=ids, attention_mask=mask).logits.numpy()
    np.testing.assert_allclose(run.logits, masked, atol=1e-5)


def test_an_encoder_keeps_the_padding_mask():
    from transformers import BertConfig, BertForSequenceClassification

    from arena_distill.collate import padding_mask_needed

    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=3,
    )  # fmt: skip
    assert padding_mask_needed(BertForSequenceClassification(config))
    assert padding_mask_needed(FakeClassifier())  # unknown: keep it
