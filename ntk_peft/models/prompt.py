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
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no LM head to read label words from")
    return head


def label_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    """Logits of the label words at each example's read-out position.

    Args:
        model: a Hugging Face causal or masked LM.
        batch: from `ntk_peft.tasks.make_batch` (input_ids, attention_mask,
            readout_positions, label_token_ids).

    Returns:
        ``[B, C]`` in the model's dtype.
    """
    hidden = readout_hidden(model, batch)
    words = batch["label_token_ids"].to(hidden.device)
    head = lm_head(model)
    if isinstance(head, nn.Linear):  # only the label words' rows of the output matrix
        bias = None if head.bias is None else head.bias[words]
        return F.linear(hidden, head.weight[words], bias)
    return head(hidden)[:, words]
