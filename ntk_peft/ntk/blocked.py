"""Blocked, resumable kernel computation over lists of prompt batches.

The symmetric kernel of one list of blocks computes each unordered block pair
once (the mirror is a transpose); a cross kernel computes every pair. The
pairs go through `run_blocks` (ordered by cost, sharded over torch.distributed
ranks, written atomically), so an interrupted run resumes and gives
bitwise-identical kernels, and P ranks give the kernels of one process.
Each call records what its kernel is of in the store (`kernel_identity`) and
refuses a store whose kernel of that name was computed otherwise.

Recording a block (one forward and C backward passes) costs about as much as
one block pair's kernels, and a block's capture is large (2.0-2.4 GB for 16
SST-5 prompts on SmolLM2-135M), so the pairs go in panels: a panel of left blocks is
held while the right blocks pass once (`panel_width`). With B blocks and W
held, a symmetric kernel records about B/2 + B²/(2W) blocks instead of one per
pair.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from ntk_peft.ntk import distributed
from ntk_peft.ntk.capture import Capture, capture
from ntk_peft.ntk.contract import dense_kernel
from ntk_peft.ntk.fast import fast_kernel
from ntk_peft.ntk.implementations import NtkImplementation
from ntk_peft.ntk.kernel_types import KernelType, apply_transform, flipped, output_map
from ntk_peft.ntk.outputs import OutputFunction, batch_size, outputs_name
from ntk_peft.ntk.reference import reference_jacobian
from ntk_peft.ntk.schedule import Block, run_blocks
from ntk_peft.ntk.store import KernelStore, MemoryStore, batches_hash, model_hash, tensor_hash
from ntk_peft.ntk.subsets import SubsetParams, parse_subsets, subset_params
from ntk_peft.tasks.batch import slice_batch, to_device

# Memory for recorded blocks held beyond the two a block pair uses (see `panel_width`).
DEFAULT_CACHE_BYTES = 4 << 30
KERNEL_TYPE = "ntk"
FLIP = "~"  # suffix of an asymmetric kernel's flipped part in a block: ⟨T₂(g(x)), T₁(g(x'))⟩


class CaptureCache:
    """Recorded blocks kept for reuse, first come first kept, up to ``budget`` bytes.

    ``record(key, make, slot)`` returns a kept value, or a value held in any
    slot (then held in ``slot`` too, so that it outlives the other slot's next
    value), or calls ``make()``. A new value is kept if it fits in what is left
    of the budget; kept values are never evicted (blocks are visited in cycles,
    where least-recently-used eviction would miss every time). A value that
    does not fit is held in ``slot`` (one value per slot name) until the next
    value for that slot, so a right-hand block is recorded once for all the
    pairs of its group. With no budget, only the slots hold values: a kernel
    job's panel of left blocks, one slot each, and its right block.
    ``share_slots=False`` looks in ``slot`` only (as before panels; kept for
    ``benchmarks/bench_panels.py``'s baseline).
    """

    def __init__(self, budget: int = DEFAULT_CACHE_BYTES, share_slots: bool = True):
        self.budget = budget
        self.share_slots = share_slots
        self.kept: dict = {}
        self.slots: dict = {}
        self.bytes = 0

    def record(self, key, make, slot=None):
        if key in self.kept:
            return self.kept[key]
        held = self.slots.get(slot)
        if held is not None and held[0] == key:
            return held[1]
        self.slots.pop(slot, None)  # free the held value before making the next
        shared = self.slots.values() if self.share_slots else ()
        elsewhere = next((value for other, value in shared if other == key), None)
        if elsewhere is not None:
            if slot is not None:
                self.slots[slot] = (key, elsewhere)
            return elsewhere
        value = make()
        size = _nbytes(value)
        if self.bytes + size <= self.budget:
            self.kept[key] = value
            self.bytes += size
        elif slot is not None:
            self.slots[slot] = (key, value)
        return value


def _nbytes(value) -> int:
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    return sum(t.numel() * t.element_size() for t in value)  # a list of reference Jacobians


def tokens(batch: dict) -> int:
    """Real (non-pad) tokens of a prompt block (its examples for other batches): the cost unit of the scheduler."""
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch_size(batch)


def subset_fingerprint(sub: SubsetParams) -> str:
    """What defines a resolved subset: its spec, parameter names and shapes, and for adapter subsets
    the adapter's initial tensors and index buffers (chosen rows, LoRA's A, random masks)."""
    digest = hashlib.sha256(str(sub.spec).encode())
    for name, p in sub.params.items():
        digest.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
    if sub.handle is not None and sub.spec.kind not in ("full", "linear"):
        state = sorted(sub.handle.state_dict().items())
        digest.update(tensor_hash([t for _, t in state]).encode())
    return digest.hexdigest()


def kernel_identity(model: nn.Module, resolved: list[SubsetParams], batches1: list[dict], batches2,
                    implementation: NtkImplementation, targets, seed: int, kernel: str = KERNEL_TYPE,
                    output: str = "labels", outputs: OutputFunction | None = None) -> dict:
    """What a blocked kernel is computed from, as recorded in its store (`KernelStore.claim`)."""
    dtype = next(model.parameters()).dtype
    extra = {} if output == "labels" else {"output": output}  # stores of label-logit kernels read as before
    if outputs is not None:
        extra["outputs"] = outputs_name(outputs)
    return {**extra,
        "kernel": kernel,
        "subsets": [str(s.spec) for s in resolved],
        "subset_definitions": {str(s.spec): subset_fingerprint(s) for s in resolved},
        "targets": targets if isinstance(targets, str) else list(targets),
        "seed": seed,
        "implementation": implementation.value,
        "dtype": str(dtype).replace("torch.", ""),
        "model_hash": model_hash(model),
        "left_inputs": batches_hash(batches1),
        "left_blocks": [batch_size(b) for b in batches1],
        "right_inputs": None if batches2 is None else batches_hash(batches2),
        "right_blocks": None if batches2 is None else [batch_size(b) for b in batches2],
    }


class BlockKernels:
    """How one block pair's kernels are computed: subsets, kernel type, output, implementation.

    An asymmetric kernel type also stores, under ``<subset>~``, its flipped part ⟨T₂(g(x)), T₁(g(x'))⟩
    between the same two blocks: the mirrored block pair's kernel, so a symmetric job still computes
    each unordered pair once and the kernel of the other orientation (dev×train from train×dev) is
    read back without another pass.
    """

    def __init__(self, model: nn.Module, names: list[str], resolved: list[SubsetParams],
                 implementation: NtkImplementation, kernel: KernelType, output: str, linear_method: str):
        self.model, self.names, self.resolved = model, names, resolved
        self.implementation, self.kernel, self.output, self.linear_method = (implementation, kernel, output,
                                                                             linear_method)
        self.pairs = [kernel.transforms] if kernel.symmetric else [kernel.transforms, flipped(kernel.transforms)]
        self.keys = tuple(names) if kernel.symmetric else tuple(k for n in names for k in (n, n + FLIP))

    def _mixed(self, cap: Capture) -> Capture:
        return cap.with_outputs(output_map(self.output, cap.logits.shape[1]))

    @torch.no_grad()
    def compute(self, left, right) -> dict[str, torch.Tensor]:
        """Keys -> ``[n1, n2, O, O]`` float64 from two captures (fast) or reference Jacobian lists."""
        out = {}
        for position, (name, sub) in enumerate(zip(self.names, self.resolved)):
            if self.implementation is NtkImplementation.FAST:
                parts = fast_kernel(self.model, sub, self._mixed(left), self._mixed(right), self.linear_method,
                                    self.kernel, with_flip=not self.kernel.symmetric)
                parts = parts if isinstance(parts, tuple) else (parts,)
            else:
                jac1, jac2 = self._reference_mixed(left[position]), self._reference_mixed(right[position])
                parts = [dense_kernel(apply_transform(t1, jac1), apply_transform(t2, jac2)) for t1, t2 in self.pairs]
            out[name] = parts[0].detach()
            if len(parts) > 1:
                out[name + FLIP] = parts[1].detach()
        return out

    def _reference_mixed(self, jac: torch.Tensor) -> torch.Tensor:
        head_map = output_map(self.output, jac.shape[1])
        return jac if head_map is None else torch.einsum("oc,ncp->nop", head_map.to(jac.dtype), jac)


def _mirror(kernel: torch.Tensor) -> torch.Tensor:
    """K(b, a) from K(a, b): swap examples and classes."""
    return kernel.permute(1, 0, 3, 2)


class KernelJob:
    """One blocked kernel: its identity claimed in its store, its block pairs, and how to compute one.

    `kernel_blocks` runs one job; `run_kernel_jobs` runs several in one scheduler pass (e.g. the
    train and dev kernels of every seed), so that many ranks have enough blocks to share, and jobs
    that read the same left blocks (a seed's train blocks, in its train and dev kernels) share their
    panels: each panel's left blocks are recorded once for both. Arguments as `kernel_blocks`.
    """

    def __init__(self, model: nn.Module, batches1: list[dict], batches2: list[dict] | None = None,
                 subsets=("full", "row1"), implementation="fast", *, store: KernelStore | None = None,
                 name: str = "kernel", targets="all", seed: int = 0, linear_method: str = "auto",
                 kernel: str | KernelType = KERNEL_TYPE, output: str = "labels",
                 outputs: OutputFunction | None = None, calibration=None):
        self.model, self.left, self.linear_method, self.outputs = model, batches1, linear_method, outputs
        self.implementation = NtkImplementation.parse(implementation)
        self.kernel = KernelType.parse(kernel)
        output_map(output, 2)  # an unknown output fails here
        specs = parse_subsets(subsets)
        self.names = [str(s) for s in specs]
        self.symmetric = batches2 is None
        self.right = batches1 if self.symmetric else batches2
        self.resolved = [subset_params(model, s, targets, seed, calibration) for s in specs]
        self.store = MemoryStore() if store is None else store
        self.name = name
        self.store.claim(name, kernel_identity(model, self.resolved, batches1, batches2, self.implementation,
                                               targets, seed, self.kernel.value, output, outputs))
        self.cache = CaptureCache(0)
        self.width = max(1, len(batches1))  # left blocks per panel (set by `run_kernel_jobs`)
        self.kernels = BlockKernels(model, self.names, self.resolved, self.implementation, self.kernel, output,
                                    linear_method)

    def blocks(self, tag=0) -> list[Block]:
        """Every block pair, in panels: the pairs of ``width`` consecutive left blocks form a group,
        ordered by right block, so a panel's left captures are held while each right block is
        recorded once. ``tag`` tells the panels of different left-block lists apart (the same on
        every rank); jobs with the same left blocks and tag share their panels."""
        return [Block(self.store, self.name, i, j, tokens(self.left[i]) * tokens(self.right[j]),
                      group=(tag, i // self.width), keys=self.kernels.keys)
                for j in range(len(self.right)) for i in range(len(self.left)) if not self.symmetric or i <= j]

    def panel_key(self) -> tuple:
        """Jobs with equal keys record the same left captures (and may share panels)."""
        if self.implementation is NtkImplementation.FAST:
            return id(self.left), id(self.outputs), id(self.model)
        return (id(self),)  # reference Jacobians depend on the job's subsets

    def _features(self, side: int, index: int):
        batch = (self.left if side == 0 or self.symmetric else self.right)[index]
        slot = "right" if side == 1 else ("left", index % self.width)
        if self.implementation is NtkImplementation.FAST:  # a capture depends on the model, prompts and f only
            return self.cache.record((id(batch), id(self.outputs)), lambda: self.record(batch), slot)
        return self.cache.record((id(self), id(batch)), lambda: self.record(batch), slot)

    def record(self, batch: dict):
        """What a block pair reads of one block: its capture (fast) or its reference Jacobians per subset."""
        on_device = to_device(batch, self.model)
        if self.implementation is NtkImplementation.FAST:
            return (capture(self.model, on_device) if self.outputs is None
                    else capture(self.model, on_device, outputs=self.outputs))
        return [reference_jacobian(sub, on_device, outputs=self.outputs) for sub in self.resolved]

    def compute(self, block: Block) -> dict[str, torch.Tensor]:
        return self.kernels.compute(self._features(0, block.i), self._features(1, block.j))

    def result(self) -> dict[str, torch.Tensor]:
        """subset -> ``[N1, N2, O, O]`` float64, assembled from the stored blocks. An asymmetric kernel
        type adds ``<subset>~``: ``[N1, N2, O, O]`` with K(x'_j, x_i) = ``result[subset~][i, j]``
        transposed over outputs (so ``permute(1, 0, 3, 2)`` is the kernel of the other orientation)."""
        results = {(b.i, b.j): self.store.load(*b.key) for b in self.blocks()}
        return {key: _assemble(results, key, self.left, self.right, self.symmetric) for key in self.kernels.keys}


def panel_width(blocks: int, capture_bytes: float, budget: int, ranks: int = 1) -> int:
    """Left blocks held per panel: 1 + ``budget`` // ``capture_bytes`` (the largest block's capture),
    at most ``blocks``; with several ranks at most blocks // (2·ranks), so every rank has panels to take.

    A panel holds its width in left captures and one right capture at a time: at most ``budget`` plus
    two captures.
    """
    width = blocks if capture_bytes <= 0 else 1 + int(budget // capture_bytes)
    if ranks > 1:
        width = min(width, max(1, blocks // (2 * ranks)))
    return max(1, min(blocks, width))


def record_bytes_per_unit(record, batch: dict, size=tokens) -> float:
    """Bytes ``record(batch)`` takes per unit of ``size`` (real tokens), from the block's first prompt alone."""
    one = slice_batch(batch, [0])
    return _nbytes(record(one)) / max(1, size(one))


def _panel_widths(jobs: list[KernelJob], tags: list[int], budget: int) -> list[int]:
    """Each tag's panel width, decided on rank 0 and broadcast. A capture's memory grows with the real
    tokens it holds (with the examples, for reference Jacobians): one prompt of the tag's first left
    block is recorded, and scaled to the largest block. A tag with one left block, or with every pair
    stored already, records nothing and takes panels of one."""
    widths = None
    if distributed.is_main():
        widths = []
        for tag in range(max(tags, default=-1) + 1):
            members = [job for job, t in zip(jobs, tags) if t == tag]
            first = members[0]
            missing = any(not b.store.has(*b.key) for job in members for b in job.blocks(tag))
            if len(first.left) <= 1 or not missing:  # nothing to hold; a block found unreadable later is
                widths.append(1)  # computed again with one left block held, whatever its size
                continue
            size = batch_size if first.implementation is NtkImplementation.REFERENCE else tokens
            per_unit = record_bytes_per_unit(first.record, first.left[0], size)
            largest = max(size(b) for job in members for b in (*job.left, *job.right))
            widths.append(panel_width(len(first.left), per_unit * largest, budget, distributed.world_size()))
    return distributed.broadcast(widths)


def run_kernel_jobs(jobs: list[KernelJob], *, progress: bool = True, desc: str = "eNTK blocks",
                    cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
    """Compute every missing block of several kernels in one `run_blocks` pass; read the kernels back
    with `KernelJob.result`.

    Jobs with the same left blocks share panels (`KernelJob.blocks`); a panel is 1 + ``cache_bytes`` //
    (the largest capture) left blocks wide (`panel_width`), so about ``cache_bytes`` plus two captures
    are held at a time.
    """
    cache = CaptureCache(0)  # slots only: a panel's left blocks and the right block in use
    keys: dict[tuple, int] = {}
    tags = [keys.setdefault(job.panel_key(), len(keys)) for job in jobs]
    for job in jobs:
        job.cache = cache
    widths = _panel_widths(jobs, tags, cache_bytes)
    owners: dict[int, KernelJob] = {}
    todo = []
    for tag, job in zip(tags, jobs):
        job.width = widths[tag]
        for block in job.blocks(tag):
            owners[id(block)] = job
            todo.append(block)
    run_blocks(todo, lambda block: owners[id(block)].compute(block), progress=progress, desc=desc)
    for job in jobs:
        job.cache = CaptureCache(0)  # free the captures


def kernel_blocks(model: nn.Module, batches1: list[dict], batches2: list[dict] | None = None,
                  subsets=("full", "row1"), implementation="fast", *, store: KernelStore | None = None,
                  name: str = "kernel", targets="all", seed: int = 0, progress: bool = True,
                  linear_method: str = "auto", cache_bytes: int = DEFAULT_CACHE_BYTES,
                  kernel: str | KernelType = KERNEL_TYPE, output: str = "labels",
                  outputs: OutputFunction | None = None, calibration=None) -> dict[str, torch.Tensor]:
    """Kernels between every example of ``batches1`` and of ``batches2`` (or batches1).

    Inside an initialised torch.distributed process group the block pairs are
    shared out over the ranks and every rank returns the whole kernel; the
    store's folder must then be visible to every rank (without a store, the
    blocks are exchanged through the process group).

    Args:
        model: the model.
        batches1, batches2: lists of prompt batches (blocks); None for the
            symmetric kernel of batches1.
        subsets, implementation, targets, seed, linear_method, kernel, output, outputs, calibration: as
            `empirical_ntk`.
        store: where finished block pairs are kept (and found on a rerun);
            the kernel's identity is recorded there under ``name``.
        name: this kernel's name in the store (``train``, ``eval`` ...).
        progress: tqdm bar on stderr (blocks done, time left).
        cache_bytes: memory for recorded blocks held beyond the two a pair uses: panels of
            1 + cache_bytes // (the largest block's capture) left blocks (`panel_width`).

    Returns:
        subset -> ``[N1, N2, O, O]`` float64 assembled from the blocks (``<subset>~`` too for an
        asymmetric kernel type; see `KernelJob.result`).

    Raises:
        UserError: the store holds a kernel ``name`` of other inputs.
    """
    job = KernelJob(model, batches1, batches2, subsets, implementation, store=store, name=name, targets=targets,
                    seed=seed, linear_method=linear_method, kernel=kernel, output=output, outputs=outputs,
                    calibration=calibration)
    run_kernel_jobs([job], progress=progress, desc=f"eNTK {name} blocks", cache_bytes=cache_bytes)
    return job.result()


@dataclass
class CrossJob:
    """One store's cross kernel ``name`` between its own left blocks and right blocks shared with other jobs."""

    store: KernelStore
    left: list[dict]
    name: str = "eval"


def shared_cross_blocks(model: nn.Module, jobs: list[CrossJob], right: list[dict], subsets=("full", "row1"), *,
                        targets="all", seed: int = 0, linear_method: str = "auto",
                        cache_bytes: int = 8 << 30, progress: bool = True, kernel: str | KernelType = KERNEL_TYPE,
                        output: str = "labels", calibration=None) -> None:
    """Fill several stores' cross kernels against the same right-hand blocks, recording each right block once.

    The seeds of a k-shot study share their evaluation set: computed one seed at a time, every
    evaluation block is recorded once per seed; here it is recorded once for all of them (per rank
    that handles it: a right block and all its pairs go to one rank). Block files, keys, values and
    identities are those `kernel_blocks` writes (``<name>-<i>-<j>`` with i a left block, j a right
    block), so `kernel_blocks` then reads every pair back, and an interrupted run resumes. Left
    captures are kept while their memory stays under ``cache_bytes`` and recorded again beyond it.
    Fast implementation only.
    """
    specs = parse_subsets(subsets)
    names = [str(s) for s in specs]
    resolved = [subset_params(model, s, targets, seed, calibration) for s in specs]
    kernel = KernelType.parse(kernel)
    kernels = BlockKernels(model, names, resolved, NtkImplementation.FAST, kernel, output, linear_method)
    for job in jobs:
        job.store.claim(job.name, kernel_identity(model, resolved, job.left, right, NtkImplementation.FAST,
                                                  targets, seed, kernel.value, output))
    jobs_by_store = {id(job.store): k for k, job in enumerate(jobs)}
    cache = CaptureCache(cache_bytes)
    right_slot = CaptureCache(0)  # right blocks are not needed after their group: never kept, only held

    def compute(block: Block) -> dict[str, torch.Tensor]:
        job = jobs_by_store[id(block.store)]
        right_f = right_slot.record(block.j, lambda: capture(model, to_device(right[block.j], model)), "right")
        left_f = cache.record((job, block.i), lambda: capture(model, to_device(jobs[job].left[block.i], model)),
                              "left")
        return kernels.compute(left_f, right_f)

    todo = [Block(job.store, job.name, i, j, tokens(job.left[i]) * tokens(right[j]), group=j, keys=kernels.keys)
            for j in range(len(right)) for job in jobs for i in range(len(job.left))]
    run_blocks(todo, compute, progress=progress, desc="eNTK shared blocks")


def _flip_key(key: str) -> str:
    return key[: -len(FLIP)] if key.endswith(FLIP) else key + FLIP


def _assemble(results, name: str, left: list[dict], right: list[dict], symmetric: bool) -> torch.Tensor:
    sizes1 = [batch_size(b) for b in left]
    sizes2 = [batch_size(b) for b in right]
    rows = []
    for i in range(len(left)):
        row = []
        for j in range(len(right)):
            if symmetric and j < i:  # the mirrored pair: K(b, a) from K(a, b), or an asymmetric kernel's flip
                mirrored = results[(j, i)]
                row.append(_mirror(mirrored.get(_flip_key(name), mirrored[name])))
            else:
                row.append(results[(i, j)][name])
        rows.append(torch.cat(row, dim=1))
    out = torch.cat(rows, dim=0)
    assert out.shape[:2] == (sum(sizes1), sum(sizes2))
    return out
