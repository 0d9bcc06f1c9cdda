"""The quantize stage's methods beside GPTQ, and which method a saved model folder holds.

``stages.quantize.method`` (:data:`METHODS`):

* ``gptq``: ``arena_distill.quantize`` (transformers' ``GPTQConfig`` + optimum + gptqmodel).
  gptqmodel has no wheel on PyPI for Kaggle's platform (an sdist with CUDA kernels), so a GPTQ
  folder loads on Kaggle only with a gptqmodel wheel built there
  (``scripts/kaggle_build_gptqmodel.md``).
* ``bnb_int8``: bitsandbytes LLM.int8 through transformers' ``BitsAndBytesConfig(load_in_8bit=
  True, llm_int8_skip_modules=[heads])``: every ``nn.Linear`` but the head (``score`` /
  ``classifier``) becomes a ``Linear8bitLt`` (int8 weights with one absmax scale per output
  row; activation columns above ``llm_int8_threshold`` = 6 are multiplied in 16 bits). No
  calibration data. Needs only ``bitsandbytes``, whose manylinux wheel on PyPI (``py3-none``,
  CUDA libraries inside, ``torch>=2.4``) installs offline on Kaggle. bitsandbytes >= 0.45 also
  runs it on the CPU (inputs are cast to float16 for the int8 matmul there), which is what the
  tests and ``scripts/bench_quantize.py`` measure; on a GPU the same code quantizes on the GPU
  (``device_map``). The saved folder reloads with a plain
  ``AutoModelForSequenceClassification.from_pretrained(folder)``, which puts it on the GPU when
  there is one (transformers' bitsandbytes loader), else on the CPU.
* ``none``: no quantization: the source copied as float16, for when neither fits; prediction
  may then split it over several GPUs.

Every folder the stage writes carries ``config.json["arena_distill"] = {"quantize_method": m}``
(:data:`MARKER`). :func:`folder_method` tells, without torch, which method a folder holds, from
its ``config.json`` ``quantization_config`` (the loader's own record, which cannot be
forgotten), the marker, and the quantize stage's ``manifest.json`` when there is one; they must
agree. A folder with neither (a merged or any fine-tuned full model) is ``none``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from arena_distill.settings import QUANTIZE_METHODS as METHODS

# config.json key: {"quantize_method": ...} (and "head" for a hybrid head: features.MARKER)
MARKER = "arena_distill"
# config.json quantization_config.quant_method -> our method
QUANT_METHODS = {"gptq": "gptq", "bitsandbytes": "bnb_int8"}
NONE_DTYPE = "float16"
BNB_INT8_BITS = 8


class FolderMethodError(ValueError):
    """A model folder's quantization is not one this project packages (or its records clash)."""


# ---------------------------------------------------------------------------------------------
# Which method a folder holds (no torch: scripts/package_kaggle.py and the Kaggle side use it)
# ---------------------------------------------------------------------------------------------


def config_method(config: Mapping[str, Any], where: str = "config.json") -> str | None:
    """The method ``config.json``'s ``quantization_config`` records (None: no quantization)."""
    qc = config.get("quantization_config")
    if not qc:
        return None
    kind = qc.get("quant_method")
    method = QUANT_METHODS.get(str(kind))
    if method is None:
        raise FolderMethodError(
            f"{where}: quantization_config.quant_method {kind!r} is not one of "
            f"{sorted(QUANT_METHODS)} (the methods {METHODS} this project writes and packages)"
        )
    if method == "bnb_int8" and not qc.get("load_in_8bit", qc.get("_load_in_8bit")):
        raise FolderMethodError(f"{where}: a bitsandbytes config that is not 8-bit (4-bit?)")
    return method


def marker_method(config: Mapping[str, Any]) -> str | None:
    mark = config.get(MARKER)
    if not isinstance(mark, Mapping):
        return None
    return mark.get("quantize_method")


def manifest_method(model_dir: str | Path) -> str | None:
    """``stages.quantize.method`` in the quantize stage's manifest (None: no such manifest;
    ``gptq`` for a manifest written before the setting existed)."""
    path = Path(model_dir) / "manifest.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("stage") != "quantize":
        return None
    stage = (data.get("config") or {}).get("stage") or {}
    return str(stage.get("method", "gptq"))


def folder_method(model_dir: str | Path) -> str:
    """``gptq`` | ``bnb_int8`` | ``none``: the quantization a model folder holds.

    The ``config.json`` ``quantization_config`` decides (it is what ``from_pretrained`` will
    need); the :data:`MARKER` and the quantize manifest, when present, must say the same.
    """
    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    if not path.is_file():
        raise FolderMethodError(f"{model_dir} has no config.json (not a model folder)")
    config = json.loads(path.read_text())
    from_config = config_method(config, str(path)) or "none"
    for what, method in (
        (f"{path} {MARKER}.quantize_method", marker_method(config)),
        (f"{model_dir / 'manifest.json'} stages.quantize.method", manifest_method(model_dir)),
    ):
        if method is not None and method != from_config:
            raise FolderMethodError(
                f"{what} is {method!r} but the weights in {model_dir} are {from_config!r} "
                "(quantization_config of config.json)"
            )
    return from_config


def write_marker(model_dir: str | Path, method: str) -> None:
    """Record ``method`` in ``model_dir/config.json`` (:data:`MARKER`)."""
    if method not in METHODS:
        raise ValueError(f"unknown quantize method {method!r}; expected one of {METHODS}")
    path = Path(model_dir) / "config.json"
    data = json.loads(path.read_text())
    data[MARKER] = {**(data.get(MARKER) or {}), "quantize_method": method}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# bnb_int8 and none
# ---------------------------------------------------------------------------------------------


def bnb_int8_config() -> Any:
    """LLM.int8 with every head name skipped (whichever the model has stays ``nn.Linear``)."""
    from transformers import BitsAndBytesConfig

    from arena_distill.models.factory import HEAD_NAMES

    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(HEAD_NAMES))


def is_int8_linear(module: Any) -> bool:
    """A bitsandbytes ``Linear8bitLt`` (its weight an ``Int8Params``)."""
    return type(module).__name__ == "Linear8bitLt" or type(
        getattr(module, "weight", None)
    ).__name__ == ("Int8Params")


def quantize_bnb_int8(source: str | Path, dtype: str = "auto", device: str | None = None) -> Any:
    """The classifier in ``source`` loaded as LLM.int8 on ``device`` (default: cuda if
    available, else the CPU); the head stays a plain ``nn.Linear`` in ``dtype``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from arena_distill.quantize import (
        QuantizationError,
        _load_kwargs,
        default_device,
        restore_head,
    )

    device = device or default_device()
    config = AutoConfig.from_pretrained(str(source))
    arch = ",".join(getattr(config, "architectures", None) or [type(config).__name__])
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(source),
            quantization_config=bnb_int8_config(),
            device_map={"": device},
            **_load_kwargs(config, dtype, device),
        )
    except Exception as e:  # bitsandbytes / accelerate raise many kinds
        raise QuantizationError(
            f"cannot load {arch} from {source} as bitsandbytes LLM.int8 on {device}: "
            f"{type(e).__name__}: {e}"
        ) from e
    restore_head(model, source)  # a hybrid head, unquantized, with the source's tensors
    return model.eval()


def load_fp16(source: str | Path, device: str = "cpu") -> Any:
    """The classifier in ``source`` as float16 (method ``none``), on ``device``."""
    from arena_distill.quantize import load_classifier

    return load_classifier(source, NONE_DTYPE, device)


def save_model(model: Any, tokenizer: Any, out_dir: str | Path, method: str) -> None:
    """``save_pretrained`` with the tokenizer, the attention rule pinned and the marker."""
    from arena_distill.models.factory import pin_saved_attention

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    pin_saved_attention(out_dir)
    write_marker(out_dir, method)
