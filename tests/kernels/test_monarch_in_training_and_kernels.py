"""The Triton Monarch path inside the toolkit: a MoRe training run and eNTKs, against the reference path."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from safetensors.torch import load_file

from ntk_peft import load_model
from ntk_peft.kernels import monarch_triton_calls
from ntk_peft.ntk import empirical_ntk
from ntk_peft.tasks import load_split, make_batch
from ntk_peft.train import TrainConfig, train

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
    # The toolkit's training and eNTKs run these tiny models on the CPU, where the kernels run only
    # interpreted (tests/conftest.py sets that up on machines without CUDA).
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU models need TRITON_INTERPRET=1"),
]


def _train(tmp_path, monkeypatch, flag):
    monkeypatch.setenv("NTK_PEFT_TRITON", flag)
    config = TrainConfig(task="sst2", adapter="more4x8", out=str(tmp_path / f"triton{flag}"), k=4, seed=3,
                         model="tiny-llama", steps=4, lr=5e-2, batch_size=4, eval_every=4, track_every=None,
                         max_eval=8)
    before = monarch_triton_calls()
    metrics = train(config, progress=False)
    adapter = load_file(str(tmp_path / f"triton{flag}" / "adapter" / "adapter.safetensors"))
    return [loss for _, loss in metrics["loss"]], adapter, monarch_triton_calls() - before


def test_more_training_losses_equal_on_both_paths(tmp_path, monkeypatch):
    triton_losses, triton_adapter, triton_calls = _train(tmp_path, monkeypatch, "1")
    reference_losses, reference_adapter, reference_calls = _train(tmp_path, monkeypatch, "0")
    assert triton_calls > 0 and reference_calls == 0
    assert len(triton_losses) == 4
    torch.testing.assert_close(torch.tensor(triton_losses), torch.tensor(reference_losses), rtol=1e-5, atol=1e-5)
    second_factors = [key for key in reference_adapter if key.endswith("w2")]
    assert second_factors and all(reference_adapter[key].abs().max() > 1e-3 for key in second_factors)  # it moved
    for key, value in reference_adapter.items():
        torch.testing.assert_close(triton_adapter[key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("implementation", ["fast", "reference"])
def test_more_kernels_equal_on_both_paths(monkeypatch, implementation):
    model, tok = load_model("tiny-llama", seed=2)  # float32: the Triton path's dtype
    train = load_split("sst2").train
    batch1, batch2 = make_batch(tok, "sst2", train[:3]), make_batch(tok, "sst2", train[10:12])
    kernels = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("NTK_PEFT_TRITON", flag)
        before = monarch_triton_calls()
        kernels[flag] = empirical_ntk(model, batch1, batch2, subsets=["more2x4"], implementation=implementation)
        assert (monarch_triton_calls() > before) == (flag == "1")
    got, want = kernels["1"]["more2x4"], kernels["0"]["more2x4"]
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
