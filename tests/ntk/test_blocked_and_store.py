"""Blocked kernels, the resumable kernel store, and layout converters."""

from __future__ import annotations

import pytest
import torch

from ntk_peft import load_model
from ntk_peft.errors import UserError
from ntk_peft.ntk import (
    CrossJob,
    KernelStore,
    batches_hash,
    blocked,
    empirical_ntk,
    from_flat,
    kernel_blocks,
    model_hash,
    shared_cross_blocks,
    to_flat,
    to_lm_kernel_ft,
    trace_over_outputs,
)
from ntk_peft.tasks import load_split, make_batch

SUBSETS = ("full", "row1", "lora1")


@pytest.fixture(scope="module")
def setup(llama_blocks):
    return llama_blocks


def _meta(model, blocks):
    return {"model": "tiny-llama", "model_hash": model_hash(model), "subsets": list(SUBSETS),
            "inputs_hash": batches_hash(blocks), "implementation": "fast", "block_size": 3}


def test_blocks_equal_one_big_batch(setup):
    model, blocks, evals = setup
    _, tok = load_model("tiny-llama", dtype=torch.float64, seed=4)
    train = load_split("sst2").train
    whole = empirical_ntk(model, make_batch(tok, "sst2", train[:9]), make_batch(tok, "sst2", train[20:24]),
                          subsets=SUBSETS)
    sym = kernel_blocks(model, blocks, None, SUBSETS, progress=False)
    cross = kernel_blocks(model, blocks, evals, SUBSETS, progress=False)
    whole_sym = empirical_ntk(model, make_batch(tok, "sst2", train[:9]), subsets=SUBSETS)
    for key in SUBSETS:
        assert (cross[key] - whole[key]).abs().max() <= 1e-12 * whole[key].abs().max()
        assert (sym[key] - whole_sym[key]).abs().max() <= 1e-12 * whole_sym[key].abs().max()


def test_interrupted_run_resumes_bitwise_and_recomputes_only_missing_blocks(setup, tmp_path, monkeypatch):
    model, blocks, evals = setup
    clean = kernel_blocks(model, blocks, None, SUBSETS, progress=False)
    calls = {"n": 0}
    original = blocked.fast_kernel

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2 * len(SUBSETS):  # two block pairs finish, then the run dies
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(blocked, "fast_kernel", failing)
    store = KernelStore(tmp_path, _meta(model, blocks))
    with pytest.raises(KeyboardInterrupt):
        kernel_blocks(model, blocks, None, SUBSETS, store=store, name="train", progress=False)
    assert len(list((tmp_path / "blocks").glob("*.safetensors"))) == 2
    assert not list((tmp_path / "blocks").glob("*.tmp"))
    calls["n"] = -10**9  # no more failures; count what the rerun computes
    resumed = kernel_blocks(model, blocks, None, SUBSETS, store=KernelStore(tmp_path, _meta(model, blocks)),
                            name="train", progress=False)
    assert calls["n"] + 10**9 == (6 - 2) * len(SUBSETS)  # 3 blocks -> 6 unordered pairs, 2 were done
    for key in SUBSETS:
        assert torch.equal(resumed[key], clean[key])


@pytest.mark.parametrize("cache_bytes", [8 << 30, 0])
def test_shared_cross_blocks_record_each_right_block_once_and_equal_per_store_kernels(setup, tmp_path, monkeypatch,
                                                                                     cache_bytes):
    """Two seeds' stores against one eval set: each eval block is recorded once, values are bitwise those of
    `kernel_blocks`, and with no cache budget the left blocks are recorded again per eval block."""
    model, blocks, evals = setup
    lefts = [blocks[:2], blocks[1:]]
    stores = [KernelStore(tmp_path / f"seed{n}", _meta(model, left)) for n, left in enumerate(lefts)]
    recorded = []
    original = blocked.capture
    monkeypatch.setattr(blocked, "capture", lambda m, batch: recorded.append(batch) or original(m, batch))
    shared_cross_blocks(model, [CrossJob(s, left) for s, left in zip(stores, lefts)], evals, SUBSETS,
                        cache_bytes=cache_bytes, progress=False)
    right = sum(any(batch is e for e in evals) for batch in recorded)
    assert right == len(evals)
    assert len(recorded) - right == (4 if cache_bytes else 4 * len(evals))
    for store, left in zip(stores, lefts):
        recorded.clear()
        assert len(list((store.folder / "blocks").glob("eval-*.safetensors"))) == len(left) * len(evals)
        assert store.compute_seconds("eval") > 0 and store.compute_seconds("train") == 0
        stored = kernel_blocks(model, left, evals, SUBSETS, store=store, name="eval", progress=False)
        assert not recorded  # every pair was read back
        direct = kernel_blocks(model, left, evals, SUBSETS, progress=False)
        for key in SUBSETS:
            assert torch.equal(stored[key], direct[key])


def test_shared_cross_blocks_compute_only_missing_pairs(setup, tmp_path, monkeypatch):
    model, blocks, evals = setup
    lefts = [blocks[:2], blocks[1:]]
    stores = [KernelStore(tmp_path / f"seed{n}", _meta(model, left)) for n, left in enumerate(lefts)]
    kernel_blocks(model, lefts[0], evals, SUBSETS, store=stores[0], name="eval", progress=False)
    calls = {"n": 0}
    original = blocked.fast_kernel

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(blocked, "fast_kernel", counting)
    shared_cross_blocks(model, [CrossJob(s, left) for s, left in zip(stores, lefts)], evals, SUBSETS,
                        progress=False)
    assert calls["n"] == len(lefts[1]) * len(evals) * len(SUBSETS)


def test_store_refuses_other_inputs(setup, tmp_path):
    model, blocks, evals = setup
    KernelStore(tmp_path, _meta(model, blocks))
    other = dict(_meta(model, blocks), inputs_hash=batches_hash(evals))
    with pytest.raises(UserError, match="holds kernels of other inputs \\(inputs_hash differ\\)"):
        KernelStore(tmp_path, other)
    different_model = load_model("tiny-llama", dtype=torch.float64, seed=5)[0]
    with pytest.raises(UserError, match="model_hash"):
        KernelStore(tmp_path, dict(_meta(model, blocks), model_hash=model_hash(different_model)))
    assert (tmp_path / "meta.json").is_file()


def test_layout_converters_round_trip():
    kernel = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    flat = to_flat(kernel)
    assert flat.shape == (6, 8)
    assert flat[2 * 1 + 1, 2 * 3 + 0] == kernel[1, 3, 1, 0]
    assert torch.equal(from_flat(flat, 2), kernel)
    assert to_lm_kernel_ft(kernel)[1, 0, 3, 1] == kernel[1, 3, 0, 1]
    assert torch.allclose(trace_over_outputs(kernel), kernel[..., 0, 0] + kernel[..., 1, 1])
