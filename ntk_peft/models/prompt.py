"""The prompt function f: label-word logits at the read-out position.

``label_logits(model, batch) -> [B, C]`` runs the model's body once, takes the
hidden state at each example's read-out position (the mask token for masked
LMs, the last prompt token for causal LMs) and applies the LM head there only,
keeping the label words' logits. Position ids are derived from the attention
mask, so an example gives the same logits alone or padded beside longer ones,
on either padding side.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Families whose position ids start after the padding index (fairseq style).
_PADDING_OFFSET_FAMILIES = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text")


def position_ids(model: nn.Module, attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: ``[B, T]`` long.

    Pads get position 0 (or the padding index for RoBERTa-like models).
    """
    counts = attention_mask.long().cumsum(-1)
    if getattr(model.config, "model_type", "") in _PADDING_OFFSET_FAMILIES:
        return counts * attention_mask.long() + model.config.pad_token_id
    return ((counts - 1).clamp(min=0)) * attention_mask.long()


def _accepts(module: nn.Module, name: str) -> bool:
    return name in inspect.signature(module.forward).parameters


def readout_hidden(model: nn.Module, batch: dict) -> torch.Tensor:
    """Final hidden states at the read-out positions: ``[B, H]``."""
    body = model.base_model
    mask = batch["attention_mask"]
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": mask,
              "position_ids": position_ids(model, mask)}
    if _accepts(body, "token_type_ids"):
        kwargs["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    if _accepts(body, "use_cache"):
        kwargs["use_cache"] = False
    hidden = body(**kwargs).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, batch["readout_positions"].to(hidden.device)]


def lm_head(model: nn.Module) -> nn.Module:
    """The module mapping final hidden states to vocabulary logits."""
    for name in ("lm_head", "cls", "embed_out"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    getter = getattr(model, "get_output_embeddings", None)  # a Hugging Face model; else no LM head
    head = getter() if getter is not None else None
    if head is None:
        raise ValueError(f"{type(model).__name__} has no LM head to read label words from")
    return head


@dataclass(frozen=True)
class HeadSplit:
    """An LM head as ``logits = transform(h) · weightᵀ + bias``.

    ``weight`` ``[V, d]`` is often tied to the input embedding; the eNTK
    engine reads the label words' rows of it.
    """

    transform: Callable[[torch.Tensor], torch.Tensor]
    weight: nn.Parameter
    bias: nn.Parameter | None


def split_lm_head(model: nn.Module) -> HeadSplit | None:
    """The head of Llama-style, BERT and RoBERTa models as a `HeadSplit`; else None."""
    try:
        head = lm_head(model)
    except ValueError:  # no LM head at all (a classifier, any module)
        return None
    if isinstance(head, nn.Linear):  # causal LMs: no transform
        return HeadSplit(lambda h: h, head.weight, head.bias)
    predictions = getattr(head, "predictions", None)
    if predictions is not None and isinstance(getattr(predictions, "decoder", None), nn.Linear):  # BERT
        return HeadSplit(predictions.transform, predictions.decoder.weight, predictions.decoder.bias)
    if all(isinstance(getattr(head, n, None), nn.Module) for n in ("dense", "layer_norm", "decoder")):  # RoBERTa
        from transformers.models.roberta.modeling_roberta import gelu

        return HeadSplit(lambda h: head.layer_norm(gelu(head.dense(h))), head.decoder.weight, head.decoder.bias)
    return None


def readout_logits(model: nn.Module, hidden: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Label-word logits from read-out hidden states ``[B, H]``: ``[B, C]``."""
    split = split_lm_head(model)
    words = words.to(hidden.device)
    if split is None:  # any other head: full vocabulary at B positions, then the label words
        return lm_head(model)(hidden)[:, words]
    bias = None if split.bias is None else split.bias[words]
    return F.linear(split.transform(hidden), split.weight[words], bias)


def label_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    """Logits of the label words at each example's read-out position.

    Args:
        model: a Hugging Face causal or masked LM.
        batch: from `ntk_peft.tasks.make_batch` (input_ids, attention_mask,
            readout_positions, label_token_ids).

    Returns:
        ``[B, C]`` in the model's dtype.
    """
    return readout_logits(model, readout_hidden(model, batch), batch["label_token_ids"])
