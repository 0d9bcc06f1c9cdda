"""Tokenisation with an on-disk cache: fingerprints, the cache key, both A/B orientations.

:func:`tokenize_cached` is :func:`arena_distill.text.encode_table` behind a parquet cache keyed by
:func:`cache_key` (data, tokenizer, prompt config, :data:`FORMAT_VERSION`);
:func:`tokenize_both_orientations` encodes a table as given and A/B-swapped (swap augmentation in
training, swap-TTA in prediction), :func:`encoding_map` indexes the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from arena_distill.io import write_parquet
from arena_distill.text import PromptConfig, _check_columns, _turns, encode_table

log = logging.getLogger(__name__)

# Bump whenever the encoding of a row changes for identical inputs: it invalidates every cache.
FORMAT_VERSION = 1


def _update_str(h: Any, s: str) -> None:
    # Length-prefixed so that ("ab", "c") and ("a", "bc") hash differently; surrogatepass
    # because some Kaggle strings hold lone surrogates.
    data = s.encode("utf-8", "surrogatepass")
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def table_fingerprint(df: pd.DataFrame) -> str:
    """sha256 over the id and text columns (the only columns the encoding depends on)."""
    _check_columns(df)
    h = hashlib.sha256()
    h.update(len(df).to_bytes(8, "little"))
    for rid, *fields in zip(
        df["id"], df["prompt"], df["response_a"], df["response_b"], strict=True
    ):
        _update_str(h, str(rid))
        for field in fields:
            turns = _turns(field)
            h.update(len(turns).to_bytes(8, "little"))
            for t in turns:
                _update_str(h, t)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over what determines the ids: class, size, special ids and the full vocabulary /
    pipeline (``backend_tokenizer.to_str()`` for fast tokenizers)."""
    h = hashlib.sha256()
    info = {
        "class": type(tokenizer).__name__,
        "len": len(tokenizer),
        "special": {
            k: getattr(tokenizer, f"{k}_token_id", None)
            for k in ("bos", "eos", "cls", "sep", "pad", "unk")
        },
    }
    h.update(json.dumps(info, sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode("utf-8"))
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    return h.hexdigest()


# PromptConfig fields added after FORMAT_VERSION 1, with the value that encodes rows exactly as
# before they existed: at that value they stay out of the key, so existing caches stay valid.
_NEUTRAL = {"shared_turns": "keep"}


def _prompt_key(cfg: PromptConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    for name, neutral in _NEUTRAL.items():
        if d[name] == neutral:
            del d[name]
    return d


def cache_key(
    df: pd.DataFrame, tokenizer: Any, cfg: PromptConfig, data_key: str | None = None
) -> str:
    """The cache file name: sha256 over data, tokenizer, prompt config and FORMAT_VERSION."""
    parts = {
        "data": data_key if data_key is not None else table_fingerprint(df),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "prompt": _prompt_key(cfg),
        "format": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def tokenize_cached(
    df: pd.DataFrame,
    tokenizer: Any,
    cfg: PromptConfig,
    *,
    cache_dir: str | Path,
    data_key: str | None = None,
    batch_size: int = 1024,
    show_progress: bool = False,
) -> pd.DataFrame:
    """``encode_table`` with an on-disk parquet cache (``cache_dir/<cache_key>.parquet``).

    Returns columns ``id``, ``input_ids`` (list[int]) and ``length``, in table order;
    ``result.attrs["cache_hit"]`` says whether the cache was read. ``data_key`` replaces the
    content hash of the table (pass one when the caller already knows the data's identity; it
    must change whenever the data does).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(df, tokenizer, cfg, data_key)
    path = cache_dir / f"{key}.parquet"
    if path.exists():
        table = pq.read_table(path)
        out = pd.DataFrame(
            {
                "id": table.column("id").to_pylist(),
                "input_ids": table.column("input_ids").to_pylist(),
                "length": table.column("length").to_pylist(),
            }
        )
        out.attrs["cache_hit"] = True
        log.info("token cache hit: %s (%d rows)", path, len(out))
        return out

    ids = encode_table(df, tokenizer, cfg, batch_size=batch_size, show_progress=show_progress)
    row_ids = [str(i) for i in df["id"]]
    lengths = [len(x) for x in ids]
    table = pa.table(
        {
            "id": pa.array(row_ids, type=pa.string()),
            "input_ids": pa.array(ids, type=pa.list_(pa.int32())),
            "length": pa.array(lengths, type=pa.int32()),
        }
    ).replace_schema_metadata(
        {"arena_distill.prompt_config": json.dumps(cfg.to_dict()), "format": str(FORMAT_VERSION)}
    )
    write_parquet(table, path)
    log.info("token cache written: %s (%d rows)", path, len(ids))
    out = pd.DataFrame({"id": row_ids, "input_ids": ids, "length": lengths})
    out.attrs["cache_hit"] = False
    return out


def tokenize_both_orientations(
    df: pd.DataFrame,
    tokenizer: Any,
    cfg: PromptConfig,
    *,
    cache_dir: str | Path,
    data_key: str | None = None,
) -> pd.DataFrame:
    """Token ids of every row as given and A/B-swapped: ``id, swapped, input_ids, length``.

    Training uses both orientations (swap augmentation) and prediction uses both (swap-TTA).
    """
    from arena_distill.data.swap import swap_table

    parts = []
    for swapped, table in ((False, df), (True, swap_table(df))):
        key = None if data_key is None else f"{data_key}:swapped={swapped}"
        enc = tokenize_cached(table, tokenizer, cfg, cache_dir=cache_dir, data_key=key)
        parts.append(enc.assign(swapped=swapped)[["id", "swapped", "input_ids", "length"]])
    return pd.concat(parts, ignore_index=True)


def encoding_map(enc: pd.DataFrame) -> dict[tuple[str, bool], list[int]]:
    """``{(id, swapped): input_ids}`` from ``tokenize_both_orientations``' table."""
    return dict(zip(zip(enc["id"], enc["swapped"], strict=True), enc["input_ids"], strict=True))
