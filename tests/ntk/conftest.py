"""Fixtures shared by the eNTK tests."""

from __future__ import annotations

import pytest
import torch

from ntk_peft import load_model
from ntk_peft.tasks import load_split, make_batch


@pytest.fixture(scope="module")
def llama_blocks():
    """(tiny-llama in float64 (seed 4), three SST-2 blocks of 3 train prompts, two blocks of 2 other prompts)."""
    model, tok = load_model("tiny-llama", dtype=torch.float64, seed=4)
    train = load_split("sst2").train
    blocks = [make_batch(tok, "sst2", train[i : i + 3]) for i in range(0, 9, 3)]
    evals = [make_batch(tok, "sst2", train[i : i + 2]) for i in range(20, 24, 2)]
    return model, blocks, evals
