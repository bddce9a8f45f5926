"""The block scheduler (ordering, sharding, resuming) and the store's identity and damage checks."""

from __future__ import annotations

import json

import pytest
import torch

from ntk_peft import load_model
from ntk_peft.errors import UserError
from ntk_peft.io import write_text
from ntk_peft.ntk import (
    Block,
    KernelStore,
    MemoryStore,
    blocked,
    kernel_blocks,
    kernel_identity,
    model_hash,
    parse_subsets,
    run_blocks,
    shard,
    subset_params,
)
from ntk_peft.ntk.implementations import NtkImplementation
from ntk_peft.tasks import load_split, make_batch, slice_batch

SUBSETS = ("full", "row1", "lora1")


@pytest.fixture(scope="module")
def setup(llama_blocks):
    model, blocks, _ = llama_blocks
    return model, blocks


def test_shard_keeps_groups_together_and_balances_cost_longest_first():
    store = MemoryStore()
    blocks = [Block(store, "k", i, j, cost=c, group=g)
              for i, j, c, g in [(0, 0, 5, "a"), (1, 0, 5, "a"), (0, 1, 9, None), (0, 2, 1, None), (0, 3, 3, "b")]]
    one, two = shard(blocks, 2)
    # group a (10) to rank 0, 9 to rank 1, group b (3) to the lighter rank 1 (9 < 10), 1 to rank 0 (10 < 12)
    assert [b.key for b in one] == [("k", 0, 0), ("k", 1, 0), ("k", 0, 2)]
    assert [b.key for b in two] == [("k", 0, 1), ("k", 0, 3)]
    assert shard(blocks, 1) == [[blocks[0], blocks[1], blocks[2], blocks[4], blocks[3]]]
    assert [len(s) for s in shard(blocks, 8)] == [2, 1, 1, 1, 0, 0, 0, 0]


def test_run_blocks_computes_only_missing_blocks_and_reports_them(tmp_path):
    store = KernelStore(tmp_path, {"model": "none"})
    todo = [Block(store, "k", 0, j, cost=j + 1, keys=("x",)) for j in range(4)]
    store.save("k", 0, 2, {"x": torch.tensor([2.0])})
    computed = []

    def compute(block):
        computed.append(block.j)
        return {"x": torch.tensor([float(block.j)])}

    report = run_blocks(todo, compute, progress=False)
    assert computed == [3, 1, 0]  # most costly first; block 2 was stored
    assert report.found == 1 and report.total == 4 and [k[2] for k in report.computed] == [3, 1, 0]
    assert report.compute_seconds <= report.seconds and report.overhead_seconds >= 0
    assert store.block_metadata("k", 0, 3)["rank"] == "0"
    assert run_blocks(todo, compute, progress=False).computed == []


@pytest.mark.parametrize("damage", ["truncated", "empty", "other tensors"])
def test_a_damaged_block_is_named_in_one_line_and_computed_again(setup, tmp_path, capsys, damage):
    model, blocks = setup
    clean = kernel_blocks(model, blocks, None, SUBSETS, store=KernelStore(tmp_path, {}), name="train", progress=False)
    path = tmp_path / "blocks" / "train-0-1.safetensors"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        from safetensors.torch import save_file

        save_file({"full": torch.zeros(3, 3, 2, 2, dtype=torch.float64)}, str(path))
    capsys.readouterr()
    again = kernel_blocks(model, blocks, None, SUBSETS, store=KernelStore(tmp_path, {}), name="train", progress=False)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "unreadable" in line]
    assert len(warnings) == 1 and str(path) in warnings[0] and "computing it again" in warnings[0]
    assert "Traceback" not in err
    for key in SUBSETS:
        assert torch.equal(again[key], clean[key])


def _claim_error(tmp_path, model, blocks, **changes) -> str:
    options = dict(subsets=SUBSETS, targets="all", seed=0)
    kernel_blocks(model, blocks[:2], None, store=KernelStore(tmp_path, {}), name="train", progress=False, **options)
    options.update(changes)
    with pytest.raises(UserError) as caught:
        kernel_blocks(model, blocks[:2], None, store=KernelStore(tmp_path, {}), name="train", progress=False,
                      **options)
    message = str(caught.value)
    assert "\n" not in message and "'train'" in message and str(tmp_path) in message
    return message


def test_store_refuses_kernels_of_other_targets(setup, tmp_path):
    """The bug this guards: a call with targets='mlp' used to read back the attn kernels silently."""
    model, blocks = setup
    assert "targets" in _claim_error(tmp_path, model, blocks, targets="mlp")


def test_store_refuses_kernels_of_another_seed(setup, tmp_path):
    model, blocks = setup
    message = _claim_error(tmp_path, model, blocks, seed=1)
    assert "seed" in message and "subset_definitions" in message  # lora1's A and the row choice follow the seed


def test_store_refuses_another_subset_definition_under_the_same_name(setup, tmp_path):
    model, blocks = setup
    message = _claim_error(tmp_path, model, blocks, subsets=("full", "row1:random", "lora1"))
    assert "subset_definitions" in message and "subsets" in message


def test_store_refuses_another_kernel_type(setup, tmp_path):
    model, blocks = setup
    store = KernelStore(tmp_path, {})
    resolved = [subset_params(model, s) for s in parse_subsets(SUBSETS)]
    store.claim("train", kernel_identity(model, resolved, blocks, None, NtkImplementation.FAST, "all", 0))
    with pytest.raises(UserError, match=r"\(kernel differ\)"):
        store.claim("train", kernel_identity(model, resolved, blocks, None, NtkImplementation.FAST, "all", 0,
                                             kernel="signgd"))
    store.claim("sign-train", kernel_identity(model, resolved, blocks, None, NtkImplementation.FAST, "all", 0,
                                              kernel="signgd"))  # another name is fine
    assert set(json.loads((tmp_path / "meta.json").read_text())["kernels"]) == {"train", "sign-train"}


def test_store_refuses_other_inputs_dtype_and_implementation(setup, tmp_path):
    model, blocks = setup
    kernel_blocks(model, blocks[:2], None, SUBSETS, store=KernelStore(tmp_path, {}), name="train", progress=False)
    with pytest.raises(UserError, match="left_inputs"):
        kernel_blocks(model, blocks[1:], None, SUBSETS, store=KernelStore(tmp_path, {}), name="train", progress=False)
    with pytest.raises(UserError, match="implementation"):
        kernel_blocks(model, blocks[:2], None, SUBSETS, "reference", store=KernelStore(tmp_path, {}), name="train",
                      progress=False)
    single = load_model("tiny-llama", dtype=torch.float32, seed=4)[0]
    with pytest.raises(UserError, match="dtype"):
        kernel_blocks(single, blocks[:2], None, SUBSETS, store=KernelStore(tmp_path, {}), name="train",
                      progress=False)


def test_model_hash_is_remembered_until_a_parameter_changes():
    model = load_model("tiny-llama", dtype=torch.float64, seed=4)[0]
    first = model_hash(model)
    assert model_hash(model) == first
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # in place: the version counter moves
    assert model_hash(model) != first


def test_capture_cache_keeps_the_first_values_that_fit_and_holds_one_more_per_slot():
    class Sized:
        def __init__(self, nbytes):
            self.nbytes = nbytes

    made = []
    cache = blocked.CaptureCache(budget=10)
    get = lambda key, size, slot=None: cache.record(key, lambda: made.append(key) or Sized(size), slot)  # noqa: E731
    get("a", 4), get("b", 4), get("a", 4)
    assert made == ["a", "b"] and list(cache.kept) == ["a", "b"] and cache.bytes == 8
    get("c", 4, "right"), get("c", 4, "right")  # over the budget: held in its slot, made once
    get("d", 4, "left"), get("c", 4, "right")  # another slot does not disturb it
    assert made == ["a", "b", "c", "d"] and list(cache.kept) == ["a", "b"]
    get("e", 4, "right"), get("c", 4, "right")  # the slot holds one value
    assert made == ["a", "b", "c", "d", "e", "c"]
    for _ in range(3):  # cycling over more blocks than fit: the kept ones always hit
        for key in "abd":
            get(key, 4, "left")
    assert made.count("a") == 1 and made.count("b") == 1


def test_atomic_write_uses_unique_temporary_files_and_keeps_the_old_file_on_failure(tmp_path):
    from ntk_peft.io import atomic_path

    target = tmp_path / "file.txt"
    write_text(target, "old")
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == tmp_path
        first.write_text("one")
        second.write_text("two")
    assert target.read_text() == "one"  # the outer context renames last
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_kernel_jobs_in_one_pass_equal_separate_calls_and_share_captures(setup, tmp_path, monkeypatch):
    """A seed's train and dev kernels in one pass: the train blocks are recorded once for both."""
    from ntk_peft.ntk import KernelJob, run_kernel_jobs

    model, blocks = setup
    train, dev = blocks[:2], blocks[2:]
    separate = {"train": kernel_blocks(model, train, None, SUBSETS, progress=False),
                "dev": kernel_blocks(model, train, dev, SUBSETS, progress=False)}
    recorded = []
    original = blocked.capture
    monkeypatch.setattr(blocked, "capture", lambda m, batch: recorded.append(batch) or original(m, batch))
    store = KernelStore(tmp_path, {})
    jobs = [KernelJob(model, train, None, SUBSETS, store=store, name="train"),
            KernelJob(model, train, dev, SUBSETS, store=store, name="dev")]
    run_kernel_jobs(jobs, progress=False)
    sizing, *blocks_recorded = recorded  # one prompt sizes the panels, then every block once
    assert blocked.batch_size(sizing) == 1
    assert sorted(map(id, blocks_recorded)) == sorted(map(id, [*train, *dev]))
    for job in jobs:
        for key, value in job.result().items():
            assert torch.equal(value, separate[job.name][key])


def test_store_refuses_a_run_of_another_k_or_other_train_and_dev_prompts(tmp_path):
    KernelStore(tmp_path, {"k": 16, "train_dev_inputs_hash": "a"})
    with pytest.raises(UserError, match=r"\(k differ\)"):
        KernelStore(tmp_path, {"k": 64, "train_dev_inputs_hash": "a"})
    with pytest.raises(UserError, match=r"\(train_dev_inputs_hash differ\)"):
        KernelStore(tmp_path, {"k": 16, "train_dev_inputs_hash": "b"})


def test_capture_cache_finds_a_value_held_in_another_slot_and_holds_it_there_too():
    made = []
    cache = blocked.CaptureCache(budget=0)
    get = lambda key, slot: cache.record(key, lambda: made.append(key) or [torch.zeros(1)], slot)  # noqa: E731
    first = get("a", "right")
    assert get("a", ("left", 1)) is first and made == ["a"]  # found in the right slot, not made again
    get("b", "right")  # the right slot moves on; the left slot still holds "a"
    assert get("a", ("left", 1)) is first and made == ["a", "b"]
    alone = blocked.CaptureCache(budget=0, share_slots=False)  # the grouping before panels: each slot on its own
    alone.record("a", lambda: made.append("a2") or [torch.zeros(1)], "right")
    alone.record("a", lambda: made.append("a3") or [torch.zeros(1)], "left")
    assert made[-2:] == ["a2", "a3"]


def test_panel_width_is_one_plus_the_captures_that_fit_the_budget_within_the_blocks_and_ranks():
    gib = 1 << 30
    assert blocked.panel_width(20, 1.7e9, 4 * gib) == 3  # two fit the budget, one more held
    assert blocked.panel_width(20, 8 * gib, 4 * gib) == 1  # none fit: one left block at a time
    assert blocked.panel_width(5, 0.1 * gib, 4 * gib) == 5  # everything fits: one panel
    assert blocked.panel_width(20, 0.1 * gib, 4 * gib, ranks=2) == 5  # every rank gets panels to take
    assert blocked.panel_width(3, 0.1 * gib, 4 * gib, ranks=4) == 1


@pytest.fixture(scope="module")
def six_blocks():
    """tiny-llama (float64, seed 4), six SST-2 train blocks of 2 prompts and two dev blocks, and the
    reference-implementation (autograd Jacobian) train and dev kernels."""
    model, tok = load_model("tiny-llama", dtype=torch.float64, seed=4)
    examples = load_split("sst2").train
    train = [make_batch(tok, "sst2", examples[i:i + 2]) for i in range(0, 12, 2)]
    dev = [make_batch(tok, "sst2", examples[i:i + 2]) for i in range(20, 24, 2)]
    reference = {"train": kernel_blocks(model, train, None, SUBSETS, "reference", progress=False),
                 "dev": kernel_blocks(model, train, dev, SUBSETS, "reference", progress=False)}
    return model, train, dev, reference


@pytest.mark.parametrize("width", [6, 2, 1])
def test_panels_record_each_left_block_once_per_panel_and_give_the_reference_kernels(six_blocks, width,
                                                                                     monkeypatch):
    """Train and dev kernels sharing panels: after one prompt recorded to size the panels, a panel
    records its left blocks, each train block past it and each dev block once, holding at most
    width + 1 captures; the kernels are the autograd reference's, whatever the width."""
    from ntk_peft.ntk import KernelJob, run_kernel_jobs

    model, train, dev, reference = six_blocks
    largest = max(blocked.tokens(b) for b in [*train, *dev])
    prompt = slice_batch(train[0], [0])  # `run_kernel_jobs` sizes a capture from one prompt's
    one = blocked.capture(model, prompt).nbytes / blocked.tokens(prompt) * largest
    budget = 8 << 30 if width == len(train) else int(one * (width - 0.5))  # room for width - 1 beyond the two in use
    jobs = [KernelJob(model, train, None, SUBSETS, name="train"), KernelJob(model, train, dev, SUBSETS, name="dev")]
    recorded, most_held = [], []
    original = blocked.capture

    def counting(m, batch):
        most_held.append(len({id(value) for _, value in jobs[0].cache.slots.values()}) + 1)
        recorded.append(batch)
        return original(m, batch)

    monkeypatch.setattr(blocked, "capture", counting)
    run_kernel_jobs(jobs, progress=False, cache_bytes=budget)
    assert [job.width for job in jobs] == [width, width]
    past = [max(0, len(train) - start - width) for start in range(0, len(train), width)]
    assert recorded[0] is not train[0] and len(recorded) == 1 + len(train) + sum(past) + len(dev) * len(past)
    assert max(most_held) <= width + 1
    for job in jobs:
        for key, value in job.result().items():
            torch.testing.assert_close(value, reference[job.name][key], rtol=1e-10, atol=1e-12)


def test_a_rerun_with_every_pair_stored_records_nothing_and_holds_one_block(six_blocks, tmp_path, monkeypatch):
    """No sizing capture when nothing is missing; panels of one, so a block found unreadable then is
    recomputed without holding the whole list."""
    from ntk_peft.ntk import KernelJob, run_kernel_jobs

    model, train, _, reference = six_blocks
    run_kernel_jobs([KernelJob(model, train, None, SUBSETS, store=KernelStore(tmp_path, {}), name="train")],
                    progress=False)
    recorded = []
    original = blocked.capture
    monkeypatch.setattr(blocked, "capture", lambda m, batch: recorded.append(batch) or original(m, batch))
    again = KernelJob(model, train, None, SUBSETS, store=KernelStore(tmp_path, {}), name="train")
    run_kernel_jobs([again], progress=False)
    assert recorded == [] and again.width == 1
    for key, value in again.result().items():
        torch.testing.assert_close(value, reference["train"][key], rtol=1e-10, atol=1e-12)
