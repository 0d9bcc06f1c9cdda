"""Prompt building, truncation and batched tokenisation.

The model sees one sequence per pairwise judgement, rendered with the 1st-place template (no chat
template)::

    [BOS] User question:\\n\"\"\"{prompt}\"\"\"\\nAnswer A:\\n\"\"\"{a}\"\"\"\\nAnswer B:\\n\"\"\"{b}\"\"\"\\n [EOS]

Every text is tokenised on its own and the template pieces (``head``, ``mid_a``, ``mid_b``,
``tail``) are tokenised once each, so the sequence is the concatenation of separately tokenised
parts. That is what makes exact token budgets possible: each part can be cut at token level
without re-tokenising, and no BPE merge crosses a part boundary (the ids can therefore differ
from ``tokenizer(render_text(...))`` right at the boundaries; ``render_text`` is for calibration
data and inspection).

Truncation rules (``max_length`` counts everything: BOS, EOS and template pieces):

* **Word pre-cut** (both modes, before tokenising; it bounds tokeniser work on huge texts): each
  text keeps its first ``max_words_prompt`` / ``max_words_response`` whitespace-separated words
  (its last ones with ``truncation_side="left"``); the original whitespace is preserved and a
  text within the limit is unchanged. In ``first_place`` mode the limit applies to the field's
  turns joined with ``turn_sep``; in ``multi_turn`` mode to every turn on its own.
* **Token cut**: ``"right"`` keeps the first tokens of a text, ``"left"`` its last tokens.
* **Answer sharing** (both modes): when answers of lengths ``la``, ``lb`` must fit in ``room``
  tokens and ``la + lb > room``, the longer one is trimmed first: if the shorter fits in
  ``room // 2`` it is kept whole and the longer gets ``room - shorter``; otherwise each gets
  ``room // 2``. The rule is symmetric in A and B (swapping A and B swaps the kept parts).
* **first_place mode** (1st place): turns joined with ``turn_sep``; ``room = max_length -
  specials - template pieces``; the prompt keeps ``min(len, max_prompt_tokens, room)`` tokens and
  the answers share ``room - kept prompt``.
* **multi_turn mode** (4th place): every turn is its own block ``head p_i mid_a a_i mid_b b_i
  tail``. Each turn's prompt is first capped at ``max_prompt_tokens``. Turns are taken in order
  (from the first with ``"right"``, from the last backwards with ``"left"``, i.e. the most recent
  turns are kept) and kept whole while their block fits. The first turn that does not fit ends
  the row: with ``room`` = tokens left minus its template pieces, it is dropped (with all later
  ones) when ``room < min_last_turn_tokens``; otherwise it is kept cut: the prompt gets
  ``min(len, floor(last_turn_prompt_share * room))`` tokens and the answers share the rest. If
  the very first turn taken does not fit, it is cut by the first_place rule instead (it is never
  dropped), so a single-turn row gives exactly the first_place ids. Kept turns stay in
  chronological order.
* **Shared turns** (``shared_turns="context"``, both modes, before the word pre-cut): the
  leading turns whose A and B answers are the same text (a shared conversation history: in
  Anthropic HH every turn but the last) are moved into the first prompt
  (``p_0 sep a_0 sep ... sep p_k``, ``sep`` = ``turn_sep``) and the answers start at the first
  turn that differs (the last turn always stays an answer). Without it, a right-side cut of such
  a row keeps only the shared start of both answers and the model sees A == B (57% of HH
  harmless rows at ``cpu_real``'s 128 tokens). Swapping A and B folds the same turns.
* If the template pieces plus special tokens alone exceed ``max_length`` → ``ValueError``.

The on-disk token cache is :mod:`arena_distill.tokens`; a change to how a row is encoded must
bump its ``FORMAT_VERSION``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import pandas as pd

from arena_distill.data.schema import DataError

MODES = ("first_place", "multi_turn")
SIDES = ("right", "left")
SHARED_TURNS = ("keep", "context")


@dataclass(frozen=True)
class PromptConfig:
    """How a row becomes token ids (Hydra config group ``prompt/`` maps onto these fields)."""

    mode: str = "first_place"
    head: str = 'User question:\n"""'
    mid_a: str = '"""\nAnswer A:\n"""'
    mid_b: str = '"""\nAnswer B:\n"""'
    tail: str = '"""\n'
    turn_sep: str = "\n"
    max_words_prompt: int = 256
    max_words_response: int = 700
    max_length: int = 1024
    max_prompt_tokens: int = 256
    truncation_side: str = "right"
    min_last_turn_tokens: int = 80
    last_turn_prompt_share: float = 0.25
    add_bos: bool | None = None
    add_eos: bool = True
    # e.g. "({size}, {words} words) ": written before every answer text (after it with
    # truncation_side="left"), so the model sees each answer's full length even when the text
    # is cut; {words} = whitespace words of the uncut answer, {size} = a word from LENGTH_SIZES.
    # Human raters favour longer answers, and a cut cross-encoder cannot otherwise see it.
    length_hint: str | None = None
    # "context": the leading turns where A's and B's answers are the same text (a shared
    # conversation history, as in Anthropic HH) become part of the prompt, so the budget goes
    # to the turns that tell the answers apart (module docstring); "keep": every turn as given.
    shared_turns: str = "keep"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"PromptConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.shared_turns not in SHARED_TURNS:
            raise ValueError(
                f"PromptConfig.shared_turns must be one of {SHARED_TURNS}, "
                f"got {self.shared_turns!r}"
            )
        if self.truncation_side not in SIDES:
            raise ValueError(
                f"PromptConfig.truncation_side must be one of {SIDES}, got {self.truncation_side!r}"
            )
        for name in (
            "max_words_prompt",
            "max_words_response",
            "max_prompt_tokens",
            "min_last_turn_tokens",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"PromptConfig.{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.max_length, int) or self.max_length < 1:
            raise ValueError(
                f"PromptConfig.max_length must be an int >= 1, got {self.max_length!r}"
            )
        if not 0.0 <= float(self.last_turn_prompt_share) <= 1.0:
            raise ValueError(
                "PromptConfig.last_turn_prompt_share must be in [0, 1], "
                f"got {self.last_turn_prompt_share!r}"
            )
        for name in ("head", "mid_a", "mid_b", "tail", "turn_sep"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"PromptConfig.{name} must be a str")
        if self.length_hint is not None:
            try:
                self.length_hint.format(words=1, size="short")
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                raise ValueError(
                    "PromptConfig.length_hint may only use the fields {words} and {size}, "
                    f"got {self.length_hint!r} ({exc!r})"
                ) from None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PromptConfig:
        """Build from a plain mapping (e.g. a Hydra/OmegaConf node). Unknown keys are an error,
        so that a typo in a config file cannot silently fall back to a default."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PromptConfig keys {unknown}; valid keys are {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TurnIds(NamedTuple):
    """The kept token ids of one turn (or of the joined turns in first_place mode)."""

    prompt: list[int]
    a: list[int]
    b: list[int]


@dataclass(frozen=True)
class TemplatePieces:
    """The template pieces and special tokens, tokenised once per tokenizer."""

    head: list[int]
    mid_a: list[int]
    mid_b: list[int]
    tail: list[int]
    turn_sep: list[int]
    bos: list[int]
    eos: list[int]

    @property
    def block_overhead(self) -> int:
        """Template tokens around one (prompt, A, B) block."""
        return len(self.head) + len(self.mid_a) + len(self.mid_b) + len(self.tail)

    @property
    def n_special(self) -> int:
        return len(self.bos) + len(self.eos)


# ---------------------------------------------------------------------------------------------
# Text level
# ---------------------------------------------------------------------------------------------

_NON_SPACE = re.compile(r"\S")


@lru_cache(maxsize=64)
def _first_words_re(n: int) -> re.Pattern[str]:
    # Linear: \S+ and \s+ alternate unambiguously, so there is no backtracking blow-up.
    return re.compile(rf"\s*(?:\S+\s+){{{n - 1}}}\S+")


def cut_words(text: str, n: int, side: str = "right") -> str:
    """Keep the first (``side="right"``) or last (``"left"``) ``n`` whitespace-separated words.

    The original whitespace inside the kept part is preserved (code and lists keep their
    layout); a text with at most ``n`` words is returned unchanged.
    """
    if side == "left":
        # Whitespace is single characters, so reversing maps "last n words" to "first n words".
        return cut_words(text[::-1], n, "right")[::-1]
    if n <= 0:
        return ""
    m = _first_words_re(n).match(text)
    if m is None or _NON_SPACE.search(text, m.end()) is None:
        return text
    return text[: m.end()]


# (upper word-count bound, word) of the {size} field of PromptConfig.length_hint
LENGTH_SIZES: tuple[tuple[float, str], ...] = (
    (10, "tiny"),
    (40, "short"),
    (120, "medium"),
    (300, "long"),
    (math.inf, "very long"),
)


def length_hint(text: str, template: str) -> str:
    """``template`` filled with the word count of ``text`` and its size word."""
    words = len(text.split())
    size = next(name for bound, name in LENGTH_SIZES if words < bound)
    return template.format(words=words, size=size)


def with_length_hint(text: str, cfg: PromptConfig, full: str | None = None) -> str:
    """``text`` with the length hint of ``full`` (the uncut answer; default ``text``) on the side
    that truncation keeps; unchanged when ``cfg`` has no hint."""
    if cfg.length_hint is None:
        return text
    hint = length_hint(text if full is None else full, cfg.length_hint)
    return text + hint if cfg.truncation_side == "left" else hint + text


def _turns(value: Any) -> list[str]:
    """One field of a row as a list of strings (parquet gives numpy arrays; None → "")."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return ["" if t is None else str(t) for t in value]


def fold_shared_turns(
    ps: list[str], as_: list[str], bs: list[str], sep: str
) -> tuple[list[str], list[str], list[str]]:
    """Move the leading turns whose answers are the same in A and B into the prompt.

    With ``k`` such turns (never all of them: the last turn always stays an answer), the first
    prompt becomes ``p_0 sep a_0 sep ... sep a_{k-1} sep p_k`` and the answers start at turn
    ``k``. Rows without a shared leading turn, or with differing turn counts, are unchanged.
    """
    n = len(ps)
    if not n == len(as_) == len(bs):
        return ps, as_, bs
    k = 0
    while k < n - 1 and as_[k] == bs[k]:
        k += 1
    if k == 0:
        return ps, as_, bs
    context = sep.join(t for i in range(k) for t in (ps[i], as_[i]))
    return [context + sep + ps[k], *ps[k + 1 :]], as_[k:], bs[k:]


def render_text(
    prompt: str | Sequence[str],
    a: str | Sequence[str],
    b: str | Sequence[str],
    cfg: PromptConfig | None = None,
) -> str:
    """The untruncated template text, without special tokens (calibration data, inspection).

    Lists of turns are joined with ``turn_sep`` (first_place) or rendered one block per turn
    (multi_turn), mirroring ``encode_table``.
    """
    cfg = cfg or PromptConfig()
    ps, as_, bs = _turns(prompt), _turns(a), _turns(b)
    if cfg.shared_turns == "context":
        ps, as_, bs = fold_shared_turns(ps, as_, bs, cfg.turn_sep)
    if cfg.mode == "first_place":
        ps, as_, bs = [cfg.turn_sep.join(ps)], [cfg.turn_sep.join(as_)], [cfg.turn_sep.join(bs)]
    elif not len(ps) == len(as_) == len(bs):
        raise ValueError(f"turn counts differ: prompt {len(ps)}, A {len(as_)}, B {len(bs)}")
    as_, bs = [with_length_hint(t, cfg) for t in as_], [with_length_hint(t, cfg) for t in bs]
    return "".join(
        f"{cfg.head}{p}{cfg.mid_a}{x}{cfg.mid_b}{y}{cfg.tail}"
        for p, x, y in zip(ps, as_, bs, strict=True)
    )


# ---------------------------------------------------------------------------------------------
# Token level (pure functions on id lists; the property tests exercise these directly)
# ---------------------------------------------------------------------------------------------


def _special_ids(tokenizer: Any, cfg: PromptConfig) -> tuple[list[int], list[int]]:
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        bos_id = getattr(tokenizer, "cls_token_id", None)  # BERT-like: [CLS] opens
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        eos_id = getattr(tokenizer, "sep_token_id", None)  # BERT-like: [SEP] closes
    if cfg.add_bos is True and bos_id is None:
        raise ValueError("add_bos=True but the tokenizer has neither a bos nor a cls token")
    if cfg.add_eos and eos_id is None:
        raise ValueError("add_eos=True but the tokenizer has neither an eos nor a sep token")
    bos = [] if cfg.add_bos is False or bos_id is None else [int(bos_id)]
    eos = [int(eos_id)] if cfg.add_eos else []
    return bos, eos


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """One batched call of the (fast) tokenizer, without special tokens."""
    if not texts:
        return []
    # verbose=False: silence the "longer than model_max_length" warning; we truncate ourselves.
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def template_pieces(tokenizer: Any, cfg: PromptConfig) -> TemplatePieces:
    """Tokenise the template pieces once and resolve the special tokens."""
    head, mid_a, mid_b, tail, sep = _tokenize(
        tokenizer, [cfg.head, cfg.mid_a, cfg.mid_b, cfg.tail, cfg.turn_sep]
    )
    bos, eos = _special_ids(tokenizer, cfg)
    return TemplatePieces(list(head), list(mid_a), list(mid_b), list(tail), list(sep), bos, eos)


def _cut(ids: list[int], n: int, side: str) -> list[int]:
    if n >= len(ids):
        return list(ids)
    if n <= 0:
        return []
    return list(ids[:n]) if side == "right" else list(ids[len(ids) - n :])


def share_answers(la: int, lb: int, room: int) -> tuple[int, int]:
    """How many tokens of A and B to keep in ``room`` tokens: the longer is trimmed first.

    If both fit, both are kept; if the shorter fits in ``room // 2`` it is kept whole and the
    longer gets the rest; otherwise each gets ``room // 2``. Symmetric in A and B.
    """
    room = max(room, 0)
    if la + lb <= room:
        return la, lb
    half = room // 2
    if la <= half:
        return la, room - la
    if lb <= half:
        return room - lb, lb
    return half, half


def _check_room(room: int, pieces: TemplatePieces, cfg: PromptConfig) -> None:
    if room < 0:
        raise ValueError(
            f"max_length={cfg.max_length} is smaller than the template pieces "
            f"({pieces.block_overhead} tokens) plus special tokens ({pieces.n_special})"
        )


def _first_place_cut(
    p: list[int], a: list[int], b: list[int], room: int, cfg: PromptConfig
) -> TurnIds:
    side = cfg.truncation_side
    kp = min(len(p), cfg.max_prompt_tokens, room)
    ka, kb = share_answers(len(a), len(b), room - kp)
    return TurnIds(_cut(p, kp, side), _cut(a, ka, side), _cut(b, kb, side))


def truncate_turns(
    prompt: Sequence[list[int]],
    a: Sequence[list[int]],
    b: Sequence[list[int]],
    pieces: TemplatePieces,
    cfg: PromptConfig,
) -> list[TurnIds]:
    """Apply the truncation rules (module docstring) to one row of tokenised turns.

    In first_place mode several turns are joined with ``pieces.turn_sep`` first
    (``encode_table`` passes them already joined at the string level, as the 1st place did).
    """
    if not len(prompt) == len(a) == len(b):
        raise ValueError(f"turn counts differ: prompt {len(prompt)}, A {len(a)}, B {len(b)}")
    side = cfg.truncation_side
    budget = cfg.max_length - pieces.n_special
    _check_room(budget - pieces.block_overhead, pieces, cfg)

    if cfg.mode == "first_place":

        def join(turns: Sequence[list[int]]) -> list[int]:
            out: list[int] = []
            for i, t in enumerate(turns):
                if i:
                    out.extend(pieces.turn_sep)
                out.extend(t)
            return out

        room = budget - pieces.block_overhead
        return [_first_place_cut(join(prompt), join(a), join(b), room, cfg)]

    n = len(prompt)
    order: Iterable[int] = range(n) if side == "right" else range(n - 1, -1, -1)
    kept: dict[int, TurnIds] = {}
    for i in order:
        p = _cut(prompt[i], cfg.max_prompt_tokens, side)
        cost = pieces.block_overhead + len(p) + len(a[i]) + len(b[i])
        if cost <= budget:
            kept[i] = TurnIds(p, list(a[i]), list(b[i]))
            budget -= cost
            continue
        room = budget - pieces.block_overhead
        if not kept:
            kept[i] = _first_place_cut(p, a[i], b[i], room, cfg)
        elif room >= cfg.min_last_turn_tokens:
            kp = min(len(p), math.floor(cfg.last_turn_prompt_share * room))
            ka, kb = share_answers(len(a[i]), len(b[i]), room - kp)
            kept[i] = TurnIds(_cut(p, kp, side), _cut(a[i], ka, side), _cut(b[i], kb, side))
        break
    return [kept[i] for i in sorted(kept)]


def assemble(turns: Sequence[TurnIds], pieces: TemplatePieces) -> list[int]:
    """``[BOS] (head p mid_a a mid_b b tail)* [EOS]``."""
    ids = list(pieces.bos)
    for t in turns:
        ids += pieces.head + t.prompt + pieces.mid_a + t.a + pieces.mid_b + t.b + pieces.tail
    ids += pieces.eos
    return ids


# ---------------------------------------------------------------------------------------------
# Table level
# ---------------------------------------------------------------------------------------------


def _row_texts(rid: Any, p: Any, a: Any, b: Any, cfg: PromptConfig) -> list[list[str]]:
    """The word-pre-cut texts of one row: [prompt_turns, a_turns, b_turns]."""
    ps, as_, bs = _turns(p), _turns(a), _turns(b)
    if not len(ps) == len(as_) == len(bs):
        raise DataError(
            f"turn counts differ (prompt {len(ps)}, A {len(as_)}, B {len(bs)})", row=rid
        )
    if cfg.shared_turns == "context":
        ps, as_, bs = fold_shared_turns(ps, as_, bs, cfg.turn_sep)
    if cfg.mode == "first_place":
        ps, as_, bs = [cfg.turn_sep.join(ps)], [cfg.turn_sep.join(as_)], [cfg.turn_sep.join(bs)]
    side = cfg.truncation_side
    return [
        [cut_words(t, cfg.max_words_prompt, side) for t in ps],
        [with_length_hint(cut_words(t, cfg.max_words_response, side), cfg, t) for t in as_],
        [with_length_hint(cut_words(t, cfg.max_words_response, side), cfg, t) for t in bs],
    ]


def _check_columns(df: pd.DataFrame) -> None:
    missing = [c for c in ("id", "prompt", "response_a", "response_b") if c not in df.columns]
    if missing:
        raise DataError(f"missing columns {missing} for tokenisation")


def encode_table_parts(
    df: pd.DataFrame,
    tokenizer: Any,
    cfg: PromptConfig,
    *,
    batch_size: int = 1024,
    show_progress: bool = False,
) -> Iterator[list[TurnIds]]:
    """Yield the kept (prompt, A, B) token ids of every row, in table order.

    All texts of a batch of rows go to the tokenizer in one call (the bulk of the time);
    truncation is cheap list slicing afterwards.
    """
    _check_columns(df)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pieces = template_pieces(tokenizer, cfg)
    rows = list(zip(df["id"], df["prompt"], df["response_a"], df["response_b"], strict=True))
    starts = range(0, len(rows), batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="tokenising", unit="batch")
    for start in starts:
        batch = [_row_texts(*r, cfg) for r in rows[start : start + batch_size]]
        flat = [t for fields in batch for field in fields for t in field]
        ids = _tokenize(tokenizer, flat)
        pos = 0
        for fields in batch:
            n = len(fields[0])
            p, a, b = ids[pos : pos + n], ids[pos + n : pos + 2 * n], ids[pos + 2 * n : pos + 3 * n]
            pos += 3 * n
            yield truncate_turns(p, a, b, pieces, cfg)


def encode_table(
    df: pd.DataFrame,
    tokenizer: Any,
    cfg: PromptConfig,
    *,
    batch_size: int = 1024,
    show_progress: bool = False,
) -> list[list[int]]:
    """Token ids (with special tokens, at most ``cfg.max_length``) of every row, in table order."""
    pieces = template_pieces(tokenizer, cfg)
    return [
        assemble(turns, pieces)
        for turns in encode_table_parts(
            df, tokenizer, cfg, batch_size=batch_size, show_progress=show_progress
        )
    ]
