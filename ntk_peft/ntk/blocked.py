"""Blocked, resumable kernel computation over lists of prompt batches.

The symmetric kernel of one list of blocks computes each unordered block pair
once (the mirror is a transpose); a cross kernel streams the second list,
recording each of its blocks once. With a `KernelStore`, finished block pairs
are read back instead of recomputed, so an interrupted run resumes and gives
bitwise-identical kernels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ntk_peft.ntk.capture import capture
from ntk_peft.ntk.contract import dense_kernel
from ntk_peft.ntk.fast import fast_kernel
from ntk_peft.ntk.implementations import NtkImplementation
from ntk_peft.ntk.reference import reference_jacobian
from ntk_peft.ntk.store import KernelStore
from ntk_peft.ntk.subsets import parse_subsets, subset_params


@torch.no_grad()
def _fast_kernels(model: nn.Module, names: list[str], subsets: list, left, right, linear_method: str):
    """Subset name -> fast kernel ``[n1, n2, C, C]`` between two captures."""
    return {n: fast_kernel(model, sub, left, right, linear_method).detach() for n, sub in zip(names, subsets)}


def _mirror(kernel: torch.Tensor) -> torch.Tensor:
    """K(b, a) from K(a, b): swap examples and classes."""
    return kernel.permute(1, 0, 3, 2)


def kernel_blocks(model: nn.Module, batches1: list[dict], batches2: list[dict] | None = None,
                  subsets=("full", "row1"), implementation="fast", *, store: KernelStore | None = None,
                  name: str = "kernel", targets="all", seed: int = 0, progress: bool = True,
                  linear_method: str = "auto") -> dict[str, torch.Tensor]:
    """Kernels between every example of ``batches1`` and of ``batches2`` (or batches1).

    Args:
        model: the model.
        batches1, batches2: lists of prompt batches (blocks); None for the
            symmetric kernel of batches1.
        subsets, implementation, targets, seed, linear_method: as `empirical_ntk`.
        store: where finished block pairs are kept (and found on a rerun).
        name: prefix of this kernel's block files in the store (``train``, ``eval``).
        progress: tqdm bar on stderr (blocks done, time left).

    Returns:
        subset -> ``[N1, N2, C, C]`` float64 assembled from the blocks.
    """
    implementation = NtkImplementation.parse(implementation)
    specs = parse_subsets(subsets)
    names = [str(s) for s in specs]
    symmetric = batches2 is None
    right = batches1 if symmetric else batches2
    # Cross kernels stream the right-hand blocks: each is recorded once, used against every left block.
    pairs = [(i, j) for j in range(len(right)) for i in range(len(batches1)) if not symmetric or i <= j]
    resolved = None
    features: dict[tuple[int, int], object] = {}

    def block_features(side: int, index: int):
        nonlocal resolved
        key = (0 if symmetric else side, index)
        if key not in features:
            batch = (batches1 if key[0] == 0 else right)[index]
            if implementation is NtkImplementation.FAST:
                features[key] = capture(model, batch)
            else:
                resolved = resolved or [subset_params(model, s, targets, seed) for s in specs]
                features[key] = [reference_jacobian(sub, batch) for sub in resolved]
        return features[key]

    results: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    todo = [p for p in pairs if store is None or not store.has(name, *p)]
    bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc=f"eNTK {name} blocks", unit="block",
               disable=not progress)
    fast_subsets = None
    for i, j in pairs:
        if store is not None and store.has(name, i, j):
            results[(i, j)] = store.load(name, i, j)
            continue
        started = time.perf_counter()  # the block's compute time includes captures it triggered
        left_f, right_f = block_features(0, i), block_features(1, j)
        if implementation is NtkImplementation.FAST:
            fast_subsets = fast_subsets or [subset_params(model, s, targets, seed) for s in specs]
            kernels = _fast_kernels(model, names, fast_subsets, left_f, right_f, linear_method)
        else:
            kernels = {n: dense_kernel(a, b).detach() for n, a, b in zip(names, left_f, right_f)}
        if store is not None:
            store.save(name, i, j, kernels, seconds=time.perf_counter() - started)
        results[(i, j)] = kernels
        bar.update(1)
        if not symmetric:  # a streamed right-hand block is not needed again once all its pairs are done
            if i == len(batches1) - 1:
                features.pop((1, j), None)
    bar.close()
    return {n: _assemble(results, n, batches1, right, symmetric) for n in names}


@dataclass
class CrossJob:
    """One store's cross kernel ``name`` between its own left blocks and right blocks shared with other jobs."""

    store: KernelStore
    left: list[dict]
    name: str = "eval"


def shared_cross_blocks(model: nn.Module, jobs: list[CrossJob], right: list[dict], subsets=("full", "row1"), *,
                        targets="all", seed: int = 0, linear_method: str = "auto", cache_bytes: int = 8 << 30,
                        progress: bool = True) -> None:
    """Fill several stores' cross kernels against the same right-hand blocks, recording each right block once.

    The seeds of a k-shot study share their evaluation set: computed one seed at a time, every
    evaluation block is recorded once per seed; here it is recorded once for all of them. Block
    files, keys and values are those `kernel_blocks` writes (``<name>-<i>-<j>`` with i a left
    block, j a right block), so `kernel_blocks` then reads every pair back, and an interrupted
    run resumes. Left captures are kept while their memory stays under ``cache_bytes`` and
    recorded again per right block beyond it. Fast implementation only.
    """
    specs = parse_subsets(subsets)
    names = [str(s) for s in specs]
    fast_subsets = [subset_params(model, s, targets, seed) for s in specs]
    todo = {j: [(job, i) for job in jobs for i in range(len(job.left)) if not job.store.has(job.name, i, j)]
            for j in range(len(right))}
    total = sum(len(job.left) for job in jobs) * len(right)
    bar = tqdm(total=total, initial=total - sum(map(len, todo.values())), desc="eNTK shared blocks",
               unit="block", disable=not progress)
    kept: dict[tuple[int, int], object] = {}
    kept_bytes = 0
    for j, pairs in todo.items():
        if not pairs:
            continue
        started = time.perf_counter()
        right_f = capture(model, right[j])
        share = (time.perf_counter() - started) / len(pairs)  # the right capture's time, split over its pairs
        for job, i in pairs:
            started = time.perf_counter()
            key = (id(job), i)
            left_f = kept.get(key)
            if left_f is None:
                left_f = capture(model, job.left[i])
                if kept_bytes + left_f.nbytes <= cache_bytes:
                    kept[key] = left_f
                    kept_bytes += left_f.nbytes
            kernels = _fast_kernels(model, names, fast_subsets, left_f, right_f, linear_method)
            job.store.save(job.name, i, j, kernels, seconds=time.perf_counter() - started + share)
            bar.update(1)
        del right_f
    bar.close()


def _assemble(results, name: str, left: list[dict], right: list[dict], symmetric: bool) -> torch.Tensor:
    sizes1 = [b["input_ids"].shape[0] for b in left]
    sizes2 = [b["input_ids"].shape[0] for b in right]
    rows = []
    for i in range(len(left)):
        row = []
        for j in range(len(right)):
            if symmetric and j < i:
                row.append(_mirror(results[(j, i)][name]))
            else:
                row.append(results[(i, j)][name])
        rows.append(torch.cat(row, dim=1))
    out = torch.cat(rows, dim=0)
    assert out.shape[:2] == (sum(sizes1), sum(sizes2))
    return out
