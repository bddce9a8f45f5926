"""One block scheduler for every blocked loop: kernels, shared eval blocks, eval projections.

`run_blocks(todo, compute)` lists the blocks of ``todo`` that their stores do
not hold yet (an unreadable block counts as missing), orders them by cost,
shards them over the ranks of the torch.distributed process group (if any),
computes this rank's share with ``compute`` and writes each block atomically
into its store, then waits for the other ranks. Parallelism stays outside the
kernel code, as neural-tangents keeps ``nt.batch`` outside its kernels: the
same ``compute`` runs in one process or in many.

Sharding is static and deterministic: rank 0 lists the missing blocks and
broadcasts the list; blocks of one ``group`` (those sharing a recorded
capture) stay together on one rank, consecutively; groups go, most costly
first, to the rank with the least work so far (longest-processing-time
first). Every rank must pass the same ``todo`` in the same order.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ntk_peft.errors import UserError
from ntk_peft.ntk import distributed


@dataclass(frozen=True, eq=False)
class Block:
    """One unit of work: the tensors of block ``(name, i, j)`` of ``store``.

    Attributes:
        store: a `KernelStore` or `MemoryStore`.
        name, i, j: the block's key in the store (left block i, right block j).
        cost: relative cost used for ordering and sharding (e.g. tokens_i·tokens_j).
        group: blocks with the same group run on one rank one after another
            (they share a recorded capture); None: a group of its own.
        keys: tensor names a complete block holds (checked when a stored block is found).
    """

    store: object
    name: str
    i: int
    j: int
    cost: float = 1.0
    group: Hashable = None
    keys: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, int, int]:
        return self.name, self.i, self.j


@dataclass
class RunReport:
    """What one rank's `run_blocks` did.

    Attributes:
        total: blocks in ``todo``.
        found: blocks already stored (readable) before the run.
        computed: keys of the blocks this rank computed.
        compute_seconds: time inside ``compute`` on this rank.
        seconds: wall time of the whole call on this rank (including waiting for others).
    """

    total: int
    found: int
    computed: list[tuple] = field(default_factory=list)
    compute_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def overhead_seconds(self) -> float:
        """Time spent outside ``compute`` (listing, ordering, writing, waiting)."""
        return self.seconds - self.compute_seconds


def shard(blocks: Sequence[Block], ranks: int) -> list[list[Block]]:
    """Split blocks over ``ranks``: whole groups, most costly first, each to the least loaded rank.

    Within a rank, groups keep that order and blocks keep their order in the
    group. Deterministic: ties go to the lower rank and to earlier groups.
    """
    groups: dict[Hashable, list[Block]] = {}
    for index, block in enumerate(blocks):
        groups.setdefault(("own", index) if block.group is None else ("group", block.group), []).append(block)
    ordered = sorted(groups.values(), key=lambda members: -sum(b.cost for b in members))  # stable: ties keep order
    loads = [0.0] * ranks
    out: list[list[Block]] = [[] for _ in range(ranks)]
    for members in ordered:
        target = min(range(ranks), key=lambda r: (loads[r], r))
        out[target].extend(members)
        loads[target] += sum(b.cost for b in members)
    return out


def _store_ids(blocks: Sequence[Block]) -> dict[int, int]:
    """id(store) -> position of the store's first appearance (the same on every rank)."""
    ids: dict[int, int] = {}
    for block in blocks:
        ids.setdefault(id(block.store), len(ids))
    return ids


def run_blocks(todo: Sequence[Block], compute: Callable[[Block], dict[str, torch.Tensor]], *,
               progress: bool = True, desc: str = "blocks") -> RunReport:
    """Compute and store every block of ``todo`` that is not stored yet, over all ranks.

    Args:
        todo: every block the caller needs (stored or not), the same list on every rank.
        compute: block -> tensor name -> tensor (any device; stored on the CPU).
        progress: tqdm bar on stderr (rank 0 only: the blocks found stored, then rank 0's share).
        desc: the bar's label.

    Returns:
        this rank's `RunReport`. On return every block of ``todo`` is in its store
        on every rank (file stores are shared through the filesystem, memory
        stores are exchanged through the process group).
    """
    started = time.perf_counter()
    stores = _store_ids(todo)
    by_key = {(stores[id(b.store)], *b.key): b for b in todo}
    if len(by_key) != len(todo):
        raise ValueError("run_blocks: a block appears twice in todo")
    missing = None
    if distributed.is_main():
        missing = [(stores[id(b.store)], *b.key) for b in todo if not b.store.readable(*b.key, keys=b.keys)]
    missing = distributed.broadcast(missing)
    if any(key not in by_key for key in missing):
        raise UserError("the ranks were given different work (their block lists differ); every rank must run "
                        "the same command on the same data")
    ranks = distributed.world_size()
    mine = shard([by_key[key] for key in missing], ranks)[distributed.rank()]
    report = RunReport(total=len(todo), found=len(todo) - len(missing))
    if progress and distributed.is_main() and 0 < report.found < report.total:  # a resumed run says what it kept
        tqdm.write(f"{desc}: {report.found} of {report.total} found stored (resuming), {len(missing)} to compute",
                   file=sys.stderr)
    label = desc if ranks == 1 else f"{desc} (rank 0 of {ranks})"
    bar = tqdm(total=report.found + len(mine), initial=report.found, desc=label, unit="block",
               disable=not progress or not distributed.is_main())  # blocks found in the store count as done
    for block in mine:
        begun = time.perf_counter()
        tensors = {k: v.detach().cpu() for k, v in compute(block).items()}
        seconds = time.perf_counter() - begun
        block.store.save(*block.key, tensors, seconds=seconds, rank=distributed.rank())
        report.compute_seconds += seconds
        report.computed.append(block.key)
        bar.update(1)
    bar.close()
    _exchange_memory_blocks(todo, stores, mine)
    distributed.barrier()
    if distributed.is_main():
        unseen = [b for b in todo if not b.store.has(*b.key)]
        if unseen:
            first = unseen[0]
            where = getattr(first.store, "block_path", lambda *k: k)(*first.key)
            raise UserError(f"{len(unseen)} block(s) computed by other ranks are not visible here (e.g. {where}); "
                            f"the output folder must be on a filesystem that every node shares")
    report.seconds = time.perf_counter() - started
    return report


def _exchange_memory_blocks(todo: Sequence[Block], stores: dict[int, int], mine: list[Block]) -> None:
    """Give every rank the blocks other ranks computed into their (unshared) memory stores."""
    if not distributed.active() or all(getattr(b.store, "shared", True) for b in todo):
        return
    by_position = {stores[id(b.store)]: b.store for b in todo}
    local = [(stores[id(b.store)], *b.key, b.store.load(*b.key)) for b in mine if not b.store.shared]
    for gathered in distributed.all_gather(local):
        for position, name, i, j, tensors in gathered:
            store = by_position[position]
            if not store.has(name, i, j):
                store.save(name, i, j, tensors)
