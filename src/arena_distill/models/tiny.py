"""Tiny random-init stand-ins for the real checkpoints, so every stage can run and be tested on CPU.

The real pipeline fine-tunes Gemma-2-9B (student) and Llama-3 / Qwen2 (teachers) as
``*ForSequenceClassification`` models. Nothing can be downloaded here, so this module trains a
small byte-level BPE tokenizer on local text and builds random-init models of the same three
architectures, saved as ordinary Hugging Face folders: the code under test loads them with
``AutoModelForSequenceClassification.from_pretrained`` / ``AutoTokenizer.from_pretrained``
exactly as it would load a real checkpoint, so no test needs a special code path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    Gemma2Config,
    Gemma2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForSequenceClassification,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from arena_distill.data.schema import LABEL_COLUMNS
from arena_distill.models.factory import SOFTCAP_FAMILIES, default_attention

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
TINY_FAMILIES = ("gemma2", "llama", "qwen2")
INFO_FILE = "arena_distill_tiny.json"
ID2LABEL = dict(enumerate(LABEL_COLUMNS))

_ARCHITECTURES: dict[str, tuple[type[PreTrainedConfig], type[PreTrainedModel]]] = {
    "gemma2": (Gemma2Config, Gemma2ForSequenceClassification),
    "llama": (LlamaConfig, LlamaForSequenceClassification),
    "qwen2": (Qwen2Config, Qwen2ForSequenceClassification),
}


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path, *, vocab_size: int = 2048
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and save it as a Hugging Face tokenizer in ``out_dir``.

    Byte-level, like the Llama-3 / Qwen2 tokenizers, so any string encodes without ``<unk>``.
    The normaliser and pre-tokeniser are exactly those ``Qwen2Tokenizer`` rebuilds on load:
    transformers 5 loads a ``qwen2`` folder with that class whatever ``tokenizer_config.json``
    says, so any other pipeline would make the tiny Qwen2 tokenise differently from the tiny
    Gemma-2 and Llama that share this tokenizer. Like Gemma-2 and Llama-3 it prepends ``<bos>``
    when ``add_special_tokens=True``; ``<eos>`` is left to the prompt builder, which appends it
    explicitly as the 1st-place recipe does. Padding is on the right, the library default:
    transformers 5 pools the last non-pad token correctly on either side (a padded row's logits
    equal its unpadded ones either way), so a caller wanting left padding passes
    ``padding_side`` to ``from_pretrained``. The BPE trainer is deterministic for a given text
    sequence (checked across processes), so there is no seed.
    """
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        continuing_subword_prefix="",
        end_of_word_suffix="",
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="right",
        model_max_length=1_000_000,
    )
    fast.save_pretrained(out_dir)
    return fast


def tiny_config(
    family: str,
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    num_labels: int = 3,
) -> PreTrainedConfig:
    """The config of a tiny ``family`` classifier whose special-token ids match ``tokenizer``.

    ``pad_token_id`` must be set, or ``*ForSequenceClassification`` cannot find the last real
    token of a padded batch. Gemma-2 keeps its distinctive pieces (soft-capping, alternating
    sliding/full attention) at a scale that fits the tiny sizes, and stores ``eager`` attention
    because ``sdpa`` silently drops the soft-capping in transformers 5.17.
    """
    if family not in _ARCHITECTURES:
        raise ValueError(f"unknown tiny family {family!r}; expected one of {TINY_FAMILIES}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    config_cls, _ = _ARCHITECTURES[family]
    head_dim = hidden_size // num_heads
    kwargs: dict = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": max_position_embeddings,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "num_labels": num_labels,
    }
    if num_labels == len(ID2LABEL):
        kwargs["id2label"] = ID2LABEL
        kwargs["label2id"] = {name: i for i, name in ID2LABEL.items()}
    if family == "gemma2":
        # Real Gemma-2 scales queries by head_dim**-0.5 and slides over half its context.
        kwargs.update(
            query_pre_attn_scalar=head_dim,
            sliding_window=max(1, max_position_embeddings // 2),
        )
    if family in SOFTCAP_FAMILIES:
        # the attention rule of models.factory (eager on the CPU: sdpa drops softcapping)
        kwargs["attn_implementation"] = default_attention(family, "cpu")
    config = config_cls(**kwargs)
    if family in SOFTCAP_FAMILIES:
        # transformers 5 never serialises the attention implementation; a public
        # `attn_implementation` key in config.json is read back by `from_pretrained` (unless the
        # caller passes one). A checkpoint re-saved after loading loses it again, so loaders of
        # Gemma-2 still pass the rule's choice (models.factory.resolve_attn_implementation).
        config.attn_implementation = kwargs["attn_implementation"]
    return config


def build_tiny_model(
    family: str,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    num_labels: int = 3,
    seed: int = 0,
) -> Path:
    """Build a random-init tiny ``family`` classifier and save it with its tokenizer in ``out_dir``.

    The weights depend only on ``seed`` and the sizes, so two builds are identical. The folder
    also holds ``arena_distill_tiny.json`` (family, sizes, seed, parameter count) so a reader of
    a run directory can tell a tiny stand-in from a real checkpoint.
    """
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    sizes = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "num_labels": num_labels,
    }
    config = tiny_config(family, tokenizer, **sizes)
    _, model_cls = _ARCHITECTURES[family]
    torch.manual_seed(seed)
    model = model_cls(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "family": family,
        **sizes,
        "vocab_size": len(tokenizer),
        "seed": seed,
        "n_params": n_params,
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out


def build_tiny_models(
    texts: Iterable[str],
    out_root: str | Path,
    families: Iterable[str] = TINY_FAMILIES,
    *,
    vocab_size: int = 2048,
    **sizes: int,
) -> dict[str, Path]:
    """Train one tokenizer on ``texts`` and build every family in ``families`` with it.

    One shared tokenizer (in ``out_root/tokenizer``) mirrors nothing real, but it lets teacher
    and student logits be compared row by row on identical inputs in tests. Each model goes to
    ``out_root/tiny_<family>``; ``sizes`` (and ``seed``) are passed on to :func:`build_tiny_model`.
    """
    root = Path(out_root)
    tokenizer_dir = root / "tokenizer"
    train_tokenizer(texts, tokenizer_dir, vocab_size=vocab_size)
    return {
        family: build_tiny_model(family, tokenizer_dir, root / f"tiny_{family}", **sizes)
        for family in families
    }
