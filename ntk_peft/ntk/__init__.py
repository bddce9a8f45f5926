"""Empirical NTK engine over parameter subsets.

`empirical_ntk(model, batch1, batch2, subsets, implementation)` returns one
``[n1, n2, C, C]`` float64 kernel per subset; see `NtkImplementation` for
the implementations and their costs, and `KernelType` for the SignGD kernels
(``kernel=``) and the logit-difference output (``output=``). Per-example
gradients and closed forms live in one class per parameter kind (`kinds`).
`kernel_blocks` (one `KernelJob`) and `run_kernel_jobs` compute large kernels block by block into a `KernelStore`
through the one scheduler `run_blocks`, shared over the ranks of a
torch.distributed process group (`distributed`).
"""

from ntk_peft.ntk import distributed
from ntk_peft.ntk.blocked import (
    CaptureCache,
    CrossJob,
    KernelJob,
    kernel_blocks,
    kernel_identity,
    run_kernel_jobs,
    shared_cross_blocks,
)
from ntk_peft.ntk.capture import Capture, capture
from ntk_peft.ntk.engine import empirical_ntk
from ntk_peft.ntk.implementations import NtkImplementation
from ntk_peft.ntk.kernel_types import KernelType
from ntk_peft.ntk.layout import from_flat, to_flat, to_lm_kernel_ft, trace_over_outputs
from ntk_peft.ntk.reference import reference_jacobian
from ntk_peft.ntk.schedule import Block, RunReport, run_blocks, shard
from ntk_peft.ntk.store import KernelStore, MemoryStore, batches_hash, model_hash
from ntk_peft.ntk.subsets import parse_subsets, subset_params

__all__ = [
    "Block",
    "Capture",
    "CaptureCache",
    "CrossJob",
    "KernelJob",
    "KernelStore",
    "KernelType",
    "MemoryStore",
    "NtkImplementation",
    "RunReport",
    "batches_hash",
    "capture",
    "distributed",
    "empirical_ntk",
    "from_flat",
    "kernel_blocks",
    "kernel_identity",
    "model_hash",
    "parse_subsets",
    "reference_jacobian",
    "run_blocks",
    "run_kernel_jobs",
    "shard",
    "shared_cross_blocks",
    "subset_params",
    "to_flat",
    "to_lm_kernel_ft",
    "trace_over_outputs",
]
