"""Zero-shot prediction: the argmax of the pretrained model's label logits."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ntk_peft.models import label_logits
from ntk_peft.tasks import Example, iter_batches


def predict_logits(model, tokenizer, task, examples: list[Example], batch_size: int = 16,
                   progress: bool = True, desc: str = "zero-shot", **prompt_kwargs) -> torch.Tensor:
    """Label logits of every example, in the examples' order.

    Args:
        model, tokenizer: from `ntk_peft.load_model`.
        task: task name or spec.
        examples: n examples.
        batch_size: examples per forward pass (sorted by length to pad less).
        progress: show a tqdm bar on stderr, labelled ``desc`` (name the split there).
        **prompt_kwargs: template, label_words, mode, max_length, padding_side
            (passed to `make_batch`).

    Returns:
        ``[n, C]`` float64 on the CPU.
    """
    out: torch.Tensor | None = None
    bar = tqdm(total=len(examples), desc=desc, unit="ex", disable=not progress)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for idx, batch in iter_batches(tokenizer, task, examples, batch_size, **prompt_kwargs):
            batch = {key: value.to(device) for key, value in batch.items()}
            logits = label_logits(model, batch).double().cpu()
            if out is None:
                out = torch.empty(len(examples), logits.shape[1], dtype=torch.float64)
            out[torch.tensor(idx)] = logits
            bar.update(len(idx))
    bar.close()
    return out


def accuracy(logits: torch.Tensor, examples: list[Example]) -> float:
    """Fraction of examples whose argmax label logit is the true class."""
    labels = torch.tensor([e.label for e in examples])
    return float((logits.argmax(dim=1) == labels).double().mean())
