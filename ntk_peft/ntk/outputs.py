"""The function a kernel is of: label-word logits of a prompt, or any ``outputs(model, batch) -> [B, C]``.

By default f is the prompt function (`ntk_peft.models.label_logits`: a
Hugging Face LM's label-word logits at the read-out position). Any other model
is given with an output function, e.g.::

    empirical_ntk(mlp, {"x": x1}, {"x": x2}, subsets=["full", "lora1"],
                  outputs=lambda model, batch: model(batch["x"]))
    empirical_ntk(classifier, batch1, batch2, outputs=sequence_logits)  # AutoModelForSequenceClassification

A batch is then any dict of tensors whose first dimension is the example.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ntk_peft.errors import UserError
from ntk_peft.models import label_logits

OutputFunction = Callable[[nn.Module, dict], torch.Tensor]


def batch_size(batch: dict) -> int:
    """Examples in a batch: ``input_ids``' first dimension, else the first tensor's."""
    if "input_ids" in batch:
        return int(batch["input_ids"].shape[0])
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and key != "label_token_ids":
            return int(value.shape[0])
    raise UserError(f"a batch needs a tensor with one row per example; got keys {sorted(batch)}")


def model_outputs(model: nn.Module, batch: dict, outputs: OutputFunction | None = None) -> torch.Tensor:
    """f(batch) ``[B, C]``: the label-word logits, or ``outputs(model, batch)`` checked for its shape."""
    if outputs is None:
        return label_logits(model, batch)
    values = outputs(model, batch)
    if not isinstance(values, torch.Tensor) or values.dim() != 2 or values.shape[0] != batch_size(batch):
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise UserError(f"the output function must return [B, C] = [{batch_size(batch)}, C] outputs, got {shape}")
    return values


def outputs_name(outputs: OutputFunction | None) -> str:
    """How a kernel's identity names its output function."""
    if outputs is None:
        return "label_words"
    return f"{getattr(outputs, '__module__', '?')}.{getattr(outputs, '__qualname__', type(outputs).__name__)}"


def sequence_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    """Class logits of a Hugging Face ``AutoModelForSequenceClassification`` (standard fine-tuning's function,
    LM-Kernel-FT's non-prompt mode): ``model(input_ids, attention_mask).logits``."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
