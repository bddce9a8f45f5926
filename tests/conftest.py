"""Shared fixtures: offline mode, the real data folder, tiny and real models."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton kernels run on the CPU only interpreted; triton reads this when the
    # kernels are decorated, i.e. when ntk_peft.kernels.monarch_triton is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from ntk_peft.models import load_model  # noqa: E402
from ntk_peft.tasks.data import resolve_data_dir  # noqa: E402

TINY = ("tiny-llama", "tiny-roberta", "tiny-bert")


@pytest.fixture(scope="session")
def data_dir():
    """The shared LM-BFF data folder (../shared/data or $NTK_PEFT_DATA)."""
    return resolve_data_dir()


@pytest.fixture(scope="session")
def tiny_models():
    """name -> (model, tokenizer) in float64, built once."""
    return {name: load_model(name, dtype=torch.float64) for name in TINY}


@pytest.fixture(scope="session")
def smollm2():
    """The real default model in float32 (converted once into the cache)."""
    return load_model("smollm2-135m")
